"""SSO mechanisms study (issue 14, point 1): where can W and G act, and do they?

Runs the SSO pipeline (``prefalign-sso sso_experiment=cpu_world_sso``) on the verifiable world
through the project's own apps, over a grid of cells, each with three pipeline seeds:

- **gamma** (baseline temperature 0.7): SSO at γ ∈ {0.1, 0.5, 1, 2} and PBAA;
- **temperature** 1.0 and 1.3 (samples pushed off-policy, so that ā and W vary across samples):
  SSO, PBAA, and at 1.3 the w/o W and w/o G ablations;
- **W's gradient and W′** at the temperature where W varies most: ``objective.detach_weight=true``
  and ``objective.weight=w_prime``.

Every pipeline runs five iterations over the full study's 450 prompts (90 per iteration). The data
and the starting policy are the CPU studies' at their full size (``prefalign.studies.verifiable``).
Per iteration and cell the script reads back the pipeline's reports (signal accuracy under the rule
judge, held-out exact match with no principle, e^ā(y+), e^ā(y−), lengths) and the iteration folders'
per-sample W (``iter_<i>/train/per_sample_metrics.jsonl``) and per-step training metrics (G's
share of the loss), and measures how much of the gradient flows through W on the first batch of
every iteration of the SSO cells (``gradient_share``). Outputs: ``results/results.{json,md}`` and
plots.

    nice -n 10 python experiments/sso_mechanisms/run.py            # the committed results
    python experiments/sso_mechanisms/run.py --report-only         # tables and plots from outputs/

Cells whose pipelines have finished (``report.json`` in every seed's work folder) are skipped, so an
interrupted run resumes; the pipeline itself resumes unfinished seeds stage by stage.

New cells can be added to committed results whose ``outputs/`` are gone: ``--merge
results/results.json`` keeps its cells that have no finished pipelines in ``outputs/`` and rebuilds
the tables and plots from both. The data and π_0 are regenerated, so the script checks that they are
the committed ones: π_0's exact match per condition, and iteration 1's samples, which every variant at
one temperature shares (same seed, same π_0), against the committed cells at the new cells'
temperature; ``--rerun-check <cell>`` also reruns seed 0 of one committed cell and compares every
figure of its rows (``results.json: reproducibility``, and a section of ``results.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefalign.studies.runner import app_stage, fmt, pyplot, stage, start
from prefalign.studies.verifiable import make_data, policy_results, train_policy

log = logging.getLogger("sso_mechanisms")
HERE = Path(__file__).resolve().parent


SEEDS = (0, 1, 2)
ITERATIONS = 3  # the γ sweep and temperature 1.0; the cells at temperature 1.3 run 5
# What the shared cores allowed (see README): held-out exact match on the first 150 of the 300
# test records, and 4 tokens for the feature-allocation answer (the principles file has one
# feature, so every prompt gets it whatever the answer says).
HELDOUT_LIMIT = 150
ALLOCATION_TOKENS = 4
# The objective overrides of each variant (conf/sso_experiment/cpu_world_sso.yaml's variants).
VARIANTS = {
    "sso": ("sso", []),
    "pbaa": ("pbaa", []),
    "wo_w": ("sso", ["objective.use_weight=false"]),
    "wo_g": ("sso", ["objective.use_steering=false"]),
    "detach": ("sso", ["objective.detach_weight=true"]),
    "w_prime": ("sso", ["objective.weight=w_prime"]),
    "w_prime_detach": ("sso", ["objective.weight=w_prime", "objective.detach_weight=true"]),
}
VARIANT_NAMES = {
    "sso": "SSO",
    "pbaa": "PBAA",
    "wo_w": "SSO w/o W",
    "wo_g": "SSO w/o G",
    "detach": "SSO, W detached",
    "w_prime": "SSO with W′",
    "w_prime_detach": "SSO with W′ detached",
}


@dataclass(frozen=True)
class Cell:
    """One grid cell: a variant at a sampling temperature and γ, run with every seed."""

    variant: str
    temperature: float = 0.7
    gamma: float = 0.1
    top_p: float = 0.8
    iterations: int = ITERATIONS
    group: str = "gamma"
    seeds: tuple[int, ...] = field(default=SEEDS)

    @property
    def name(self) -> str:
        return f"{self.variant}_t{self.temperature:g}_p{self.top_p:g}_g{self.gamma:g}_k{self.iterations}"

    def overrides(self, run_name: str | None = None) -> list[str]:
        """The ``prefalign-sso`` multirun's overrides; ``run_name`` (default ``<name>_seed${seed}``)
        names the pipelines' work folders ``logs/sso_mechanisms/<run_name>``."""
        objective, extra = VARIANTS[self.variant]
        objective_overrides = [*extra, f"objective.gamma={self.gamma}"]
        quoted = ",".join(f"'{o}'" for o in objective_overrides)
        return [
            "sso_experiment=cpu_world_sso",
            f"train_objective={objective}",
            f"objective_overrides=[{quoted}]",
            f"iterations={self.iterations}",
            f"sampling.temperature={self.temperature}",
            f"sampling.top_p={self.top_p}",
            f"seed={','.join(str(s) for s in self.seeds)}",
            "task_name=sso_mechanisms",
            f"run_name={run_name or self.name + '_seed${seed}'}",
            "wandb=null",  # the pipeline's own W&B run: not needed here (its training runs log CSV)
            f"+heldout.limit={HELDOUT_LIMIT}",
            f"allocation.max_new_tokens={ALLOCATION_TOKENS}",
        ]


# The data and starting policy of every cell: those of experiments/cpu_studies at its full size
# (tests/experiments/test_sso_mechanisms.py checks they stay equal).
DATA = {"world_train": 3000, "test": 300, "policy_train": 3000, "sso_prompts": 450}
POLICY_EPOCHS = 16


def prepare(out: Path) -> dict:
    """The CPU studies' data and starting policy at their full size (stages skipped when done)."""
    return {
        "data": stage(out, "data", lambda: make_data(out, **DATA))["seconds"],
        "policy": stage(out, "policy", lambda: train_policy(out, POLICY_EPOCHS))["seconds"],
    }


# The grid, in the order it runs (most informative first, so that a run cut short by the session's
# deadline keeps the main comparisons): γ's extreme and PBAA at the baseline temperature, SSO and
# PBAA with off-policy samples (temperature 1.3), the rest of the γ sweep, the ablations at 1.3,
# W's gradient and W′ at 1.3, temperature 1.0.
GRID = (
    Cell("sso", temperature=1.3, iterations=5, group="temperature"),
    Cell("pbaa", temperature=1.3, iterations=5, group="temperature"),
    Cell("sso", gamma=2.0, group="gamma"),
    Cell("pbaa", group="gamma"),
    Cell("sso", gamma=0.1, group="gamma"),
    Cell("sso", gamma=1.0, group="gamma"),
    Cell("sso", gamma=0.5, group="gamma"),
    Cell("wo_w", temperature=1.3, iterations=5, group="temperature"),
    Cell("wo_g", temperature=1.3, iterations=5, group="temperature"),
    Cell("detach", temperature=1.3, iterations=5, group="weight"),
    Cell("w_prime", temperature=1.3, iterations=5, group="weight"),
    Cell("sso", temperature=1.0, group="temperature"),
    Cell("pbaa", temperature=1.0, group="temperature"),
    # added after W′ separated from PBAA at 1.3: is it W′'s weighting or its gradient (an SFT-like
    # push on y_o under x+ and x−)?
    Cell("w_prime_detach", temperature=1.3, iterations=5, group="weight"),
    # does W′'s effect at 1.3 carry over to the other temperatures?
    Cell("w_prime", temperature=0.7, group="weight"),
    Cell("w_prime", temperature=1.0, group="weight"),
    Cell("w_prime_detach", temperature=0.7, group="weight"),
)


def work_dir(out: Path, cell: Cell, seed: int) -> Path:
    return out / "logs" / "sso_mechanisms" / f"{cell.name}_seed{seed}"


def finished(out: Path, cell: Cell) -> bool:
    return all((work_dir(out, cell, s) / "report.json").exists() for s in cell.seeds)


def run_cell(out: Path, cell: Cell) -> float | None:
    """One cell's pipelines (a multirun over its seeds); ``None`` when they had finished before."""
    if finished(out, cell):
        log.info("cell %s: done before, skipped", cell.name)
        return None
    return app_stage(out, f"cells/{cell.name}", "prefalign.apps.sso", cell.overrides())["app_seconds"]


# -- reading the pipelines' outputs ----------------------------------------------------------------
def cell_rows(out: Path, cell: Cell, folders: dict[int, Path] | None = None) -> list[dict]:
    """Per seed and iteration (0: the starting policy): the report's figures, W's per-sample
    distribution in each training epoch and G's share of the loss over the training steps.

    ``folders`` (seed → pipeline work folder) replaces the cell's own folders (the rerun check's)."""
    from prefalign.analysis import load_run_metrics, load_sso_reports
    from prefalign.core.jsonl import read_jsonl
    from prefalign.pipelines.sso import distribution_summary
    from prefalign.worlds.verifiable import RuleJudge
    from prefalign.worlds.verifiable.metric import is_correct

    judge = None
    rows = []
    for seed, folder in (folders or {s: work_dir(out, cell, s) for s in cell.seeds}).items():
        if not (folder / "report.json").exists():
            continue
        reports = load_sso_reports(folder)
        judge = judge or RuleJudge.from_file(out / "data" / "verifiable_principled" / "prompts.jsonl")
        rows.append(
            {
                "seed": seed,
                "iteration": 0,
                "exact_match": float(reports.iloc[0]["initial_heldout/exact_match"]),
            }
        )
        for _, report in reports.iterrows():
            i = int(report["iteration"])
            row = {
                "seed": seed,
                "iteration": i,
                "exact_match": float(report["heldout/exact_match"]),
                "signal_accuracy": float(report["signal_accuracy"]),
                "signal_inverted": float(report["signal_inverted"]),
                "length_chosen": float(report["length/chosen"]),
                "length_rejected": float(report["length/rejected"]),
                "length_original": float(report["length/original"]),
                "samples": int(report["samples"]),
            }
            # how often y+, y−, y_o are correct (what signal accuracy is made of)
            samples = read_jsonl(folder / f"iter_{i}" / "preferences.jsonl")
            for role in ("chosen", "rejected", "original"):
                row[f"correct_{role}"] = statistics.fmean(
                    is_correct(judge.gold[r["prompt"]], r[role]) for r in samples
                )
            train_dir = folder / f"iter_{i}" / "train"
            per_sample = read_jsonl(train_dir / "per_sample_metrics.jsonl")
            for epoch in sorted({r["epoch"] for r in per_sample}):
                values = [r["weight"] for r in per_sample if r["epoch"] == epoch]
                row[f"weight_epoch{epoch}"] = distribution_summary(values)
            steps = load_run_metrics(train_dir).dropna(subset=["train/base_loss"])
            # means over the iteration's training steps (each a batch mean)
            for key, column in (
                ("on_policy_chosen", "train/on_policy/chosen"),
                ("on_policy_rejected", "train/on_policy/rejected"),
                ("train_weight", "train/weight"),
                ("train_base_loss", "train/base_loss"),
                ("train_g", "train/g"),
            ):
                row[key] = float(steps[column].mean()) if column in steps else float("nan")
            rows.append(row)
    return rows


# -- is the mechanism active? ---------------------------------------------------------------------
def gradient_shares(train_dir: Path) -> dict[str, float]:
    """At the start of an iteration (the policy = π_{i-1}), over all its training samples: how much
    of the loss gradient flows through W and through G, and G's share of the loss.

    Built from the iteration's saved training config (``train/train_config.yaml``) with the
    library's own objects (objective, model, data module, precomputed reference columns); the
    gradient of the summed batch losses is taken three times: with the configured objective (W
    with its gradient), with W detached, and without G. ``w_grad_share`` = ‖∇L − ∇L_detached‖ /
    ‖∇L‖ (the part that flows through W), ``g_grad_share`` = ‖∇L − ∇L_noG‖ / ‖∇L‖, and the
    cosines between them. ``g_loss_share`` = Σ W·γ·G / Σ W·(γ·G + L_base) over the samples.
    """
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from prefalign.training.run import build_module_and_data

    cfg = OmegaConf.load(train_dir / "train_config.yaml")
    objective = instantiate(cfg.objective, detach_weight=False)
    variants = {
        "full": objective,
        "detached": instantiate(cfg.objective, detach_weight=True),
        "no_g": instantiate(cfg.objective, use_steering=False, detach_weight=False),
    }
    module, datamodule = build_module_and_data(cfg, objective)
    datamodule.setup("fit")
    parameters = [p for p in module.model.parameters() if p.requires_grad]
    sums = {name: [torch.zeros_like(p) for p in parameters] for name in variants}
    weighted_g, weighted_total = 0.0, 0.0
    for batch in datamodule.train_dataloader():
        for name, variant in variants.items():
            module.objective = variant
            module.model.zero_grad(set_to_none=True)
            output = module.objective_output(batch)
            output.losses.sum().backward()
            for total, p in zip(sums[name], parameters, strict=True):
                if p.grad is not None:
                    total += p.grad
            if name == "full" and "g" in output.metrics:
                w = output.metrics["weight"]
                weighted_g += float((w * variant.gamma * output.metrics["g"]).sum())
                weighted_total += float(
                    (w * (variant.gamma * output.metrics["g"] + output.metrics["base_loss"])).sum()
                )
    flat = {name: torch.cat([g.flatten() for g in grads]) for name, grads in sums.items()}
    norm = float(flat["full"].norm())
    cosine = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    return {
        "w_grad_share": float((flat["full"] - flat["detached"]).norm()) / norm,
        "g_grad_share": float((flat["full"] - flat["no_g"]).norm()) / norm,
        "cos_full_detached": cosine(flat["full"], flat["detached"]),
        "cos_full_no_g": cosine(flat["full"], flat["no_g"]),
        "g_loss_share": weighted_g / weighted_total if weighted_total else float("nan"),
    }


# -- tables and plots -----------------------------------------------------------------------------
def label(cell: Cell) -> str:
    return f"{VARIANT_NAMES[cell.variant]}, T {cell.temperature:g}" + (
        f", γ {cell.gamma:g}" if cell.variant != "pbaa" else ""
    )


def by_iteration(rows: list[dict]) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["iteration"], []).append(row)
    return dict(sorted(grouped.items()))


def cell_table(cells: list[dict]) -> str:
    lines = [
        "| cell | iteration | seeds | exact match, no principle | signal accuracy | inverted | "
        "correct y+ / y− / y_o | e^ā(y+) | e^ā(y−) | length y+ / y− / y_o | W mean | W std across samples | W q05 / q50 / q95 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        for iteration, group in by_iteration(cell["rows"]).items():
            if iteration == 0:
                lines.append(
                    f"| {cell['label']} | 0 (SFT) | {len(group)} | {fmt([r['exact_match'] for r in group])} |"
                    + " |" * 9
                )
                continue
            w = [r["weight_epoch0"] for r in group]
            if all(x["q05"] == x["q95"] == 1.0 for x in w):  # PBAA, w/o W: W = 1, not applied
                w_text = "not applied | | "
            else:
                w_text = (
                    f"{fmt([x['mean'] for x in w], 1, 3)} | {fmt([x['std'] for x in w], 1, 3)} | "
                    + " / ".join(f"{statistics.fmean(x[q] for x in w):.3f}" for q in ("q05", "q50", "q95"))
                )
            lines.append(
                f"| {cell['label']} | {iteration} | {len(group)} | {fmt([r['exact_match'] for r in group])} | "
                f"{fmt([r['signal_accuracy'] for r in group])} | {fmt([r['signal_inverted'] for r in group])} | "
                + " / ".join(
                    fmt([r[f"correct_{k}"] for r in group], 100, 0)
                    for k in ("chosen", "rejected", "original")
                )
                + " | "
                f"{fmt([r['on_policy_chosen'] for r in group], 1, 3)} | {fmt([r['on_policy_rejected'] for r in group], 1, 3)} | "
                f"{fmt([r['length_chosen'] for r in group], 1)} / {fmt([r['length_rejected'] for r in group], 1)} / "
                f"{fmt([r['length_original'] for r in group], 1)} | {w_text} |"
            )
    return "\n".join(lines)


def summary_table(cells: list[dict]) -> str:
    """Per cell: signal accuracy and exact match averaged over iterations and at the last one, and
    the difference to PBAA at the same temperature (seed by seed, then mean ± sd)."""
    pbaa = {c["cell"]["temperature"]: c for c in cells if c["cell"]["variant"] == "pbaa"}
    lines = [
        "| cell | iterations | signal accuracy, mean over iterations | − PBAA | signal accuracy, last | − PBAA | "
        "exact match, mean over iterations | − PBAA | exact match, last | − PBAA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def per_seed(cell: dict, key: str, last: bool) -> dict[int, float]:
        out: dict[int, float] = {}
        for seed in {r["seed"] for r in cell["rows"]}:
            rows = sorted(
                (r for r in cell["rows"] if r["seed"] == seed and r["iteration"] > 0),
                key=lambda r: r["iteration"],
            )
            if rows:
                out[seed] = rows[-1][key] if last else statistics.fmean(r[key] for r in rows)
        return out

    for cell in cells:
        base = pbaa.get(cell["cell"]["temperature"])
        texts = []
        for key, last in (
            ("signal_accuracy", False),
            ("signal_accuracy", True),
            ("exact_match", False),
            ("exact_match", True),
        ):
            mine = per_seed(cell, key, last)
            texts.append(fmt(list(mine.values())))
            if base is None or base is cell:
                texts.append("")
            else:
                theirs = per_seed(base, key, last)
                texts.append(fmt([mine[s] - theirs[s] for s in mine if s in theirs]))
        iterations = max((r["iteration"] for r in cell["rows"]), default=0)
        lines.append(f"| {cell['label']} | {iterations} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def difference_table(cells: list[dict]) -> str:
    """Per cell (not PBAA) and iteration: signal accuracy and exact match minus PBAA's at the same
    temperature, seed by seed (same seed: same π_0 and iteration-1 samples), then mean ± sd."""
    pbaa = {c["cell"]["temperature"]: c for c in cells if c["cell"]["variant"] == "pbaa"}
    lines = [
        "| cell | iteration | seeds | signal accuracy − PBAA | exact match − PBAA |",
        "|---|---|---|---|---|",
    ]
    for cell in cells:
        base = pbaa.get(cell["cell"]["temperature"])
        if base is None or base is cell:
            continue
        theirs = {(r["seed"], r["iteration"]): r for r in base["rows"]}
        for i, group in by_iteration(cell["rows"]).items():
            pairs = [(r, theirs[(r["seed"], i)]) for r in group if i > 0 and (r["seed"], i) in theirs]
            if pairs:
                lines.append(
                    f"| {cell['label']} | {i} | {len(pairs)} | "
                    + " | ".join(
                        fmt([a[k] - b[k] for a, b in pairs]) for k in ("signal_accuracy", "exact_match")
                    )
                    + " |"
                )
    return "\n".join(lines)


def mechanism_table(cells: list[dict]) -> str:
    """Per SSO cell and iteration: the gradient shares of W and G at the iteration's start (seed 0,
    :func:`gradient_shares`) and G's share of the loss over the iteration's training steps,
    γ·G / (γ·G + L_base) from the step means (all seeds; W multiplies both and cancels)."""
    lines = [
        "| cell | iteration | gradient share through W (seed 0) | gradient share through G (seed 0) | "
        "cos(∇L, ∇L with W detached) | G's share of the loss during training (seeds) |",
        "|---|---|---|---|---|---|",
    ]
    for cell in cells:
        if cell["cell"]["variant"] in ("pbaa", "wo_g"):
            continue
        gamma = cell["cell"]["gamma"]
        probe = (cell.get("gradients") or {}).get("0", {})
        for i, group in by_iteration(cell["rows"]).items():
            if i == 0:
                continue
            shares = [gamma * r["train_g"] / (gamma * r["train_g"] + r["train_base_loss"]) for r in group]
            p = probe.get(str(i))
            grad = (
                f"{p['w_grad_share']:.3f} | {p['g_grad_share']:.3f} | {p['cos_full_detached']:.4f}"
                if p
                else " | | "
            )
            lines.append(f"| {cell['label']} | {i} | {grad} | {fmt(shares, 1, 3)} |")
    return "\n".join(lines)


def plot(cells: list[dict], path: Path) -> Path:
    plt = pyplot()
    panels = (
        ("signal_accuracy", "signal accuracy of (y+, y−)", 100.0),
        ("exact_match", "held-out exact match, no principle", 100.0),
        ("on_policy_chosen", "e^ā(y+)", 1.0),
        ("w_std", "W: std across samples (epoch 1)", 1.0),
    )
    groups = [g for g in ("gamma", "temperature", "weight") if any(c["cell"]["group"] == g for c in cells)]
    fig, axes = plt.subplots(
        len(groups), len(panels), figsize=(4.2 * len(panels), 3.3 * len(groups)), squeeze=False
    )
    for row_axes, group in zip(axes, groups, strict=True):
        members = [c for c in cells if c["cell"]["group"] == group]
        if group == "weight":  # compared with SSO and PBAA at the same temperature
            temps = {c["cell"]["temperature"] for c in members}
            members = [
                c
                for c in cells
                if c["cell"]["temperature"] in temps
                and c["cell"]["variant"] in ("sso", "pbaa")
                and c["cell"]["gamma"] == 0.1
            ] + members
        for ax, (key, title, scale) in zip(row_axes, panels, strict=True):
            for cell in members:
                grouped = by_iteration(cell["rows"])
                its = [i for i in grouped if (key == "exact_match" or i > 0)]
                value = (lambda r: r["weight_epoch0"]["std"]) if key == "w_std" else (lambda r, k=key: r[k])
                means = [scale * statistics.fmean(value(r) for r in grouped[i]) for i in its]
                sds = [
                    scale * (statistics.stdev([value(r) for r in grouped[i]]) if len(grouped[i]) > 1 else 0.0)
                    for i in its
                ]
                ax.errorbar(its, means, yerr=sds, marker="o", capsize=2, label=cell["label"])
            ax.set(title=f"{title} [{group}]", xlabel="iteration")
        row_axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weights(cells: list[dict], path: Path) -> Path:
    """W's per-sample distribution (epoch 1, pooled over seeds) per iteration: median and 5–95 % band."""
    plt = pyplot()
    members = [
        c for c in cells if c["cell"]["variant"] in ("sso", "detach", "w_prime") and c["cell"]["gamma"] == 0.1
    ]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for k, cell in enumerate(members):
        grouped = by_iteration(cell["rows"])
        its = [i for i in grouped if i > 0]
        shift = (k - len(members) / 2) * 0.06
        for q, style in (("q50", "o-"),):
            ax.plot(
                [i + shift for i in its],
                [statistics.fmean(r["weight_epoch0"][q] for r in grouped[i]) for i in its],
                style,
                label=cell["label"],
            )
        ax.vlines(
            [i + shift for i in its],
            [statistics.fmean(r["weight_epoch0"]["q05"] for r in grouped[i]) for i in its],
            [statistics.fmean(r["weight_epoch0"]["q95"] for r in grouped[i]) for i in its],
            colors=ax.lines[-1].get_color(),
        )
    ax.set(title="W per sample (first epoch): median, 5–95 % range", xlabel="iteration", ylabel="W")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=HERE / "outputs", help="output folder")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where tables and plots go")
    parser.add_argument("--report-only", action="store_true", help="no new runs: tables and plots from --out")
    parser.add_argument(
        "--cells", nargs="*", default=None, help="run only these cells, in this order (names as in the grid)"
    )
    parser.add_argument(
        "--deadline",
        default=None,
        help="UTC time HH:MM after which no new cell starts (the report is written)",
    )
    parser.add_argument(
        "--probe-deadline", default=None, help="UTC time HH:MM after which no new gradient probe starts"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="committed results.json to add cells to: its cells that have no finished pipelines in --out "
        "(their outputs gone) are kept as they are, and the new cells are checked against them",
    )
    parser.add_argument(
        "--rerun-check",
        default=None,
        metavar="CELL",
        help="rerun seed 0 of this committed cell (of --merge) and compare every figure with its committed rows",
    )
    return parser.parse_args(argv)


def past(deadline: str | None) -> bool:
    if not deadline:
        return False
    now = time.gmtime()
    hour, minute = (int(v) for v in deadline.split(":"))
    return (now.tm_hour, now.tm_min) >= (hour, minute)


# The SSO cells whose gradients are probed (seed 0, iterations PROBED_ITERATIONS): the γ sweep but
# γ 1 (run before γ 0.5 was added here; its outputs are gone), off-policy samples (T 1.3 and 1.0)
# and W′ (W detached and W′ detached train from the same π_0 and samples as SSO and W′, and the
# probe measures the gradient with W's, so their first probes would repeat those).
PROBED = (
    "sso_t0.7_p0.8_g0.1_k3",
    "sso_t0.7_p0.8_g2_k3",
    "sso_t1.3_p0.8_g0.1_k5",
    "w_prime_t1.3_p0.8_g0.1_k5",
    "sso_t0.7_p0.8_g0.5_k3",
    "sso_t1_p0.8_g0.1_k3",
)
PROBED_ITERATIONS = (1, 3)


def probe_gradients(
    out: Path, cell: Cell, seeds: tuple[int, ...], deadline: str | None = None
) -> dict[str, dict[str, dict]]:
    """:func:`gradient_shares` for iterations :data:`PROBED_ITERATIONS` of the given seeds of an SSO
    cell (cached in ``<out>/gradients/<cell>.json``; none started after ``deadline``)."""
    cache = out / "gradients" / f"{cell.name}.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    for seed in seeds:
        folder = work_dir(out, cell, seed)
        if not (folder / "report.json").exists():
            continue
        for i in PROBED_ITERATIONS:
            if i > cell.iterations or str(i) in done.get(str(seed), {}) or past(deadline):
                continue
            log.info("gradient shares: %s seed %d iteration %d", cell.name, seed, i)
            done.setdefault(str(seed), {})[str(i)] = gradient_shares(folder / f"iter_{i}" / "train")
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(done, indent=2))
    return done


# -- adding cells to committed results ------------------------------------------------------------
# Iteration 1's figures that depend only on the data, π_0, the seed, the temperature and the number
# of iterations (they describe the samples, drawn from π_0), not on the variant: equal across the
# variants of one temperature when the data and π_0 are the same.
SAMPLE_KEYS = (
    "signal_accuracy",
    "signal_inverted",
    "correct_chosen",
    "correct_rejected",
    "correct_original",
    "length_chosen",
    "length_rejected",
    "length_original",
    "samples",
)
RERUN_SEED = 0


def merge_cells(measured: list[dict], committed: list[dict]) -> list[dict]:
    """The cells measured from ``--out`` and the committed ones not measured again (their outputs
    gone; marked ``"source": "committed"``), in the grid's order."""
    names = {c["name"] for c in measured}
    kept = [c | {"source": "committed"} for c in committed if c["name"] not in names]
    order = {cell.name: k for k, cell in enumerate(GRID)}
    return sorted(measured + kept, key=lambda c: order.get(c["name"], len(order)))


def same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9


def sample_check(measured: list[dict], committed: list[dict]) -> list[dict]:
    """For every measured cell and every committed cell at the same temperature, top-p and number
    of iterations, per seed of both: whether π_0's held-out exact match (iteration 0) and
    iteration 1's :data:`SAMPLE_KEYS` are equal, and which differ."""
    checks = []
    for new in measured:
        for old in committed:
            if old["name"] == new["name"] or any(
                new["cell"][k] != old["cell"][k] for k in ("temperature", "top_p", "iterations")
            ):
                continue
            for seed in sorted({r["seed"] for r in new["rows"]} & {r["seed"] for r in old["rows"]}):
                a = {r["iteration"]: r for r in new["rows"] if r["seed"] == seed}
                b = {r["iteration"]: r for r in old["rows"] if r["seed"] == seed}
                differ = [] if same(a[0]["exact_match"], b[0]["exact_match"]) else ["exact_match (π_0)"]
                differ += [k for k in SAMPLE_KEYS if 1 in a and 1 in b and not same(a[1][k], b[1][k])]
                checks.append({"cell": new["name"], "against": old["name"], "seed": seed, "differ": differ})
    return checks


def flat_figures(row: dict) -> dict[str, float]:
    """A row's numbers, W's distributions flattened (``weight_epoch0/mean``...)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": float(v) for k, v in value.items()})
        elif key not in ("seed", "iteration"):
            out[key] = float(value)
    return out


def rerun_comparison(rerun_rows: list[dict], committed_rows: list[dict]) -> dict:
    """Every figure of the rerun's rows next to the committed rows of the same seed and iteration:
    ``{iteration: {figure: [rerun, committed]}}`` and the largest absolute difference per figure."""
    committed = {(r["seed"], r["iteration"]): flat_figures(r) for r in committed_rows}
    per_iteration: dict[str, dict[str, list[float]]] = {}
    largest: dict[str, float] = {}
    for row in rerun_rows:
        theirs = committed.get((row["seed"], row["iteration"]))
        if theirs is None:
            continue
        pairs = {k: [v, theirs[k]] for k, v in flat_figures(row).items() if k in theirs}
        per_iteration[str(row["iteration"])] = pairs
        for k, (a, b) in pairs.items():
            if a == a and b == b:  # NaN (a figure PBAA does not have) on both sides is no difference
                largest[k] = max(largest.get(k, 0.0), abs(a - b))
    return {"iterations": per_iteration, "max_abs_diff": largest}


def rerun_check(out: Path, cell: Cell, committed: list[dict], start: bool) -> dict | None:
    """Reruns seed :data:`RERUN_SEED` of a committed cell (work folder ``<cell>_rerun_seed0``, all its
    iterations) on the regenerated data and π_0 unless done before (``start``: whether it may run
    now; ``None`` when not done) and compares its figures with the committed rows."""
    entry = next((c for c in committed if c["name"] == cell.name), None)
    if entry is None:
        raise SystemExit(f"--rerun-check {cell.name}: no such cell in the committed results")
    name = f"{cell.name}_rerun_seed{RERUN_SEED}"
    folder = out / "logs" / "sso_mechanisms" / name
    if not (folder / "report.json").exists():
        if not start:
            log.info("rerun check of %s not run (deadline passed or --report-only)", cell.name)
            return None
        single = Cell(**(cell.__dict__ | {"seeds": (RERUN_SEED,)}))
        app_stage(out, f"cells/{name}", "prefalign.apps.sso", single.overrides(run_name=name))
    rows = cell_rows(out, cell, folders={RERUN_SEED: folder})
    committed_rows = [r for r in entry["rows"] if r["seed"] == RERUN_SEED]
    return {"cell": cell.name, "seed": RERUN_SEED} | rerun_comparison(rows, committed_rows)


def reproducibility_markdown(check: dict) -> str:
    """The checks that the regenerated data and π_0 are the committed cells' (their outputs gone)."""
    lines = ["## Reproducibility: are the new cells' data and π_0 the committed cells'?", ""]
    policy, before = check.get("policy") or {}, check.get("committed_policy") or {}
    if policy and before:
        equal = all(same(policy[k], before.get(k, float("nan"))) for k in policy)
        lines.append(
            "- π_0's exact match per condition (300 records), regenerated / committed: "
            + ", ".join(
                f"{k} {100 * policy[k]:.2f} / {100 * before.get(k, float('nan')):.2f}" for k in policy
            )
            + (" (identical)" if equal else " (**different**)")
        )
    samples = check.get("samples") or []
    if samples:
        bad = [c for c in samples if c["differ"]]
        lines.append(
            f"- π_0's held-out exact match and iteration 1's samples (signal accuracy, inverted rate, how "
            f"often y+ / y− / y_o are correct, lengths; the same for every variant at one temperature): "
            f"{len(samples) - len(bad)} of {len(samples)} (new cell, committed cell, seed) comparisons "
            "identical"
            + (
                "; **different**: "
                + "; ".join(
                    f"{c['cell']} vs {c['against']} seed {c['seed']}: {', '.join(c['differ'])}" for c in bad
                )
                if bad
                else ""
            )
        )
    rerun = check.get("rerun")
    if rerun:
        diffs = rerun["max_abs_diff"]
        lines.append(
            f"- rerun of {rerun['cell']} seed {rerun['seed']} (iterations {min(rerun['iterations'])}–"
            f"{max(rerun['iterations'])}, every figure of its rows): largest absolute difference to the committed rows "
            f"{max(diffs.values(), default=float('nan')):.3g}"
            + (
                " ("
                + ", ".join(f"{k} {v:.3g}" for k, v in sorted(diffs.items(), key=lambda kv: -kv[1])[:4])
                + ")"
                if any(diffs.values())
                else ""
            )
        )
        lines += [
            "",
            "| iteration | exact match, rerun / committed | signal accuracy | e^ā(y+) | W mean (epoch 1) |",
            "|---|---|---|---|---|",
        ]
        for i, figures in rerun["iterations"].items():
            cells = [
                " / ".join(f"{v:.4f}" for v in figures[k]) if k in figures else ""
                for k in ("exact_match", "signal_accuracy", "on_policy_chosen", "weight_epoch0/mean")
            ]
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # read before anything is written: the results folder is usually where it lives
    committed = json.loads(args.merge.read_text()) if args.merge else {}
    # one thread per process: on shared cores, torch's default thread pool spin-waits (measured 17x slower)
    out = start(args.out, one_thread=True)
    os.environ.setdefault("WANDB_MODE", "offline")  # even with an API key: the cells' runs stay local
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    started = time.perf_counter()
    timings: dict[str, Any] = {}
    by_name = {cell.name: cell for cell in GRID}
    unknown = [
        name
        for name in [*(args.cells or ()), *[args.rerun_check] * bool(args.rerun_check)]
        if name not in by_name
    ]
    if unknown:
        raise SystemExit(f"unknown cell(s) {unknown}; the grid's cells: {list(by_name)}")
    if args.rerun_check and not args.merge:
        raise SystemExit("--rerun-check compares with committed rows: give --merge <results.json>")
    rerun = None
    if args.rerun_check and args.report_only:  # a rerun done by an earlier call
        rerun = rerun_check(out, by_name[args.rerun_check], committed["cells"], start=False)
    if not args.report_only:
        timings.update(prepare(out))
        if args.rerun_check:
            rerun = rerun_check(out, by_name[args.rerun_check], committed["cells"], not past(args.deadline))
        for cell in [by_name[name] for name in args.cells] if args.cells else GRID:
            if past(args.deadline) and not finished(out, cell):
                log.info("deadline %s passed: cell %s not started", args.deadline, cell.name)
                continue
            seconds = run_cell(out, cell)
            if seconds is not None:
                timings[cell.name] = seconds
    import torch

    torch.set_num_threads(1)
    measured = []
    for cell in GRID:
        rows = cell_rows(out, cell)
        if not rows:
            continue
        entry = {
            "name": cell.name,
            "label": label(cell),
            "cell": cell.__dict__ | {"seeds": list(cell.seeds)},
            "rows": rows,
            "source": "outputs",
        }
        if cell.name in PROBED and not args.report_only and not past(args.probe_deadline):
            entry["gradients"] = probe_gradients(out, cell, cell.seeds[:1], args.probe_deadline)
        elif (out / "gradients" / f"{cell.name}.json").exists():
            entry["gradients"] = json.loads((out / "gradients" / f"{cell.name}.json").read_text())
        measured.append(entry)
    names = {c["name"] for c in measured}
    old_cells = [c for c in committed.get("cells", []) if c["name"] not in names]
    cells = merge_cells(measured, old_cells)
    missing = [cell.name for cell in GRID if cell.name not in {c["name"] for c in cells}]
    has_policy = (out / "runs" / "policy").exists()
    policy = policy_results(out) if has_policy else committed["policy"]
    reproducibility = committed.get("reproducibility", {})
    if measured and old_cells:  # new cells beside committed ones: are their data and π_0 the same?
        reproducibility = {
            "policy": policy if has_policy else None,
            # the first merge's committed π_0 (a later merge's file holds the regenerated one)
            "committed_policy": reproducibility.get("committed_policy", committed["policy"]),
            "samples": sample_check(measured, old_cells),
            "rerun": rerun or reproducibility.get("rerun"),
        }
    sections = [
        "Starting policy (exact match): " + ", ".join(f"{k} {100 * v:.1f}" for k, v in policy.items()),
        "## Summary per cell (seed by seed differences to PBAA at the same temperature; %)\n\n"
        + summary_table(cells),
        "## Differences to PBAA per iteration (seed by seed, then mean ± sd; %)\n\n"
        + difference_table(cells),
        "## Is the mechanism active? (gradient shares: seed 0, at the start of each iteration, π = π_{i−1})\n\n"
        + mechanism_table(cells),
        "## Per iteration (W: first-epoch distribution across the iteration's samples, seed means)\n\n"
        + cell_table(cells),
    ]
    if old_cells:
        sections.insert(
            1,
            "Cells from the committed results (their pipelines' outputs are gone): "
            + ", ".join(c["name"] for c in old_cells)
            + "; measured in this run's outputs: "
            + (", ".join(c["name"] for c in measured) or "none"),
        )
    if reproducibility:
        sections.insert(2, reproducibility_markdown(reproducibility))
    if missing:
        sections.append("Cells not run (no finished seed): " + ", ".join(missing))
    args.results.mkdir(parents=True, exist_ok=True)
    plots = [
        str(plot(cells, args.results / "sso_mechanisms.png")),
        str(plot_weights(cells, args.results / "weights.png")),
    ]
    results = {
        "cells": cells,
        "missing_cells": missing,
        "policy": policy,
        "reproducibility": reproducibility,
        "plots": plots,
        # each stage's and cell's wall time when it last ran (the committed ones' from --merge)
        "timings_s": {**committed.get("timings_s", {}), **timings},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    text = "\n\n".join(sections) + "\n"
    (args.results / "results.md").write_text(text)
    (args.results / "results.json").write_text(json.dumps(results, indent=2))
    print(text)
    return results


if __name__ == "__main__":
    main()
