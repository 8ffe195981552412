"""SSO end to end on a real chat model: SmolLM2-135M-Instruct on English ShareGPT first-turn prompts.

Offline, on a CPU, through the project's own library and app (see README.md here):

1. Prompts: the first user turn of English ShareGPT V3 conversations (``data=sharegpt_v3``,
   :func:`prefalign.data.prompts.first_turn_prompts`), kept when they fit ``--max-prompt-tokens``
   under SmolLM2's chat template (:func:`prefalign.generation.sampling.filter_prompts_by_length`),
   until ``--prompts-per-iteration`` x ``--iterations`` prompts; written to ``prompts.jsonl``.
2. ``prefalign-sso sso_experiment=smollm2_sharegpt``: the paper's seven principles, the Table 14
   allocation prompt, sampling of y+ / y- / y_o, SSO training, the Table 15 judge on SmolLM2 itself.
3. The pipeline's report and stage markers and the training runs' CSV logs are summarised in
   ``summary.json`` (allocation parse / fallback rates, judge verdicts, e^ā, lengths, losses, W, G,
   wall and CPU time, load average) and ``training.png`` (per-step loss, W and G).

    nice -n 10 python experiments/smollm2_sso/run.py            # writes outputs/ and results/
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefalign.studies.runner import pyplot

log = logging.getLogger("smollm2_sso")
HERE = Path(__file__).resolve().parent
RUN_NAME = "sharegpt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--iterations", type=int, default=2, help="SSO iterations")
    parser.add_argument("--prompts-per-iteration", type=int, default=64, help="prompts of each iteration")
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="longest sampled response (y+, y-, y_o)"
    )
    parser.add_argument("--allocation-tokens", type=int, default=16, help="longest Table 14 answer")
    parser.add_argument(
        "--max-prompt-tokens", type=int, default=160, help="longest user prompt (rendered, SmolLM2 tokens)"
    )
    parser.add_argument("--seed", type=int, default=0, help="pipeline seed")
    parser.add_argument("--out", type=Path, default=HERE / "outputs", help="run folder (git-ignored)")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="summary.json and plot")
    parser.add_argument(
        "--rejudge",
        type=int,
        nargs="*",
        default=[],
        help="with --summarise-only: judge these iterations' (y+, y-) pairs again with the experiment "
        "config's judge as it is now (for a run whose evaluate stage used an older judge setting)",
    )
    parser.add_argument(
        "--rejudged-from",
        type=Path,
        default=None,
        help="a summary.json whose re-judged figures are kept for the iterations not in --rejudge",
    )
    parser.add_argument(
        "--summarise-only",
        action="store_true",
        help="rebuild summary.json and the plot from a finished run in --out (its timing and prompt "
        "counts from the existing summary.json)",
    )
    return parser.parse_args(argv)


def compose(config: str, overrides: list[str]):
    """A config of the project's Hydra tree."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from prefalign.config import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides)


def write_prompts(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """The first English ShareGPT first turns that fit ``--max-prompt-tokens``; the counts."""
    from omegaconf import OmegaConf

    from prefalign.core.jsonl import write_jsonl
    from prefalign.data.datamodule import DataSource
    from prefalign.data.prompts import first_turn_prompts
    from prefalign.data.records import ColumnMap
    from prefalign.generation.sampling import filter_prompts_by_length
    from prefalign.models.loading import load_tokenizer

    wanted = args.prompts_per_iteration * args.iterations
    data = compose("train", ["data=sharegpt_v3", f"data.train.limit={4 * wanted}"]).data
    source = DataSource.from_config(OmegaConf.to_container(data.train, resolve=True))
    columns = ColumnMap.from_config(OmegaConf.to_container(data.columns, resolve=True))
    rows, report = first_turn_prompts(source, columns, data.on_invalid)
    model = OmegaConf.to_container(compose("sso", ["sso_experiment=smollm2_sharegpt"]).model, resolve=True)
    tokenizer = load_tokenizer(model["name_or_path"], gguf_file=model["gguf_file"])
    keep, too_long = filter_prompts_by_length(
        [r["id"] for r in rows],
        [[{"role": "user", "content": r["prompt"]}] for r in rows],
        tokenizer,
        args.max_prompt_tokens,
    )
    kept = [rows[k] for k in keep]
    if len(kept) < wanted:
        raise SystemExit(f"only {len(kept)} of {len(rows)} first turns fit {args.max_prompt_tokens} tokens")
    looked_at = keep[wanted - 1] + 1  # first turns read until enough fitted
    write_jsonl(path, kept[:wanted])
    return {
        "conversations_read": source.limit,
        "first_turns": len(rows),
        "first_turns_examined": looked_at,
        "too_long_among_examined": looked_at - wanted,
        "prompts": wanted,
        "loader_drops": dict(report.counts),
        "prompts_tokens_limit": args.max_prompt_tokens,
        "too_long_total": too_long.dropped,
    }


def run_sso(args: argparse.Namespace, prompts: Path) -> dict[str, Any]:
    """``python -m prefalign.apps.sso`` with the experiment config; its wall and CPU time."""
    overrides = [
        "sso_experiment=smollm2_sharegpt",
        f"prompts.path={prompts}",
        f"iterations={args.iterations}",
        f"seed={args.seed}",
        f"run_name={RUN_NAME}",
        f"sampling.max_new_tokens={args.max_new_tokens}",
        f"allocation.max_new_tokens={args.allocation_tokens}",
        f"max_prompt_tokens={args.max_prompt_tokens}",
        f"paths.root_dir={args.out}",
        f"hydra.run.dir={args.out / 'hydra'}",
    ]
    command = [sys.executable, "-m", "prefalign.apps.sso", *overrides]
    log.info("running: %s", " ".join(command[2:]))
    load_before, started = os.getloadavg(), time.perf_counter()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"prefalign-sso failed with exit code {done.returncode} (see its output above)")
    return {
        "wall_seconds": seconds,
        "cpu_seconds": (cpu_after.ru_utime - cpu_before.ru_utime)
        + (cpu_after.ru_stime - cpu_before.ru_stime),
        "load_average_1_5_15_before": list(load_before),
        "load_average_1_5_15_after": list(os.getloadavg()),
        "cpu_cores": os.cpu_count(),
        "overrides": overrides,
    }


def stage(work_dir: Path, i: int, name: str) -> dict[str, Any]:
    marker = json.loads((work_dir / f"iter_{i}" / f"{name}.done.json").read_text(encoding="utf-8"))
    marker.pop("artefacts", None)
    return marker


def training_log(work_dir: Path, i: int) -> list[dict[str, float]]:
    """The per-step rows of iteration ``i``'s training CSV log (train/* metrics only)."""
    path = next((work_dir / f"iter_{i}" / "train").rglob("metrics.csv"))
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k.startswith("train/") and k != "train/lr" and v}
            if values:
                rows.append({"step": float(row["step"]), **values})
    return rows


def headline(iteration: dict[str, Any]) -> dict[str, Any]:
    """One iteration's figures the study reports: allocation, judge, e^ā, lengths, losses, W, G
    (training figures: the mean over the iteration's optimiser steps, and the first and last step)."""
    report, steps = iteration["report"], iteration["training_steps"]

    def over_steps(key: str) -> dict[str, float] | None:
        values = [s[key] for s in steps if key in s]
        if not values:
            return None
        return {"mean": sum(values) / len(values), "first": values[0], "last": values[-1]}

    figures = {
        "iteration": iteration["iteration"],
        "samples": report["samples"],
        **{f"allocation/{k}": v for k, v in iteration["allocation"].items() if k.endswith("rate")},
        **{k: v for k, v in report.items() if k.startswith(("signal_", "judge_answers/"))},
        **{f"rejudged/{k}": v for k, v in report.get("rejudged", {}).items() if isinstance(v, float)},
        **{k: v for k, v in report.items() if k.startswith("length/") or k == "hit_max_new_tokens"},
    }
    for key in (
        "train/loss",
        "train/base_loss",
        "train/g",
        "train/weight",
        "train/weight_std",
        "train/on_policy/chosen",
        "train/on_policy/rejected",
        "train/rewards_per_token/margins",
    ):
        figures[key] = over_steps(key)
    figures["optimiser_steps"] = len([s for s in steps if "train/loss" in s])
    return figures


def stage_seconds(args: argparse.Namespace) -> dict[str, float]:
    """Wall seconds of every stage (``iter_<i>/<stage>``) from the pipeline's log lines
    ("iteration i: stage" starts a stage; the next such line, or the report, ends it)."""
    import datetime
    import re

    pattern = re.compile(
        r"^\[([\d-]+ [\d:,]+)\]\[prefalign\.pipelines\.sso\]\[INFO\] - iteration (\d+): (allocate|sample|train|evaluate|\{)"
    )
    marks = []
    for line in (args.out / "hydra" / "sso.log").read_text(encoding="utf-8").splitlines():
        found = pattern.match(line)
        if found:
            when = datetime.datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f")
            marks.append((when, f"iter_{found[2]}/{found[3]}"))
    return {
        name: (marks[k + 1][0] - when).total_seconds()
        for k, (when, name) in enumerate(marks[:-1])
        if not name.endswith("{")
    }


def rejudge(args: argparse.Namespace, work_dir: Path, i: int) -> dict[str, Any]:
    """Signal accuracy of iteration ``i``'s pairs under the config's judge as it is now, through
    the library's judge (what the pipeline's evaluate stage computes), with its settings."""
    import hydra
    from omegaconf import OmegaConf

    from prefalign.core.jsonl import read_jsonl
    from prefalign.generation.judges import signal_accuracy

    cfg = compose("sso", ["sso_experiment=smollm2_sharegpt", f"paths.root_dir={args.out}"])
    rows = read_jsonl(work_dir / f"iter_{i}" / "preferences.jsonl")
    started = time.perf_counter()
    stats = signal_accuracy(
        hydra.utils.instantiate(cfg.judge), [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    )
    settings = OmegaConf.to_container(cfg.judge, resolve=True)
    return {
        **stats,
        "judge_settings": {k: v for k, v in settings.items() if k != "model"},
        "seconds": time.perf_counter() - started,
    }


def summarise(args: argparse.Namespace, prep: dict, timing: dict) -> dict[str, Any]:
    from prefalign.core.jsonl import read_jsonl

    work_dir = args.out / "logs" / "smollm2_sso" / RUN_NAME
    earlier_rejudged = {}
    if args.rejudged_from is not None:
        earlier = json.loads(args.rejudged_from.read_text(encoding="utf-8"))
        for it in earlier["iterations"]:
            if "rejudged" in it["report"]:
                earlier_rejudged[it["iteration"]] = it["report"]["rejudged"]
    iterations = []
    for i in range(1, args.iterations + 1):
        allocate, sample, report = (
            stage(work_dir, i, "allocate"),
            stage(work_dir, i, "sample"),
            stage(work_dir, i, "evaluate"),
        )
        allocated = read_jsonl(work_dir / f"iter_{i}" / "allocated.jsonl")
        steps = training_log(work_dir, i)
        if i in args.rejudge:
            report = {**report, "rejudged": rejudge(args, work_dir, i)}
        elif i in earlier_rejudged:
            report = {**report, "rejudged": earlier_rejudged[i]}
        iterations.append(
            {
                "iteration": i,
                "allocation": {
                    key: allocate[key]
                    for key in (
                        "prompts",
                        "dropped",
                        "allocated",
                        "exact_format_rate",
                        "parse_rate",
                        "fallbacks",
                        "fallback_rate",
                        "features",
                    )
                    if key in allocate
                },
                "allocation_answer_examples": [r["allocation_answer"] for r in allocated[:5]],
                "sampling": {k: v for k, v in sample.items() if k != "dropped_examples"},
                "report": report,
                "training_steps": steps,
            }
        )
    return {
        "headline": [headline(it) for it in iterations],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "prompts": prep,
        "timing": {**timing, "stage_seconds": stage_seconds(args)},
        "iterations": iterations,
    }


def plot(summary: dict, path: Path) -> None:
    plt = pyplot()

    keys = [
        ("train/loss", "loss"),
        ("train/base_loss", "L_base (IPO)"),
        ("train/g", "G"),
        ("train/weight", "W"),
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, (key, title) in zip(axes, keys, strict=True):
        offset = 0
        for it in summary["iterations"]:
            steps = [s for s in it["training_steps"] if key in s]
            ax.plot(
                [offset + s["step"] for s in steps],
                [s[key] for s in steps],
                marker="o",
                label=f"iter {it['iteration']}",
            )
            offset += max((s["step"] for s in it["training_steps"]), default=0) + 1
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
    axes[0].legend()
    fig.suptitle("SSO on SmolLM2-135M-Instruct, ShareGPT first turns (per step)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    args.out, args.results = args.out.resolve(), args.results.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    from prefalign.core.jsonl import write_json

    if args.summarise_only:
        earlier = args.results / "summary.json"
        previous = json.loads(earlier.read_text(encoding="utf-8")) if earlier.exists() else {}
        prep, timing = previous.get("prompts", {}), previous.get("timing", {})
    else:
        prompts = args.out / "prompts.jsonl"
        started = time.perf_counter()
        prep = write_prompts(args, prompts)
        prep["wall_seconds"] = time.perf_counter() - started
        timing = run_sso(args, prompts)
    summary = summarise(args, prep, timing)

    write_json(args.results / "summary.json", summary)
    plot(summary, args.results / "training.png")
    log.info("wrote %s", args.results / "summary.json")
    return summary


if __name__ == "__main__":
    main()
