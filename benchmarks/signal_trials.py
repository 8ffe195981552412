"""Repeated trials of every signal and dead-rank case of a two-rank fit (issue 33), gloo on CPU.

Each case of ``tests/reliability/ddp_faults.py`` (a signal to the DDP parent, to rank 1, to both,
twice, during validation, in the checkpoint barrier, at the end of the fit; torchrun's agent alone
and with its workers; ``kill -9`` of rank 1) runs ``--trials`` times; a trial passes when every
process ends within ``TIMEOUT_S`` with the expected status, each rank says how it stopped and the
checkpoint (or the export) is there. The counts, statuses and times go to
``benchmarks/results/signal_trials.json`` with the machine's load::

    python benchmarks/signal_trials.py --trials 5
    python benchmarks/signal_trials.py --trials 2 --cases sigterm_both sigkill_rank1
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

import ddp_faults  # noqa: E402 - the cases live beside the tests that run them

from prefalign.core.jsonl import write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "signal_trials.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=sorted(ddp_faults.CASES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "trials_per_case": args.trials,
        "timeout_s": ddp_faults.TIMEOUT_S,
        "cases": {},
    }
    started = time.monotonic()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="signal-trials-") as tmp:
        cache = Path(tmp) / "cache"
        for name in args.cases:
            case = ddp_faults.CASES[name]
            trials = []
            for k in range(args.trials):
                work = Path(tmp) / f"{name}-{k}"
                work.mkdir()
                trial = ddp_faults.run_trial(case, work, ddp_faults.app_environment(work, str(cache)))
                trials.append(trial)
                print(name, k, trial.status, f"{trial.seconds:.1f} s", trial.problems or "ok", flush=True)
                if not trial.passed:
                    print(trial.output[-3000:], flush=True)
                shutil.rmtree(work)
            failed += sum(not t.passed for t in trials)
            results["cases"][name] = {
                "launcher": case.launcher,
                "point": case.point,
                "signals_to": case.targets,
                "signals": [ddp_faults.signal_name(s) for s in case.signals],
                "expected_status": case.status,
                "passed": sum(t.passed for t in trials),
                "trials": len(trials),
                "statuses": [t.status for t in trials],
                "seconds_to_exit_median": round(statistics.median(t.seconds for t in trials), 1),
                "seconds_to_exit_max": round(max(t.seconds for t in trials), 1),
                "problems": [p for t in trials for p in t.problems],
            }
    results["wall_s"] = round(time.monotonic() - started)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, results)
    print(f"-> {args.out}: {failed} failed trial(s)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
