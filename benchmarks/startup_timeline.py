"""Where the time to the first optimiser step goes, prefalign-train beside TRL: a timeline of each
side's stages (imports, config, model and tokenizer, data, trainer, Lightning's set-up, the step).

The runs are those of ``benchmarks/startup_vs_trl.py`` (same model, data, settings, environments),
prefalign started through ``trl_startup/prefalign_timeline.py``, which marks each library stage by
wrapping the function that does it, and Lightning's stages through the probe callback's hooks; TRL's
script marks its own stages. Each side runs ``--repeat`` times (interleaved, after one warm-up run);
for each stage the medians are kept of the seconds from process start (wall clock) and since the
previous stage, of the CPU seconds used by then and since the previous stage (less sensitive to
other processes than wall time), and of the peak RSS by then. Written to
``benchmarks/results/startup_timeline.json``:

    nice -n 10 python benchmarks/startup_timeline.py --kinds ce --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from startup_vs_trl import (
    CACHE,
    KINDS,
    PROBES,
    SRC,
    ensure_core_venv,
    ensure_trl_venv,
    first_step,
    prefalign_command,
    tiny_model_dir,
    trl_command,
)

from prefalign.core.jsonl import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "startup_timeline.json"


def median_timeline(runs: list[dict]) -> list[dict]:
    """Per stage: median seconds (wall clock) from start and since the previous stage, median CPU
    seconds used by then and since the previous stage, and median peak RSS by then (runs must mark
    the same stages in the same order), ending with the first step itself."""
    names = [m[0] for m in runs[0]["marks"]]
    if any([m[0] for m in r["marks"]] != names for r in runs):
        raise RuntimeError(f"runs marked different stages: {[r['marks'] for r in runs]}")
    rows, previous, previous_cpu = [], 0.0, 0.0
    for i, name in enumerate([*names, "first optimiser step done"]):
        last = i == len(names)
        at = statistics.median(r["seconds"] if last else r["marks"][i][1] for r in runs)
        cpu = statistics.median(r["cpu_s"] if last else r["marks"][i][2] for r in runs)
        rss = statistics.median(r["peak_rss_mib"] if last else r["marks"][i][3] for r in runs)
        rows.append(
            {
                "stage": name,
                "at_s": round(at, 3),
                "took_s": round(at - previous, 3),
                "cpu_at_s": round(cpu, 3),
                "cpu_took_s": round(cpu - previous_cpu, 3),
                "peak_rss_mib": round(rss, 1),
            }
        )
        previous, previous_cpu = at, cpu
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=["ce"], choices=list(KINDS))
    parser.add_argument("--trl-venv", type=Path, default=CACHE / "trl_venv")
    parser.add_argument("--core-venv", type=Path, default=CACHE / "prefalign_core_venv")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads (as startup_vs_trl.py)")
    args = parser.parse_args(argv)

    sides = {
        "prefalign_core_env": str(ensure_core_venv(args.core_venv)),
        "trl": str(ensure_trl_venv(args.trl_venv)),
    }
    work = Path(tempfile.mkdtemp(prefix="startup_timeline."))
    model_dir = tiny_model_dir(work)
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FIRST_STEP_FILE")}
    base_env |= {
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    envs = {
        "prefalign_core_env": {
            **base_env,
            "PYTHONPATH": f"{SRC}{os.pathsep}{PROBES}",
            "WANDB_MODE": "offline",
        },
        "trl": base_env,
    }
    entry = (str(PROBES / "prefalign_timeline.py"),)

    def command(side: str, kind: str, run: str) -> list[str]:
        if side == "trl":
            return trl_command(sides[side], kind, model_dir, work, run)
        return prefalign_command(sides[side], kind, work, run, entry=entry)

    result = {
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "threads": args.threads,
        "kinds": {},
    }
    runs: dict = {}
    for kind in args.kinds:
        for side in sides:
            first_step(command(side, kind, f"warmup_{side}_{kind}"), envs[side], work / "warmup.log")
        for r in range(args.repeat):
            for side in sides:
                measured = first_step(
                    command(side, kind, f"{side}_{kind}_{r}"), envs[side], work / f"{side}_{kind}_{r}.log"
                )
                runs.setdefault(kind, {}).setdefault(side, []).append(measured)
                print(kind, side, measured["seconds"], "s", measured["cpu_s"], "cpu s", flush=True)
        result["kinds"][kind] = {
            side: {
                "seconds": round(statistics.median(r["seconds"] for r in side_runs), 3),
                "cpu_s": round(statistics.median(r["cpu_s"] for r in side_runs), 3),
                "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in side_runs), 1),
                "timeline": median_timeline(side_runs),
            }
            for side, side_runs in runs[kind].items()
        }
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_json(RESULTS, result)
    for kind, by_side in result["kinds"].items():
        for side, summary in by_side.items():
            print(
                f"\n{kind} / {side}: {summary['seconds']} s, {summary['cpu_s']} CPU s, {summary['peak_rss_mib']} MiB"
            )
            print("  wall at  +wall    cpu at   +cpu    peak MiB  stage")
            for row in summary["timeline"]:
                if row["took_s"] < 0.005 and row["cpu_took_s"] < 0.005:  # in the JSON, not printed
                    continue
                print(
                    f"  {row['at_s']:7.3f} +{row['took_s']:6.3f}  {row['cpu_at_s']:7.3f} "
                    f"+{row['cpu_took_s']:6.3f}  {row['peak_rss_mib']:7.1f}  {row['stage']}"
                )
    print(f"written to {RESULTS}")
    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
