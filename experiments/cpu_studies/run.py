"""CPU-scale studies of PoFT and SSO on the verifiable instruction world, with the project's own apps.

Everything runs through the same Hydra apps and configs as the papers' runs; this script only
generates the data, calls the apps with overrides, and reads their outputs back:

1. **Data** (``prefalign.worlds.verifiable``): the verifiable world (string tasks whose answers are
   checked exactly) and its principle-conditioned variant plus the SSO prompt set.
2. **Aligned LLMs**: ``prefalign-train -m experiment=cpu_world_aligned
   aligned_member=zephyr_bytes,llama3_bpe`` — two tiny models trained with CE on the clean world,
   one with a different tokenizer (BPE) and both with other chat templates than the target.
3. **PoFT study** (PoFT paper §4.3, Figures 3d/3e, 5): ``prefalign-train -m
   experiment=cpu_world_poft objective=ce,poft,bi_poft seed=... data.noise.num_samples=...`` — the
   world mixed with hand-crafted noise at two rates, scored by the aligned pair, held-out exact
   match after every epoch.
4. **SSO study** (SSO paper Table 1, Table 5, Figure 4): ``prefalign-train
   experiment=cpu_world_policy`` (a policy that answers correctly under the good principle and
   wrongly under the bad one), then ``prefalign-sso -m sso_experiment=cpu_world_sso
   variant=sso,pbaa,...`` — three iterations each, with the rule judge for signal accuracy and
   held-out exact match without a principle.
5. **Report**: the tables (printed, and in ``results.md`` / ``results.json``) and the plots.

    python experiments/cpu_studies/run.py                 # quick: 7 min 39 s measured on 2 idle CPU cores
    python experiments/cpu_studies/run.py --size full     # the committed results (results/): 48 min

Stages whose outputs exist are skipped, so an interrupted run resumes (``--fresh`` starts over).
While an app runs, its progress is logged as it goes (at every epoch, at least once a minute): the
training runs done out of the stage's total, the current run's epoch and metric (from its
``metrics.csv``), the time elapsed and an estimate of the time left, e.g.
``poft: 1/3 runs done, epoch 4/6, val/exact_match 0.470 | 1m40s elapsed, about 2m30s left``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefalign.studies import verifiable
from prefalign.studies.runner import (
    app_stage,
    common_overrides,
    fmt,
    job_overrides,
    joined,
    pyplot,
    stage,
    start,
    wandb_runs,
)
from prefalign.studies.verifiable import base_overrides, policy_results, pretrained_target_overrides

HERE = Path(__file__).resolve().parent
# The task families of the studies: tasks a 2-layer model learns in a few CPU minutes (see README).
OBJECTIVES = ("ce", "poft", "bi_poft")
VARIANT_NAMES = {
    "sso": "SSO",
    "w_prime": "SSO with W′",
    "pbaa": "PBAA (no W, no G)",
    "wo_w": "SSO w/o W",
    "wo_g": "SSO w/o G",
}


@dataclass(frozen=True)
class Size:
    """How big each study is.

    Attributes:
        world_train / test: clean training conversations of the world and held-out test records.
        noise: hand-crafted noise samples mixed into the PoFT study's training split (one or more rates).
        seeds: training seeds of every (objective, noise) cell of the PoFT study.
        epochs / aligned_epochs: PoFT-study and aligned-model epochs.
        objectives: the PoFT study's objectives.
        batch: batch size of the aligned models, the pretrained target and the PoFT study's runs.
        base_epochs: 0: the PoFT study's targets start from a fresh tiny model; n > 0: they start
            from a pretrained target, the tiny model trained with CE on the clean world for n
            epochs first (the paper fine-tunes pretrained models; experiments/poft_mechanisms
            part 3 found PoFT's lead over CE widening over epochs from such a start).
        poft_clean: clean conversations of the PoFT study's training split: the world's first n
            (None: all ``world_train``; the aligned models always learn from all of them).
        policy_train / policy_epochs: the SSO study's principle-conditioned SFT.
        sso_prompts: prompts of the SSO prompt set (split into the three iterations).
        sso_variants / sso_seeds: the Table 5 rows run, and their pipeline seeds.
        sso_iterations: SSO iterations per pipeline (None: the experiment's, 3).
    """

    world_train: int
    test: int
    noise: tuple[int, ...]
    seeds: tuple[int, ...]
    epochs: int
    aligned_epochs: int
    objectives: tuple[str, ...]
    batch: int
    base_epochs: int
    poft_clean: int | None
    policy_train: int
    policy_epochs: int
    sso_prompts: int
    sso_variants: tuple[str, ...]
    sso_seeds: tuple[int, ...]
    sso_iterations: int | None = None


SIZES = {
    # The default test suite's size (tests/experiments/test_cpu_studies.py): every stage, app and
    # reader of the studies at the smallest shape that still runs them all (under a minute); what
    # the studies find is checked at "ci".
    "smoke": Size(
        world_train=120,
        test=12,
        noise=(60,),
        seeds=(1,),
        epochs=2,
        aligned_epochs=1,
        objectives=("ce", "poft"),
        batch=16,
        base_epochs=0,
        poft_clean=None,
        policy_train=120,
        policy_epochs=1,
        sso_prompts=4,
        sso_variants=("sso",),
        sso_seeds=(0,),
        sso_iterations=1,
    ),
    # The slow suite's size (tests/experiments/test_cpu_studies.py, marked slow): a few minutes,
    # with the outcomes the full studies establish.
    "ci": Size(
        world_train=2000,
        test=100,
        noise=(1000,),
        seeds=(1,),
        epochs=6,
        aligned_epochs=5,
        objectives=OBJECTIVES,
        batch=16,
        base_epochs=0,
        poft_clean=None,
        policy_train=2000,
        # 12 epochs left the ci policy unable to follow the good principle (signal accuracy 10% vs
        # 12% inverted once every epoch reshuffles); at 20 it follows it (22% vs 6%), as at full size
        policy_epochs=20,
        sso_prompts=150,
        sso_variants=("sso", "pbaa"),
        sso_seeds=(0,),
    ),
    # The README's main job: the strongest effect each mechanism study found, three seeds each.
    # PoFT: experiments/poft_mechanisms part 3 (pretrained target, 400 clean + 750 noise, 15
    # epochs, batch 32: PoFT 68.7 ± 6.8 vs CE 44.2 ± 8.4 at the end, ahead in every seed).
    # SSO: experiments/sso_mechanisms (W′ at temperature 0.7: +10.0 ± 3.3 points of no-principle
    # exact match over PBAA at iteration 3, seed-paired).
    "quick": Size(
        world_train=3000,
        test=200,
        noise=(750,),
        seeds=(1, 2, 3),
        epochs=15,
        aligned_epochs=8,
        objectives=("ce", "poft"),
        batch=32,
        base_epochs=4,
        poft_clean=400,
        policy_train=3000,
        policy_epochs=16,
        sso_prompts=300,
        sso_variants=("w_prime", "pbaa"),
        sso_seeds=(0, 1, 2),
    ),
    "full": Size(
        world_train=3000,
        test=300,
        noise=(750, 1500),
        seeds=(1, 2, 3),
        epochs=10,
        aligned_epochs=10,
        objectives=OBJECTIVES,
        batch=16,
        base_epochs=0,
        poft_clean=None,
        policy_train=3000,
        policy_epochs=16,
        sso_prompts=450,
        sso_variants=("sso", "pbaa", "wo_w", "wo_g"),
        sso_seeds=(0, 1, 2),
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="quick", help="study size")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: outputs/<size>)")
    parser.add_argument("--only", choices=("poft", "sso"), default=None, help="run one study only")
    parser.add_argument("--fresh", action="store_true", help="delete the output folder first")
    return parser.parse_args(argv)


# -- stages ------------------------------------------------------------------------------------------
def make_data(out: Path, size: Size) -> dict:
    return verifiable.make_data(
        out, size.world_train, size.test, size.policy_train, size.sso_prompts, size.poft_clean
    )


def poft_data_overrides(out: Path, size: Size, noise: int | str) -> list[str]:
    """The PoFT study's training data: its clean conversations (the world's training split unless
    ``size.poft_clean`` is set) and ``noise`` noise samples."""
    subset = (
        [f"data.train.path={verifiable.poft_train_path(out, size.poft_clean)}"]
        if size.poft_clean is not None
        else []
    )
    return [*subset, f"data.noise.num_samples={noise}"]


def train_aligned(out: Path, size: Size) -> dict:
    overrides = [
        "experiment=cpu_world_aligned",
        "aligned_member=zephyr_bytes,llama3_bpe",
        f"trainer.max_epochs={size.aligned_epochs}",
        f"data.batch_size={size.batch}",
    ]
    return app_stage(out, "aligned", "prefalign.apps.train", overrides, runs=2, epochs=size.aligned_epochs)


def train_base(out: Path, size: Size) -> dict:
    """The pretrained target (``size.base_epochs`` > 0), see :func:`base_overrides`."""
    overrides = base_overrides(size.batch, size.base_epochs)
    return app_stage(out, "base", "prefalign.apps.train", overrides, multirun=False, epochs=size.base_epochs)


def train_poft_grid(out: Path, size: Size) -> dict:
    overrides = [
        "experiment=cpu_world_poft",
        f"objective={joined(size.objectives)}",
        *poft_data_overrides(out, size, joined(size.noise)),
        f"seed={joined(size.seeds)}",
        f"trainer.max_epochs={size.epochs}",
        f"data.batch_size={size.batch}",
        "aligned.score_missing=true",  # the first run of each noise rate scores it; the rest reuse the cache
    ]
    if size.base_epochs:
        overrides += pretrained_target_overrides(out)
    runs = len(size.objectives) * len(size.noise) * len(size.seeds)
    return app_stage(out, "poft", "prefalign.apps.train", overrides, runs=runs, epochs=size.epochs)


def sso_shape() -> tuple[int, int]:
    """(iterations, epochs per iteration) of ``sso_experiment=cpu_world_sso``: one training run per iteration."""
    import yaml

    from prefalign.config import config_dir

    cfg = yaml.safe_load((Path(config_dir()) / "sso_experiment" / "cpu_world_sso.yaml").read_text())
    return int(cfg["iterations"]), int(cfg["iteration_epochs"])


def run_sso(out: Path, size: Size) -> dict:
    overrides = [
        "sso_experiment=cpu_world_sso",
        f"variant={joined(size.sso_variants)}",
        f"seed={joined(size.sso_seeds)}",
    ]
    iterations, epochs = sso_shape()
    if size.sso_iterations is not None:
        iterations = size.sso_iterations
        overrides.append(f"iterations={iterations}")
    runs = len(size.sso_variants) * len(size.sso_seeds) * iterations
    metrics_dir = out / "logs" / "cpu_world_sso"  # the pipelines' iteration folders
    return app_stage(
        out, "sso", "prefalign.apps.sso", overrides, runs=runs, epochs=epochs, metrics_dir=metrics_dir
    )


# -- reading results ---------------------------------------------------------------------------------
def poft_results(out: Path) -> dict:
    """Per (noise, objective, seed): exact match per epoch, Last / Avg / Std (PoFT paper Table 1)."""
    from prefalign.analysis import load_run_metrics
    from prefalign.evaluation.aggregate import aggregate_epochs

    runs = []
    for run_dir in sorted((out / "runs" / "poft").glob("[0-9]*"), key=lambda p: int(p.name)):
        keys = job_overrides(run_dir)
        metrics = load_run_metrics(run_dir)
        evals = metrics.dropna(subset=["val/exact_match"])
        per_epoch = {
            int(e): {"exact_match": float(v)}
            for e, v in zip(evals["epoch"], evals["val/exact_match"], strict=True)
        }
        summary = aggregate_epochs(per_epoch)
        tau = {}
        for subset in ("clean", "noise"):
            column = f"train/tau_{subset}"
            if column in metrics:
                rows = metrics.dropna(subset=[column])
                tau[subset] = {"step": rows["step"].tolist(), "tau": rows[column].tolist()}
        runs.append(
            {
                "run_dir": str(run_dir),
                "objective": keys["objective"],
                "noise": int(keys["data.noise.num_samples"]),
                "seed": int(keys["seed"]),
                "exact_match": [per_epoch[e]["exact_match"] for e in sorted(per_epoch)],
                "last": summary.last["exact_match"],
                "avg": summary.avg["exact_match"],
                "std": summary.std["exact_match"],
                "tau": tau,
            }
        )
    if not runs:
        raise SystemExit(f"no PoFT-study runs under {out / 'runs' / 'poft'}")
    return {"runs": runs, "table": poft_table(runs), "gaps": poft_gaps(runs)}


def cells(runs: list[dict]) -> dict[tuple[int, str], list[dict]]:
    grouped: dict[tuple[int, str], list[dict]] = {}
    for run in runs:
        grouped.setdefault((run["noise"], run["objective"]), []).append(run)
    return dict(sorted(grouped.items(), key=lambda kv: (kv[0][0], OBJECTIVES.index(kv[0][1]))))


def poft_table(runs: list[dict]) -> list[dict]:
    return [
        {
            "noise_samples": noise,
            "objective": objective,
            "seeds": len(group),
            "last": [r["last"] for r in group],
            "avg": [r["avg"] for r in group],
            "std": [r["std"] for r in group],
        }
        for (noise, objective), group in cells(runs).items()
    ]


def poft_gaps(runs: list[dict]) -> list[dict]:
    """PoFT − CE exact match per epoch (seed means), and whether the gap widens in later epochs."""
    grouped = cells(runs)
    gaps = []
    for noise in sorted({n for n, _ in grouped}):
        if (noise, "ce") not in grouped or (noise, "poft") not in grouped:
            continue
        curve = {
            o: [
                statistics.fmean(e)
                for e in zip(*(r["exact_match"] for r in grouped[(noise, o)]), strict=True)
            ]
            for o in ("ce", "poft")
        }
        gap = [p - c for p, c in zip(curve["poft"], curve["ce"], strict=True)]
        half = len(gap) // 2
        gaps.append(
            {
                "noise_samples": noise,
                "gap_per_epoch": gap,
                "gap_first_half": statistics.fmean(gap[1:half]) if half > 1 else gap[0],
                "gap_second_half": statistics.fmean(gap[half:]),
            }
        )
    return gaps


def sso_results(out: Path) -> dict:
    """Per (variant, seed, iteration): held-out exact match, signal accuracy, lengths, on-policy measure."""
    from prefalign.analysis import load_sso_reports

    rows = []
    for work_dir in sorted((out / "logs" / "cpu_world_sso").iterdir()):
        variant, _, seed = work_dir.name.rpartition("_seed")
        reports = load_sso_reports(work_dir)
        first = reports.iloc[0]
        rows.append(
            {
                "variant": variant,
                "seed": int(seed),
                "iteration": 0,
                "exact_match": first["initial_heldout/exact_match"],
            }
        )
        for _, report in reports.iterrows():
            rows.append(
                {
                    "variant": variant,
                    "seed": int(seed),
                    "iteration": int(report["iteration"]),
                    "exact_match": float(report["heldout/exact_match"]),
                    "signal_accuracy": float(report["signal_accuracy"]),
                    "signal_inverted": float(report["signal_inverted"]),
                    "length_original": float(report["length/original"]),
                    "length_chosen": float(report["length/chosen"]),
                    "on_policy_chosen": float(report["train/on_policy/chosen"]),
                    "on_policy_rejected": float(report["train/on_policy/rejected"]),
                    "weight": float(report.get("train/weight", float("nan"))),
                }
            )
    if not rows:
        raise SystemExit(f"no SSO-study runs under {out / 'logs' / 'cpu_world_sso'}")
    return {"rows": rows}


# -- tables and plots --------------------------------------------------------------------------------
def poft_setting(size: Size) -> str:
    """One line saying where the PoFT study's targets start and what they train on."""
    start = (
        f"a target pretrained with CE on the {size.world_train} clean conversations ({size.base_epochs} epochs)"
        if size.base_epochs
        else "a fresh tiny model"
    )
    clean = size.poft_clean if size.poft_clean is not None else size.world_train
    noise = " or ".join(str(n) for n in size.noise)
    return (
        f"From {start}: {clean} clean conversations + {noise} noise samples, {size.epochs} epochs, "
        f"batch {size.batch}, exact match on {size.test} held-out records after every epoch."
    )


def poft_markdown(poft: dict) -> str:
    lines = [
        "| noise samples | objective | seeds | Last | Avg (epochs ≥ 2) | Std over epochs |",
        "|---|---|---|---|---|---|",
    ]
    for row in poft["table"]:
        lines.append(
            f"| {row['noise_samples']} | {row['objective']} | {row['seeds']} | {fmt(row['last'])} | "
            f"{fmt(row['avg'])} | {fmt(row['std'])} |"
        )
    lines += [
        "",
        "| noise samples | PoFT − CE per epoch (points) | early epochs | late epochs |",
        "|---|---|---|---|",
    ]
    for gap in poft["gaps"]:
        per_epoch = " ".join(f"{100 * g:+.1f}" for g in gap["gap_per_epoch"])
        lines.append(
            f"| {gap['noise_samples']} | {per_epoch} | {100 * gap['gap_first_half']:+.1f} | "
            f"{100 * gap['gap_second_half']:+.1f} |"
        )
    return "\n".join(lines)


def sso_markdown(sso: dict, policy: dict) -> str:
    lines = [
        "Starting policy (exact match): " + ", ".join(f"{k} {100 * v:.1f}" for k, v in policy.items()),
        "",
        "| variant | iteration | seeds | exact match, no principle | signal accuracy | inverted | "
        "length (tokens, y_o) | e^ā(y+) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    grouped: dict[tuple[str, int], list[dict]] = {}
    for row in sso["rows"]:
        grouped.setdefault((row["variant"], row["iteration"]), []).append(row)
    order = list(VARIANT_NAMES)
    for (variant, iteration), group in sorted(
        grouped.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])
    ):
        if iteration == 0:
            lines.append(
                f"| {VARIANT_NAMES[variant]} | 0 (SFT) | {len(group)} | {fmt([r['exact_match'] for r in group])} | | | | |"
            )
            continue
        lines.append(
            f"| {VARIANT_NAMES[variant]} | {iteration} | {len(group)} | {fmt([r['exact_match'] for r in group])} | "
            f"{fmt([r['signal_accuracy'] for r in group])} | {fmt([r['signal_inverted'] for r in group])} | "
            f"{fmt([r['length_original'] for r in group], 1.0)} | {fmt([r['on_policy_chosen'] for r in group], 1.0)} |"
        )
    return "\n".join(lines)


def plot_poft(out: Path, poft: dict, size: Size) -> list[Path]:
    plt = pyplot()
    from prefalign.analysis import aggregate_scores, compose_config, load_scores

    paths = []
    grouped = cells(poft["runs"])
    rates = sorted({n for n, _ in grouped})
    fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 3.6), sharey=True, squeeze=False)
    for ax, noise in zip(axes[0], rates, strict=True):
        for objective in OBJECTIVES:
            group = grouped.get((noise, objective))
            if not group:
                continue
            curves = list(zip(*(r["exact_match"] for r in group), strict=True))
            means = [statistics.fmean(c) for c in curves]
            sds = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in curves]
            epochs = range(1, len(means) + 1)
            ax.plot(epochs, means, marker="o", label=objective)
            ax.fill_between(
                epochs,
                [m - s for m, s in zip(means, sds, strict=True)],
                [m + s for m, s in zip(means, sds, strict=True)],
                alpha=0.2,
            )
        ax.set(title=f"{noise} noise samples", xlabel="epoch", ylabel="held-out exact match")
        ax.legend()
    fig.tight_layout()
    paths.append(out / "poft_exact_match.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 3.6), squeeze=False)
    for ax, noise in zip(axes[0], rates, strict=True):
        cfg = compose_config(
            "train",
            ["experiment=cpu_world_poft", *poft_data_overrides(out, size, noise), *common_overrides(out)],
        )
        long_table = load_scores(cfg, splits=["train"])
        scores = aggregate_scores(long_table, ["avg"])
        noise_flags = long_table.drop_duplicates("id").set_index("id")["noise"]
        scores["noise"] = scores["id"].map(noise_flags).astype(bool)
        for flag, label in ((False, "clean"), (True, "noise")):
            ax.hist(scores.loc[scores["noise"] == flag, "avg"], bins=60, alpha=0.6, label=label, log=True)
        ax.set(
            title=f"aligned avg score, {noise} noise samples",
            xlabel="r (mean log-prob)",
            ylabel="samples (log)",
        )
        ax.legend()
    fig.tight_layout()
    paths.append(out / "poft_aligned_scores.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (noise, objective), group in grouped.items():
        if objective != "poft" or not group[0]["tau"]:
            continue
        for subset, style in (("clean", "-"), ("noise", "--")):
            series = group[0]["tau"].get(subset)
            if series:
                ax.plot(
                    series["step"],
                    series["tau"],
                    style,
                    label=f"{noise} noise, {subset} (seed {group[0]['seed']})",
                )
    ax.set(title="PoFT τ = σ(r_agg − r_θ) over training", xlabel="step", ylabel="mean τ")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "poft_tau.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def plot_sso(out: Path, sso: dict) -> Path:
    plt = pyplot()
    panels = (
        ("exact_match", "held-out exact match (no principle)"),
        ("signal_accuracy", "signal accuracy of (y+, y−)"),
        ("length_original", "length of y_o (tokens)"),
        ("on_policy_chosen", "on-policy measure e^ā(y+)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for variant in VARIANT_NAMES:
            points: dict[int, list[float]] = {}
            for row in sso["rows"]:
                if row["variant"] == variant and key in row:
                    points.setdefault(row["iteration"], []).append(row[key])
            if points:
                its = sorted(points)
                ax.plot(
                    its, [statistics.fmean(points[i]) for i in its], marker="o", label=VARIANT_NAMES[variant]
                )
        ax.set(title=title, xlabel="iteration")
        ax.set_xticks(range(0, 4))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "sso_iterations.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- main ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    size = SIZES[args.size]
    out = start(args.out or HERE / "outputs" / args.size, fresh=args.fresh)
    started = time.perf_counter()
    timings = {"data": stage(out, "data", lambda: make_data(out, size))["seconds"]}
    results: dict[str, Any] = {"size": args.size, "settings": asdict(size), "out": str(out)}
    sections = []
    if args.only in (None, "poft"):
        timings["aligned"] = stage(out, "aligned", lambda: train_aligned(out, size))["seconds"]
        if size.base_epochs:
            timings["base"] = stage(out, "base", lambda: train_base(out, size))["seconds"]
        timings["poft"] = stage(out, "poft", lambda: train_poft_grid(out, size))["seconds"]
        poft = poft_results(out)
        results["poft"] = {k: v for k, v in poft.items() if k != "runs"} | {
            "runs": [{k: v for k, v in r.items() if k != "tau"} for r in poft["runs"]]
        }
        results["plots"] = [str(p) for p in plot_poft(out, poft, size)]
        sections.append(
            "## PoFT study: held-out exact match (%) under hand-crafted noise\n\n"
            + poft_setting(size)
            + "\n\n"
            + poft_markdown(poft)
        )
    if args.only in (None, "sso"):
        timings["policy"] = stage(out, "policy", lambda: verifiable.train_policy(out, size.policy_epochs))[
            "seconds"
        ]
        timings["sso"] = stage(out, "sso", lambda: run_sso(out, size))["seconds"]
        sso, policy = sso_results(out), policy_results(out)
        results["sso"] = sso | {"policy": policy}
        results.setdefault("plots", []).append(str(plot_sso(out, sso)))
        sections.append("## SSO study: per iteration\n\n" + sso_markdown(sso, policy))
    results["timings_s"] = timings
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["wandb_offline_runs"] = [str(p) for p in wandb_runs(out)]
    text = "\n\n".join(sections)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n" + text + "\n")
    print(f"stage wall times (s): {timings}; this invocation: {results['wall_s']} s")
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    print("plots: " + ", ".join(results.get("plots", [])))
    runs = results["wandb_offline_runs"]
    print(
        f"W&B offline runs: {len(runs)} under {out} (e.g. {runs[0] if runs else 'none'}); `wandb sync <dir>` uploads one"
    )
    return results


if __name__ == "__main__":
    main()
