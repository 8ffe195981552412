"""The stages of the verifiable-world studies that several studies share (``experiments/cpu_studies``,
``poft_mechanisms``, ``sso_mechanisms``): the world's data, the pretrained target, the
principle-conditioned starting policy, and reading that policy's exact match."""

from __future__ import annotations

from pathlib import Path

from prefalign.studies.runner import app_stage

FAMILIES = ("reverse", "upper", "next_letter")  # the world's task families in every study


def poft_train_path(out: Path, poft_clean: int | None) -> Path:
    """The PoFT study's clean training conversations (before noise is mixed in): the world's
    training split, or its first ``poft_clean`` conversations."""
    if poft_clean is None:
        return out / "data" / "verifiable_world" / "train.jsonl"
    return out / "data" / f"verifiable_world_{poft_clean}" / "train.jsonl"


def make_data(
    out: Path, world_train: int, test: int, policy_train: int, sso_prompts: int, poft_clean: int | None = None
) -> dict:
    """Write the verifiable world (``world_train`` training conversations, 100 validation and
    ``test`` held-out records) and its principle-conditioned variant (``policy_train`` conversations
    and ``sso_prompts`` SSO prompts) under ``out/data``; with ``poft_clean``, also the world's first
    ``poft_clean`` training conversations (:func:`poft_train_path`). Returns the files written."""
    from prefalign.config import bundled
    from prefalign.core.jsonl import read_jsonl, write_jsonl
    from prefalign.worlds.verifiable import write_principled, write_world

    world = write_world(
        out / "data" / "verifiable_world", world_train, 100, test, 0, FAMILIES, multi_turn_rate=0.1
    )
    principled = write_principled(
        out / "data" / "verifiable_principled",
        bundled("principles_correctness.yaml"),
        policy_train,
        100,
        test,
        sso_prompts,
        seed=10,
        families=FAMILIES,
    )
    files = {**world, **principled}
    if poft_clean is not None:
        rows = read_jsonl(world["train"])
        if poft_clean > len(rows):
            raise SystemExit(
                f"poft_clean={poft_clean} exceeds the world's {len(rows)} training conversations"
            )
        files["poft_train"] = write_jsonl(poft_train_path(out, poft_clean), rows[:poft_clean])
    return {"files": {k: str(v) for k, v in files.items()}}


def base_overrides(batch: int, epochs: int) -> list[str]:
    """The pretrained target's run (the ``base`` stage of cpu_studies and poft_mechanisms): the
    target's tiny model trained with CE on the clean world (its ChatML template and byte
    tokenizer), exported to ``runs/base/hf``."""
    return ["experiment=cpu_world_ce", f"data.batch_size={batch}", f"trainer.max_epochs={epochs}", "seed=0"]


def pretrained_target_overrides(out: Path) -> list[str]:
    """Start a training run from the pretrained target of the ``base`` stage instead of a fresh tiny model."""
    return ["model=hf", f"model.name_or_path={out / 'runs' / 'base' / 'hf'}", "model.dtype=float32"]


def train_policy(out: Path, epochs: int) -> dict:
    """The SSO studies' starting policy π_0: ``experiment=cpu_world_policy`` (answers correctly under
    the good principle, wrongly under the bad one) for ``epochs`` epochs, in ``runs/policy``."""
    overrides = ["experiment=cpu_world_policy", f"trainer.max_epochs={epochs}"]
    return app_stage(out, "policy", "prefalign.apps.train", overrides, multirun=False, epochs=epochs)


def policy_results(out: Path) -> dict:
    """The starting policy's exact match per condition at its last epoch."""
    from prefalign.analysis import load_run_metrics

    metrics = load_run_metrics(out / "runs" / "policy")
    last = {}
    for condition, prefix in (
        ("no principle", "val"),
        ("good principle", "val_good"),
        ("bad principle", "val_bad"),
    ):
        values = metrics[f"{prefix}/exact_match"].dropna()
        last[condition] = float(values.iloc[-1])
    return last
