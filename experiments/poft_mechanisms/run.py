"""Studies of PoFT's mechanisms on the verifiable world (issue 14, points 2 and 3), with the project's apps.

Everything trains through ``prefalign-train`` with overrides of the CPU PoFT study's configs
(``experiment=cpu_world_aligned``, ``experiment=cpu_world_poft``); this script generates the data,
calls the app, and reads the runs back (metrics CSV, epoch checkpoints, the aligned score cache):

1. **Aligned pair** (as experiments/cpu_studies, 8 epochs at batch 32): two tiny CE models on the
   3,000 clean conversations of the world.
2. **bi-PoFT mechanisms** (1,500 clean + 750 noise samples: the CPU PoFT study's higher noise rate
   at half its size; 6 epochs; epoch checkpoints kept):
   a. ``objective=bi_poft,poft`` — per-token log-probs of noise and clean responses before
      training and after every epoch, split into format tokens (``Answer: ``), the end-of-turn
      token, content tokens and (on noise) corrupted characters;
   b. ``objective=bi_poft`` with noise in another answer format (``data.noise.strip_prefix`` /
      ``add_prefix`` / ``add_suffix``): no ``Answer: `` shared with clean responses;
   c. r_θ against r_agg on noise before and during training (from 2a), and bi-PoFT / PoFT from
      a pretrained target (``model=hf``: the paper's bi-PoFT starts from a pretrained model).
3. **Long horizon**: the pretrained target fine-tuned with CE or PoFT on 400 clean + 750 noise
   samples for 15 epochs: per-epoch exact match, PoFT − CE gap, Last / Avg / Std (PoFT Table 1).

The pretrained target ("base") is ``experiment=cpu_world_ce`` on the world's 3,000 clean
conversations (4 epochs, batch 32): the target's own template and tokenizer, exported to
``runs/base/hf``.

    nice -n 10 python experiments/poft_mechanisms/run.py            # everything (resumes)
    python experiments/poft_mechanisms/run.py --only horizon        # one study
    python experiments/poft_mechanisms/run.py --report-only         # tables and plots from the runs

A stage (one app multirun) whose marker exists is skipped, so an interrupted run resumes. Results:
``results/results.json``, ``results/results.md`` and ``results/*.png`` (``--results`` elsewhere).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefalign.studies.runner import app_stage, fmt, job_overrides, joined, pyplot, stage, start
from prefalign.studies.verifiable import FAMILIES, base_overrides, pretrained_target_overrides

HERE = Path(__file__).resolve().parent
log = logging.getLogger("poft_mechanisms")


FORMAT_PREFIX = "Answer: "  # every response of the verifiable world starts with it
# Noise in another answer format (part 2b): "Answer: " removed, the value wrapped in "=> ... <=".
OTHER_FORMAT = {"strip_prefix": FORMAT_PREFIX, "add_prefix": "=> ", "add_suffix": " <="}
# Epoch checkpoints (conf/callbacks/default.yaml's model_checkpoint, which cpu_world_ce turns off).
CHECKPOINTS = (
    "callbacks.model_checkpoint={_target_:lightning.pytorch.callbacks.ModelCheckpoint,"
    "dirpath:'${paths.output_dir}/checkpoints',filename:'epoch_{epoch:03d}',auto_insert_metric_name:false,"
    "save_top_k:-1,every_n_epochs:1,save_last:false,save_on_train_epoch_end:true}"
)
CATEGORIES = ("format", "end", "content", "corrupted")


@dataclass(frozen=True)
class Settings:
    """Sizes of the studies.

    Attributes:
        world_train / test: clean training conversations of the world, held-out test records.
        aligned_epochs / aligned_batch: epochs and batch size of each aligned model (on world_train).
        batch: batch size of every target run (the CPU PoFT study used 16; 32 halves the steps,
            whose fixed cost dominates on these tiny models).
        mech_clean / noise: clean samples (the world's first) and noise samples of part 2: the
            CPU PoFT study's higher rate (3,000 + 1,500) at half the size.
        mech_epochs / mech_seeds: epochs and seeds of every part-2 cell.
        base_epochs: CE epochs on the world's clean data of the pretrained target (parts 2c and 3).
        probe_samples: noise and clean samples (single-turn) whose token log-probs are read.
        horizon_clean / horizon_noise / horizon_epochs / horizon_seeds: part 3's cell.
        horizon_eval: held-out records scored after every epoch in part 3.
    """

    world_train: int = 3000
    test: int = 300
    aligned_epochs: int = 8
    aligned_batch: int = 32
    batch: int = 32
    mech_clean: int = 1500
    noise: int = 750
    mech_epochs: int = 6
    mech_seeds: tuple[int, ...] = (1, 2, 3)
    base_epochs: int = 4
    probe_samples: int = 256
    horizon_clean: int = 400
    horizon_noise: int = 750
    horizon_epochs: int = 15
    horizon_seeds: tuple[int, ...] = (1, 2, 3)
    horizon_eval: int = 200


SETTINGS = Settings()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=HERE / "outputs", help="runs, data and caches")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="tables and plots")
    parser.add_argument("--only", choices=("bipoft", "horizon"), default=None, help="one study only")
    parser.add_argument("--report-only", action="store_true", help="no training: report the runs there are")
    return parser.parse_args(argv)


# -- data and runs -------------------------------------------------------------------------------------
def make_world(out: Path, s: Settings) -> dict:
    """The world, as the CPU PoFT study's: 3,000 clean training conversations, 300 held-out."""
    from prefalign.worlds.verifiable import write_world

    world = write_world(out / "data" / "verifiable_world", s.world_train, 100, s.test, 0, FAMILIES, 0.1)
    return {"files": {k: str(v) for k, v in world.items()}}


def subset_path(out: Path, size: int) -> Path:
    return out / "data" / f"verifiable_world_{size}" / "train.jsonl"


def make_subsets(out: Path, s: Settings) -> dict:
    """The smaller clean sets of parts 2 and 3: the world's first ``mech_clean`` / ``horizon_clean``
    training conversations (the aligned pair learnt from all ``world_train``)."""
    from prefalign.core.jsonl import read_jsonl, write_jsonl

    rows = read_jsonl(out / "data" / "verifiable_world" / "train.jsonl")
    files = {}
    for size in (s.mech_clean, s.horizon_clean):
        files[str(size)] = str(write_jsonl(subset_path(out, size), rows[:size]))
    return {"files": files}


def train(out: Path, name: str, overrides: list[str], multirun: bool = True) -> dict:
    """One ``prefalign-train`` (multi)run into ``runs/<name>``, skipped when it finished before."""
    return stage(out, name, lambda: app_stage(out, name, "prefalign.apps.train", overrides, multirun))


def poft_overrides(out: Path, clean: int, noise: int, epochs: int) -> list[str]:
    return [
        "experiment=cpu_world_poft",
        f"data.batch_size={SETTINGS.batch}",
        f"data.train.path={subset_path(out, clean)}",
        f"data.noise.num_samples={noise}",
        f"trainer.max_epochs={epochs}",
        "aligned.score_missing=true",
    ]


def other_format_overrides() -> list[str]:
    return [f'+data.noise.{key}="{value}"' for key, value in OTHER_FORMAT.items()]


def run_aligned(out: Path, s: Settings) -> None:
    overrides = [
        "experiment=cpu_world_aligned",
        "aligned_member=zephyr_bytes,llama3_bpe",
        f"trainer.max_epochs={s.aligned_epochs}",
        f"data.batch_size={s.aligned_batch}",
    ]
    train(out, "aligned", overrides)


def mech_base(out: Path, s: Settings) -> list[str]:
    seeds = f"seed={joined(s.mech_seeds)}"
    return [*poft_overrides(out, s.mech_clean, s.noise, s.mech_epochs), seeds, CHECKPOINTS]


def run_template(out: Path, s: Settings) -> None:
    """2a: bi-PoFT and PoFT on the paper's noise (it shares the ``Answer: `` format)."""
    train(out, "mech_template", [*mech_base(out, s), "objective=bi_poft,poft"])


def run_format(out: Path, s: Settings) -> None:
    """2b: bi-PoFT on noise in another answer format."""
    train(out, "mech_format", [*mech_base(out, s), *other_format_overrides(), "objective=bi_poft"])


def warm_overrides(out: Path) -> list[str]:
    """Start the target from the pretrained base (``run_base``) instead of a fresh tiny model."""
    return pretrained_target_overrides(out)


def run_base(out: Path, s: Settings) -> None:
    """A pretrained target: CE on the world's clean conversations (its ChatML and byte tokenizer)."""
    train(out, "base", base_overrides(s.batch, s.base_epochs), multirun=False)


def run_warm(out: Path, s: Settings) -> None:
    """2c: bi-PoFT and PoFT from the pretrained base, as the paper's bi-PoFT starts from a pretrained model."""
    train(out, "mech_warm", [*mech_base(out, s), *warm_overrides(out), "objective=bi_poft,poft"])


def run_horizon(out: Path, s: Settings) -> None:
    """3: CE and PoFT from the pretrained base on mostly-noise data, for many epochs."""
    overrides = [
        *poft_overrides(out, s.horizon_clean, s.horizon_noise, s.horizon_epochs),
        *warm_overrides(out),
        f"callbacks.exact_match.limit={s.horizon_eval}",
        "objective=ce,poft",
        f"seed={joined(s.horizon_seeds)}",
    ]
    train(out, "horizon", overrides)


# -- reading runs ----------------------------------------------------------------------------------------
def run_dirs(out: Path, name: str) -> list[Path]:
    folder = out / "runs" / name
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def finished(run_dir: Path) -> bool:
    return (run_dir / "csv" / "metrics.csv").exists() and (run_dir / "hf").is_dir()


def exact_match_curve(run_dir: Path) -> list[float]:
    from prefalign.analysis import load_run_metrics

    metrics = load_run_metrics(run_dir).dropna(subset=["val/exact_match"])
    return [float(v) for v in metrics.sort_values("epoch")["val/exact_match"]]


def summary(curve: list[float]) -> dict[str, float]:
    """Last / Avg / Std as the PoFT paper's Table 1 (and cpu_studies): Avg and Std over epochs ≥ 2."""
    from prefalign.evaluation.aggregate import aggregate_epochs

    agg = aggregate_epochs({e + 1: {"exact_match": v} for e, v in enumerate(curve)})
    return {"last": agg.last["exact_match"], "avg": agg.avg["exact_match"], "std": agg.std["exact_match"]}


def margins_by_subset(run_dir: Path) -> dict[str, dict[str, list[float]]]:
    """The logged per-step mean of r_θ − r_agg and τ on clean and noise samples."""
    from prefalign.analysis import load_run_metrics

    metrics = load_run_metrics(run_dir)
    series = {}
    for name in ("margin", "tau"):
        for subset in ("clean", "noise"):
            column = f"train/{name}_{subset}"
            if column in metrics:
                rows = metrics.dropna(subset=[column])
                series[f"{name}_{subset}"] = {"step": rows["step"].tolist(), "value": rows[column].tolist()}
    return series


def run_config(out: Path, run_dir: Path):
    """The composed ``train`` config of a run (its command-line overrides, under ``out``)."""
    from prefalign.analysis import compose_config

    keys = job_overrides(run_dir)
    dropped = ("objective", "seed", "callbacks.model_checkpoint")  # nothing the data or model depend on
    overrides = [f"{k}={v}" for k, v in keys.items() if k not in dropped]
    return compose_config("train", overrides), keys


# -- per-token log-probs (part 2a) ---------------------------------------------------------------------
def char_roles(response: str, source: str, prefix: int, suffix: int = 0) -> list[str]:
    """Role of each character of ``response`` (a noise response made from ``source``, or ``source``
    itself): ``format`` where it matches one of the first ``prefix`` or last ``suffix`` characters of
    ``source`` (the answer format), ``content`` where it matches another one, ``corrupted`` where it
    matches nothing (an inserted or modified character). Matching: :class:`difflib.SequenceMatcher`."""
    roles = ["corrupted"] * len(response)
    matcher = difflib.SequenceMatcher(None, source, response, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            a = block.a + k
            roles[block.b + k] = "format" if a < prefix or a >= len(source) - suffix else "content"
    return roles


def probe_samples(cfg, s: Settings) -> dict[str, list[dict]]:
    """The first ``probe_samples`` single-turn clean and noise training samples of a run, each with
    its messages, the source response its noise was made from, and that source's format prefix."""
    import datasets

    from prefalign.core.jsonl import read_jsonl
    from prefalign.data.noise import NoiseConfig, make_noise_samples

    clean_rows = read_jsonl(cfg.data.train.path)
    by_id = {row["id"]: row for row in clean_rows}
    clean_ds = datasets.Dataset.from_list([{"id": r["id"], "messages": r["messages"]} for r in clean_rows])
    noise_cfg = NoiseConfig(**dict(cfg.data.noise))
    noise = make_noise_samples(clean_ds, noise_cfg)
    # the noise's own answer format: "Answer: " (the paper's noise), or the one it was put into
    own = (noise_cfg.add_prefix, noise_cfg.add_suffix) if noise_cfg.strip_prefix else (FORMAT_PREFIX, "")
    probes: dict[str, list[dict]] = {"clean": [], "noise": []}
    for row in clean_rows:
        if len(row["messages"]) == 2 and len(probes["clean"]) < s.probe_samples:
            content = row["messages"][-1]["content"]
            probes["clean"].append(
                {
                    "id": row["id"],
                    "messages": row["messages"],
                    "source": content,
                    "format": (FORMAT_PREFIX, ""),
                }
            )
    for row in noise:
        if len(row["messages"]) == 2 and len(probes["noise"]) < s.probe_samples:
            original = by_id[row["noise_source_response_id"]]["messages"][-1]["content"]
            source = noise_cfg.reformat(original)
            probes["noise"].append(
                {"id": row["id"], "messages": row["messages"], "source": source, "format": own}
            )
    return probes


def encode_probes(tokenizer, probes: list[dict], max_length: int) -> dict[str, Any]:
    """Padded ``input_ids`` / ``labels`` (the project's encoding) and the role of every label."""
    import torch

    from prefalign.data.chat import IGNORE_INDEX, assistant_spans, encode_conversation

    ids, labels, roles = [], [], []
    for probe in probes:
        enc = encode_conversation(tokenizer, probe["messages"], max_length, probe["id"])
        text, spans = assistant_spans(tokenizer, probe["messages"], probe["id"])
        content = probe["messages"][-1]["content"]
        start = spans[-1][0]
        if text[start : start + len(content)] != content:
            raise ValueError(
                f"sample {probe['id']}: the response does not render verbatim after the template"
            )
        prefix, suffix = probe["format"]
        per_char = char_roles(content, probe["source"], len(prefix), len(suffix))
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        role = []
        for t, label in enumerate(enc.labels):
            if label == IGNORE_INDEX:
                role.append(None)
                continue
            char = offsets[t][0] - start
            role.append(per_char[char] if 0 <= char < len(content) else "end")
        ids.append(enc.input_ids)
        labels.append(enc.labels)
        roles.append(role)
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    label_t = torch.tensor([x + [IGNORE_INDEX] * (width - len(x)) for x in labels])
    attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": label_t, "roles": roles}


def probe_logprobs(model, batch: dict[str, Any]) -> dict[str, Any]:
    """Mean token log-prob per role, and r_θ (mean over response tokens) per sample."""
    import torch

    from prefalign.scoring.logprobs import token_logprobs

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, mask = token_logprobs(logits, batch["labels"])
    by_role: dict[str, list[float]] = {}
    for i, roles in enumerate(batch["roles"]):
        for t, role in enumerate(roles[1:]):  # position t predicts token t + 1
            if role is not None:
                by_role.setdefault(role, []).append(float(logps[i, t]))
    r_theta = (logps.sum(-1) / mask.sum(-1)).tolist()
    return {
        "by_role": {r: statistics.fmean(v) for r, v in by_role.items()},
        "tokens": {r: len(v) for r, v in by_role.items()},
        "r_theta": r_theta,
    }


def probe_context(out: Path, run_dir: Path, s: Settings) -> dict[str, Any]:
    """What every run of a setting shares (same data, same starting model): the starting model and
    its weights, the encoded probe samples and their aligned r_agg (mean over members, as PoFT)."""
    from prefalign.analysis import aggregate_scores, load_scores
    from prefalign.models.loading import load_model_and_tokenizer

    cfg, _ = run_config(out, run_dir)
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    model.float().eval()
    probes = probe_samples(cfg, s)
    batches = {
        subset: encode_probes(tokenizer, rows, int(cfg.data.max_length)) for subset, rows in probes.items()
    }
    scores = aggregate_scores(load_scores(cfg, splits=["train"]), ["avg"]).set_index("id")["avg"]
    r_agg = {subset: [float(scores[p["id"]]) for p in rows] for subset, rows in probes.items()}
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    return {"model": model, "initial": initial, "batches": batches, "r_agg": r_agg}


def token_study(ctx: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Per epoch (0: before training): mean token log-prob per role on the probe samples, r_θ and
    r_θ − r_agg on them (mean, and the share of samples with r_θ > r_agg)."""
    import torch

    from prefalign.analysis import list_checkpoints

    keys = job_overrides(run_dir)
    model = ctx["model"]
    checkpoints = list_checkpoints(run_dir)
    epochs = [(0, None), *zip(checkpoints["epoch"], checkpoints["path"], strict=True)]
    per_epoch = []
    for epoch, path in epochs:
        if path is None:
            state = ctx["initial"]
        else:
            state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
            state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        model.load_state_dict(state)
        row: dict[str, Any] = {"epoch": int(epoch)}
        for subset, batch in ctx["batches"].items():
            got = probe_logprobs(model, batch)
            r_agg = ctx["r_agg"][subset]
            margins = [t - a for t, a in zip(got["r_theta"], r_agg, strict=True)]
            row[subset] = {
                "logp_by_role": got["by_role"],
                "tokens_by_role": got["tokens"],
                "r_theta": statistics.fmean(got["r_theta"]),
                "r_agg": statistics.fmean(r_agg),
                "margin": statistics.fmean(margins),
                "above_agg": sum(m > 0 for m in margins) / len(margins),
            }
        per_epoch.append(row)
    return {"objective": keys["objective"], "seed": int(keys["seed"]), "per_epoch": per_epoch}


# -- report ---------------------------------------------------------------------------------------------------
def mech_results(out: Path, s: Settings) -> dict[str, Any]:
    """Parts 2a–c: every finished run's exact-match curve, summary, token study and logged margins."""
    results: dict[str, Any] = {}
    for setting in ("mech_template", "mech_format", "mech_warm"):
        runs, ctx = [], None
        for run_dir in run_dirs(out, setting):
            if not finished(run_dir):
                continue
            cache = run_dir / "token_study.json"
            if not cache.exists():
                log.info("token study of %s", run_dir)
                ctx = ctx or probe_context(out, run_dir, s)
                cache.write_text(json.dumps(token_study(ctx, run_dir)))
            study = json.loads(cache.read_text())
            curve = exact_match_curve(run_dir)
            runs.append(
                study
                | {
                    "run_dir": str(run_dir),
                    "exact_match": curve,
                    **summary(curve),
                    "logged": margins_by_subset(run_dir),
                }
            )
        results[setting] = runs
    base = out / "runs" / "base"
    if (base / "csv").exists():
        results["base_exact_match"] = exact_match_curve(base)
    return results


def horizon_results(out: Path) -> list[dict[str, Any]]:
    runs = []
    for run_dir in run_dirs(out, "horizon"):
        if not (run_dir / "csv" / "metrics.csv").exists():
            continue
        keys = job_overrides(run_dir)
        curve = exact_match_curve(run_dir)
        runs.append(
            {
                "objective": keys["objective"],
                "seed": int(keys["seed"]),
                "run_dir": str(run_dir),
                "exact_match": curve,
                **summary(curve),
            }
        )
    return runs


def group(runs: list[dict], key: str = "objective") -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for run in runs:
        grouped.setdefault(run[key], []).append(run)
    return grouped


def mean_curve(runs: list[dict], epochs: int) -> tuple[list[float], list[float]]:
    """Seed mean and standard deviation per epoch, over the runs that reached it."""
    means, sds = [], []
    for e in range(epochs):
        values = [r["exact_match"][e] for r in runs if len(r["exact_match"]) > e]
        means.append(statistics.fmean(values) if values else float("nan"))
        sds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return means, sds


SETTING_NAMES = {
    "mech_template": "2a: paper's noise (shares `Answer: `)",
    "mech_format": "2b: noise in another format (`=> … <=`)",
    "mech_warm": "2c: target pretrained with CE on clean data",
}


def mech_markdown(mech: dict[str, Any], s: Settings) -> str:
    lines = [
        f"Held-out exact match (%), {s.mech_clean} clean + {s.noise} noise samples, {s.mech_epochs} epochs "
        "(mean ± sd over seeds; Avg / Std over epochs ≥ 2):",
        "",
        "| setting | objective | seeds | per epoch | Last | Avg | Std |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, name in SETTING_NAMES.items():
        for objective, runs in sorted(group(mech.get(setting, [])).items()):
            means, _ = mean_curve(runs, s.mech_epochs)
            curve = " ".join(f"{100 * m:.0f}" for m in means)
            lines.append(
                f"| {name} | {objective} | {len(runs)} | {curve} | {fmt([r['last'] for r in runs])} | "
                f"{fmt([r['avg'] for r in runs])} | {fmt([r['std'] for r in runs])} |"
            )
    if "base_exact_match" in mech:
        lines += [
            "",
            f"The pretrained target of 2c (CE on the clean data, {s.base_epochs} epochs, seed 0) starts at "
            f"{100 * mech['base_exact_match'][-1]:.1f}% exact match.",
        ]
    lines += [
        "",
        "Mean token log-prob on the probe samples (first 256 single-turn clean / noise training samples), "
        "epoch 0 = before training → epoch 1 → last epoch (mean ± sd over seeds):",
        "",
        "| setting | objective | samples | format (`Answer: ` / own) | end of turn | content | corrupted |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, name in SETTING_NAMES.items():
        for objective, runs in sorted(group(mech.get(setting, [])).items()):
            for subset in ("clean", "noise"):
                cells = []
                for role in CATEGORIES:
                    points = []
                    for idx in (0, 1, -1):
                        values = [r["per_epoch"][idx][subset]["logp_by_role"].get(role) for r in runs]
                        values = [v for v in values if v is not None]
                        points.append(fmt(values, 1.0).replace(" ± ", "±") if values else "–")
                    cells.append(" → ".join(points) if points[0] != "–" else "")
                lines.append(f"| {name} | {objective} | {subset} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "r_θ − r_agg on the probe samples (mean; share of samples with r_θ > r_agg, which bi-PoFT pushes "
        "down on noise), before training and after every epoch:",
        "",
        "| setting | objective | samples | r_agg | r_θ − r_agg per epoch (0 = before training) | share above r_agg per epoch |",
        "|---|---|---|---|---|---|",
    ]
    for setting, name in SETTING_NAMES.items():
        for objective, runs in sorted(group(mech.get(setting, [])).items()):
            for subset in ("clean", "noise"):
                n = min(len(r["per_epoch"]) for r in runs)
                margin = [
                    statistics.fmean(r["per_epoch"][e][subset]["margin"] for r in runs) for e in range(n)
                ]
                above = [
                    statistics.fmean(r["per_epoch"][e][subset]["above_agg"] for r in runs) for e in range(n)
                ]
                r_agg = runs[0]["per_epoch"][0][subset]["r_agg"]
                lines.append(
                    f"| {name} | {objective} | {subset} | {r_agg:.2f} | {' '.join(f'{m:+.2f}' for m in margin)} | "
                    f"{' '.join(f'{100 * a:.0f}%' for a in above)} |"
                )
    return "\n".join(lines)


def horizon_markdown(runs: list[dict], s: Settings) -> str:
    grouped = group(runs)
    lines = [
        f"{s.horizon_clean} clean + {s.horizon_noise} noise samples, {s.horizon_epochs} epochs, exact match (%) on "
        f"{s.horizon_eval} held-out records (mean ± sd over seeds; Avg / Std over epochs ≥ 2):",
        "",
        "| objective | seeds | Last | Avg | Std | best epoch (seed mean) | best |",
        "|---|---|---|---|---|---|---|",
    ]
    for objective in ("ce", "poft"):
        group_runs = grouped.get(objective, [])
        if not group_runs:
            lines.append(f"| {objective} | 0 | not run | | | | |")
            continue
        means, _ = mean_curve(group_runs, s.horizon_epochs)
        best = max(range(len(means)), key=lambda e: means[e] if means[e] == means[e] else -1)
        lines.append(
            f"| {objective} | {len(group_runs)} | {fmt([r['last'] for r in group_runs])} | "
            f"{fmt([r['avg'] for r in group_runs])} | {fmt([r['std'] for r in group_runs])} | "
            f"{best + 1} | {100 * means[best]:.1f} |"
        )
    if "ce" in grouped and "poft" in grouped:
        ce, _ = mean_curve(grouped["ce"], s.horizon_epochs)
        poft, _ = mean_curve(grouped["poft"], s.horizon_epochs)
        gap = [p - c for p, c in zip(poft, ce, strict=True)]
        lines += ["", "PoFT − CE per epoch (points, seed means):", ""]
        for start in range(0, len(gap), 10):
            lines.append(
                f"- epochs {start + 1}–{min(start + 10, len(gap))}: "
                + " ".join(f"{100 * g:+.1f}" for g in gap[start : start + 10])
            )
    return "\n".join(lines)


def plot_mech(results_dir: Path, mech: dict[str, Any], s: Settings) -> list[Path]:
    plt = pyplot()
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6), sharey=True)
    for ax, (setting, name) in zip(axes, SETTING_NAMES.items(), strict=True):
        for objective, runs in sorted(group(mech.get(setting, [])).items()):
            means, sds = mean_curve(runs, s.mech_epochs)
            epochs = range(1, len(means) + 1)
            ax.plot(epochs, means, marker="o", label=f"{objective} ({len(runs)} seeds)")
            ax.fill_between(
                epochs,
                [m - d for m, d in zip(means, sds, strict=True)],
                [m + d for m, d in zip(means, sds, strict=True)],
                alpha=0.2,
            )
        ax.set(title=name.replace("`", ""), xlabel="epoch", ylabel="held-out exact match")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(results_dir / "bipoft_exact_match.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    rows = [
        (setting, objective, runs)
        for setting in SETTING_NAMES
        for objective, runs in sorted(group(mech.get(setting, [])).items())
    ]
    if rows:
        fig, axes = plt.subplots(2, len(rows), figsize=(3.4 * len(rows), 6.4), sharey=True, squeeze=False)
        for col, (setting, objective, runs) in enumerate(rows):
            for row_i, subset in enumerate(("clean", "noise")):
                ax = axes[row_i][col]
                for role in CATEGORIES:
                    n = min(len(r["per_epoch"]) for r in runs)
                    values = [
                        [r["per_epoch"][e][subset]["logp_by_role"].get(role) for r in runs] for e in range(n)
                    ]
                    if any(v is None for vs in values for v in vs):
                        continue
                    ax.plot(range(n), [statistics.fmean(v) for v in values], marker=".", label=role)
                ax.set(
                    title=f"{setting.removeprefix('mech_')}, {objective}: {subset}", xlabel="epoch (0: init)"
                )
                if col == 0:
                    ax.set_ylabel("mean token log-prob")
                ax.legend(fontsize=6)
        fig.tight_layout()
        paths.append(results_dir / "bipoft_token_logprobs.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

        fig, axes = plt.subplots(1, len(rows), figsize=(3.4 * len(rows), 3.2), sharey=True, squeeze=False)
        for col, (setting, objective, runs) in enumerate(rows):
            ax = axes[0][col]
            for subset, style in (("clean", "-"), ("noise", "--")):
                series = runs[0]["logged"].get(f"margin_{subset}")
                if series:
                    ax.plot(
                        series["step"], series["value"], style, label=f"{subset} (seed {runs[0]['seed']})"
                    )
            ax.axhline(0, color="grey", lw=0.5)
            ax.set(title=f"{setting.removeprefix('mech_')}, {objective}", xlabel="step")
            if col == 0:
                ax.set_ylabel("batch mean r_θ − r_agg")
            ax.legend(fontsize=6)
        fig.tight_layout()
        paths.append(results_dir / "bipoft_margins.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def plot_horizon(results_dir: Path, runs: list[dict], s: Settings) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for objective, group_runs in sorted(group(runs).items()):
        means, sds = mean_curve(group_runs, s.horizon_epochs)
        epochs = range(1, len(means) + 1)
        ax.plot(epochs, means, marker=".", label=f"{objective} ({len(group_runs)} seeds)")
        ax.fill_between(
            epochs,
            [m - d for m, d in zip(means, sds, strict=True)],
            [m + d for m, d in zip(means, sds, strict=True)],
            alpha=0.2,
        )
    ax.set(
        title=f"{s.horizon_clean} clean + {s.horizon_noise} noise",
        xlabel="epoch",
        ylabel="held-out exact match",
    )
    ax.legend()
    fig.tight_layout()
    path = results_dir / "horizon_exact_match.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    s = SETTINGS
    # one thread per process: on loaded shared cores the tiny models ran several times faster
    # without OpenMP threads competing (see README)
    out, results_dir = start(args.out, one_thread=True), args.results.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not args.report_only:
        stage(out, "data", lambda: make_world(out, s))
        stage(out, "data_subsets", lambda: make_subsets(out, s))
        run_aligned(out, s)
        # in order of priority, so that what finishes first is what matters most
        for study, action in (
            ("bipoft", run_template),
            ("bipoft", run_format),
            (None, run_base),
            ("horizon", run_horizon),
            ("bipoft", run_warm),
        ):
            if args.only in (None, study) or study is None:
                action(out, s)
    mech, horizon = mech_results(out, s), horizon_results(out)
    plots = plot_mech(results_dir, mech, s) + ([plot_horizon(results_dir, horizon, s)] if horizon else [])
    stage_times = {
        p.stem: json.loads(p.read_text()).get("seconds") for p in sorted((out / "stages").glob("*.json"))
    }
    results = {
        "settings": asdict(s),
        "other_format": OTHER_FORMAT,
        "bipoft": mech,
        "horizon": horizon,
        "stage_seconds": stage_times,
        "plots": [p.name for p in plots],
    }
    text = (
        "## Part 2: bi-PoFT mechanisms\n\n"
        + mech_markdown(mech, s)
        + "\n\n## Part 3: PoFT over a long horizon\n\n"
        + horizon_markdown(horizon, s)
    )
    text += (
        "\n\nStage wall times (s, shared cores): "
        + ", ".join(f"{k} {v}" for k, v in stage_times.items())
        + "\n"
    )
    (results_dir / "results.md").write_text(text)
    (results_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(text)
    print(f"this invocation: {time.perf_counter() - started:.0f} s; results in {results_dir}")
    return results


if __name__ == "__main__":
    main()
