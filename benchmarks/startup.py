"""Start-up time of the apps' cheap commands (``--help``, ``--cfg job``) and what they import.

Each command runs as a fresh ``python -m prefalign.apps.<app> ...`` process ``--repeat`` times;
the median wall time is recorded, with whether torch, lightning, transformers, datasets, wandb,
lm-eval or pandas were imported by ``--cfg job`` (``-X importtime``). ``--src`` chooses the source
tree (e.g. the tree before a change), ``--label`` names the entry in
``benchmarks/results/startup.json`` (other labels in the file are kept), so a before / after pair
is measured on the same machine, side by side:

    python benchmarks/startup.py --src /path/to/old/src --label before
    python benchmarks/startup.py --label after

The machine's load at the time is recorded (``os.getloadavg``): shared machines make wall times
noisy, so compare entries measured together.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefalign.core.jsonl import write_json

RESULTS = Path(__file__).parent / "results" / "startup.json"
SRC = Path(__file__).resolve().parents[1] / "src"
APPS = ["train", "score", "sso", "evaluate", "export_answers", "build_offline"]
COMMANDS = {"help": ["--help"], "cfg_job": ["--cfg", "job"]}
HEAVY = ["torch", "lightning", "transformers", "datasets", "wandb", "lm_eval", "pandas"]


def recorded_src(src: Path) -> str | None:
    """How a results file names a source tree: its path relative to this repository (``src``), or
    ``None`` for a tree outside it (an export of an older commit: the entry's label names it), so
    that no absolute path of the measuring machine is committed."""
    try:
        return Path(src).resolve().relative_to(SRC.parent).as_posix()
    except ValueError:
        return None


def _env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}


def time_command(src: Path, app: str, args: list[str], repeat: int, python: str = sys.executable) -> dict:
    """Median and all wall times (s) of ``python -m prefalign.apps.<app> <args>`` (``python``: the
    interpreter, e.g. another virtual environment's)."""
    times = []
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(repeat):
            start = time.perf_counter()
            result = subprocess.run(
                [python, "-m", f"prefalign.apps.{app}", *args],
                cwd=cwd,
                env=_env(src),
                capture_output=True,
                text=True,
            )
            times.append(time.perf_counter() - start)
            if result.returncode != 0:
                raise RuntimeError(f"{app} {args} failed:\n{result.stderr[-2000:]}")
    return {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}


def heavy_imports(src: Path, app: str) -> list[str]:
    """The heavy top-level packages that ``--cfg job`` imports."""
    with tempfile.TemporaryDirectory() as cwd:
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", f"prefalign.apps.{app}", "--cfg", "job"],
            cwd=cwd,
            env=_env(src),
            capture_output=True,
            text=True,
        )
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    return [name for name in HEAVY if name in imported]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=SRC, help="the source tree put on PYTHONPATH")
    parser.add_argument("--label", default="current")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--apps", nargs="+", default=APPS, choices=APPS)
    args = parser.parse_args(argv)
    entry = {
        "src": recorded_src(args.src),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "apps": {},
    }
    for app in args.apps:
        entry["apps"][app] = {
            name: time_command(args.src, app, flags, args.repeat) for name, flags in COMMANDS.items()
        }
        entry["apps"][app]["heavy_imports_of_cfg_job"] = heavy_imports(args.src, app)
        print(app, json.dumps(entry["apps"][app]), flush=True)
    entry["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.label] = entry
    write_json(RESULTS, results)
    print(f"written to {RESULTS} under {args.label!r}")


if __name__ == "__main__":
    main()
