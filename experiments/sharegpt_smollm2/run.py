"""Score English ShareGPT conversations with SmolLM2, plot the scores, then PoFT-train on them.

Offline, on a CPU, with the project's own apps and the `demo` extra's assets (see README.md here):

1. ``prefalign-score data=sharegpt_v3 aligned=smollm2``: SmolLM2-135M-Instruct (GGUF) scores the
   first ``--num-conversations`` English ShareGPT V3 conversations; scores are cached.
2. The cached scores are read back through the scoring engine's API (``find_cached_scores``,
   ``load_score_table``) and their distribution, the length-normalised log-likelihood
   r(x, y) = mean log p(response token), is plotted (a small PoFT paper Figure 2).
3. ``prefalign-train objective=poft aligned=smollm2 model=tiny``: a short PoFT fine-tune of a tiny
   ChatML model on the same conversations against the SmolLM2 scores.

Writes to ``--out``: ``score/`` and ``train/`` (the apps' run folders), ``scores_hist.png``,
``scores.json`` (id -> r) and ``summary.json`` (counts, score statistics, wall times, losses).

    python experiments/sharegpt_smollm2/run.py --num-conversations 300
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

from prefalign.studies import runner

log = logging.getLogger("sharegpt_smollm2")

HERE = Path(__file__).resolve().parent
MEMBER = "smollm2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--num-conversations", type=int, default=300, help="English conversations used")
    parser.add_argument(
        "--score-max-length", type=int, default=256, help="SmolLM2 tokens kept per conversation when scoring"
    )
    parser.add_argument("--score-batch-size", type=int, default=8, help="sequences per SmolLM2 forward")
    parser.add_argument(
        "--train-max-length", type=int, default=2048, help="tokens (bytes) kept per sample by the tiny target"
    )
    parser.add_argument("--train-steps", type=int, default=20, help="PoFT optimiser steps")
    parser.add_argument("--train-batch-size", type=int, default=8, help="samples per PoFT step")
    parser.add_argument("--lr", type=float, default=1e-3, help="PoFT learning rate (tiny random model)")
    parser.add_argument("--out", type=Path, default=HERE / "outputs", help="output folder")
    return parser.parse_args(argv)


def app_overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Hydra overrides of the scoring and training runs; the data and aligned ones are shared."""
    shared = [
        "data=sharegpt_v3",
        "aligned=smollm2",
        f"data.train.limit={args.num_conversations}",
        f"aligned.max_length={args.score_max_length}",
        f"aligned.batch_size={args.score_batch_size}",
    ]
    score = [*shared, "splits=[train]", "trainer.enable_progress_bar=false"]
    train = [
        *shared,
        "objective=poft",
        "model=tiny",
        "model.tiny.template=chatml",
        f"data.max_length={args.train_max_length}",
        f"data.batch_size={args.train_batch_size}",
        f"optimizer.lr={args.lr}",
        f"trainer.max_steps={args.train_steps}",
        "trainer.max_epochs=100",  # max_steps decides
        "trainer.log_every_n_steps=1",
        "logger=csv",
        "callbacks.progress_bar=null",
        "tags=[demo,sharegpt_smollm2]",
    ]
    return score, train


def run_app(module: str, overrides: list[str], run_dir: Path) -> float:
    """Run ``python -m <module> <overrides>`` with its Hydra run folder at ``run_dir``, its output on
    this terminal; its wall time."""
    return runner.run_app(module, [*overrides, f"hydra.run.dir={run_dir}"], log_file=None)


def read_scores(score_overrides: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """The cached SmolLM2 scores (``id -> r``) of the scored conversations, and the data counts.

    Composes the same config as the scoring run, rebuilds the same samples with the recipe shared
    by scoring and training (``load_conversations``) and looks the table up by its fingerprint.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from prefalign.config import config_dir, register_resolvers
    from prefalign.data.datamodule import DataSource, load_conversations
    from prefalign.data.records import ColumnMap
    from prefalign.scoring.engine import find_cached_scores, load_score_table

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="score", overrides=score_overrides)
    columns = ColumnMap.from_config(OmegaConf.to_container(cfg.data.columns, resolve=True))
    source = DataSource.from_config(OmegaConf.to_container(cfg.data.train, resolve=True))
    ds, report = load_conversations(source, columns, cfg.data.on_invalid, cfg.data.get("num_proc"))
    aligned = OmegaConf.to_container(cfg.aligned, resolve=True)
    folder, finished = find_cached_scores(
        ds, aligned["members"][MEMBER], int(aligned["max_length"]), aligned["cache_dir"]
    )
    if not finished:
        raise SystemExit(f"no finished score table at {folder}: did the scoring run succeed?")
    table = load_score_table(folder)
    counts = {
        "records_decoded": report.total - report.counts["truncated_tail"],
        "truncated_tail_records": report.counts["truncated_tail"],
        "not_english": report.counts["not_english"],
        "other_drops": {k: n for k, n in report.counts.items() if k not in ("truncated_tail", "not_english")},
        "english_conversations": report.total - report.dropped,
        "conversations_used": len(ds),
        "scored": len(table.table),
        "not_scored": dict(table.drops.counts),
        "score_table": str(folder),
    }
    return table.mean_by_id(), counts


def describe(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation, min, quartiles and max."""
    ordered = sorted(values)
    q1, median, q3 = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else (ordered[0],) * 3
    return {
        "mean": statistics.fmean(ordered),
        "std": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        "min": ordered[0],
        "q1": q1,
        "median": median,
        "q3": q3,
        "max": ordered[-1],
    }


def plot_histogram(scores: list[float], stats: dict[str, float], path: Path, max_length: int) -> None:
    """A histogram of the scores with their mean and median marked, saved as PNG."""
    plt = runner.pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.hist(scores, bins=max(10, min(40, len(scores) // 8)), color="#4c72b0", edgecolor="white")
    ax.axvline(stats["mean"], color="#c44e52", linestyle="--", label=f"mean {stats['mean']:.3f}")
    ax.axvline(stats["median"], color="#55a868", linestyle=":", label=f"median {stats['median']:.3f}")
    ax.set_xlabel("r(x, y): mean log-prob per response token")
    ax.set_ylabel("conversations")
    ax.set_title(
        f"SmolLM2-135M-Instruct on {len(scores)} English ShareGPT conversations\n"
        f"(first {max_length} tokens of each)",
        fontsize=10,
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train_losses(metrics_csv: Path) -> dict[str, Any]:
    """First and last logged PoFT step losses (and the CE / tau of those steps) from the CSV log."""
    with metrics_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    if not rows:
        raise SystemExit(f"{metrics_csv}: no train/loss rows")
    keep = ("step", "train/loss", "train/ce", "train/tau")
    first, last = ({k: float(r[k]) for k in keep if r.get(k)} for r in (rows[0], rows[-1]))
    return {"steps_logged": len(rows), "first": first, "last": last}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    score_overrides, train_overrides = app_overrides(args)

    score_seconds = run_app("prefalign.apps.score", score_overrides, out / "score")
    started = time.perf_counter()
    by_id, counts = read_scores(score_overrides)
    scores = list(by_id.values())
    if not all(math.isfinite(s) for s in scores):
        raise SystemExit("non-finite scores in the table")
    stats = describe(scores)
    plot_histogram(scores, stats, out / "scores_hist.png", args.score_max_length)
    (out / "scores.json").write_text(json.dumps(by_id, indent=1))
    plot_seconds = time.perf_counter() - started
    log.info("scores of %d conversations: %s -> %s", len(scores), stats, out / "scores_hist.png")

    train_seconds = run_app("prefalign.apps.train", train_overrides, out / "train")
    summary = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "counts": counts,
        "score_stats": stats,
        "wall_seconds": {"score": score_seconds, "read_and_plot": plot_seconds, "train": train_seconds},
        "poft": train_losses(out / "train" / "csv" / "metrics.csv"),
        "commands": {
            "score": "prefalign-score " + " ".join(score_overrides),
            "train": "prefalign-train " + " ".join(train_overrides),
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("summary: %s", json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
