"""Start-up and footprint of ``prefalign-train`` side by side with TRL, on the same tiny model and data.

For CE (TRL: ``SFTTrainer``) and DPO (TRL: ``DPOTrainer``), each run is a fresh process; measured:

- **time to the first optimiser step**: from just before the process is started to the end of its
  first optimiser step (interpreter start, imports, config, model and data loading, DPO's reference
  log-probs, the step itself);
- **CPU time** (user + system) of the process up to that step: less sensitive than wall time to
  other processes on a shared machine;
- **peak RSS** of the process up to that step (``VmHWM``; see ``trl_startup/startup_marks.py``).

The process then ends at once (prefalign: ``benchmarks/trl_startup/first_step_probe.py``, a
callback added with ``+callbacks.first_step=...``; TRL: ``benchmarks/trl_startup/trl_first_step.py``).
Runs are interleaved (prefalign, TRL, prefalign, ...) ``--repeat`` times and the medians compared,
so load changes on a shared machine hit both sides alike. ``--help`` and ``--cfg job`` of the
prefalign apps are timed as in ``benchmarks/startup.py``. Where the time goes, stage by stage:
``benchmarks/startup_timeline.py``.

Same work on both sides: the tiny model of ``conf/model/tiny.yaml`` (its Hugging Face folder, built
by prefalign, is what TRL loads), fp32 on the CPU; CE on ``tiny_chat_train.jsonl`` (batch 16,
lr 3e-3, 256 tokens: ``experiment=tiny_ce``), DPO on ``tiny_pref_train.jsonl`` (batch 8, lr 2e-5,
beta 0.1, 256 tokens: ``objective=dpo data=tiny_preference``); AdamW, gradient clipping at 1.0. The
validation split (``tiny_chat_val.jsonl`` / ``tiny_pref_val.jsonl``) is read and tokenised before
training on both sides (TRL: ``eval_dataset`` with ``eval_strategy="epoch"``, as prefalign
validates every epoch); neither validates before the first step (prefalign's
``trainer.num_sanity_val_steps`` is 0). No tracker and no checkpoint before the first step on either
side (prefalign ``logger=csv``, TRL ``report_to=none``). Both sides see the same environment
variables (one OMP/MKL thread by default, ``TOKENIZERS_PARALLELISM=false``). After one warm-up run
per side, both read their tokenised data from their caches (prefalign's datasets cache, TRL's
``datasets`` map cache). DPO's reference: ``dpo`` keeps a frozen copy of the model in the process
and scores it in every step (prefalign ``reference.mode=live``, TRL's default); ``dpo_precomputed``
scores the reference log-probs before training (prefalign ``reference.mode=precomputed``, its
default, with a fresh score cache per run so every run pays for it; TRL
``precompute_ref_log_probs=True``). One difference remains in the work: prefalign precomputes the
validation split's reference log-probs before training too, TRL at its first evaluation.

Environments: TRL is not a project dependency; it runs in its own virtual environment (created
here, ``--trl-venv``) with the project environment's versions of torch, transformers, accelerate
and datasets. prefalign runs twice: in the environment running this script (the developer install,
``.[dev]``, with everything the extras bring) and in a virtual environment with prefalign's core
dependencies only (``--core-venv``, ``pip install -e .`` of this tree), the counterpart of TRL's
own environment: optional packages installed beside them (scipy, matplotlib, peft...) are imported
by Lightning / torchmetrics / transformers when present and cost both time and memory.

    nice -n 10 python benchmarks/startup_vs_trl.py              # 3 repeats; results/startup_vs_trl.json
    nice -n 10 python benchmarks/startup_vs_trl.py --repeat 5 --skip-dev
    # a before / after pair in the same interleaved runs: an older commit in its own core venv
    git archive <commit> src conf benchmarks pyproject.toml README.md | tar -x -C /tmp/before
    (cd /tmp/before/benchmarks && python -c "import startup_vs_trl as s; s.ensure_core_venv(s.Path('/tmp/before_venv'))")
    nice -n 10 python benchmarks/startup_vs_trl.py --skip-dev --before-src /tmp/before/src --before-venv /tmp/before_venv

The machine's load average before and after is recorded: on a shared machine, compare the sides of
one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from startup import COMMANDS, recorded_src, time_command

from prefalign.core.jsonl import write_json

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"
PROBES = HERE / "trl_startup"
RESULTS = HERE / "results" / "startup_vs_trl.json"
BUNDLED = SRC / "prefalign" / "data" / "bundled"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prefalign" / "benchmarks"
# The same packages in TRL's environment as in the project's (same kernels, same model code).
SHARED = ("torch", "transformers", "accelerate", "datasets")
TRL_VERSION = "1.16.0"
# Per objective: prefalign-train's overrides and TRL's (trainer, data, batch size, lr, reference).
KINDS = {
    "ce": {
        "prefalign": ["experiment=tiny_ce"],
        "trl": ("sft", "tiny_chat_train.jsonl", "tiny_chat_val.jsonl", 16, 3e-3, "live"),
    },
    # the reference model beside the policy, its log-probs computed in every step
    "dpo": {
        "prefalign": ["objective=dpo", "data=tiny_preference", "reference.mode=live"],
        "trl": ("dpo", "tiny_pref_train.jsonl", "tiny_pref_val.jsonl", 8, 2e-5, "live"),
    },
    # the reference's log-probs of the whole training set computed before the first step
    # (prefalign's default; TRL's precompute_ref_log_probs=True)
    "dpo_precomputed": {
        "prefalign": ["objective=dpo", "data=tiny_preference", "reference.mode=precomputed"],
        "trl": ("dpo", "tiny_pref_train.jsonl", "tiny_pref_val.jsonl", 8, 2e-5, "precomputed"),
    },
}
MAX_LENGTH = 256


def pip_install(venv: Path, requirements: list[str]) -> None:
    """Create ``venv`` (if missing) and install ``requirements`` into it."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)


def shared_pins() -> list[str]:
    """``name==version`` of the packages both environments must share (the project's versions)."""
    return [f"{name}=={version(name).split('+')[0]}" for name in SHARED]


def ensure_trl_venv(venv: Path) -> Path:
    """TRL's own environment; built once (a marker file records what it was built with)."""
    wanted = [*shared_pins(), f"trl=={TRL_VERSION}"]
    marker = venv / "prefalign_benchmark.json"
    if not marker.exists() or json.loads(marker.read_text()) != wanted:
        print(f"building TRL's environment in {venv}: {' '.join(wanted)}", flush=True)
        pip_install(venv, wanted[:1])  # torch first: the CPU build on this machine
        pip_install(venv, wanted)
        marker.write_text(json.dumps(wanted))
    return venv / "bin" / "python"


def ensure_core_venv(venv: Path) -> Path:
    """prefalign with its core dependencies only (editable install of this tree). Rebuilt from
    scratch when the project's core dependencies change (pip would leave a dropped one installed)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [*shared_pins(), f"lightning=={version('lightning')}", "-e", str(ROOT)]
    marker = venv / "prefalign_benchmark.json"
    if not marker.exists() or json.loads(marker.read_text()) != [*wanted, *dependencies]:
        print(f"building prefalign's core environment in {venv}", flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        pip_install(venv, wanted[:1])
        pip_install(venv, wanted)
        marker.write_text(json.dumps([*wanted, *dependencies]))
    return venv / "bin" / "python"


def first_step(command: list[str], env: dict[str, str], log_file: Path) -> dict:
    """Run ``command`` until its probe ends it: seconds from start to the first step, the process's
    CPU seconds (user + system) and peak RSS (MiB) by then, and the stages the probe marked on the
    way (name, seconds from start, CPU seconds and peak RSS so far; ``trl_startup/startup_marks.py``)."""
    record = log_file.with_suffix(".json")
    record.unlink(missing_ok=True)
    env = {**env, "FIRST_STEP_FILE": str(record)}
    started = time.time()
    with log_file.open("w") as log:
        done = subprocess.run(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    if done.returncode != 0 or not record.exists():
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command)} (exit {done.returncode}) reached no first step:\n{tail}")
    measured = json.loads(record.read_text())
    return {
        "seconds": round(measured["t_first_step"] - started, 3),
        "cpu_s": round(measured["cpu_s"], 3),
        "peak_rss_mib": round(measured["peak_rss_mib"], 1),
        "marks": [
            (name, round(t - started, 3), round(cpu, 3), round(rss, 1))
            for name, t, cpu, rss in measured["marks"]
        ],
    }


def prefalign_command(
    python: str, kind: str, work: Path, run: str, entry: tuple[str, ...] = ("-m", "prefalign.apps.train")
) -> list[str]:
    """``prefalign-train`` of ``kind`` (``entry``: how the app is started, e.g. the timeline's launcher)."""
    return [
        python,
        *entry,
        *KINDS[kind]["prefalign"],
        "logger=csv",
        f"paths.root_dir={work}",
        f"paths.cache_dir={work / 'cache'}",
        f"reference.cache_dir={work / 'scores' / run}",  # DPO: reference log-probs scored in every run
        f"hydra.run.dir={work / 'runs' / run}",
        "+callbacks.first_step._target_=first_step_probe.FirstStepProbe",
    ]


def trl_command(python: str, kind: str, model_dir: Path, work: Path, run: str) -> list[str]:
    trainer, train_file, val_file, batch_size, lr, reference = KINDS[kind]["trl"]
    script = PROBES / "trl_first_step.py"
    out = work / "runs" / run
    return [
        python,
        str(script),
        trainer,
        str(model_dir),
        str(BUNDLED / train_file),
        str(BUNDLED / val_file),
        str(out),
        str(batch_size),
        str(lr),
        str(MAX_LENGTH),
        reference,
    ]


def tiny_model_dir(work: Path) -> Path:
    """The tiny model's Hugging Face folder under the benchmark's cache (as prefalign-train builds it)."""
    import yaml

    from prefalign.models.loading import TinySpec, materialize_tiny_model

    spec = yaml.safe_load((ROOT / "conf" / "model" / "tiny.yaml").read_text())["tiny"]
    return materialize_tiny_model(TinySpec(**spec), work / "cache" / "models")


def median_of(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per side and objective")
    parser.add_argument("--trl-venv", type=Path, default=CACHE / "trl_venv")
    parser.add_argument("--core-venv", type=Path, default=CACHE / "prefalign_core_venv")
    parser.add_argument("--skip-core", action="store_true", help="no run in the core-only environment")
    parser.add_argument(
        "--skip-dev", action="store_true", help="no run in this script's (developer) environment"
    )
    parser.add_argument(
        "--src",
        type=Path,
        default=SRC,
        help="prefalign's source tree put first on PYTHONPATH (e.g. an export of an older commit, with "
        "its conf/ beside it, for a before / after pair)",
    )
    parser.add_argument(
        "--before-src",
        type=Path,
        default=None,
        help="a third prefalign side, measured in the same interleaved runs: this source tree (an "
        "export of an older commit with its conf/ beside it) with --before-venv's Python",
    )
    parser.add_argument(
        "--before-venv",
        type=Path,
        default=None,
        help="the environment of --before-src (e.g. an older core venv)",
    )
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP/MKL threads of every run (0: the libraries' default). One by default: on a busy "
        "machine, intra-op threads that wait for a descheduled sibling make runs several times slower "
        "at random, which would drown the difference between the sides",
    )
    args = parser.parse_args(argv)

    trl_python = str(ensure_trl_venv(args.trl_venv))
    # prefalign's sides: name -> (Python, source tree)
    sides = {} if args.skip_dev else {"prefalign_dev_env": (sys.executable, args.src)}
    if not args.skip_core:
        sides["prefalign_core_env"] = (str(ensure_core_venv(args.core_venv)), args.src)
    if args.before_src is not None:
        if args.before_venv is None:
            parser.error("--before-src needs --before-venv")
        sides["prefalign_before"] = (str(args.before_venv / "bin" / "python"), args.before_src)
    work = args.work or Path(tempfile.mkdtemp(prefix="startup_vs_trl."))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = tiny_model_dir(work)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FIRST_STEP_FILE")}
    # the same on both sides: no thread pool in the Rust tokenizers (and no fork warning)
    base_env["TOKENIZERS_PARALLELISM"] = "false"
    if args.threads:
        base_env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    prefalign_envs = {
        side: {**base_env, "PYTHONPATH": f"{src}{os.pathsep}{PROBES}", "WANDB_MODE": "offline"}
        for side, (_, src) in sides.items()
    }
    trl_env = base_env

    result = {
        "what": "seconds from process start to the end of the first optimiser step, CPU seconds (user + "
        "system) and peak RSS (MiB) of the process up to it",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "versions": {name: version(name) for name in (*SHARED, "lightning")} | {"trl": TRL_VERSION},
        "src": {side: recorded_src(src) for side, (_, src) in sides.items()},
        "repeat": args.repeat,
        "threads": args.threads or "library default",
        "kinds": {
            kind: {
                "prefalign_overrides": KINDS[kind]["prefalign"],
                "trl": f"{KINDS[kind]['trl'][0]}/{KINDS[kind]['trl'][-1]}",
            }
            for kind in args.kinds
        },
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "runs": {},
    }
    for kind in args.kinds:  # one warm-up run per side: caches (tokenised data, compiled regexes) filled
        for side, (python, _) in sides.items():
            first_step(
                prefalign_command(python, kind, work, f"warmup_{side}_{kind}"),
                prefalign_envs[side],
                logs / "w.log",
            )
        first_step(
            trl_command(trl_python, kind, model_dir, work, f"warmup_trl_{kind}"), trl_env, logs / "w.log"
        )
    for r in range(args.repeat):
        for kind in args.kinds:
            for side, (python, _) in sides.items():
                run = f"{side}_{kind}_{r}"
                measured = first_step(
                    prefalign_command(python, kind, work, run), prefalign_envs[side], logs / f"{run}.log"
                )
                measured.pop("marks")  # the stages: benchmarks/startup_timeline.py
                result["runs"].setdefault(kind, {}).setdefault(side, []).append(measured)
                print(kind, side, measured, flush=True)
            run = f"trl_{kind}_{r}"
            measured = first_step(
                trl_command(trl_python, kind, model_dir, work, run), trl_env, logs / f"{run}.log"
            )
            measured.pop("marks")
            result["runs"].setdefault(kind, {}).setdefault("trl", []).append(measured)
            print(kind, "trl", measured, flush=True)

    summary = {}
    for kind, by_side in result["runs"].items():
        keys = ("seconds", "cpu_s", "peak_rss_mib")
        trl = {key: median_of(by_side["trl"], key) for key in keys}
        summary[kind] = {"trl": trl}
        for side in sides:
            mine = {key: median_of(by_side[side], key) for key in keys}
            summary[kind][side] = mine | {
                "first_step_ratio_vs_trl": round(mine["seconds"] / trl["seconds"], 3),
                "cpu_ratio_vs_trl": round(mine["cpu_s"] / trl["cpu_s"], 3),
                "peak_rss_ratio_vs_trl": round(mine["peak_rss_mib"] / trl["peak_rss_mib"], 3),
            }
    result["median"] = summary
    result["cheap_commands"] = {
        side: {
            app: {
                name: time_command(src, app, flags, args.repeat, python=python)
                for name, flags in COMMANDS.items()
            }
            for app in ("train", "sso")
        }
        for side, (python, src) in sides.items()
    }
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_json(RESULTS, result)
    print(json.dumps(summary, indent=2))
    print(json.dumps(result["cheap_commands"], indent=2))
    print(f"written to {RESULTS}; logs in {logs}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
