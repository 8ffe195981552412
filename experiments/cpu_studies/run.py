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
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("cpu_studies")

HERE = Path(__file__).resolve().parent
# The task families of the studies: tasks a 2-layer model learns in a few CPU minutes (see README).
FAMILIES = ("reverse", "upper", "next_letter")
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


SIZES = {
    # The default test suite's size (tests/experiments/test_cpu_studies.py): a few minutes.
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


# -- running the apps ------------------------------------------------------------------------------
def run_app(module: str, overrides: list[str], log_file: Path, watcher: StageWatcher | None = None) -> float:
    """``python -m <module> <overrides>``, output to ``log_file``; its wall time. Fails loudly.

    While it runs, ``watcher`` (when given) is polled every ``POLL_S`` seconds and its line
    (runs done / total, epoch, current metric, time left) is logged whenever a run or an epoch
    ends, and at least every ``QUIET_S`` seconds."""
    command = [sys.executable, "-m", module, *overrides]
    log.info("running: %s %s", module, " ".join(overrides))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log_file.open("w") as f:
        process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        shown, shown_at = None, started
        while True:
            try:
                returncode = process.wait(timeout=POLL_S if watcher else None)
                break
            except subprocess.TimeoutExpired:
                seen = watcher.poll()[:2]  # a run or an epoch ended (the metric alone changes often)
                if seen != shown or time.perf_counter() - shown_at >= QUIET_S:
                    log.info("  %s", watcher.progress.line())
                    shown, shown_at = seen, time.perf_counter()
    seconds = time.perf_counter() - started
    if returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{module} failed (exit {returncode}); log: {log_file}\n{tail}")
    log.info("  done in %.0f s", seconds)
    return seconds


# -- live progress of a stage ----------------------------------------------------------------------
POLL_S = 5.0  # seconds between two looks at a running app's log and metrics files
QUIET_S = 60.0  # the progress line is repeated at least this often, for the elapsed / remaining time
# The metric shown for the current run: the first of these its metrics.csv has a value for.
METRICS = ("val/exact_match", "train/loss")
FIT_END = "`Trainer.fit` stopped"  # Lightning's line at the end of every training run


def duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


@dataclass
class StageProgress:
    """Where a stage of training runs stands: runs done out of ``total_runs``, the current run's
    epoch (0-based, out of ``epochs_per_run`` when known) and metric, and the time left.

    The time left extrapolates the time the work done took: finished runs plus the finished epochs
    of the current run (``epoch / epochs_per_run``), timed when that count last grew, so it is the
    completed runs' mean duration once runs have finished, and an estimate from epochs before that;
    between two such moments it counts down.
    """

    name: str
    total_runs: int
    epochs_per_run: int | None = None
    clock: Any = time.monotonic
    runs_done: int = 0
    epoch: int | None = None
    metric: tuple[str, float] | None = None

    def __post_init__(self) -> None:
        self.started = self.changed_at = self.clock()

    def update(
        self, runs_done: int, epoch: int | None = None, metric: tuple[str, float] | None = None
    ) -> None:
        """Record what the watcher saw (``epoch`` / ``metric``: None between runs)."""
        done = self.work_done()
        self.runs_done, self.epoch, self.metric = min(runs_done, self.total_runs), epoch, metric
        if self.work_done() > done:
            self.changed_at = self.clock()

    def work_done(self) -> float:
        """Runs done, counting the current run's finished epochs as a fraction of a run."""
        partial = 0.0
        if self.epoch is not None and self.epochs_per_run and self.runs_done < self.total_runs:
            partial = min(self.epoch / self.epochs_per_run, 1.0)
        return self.runs_done + partial

    def seconds_left(self) -> float | None:
        """The estimated time left (None until some work is done)."""
        done = self.work_done()
        if done <= 0:
            return None
        per_run = (self.changed_at - self.started) / done
        return max(per_run * (self.total_runs - done) - (self.clock() - self.changed_at), 0.0)

    def line(self) -> str:
        """E.g. ``poft: run 2/3, epoch 4/6, val/exact_match 0.470 | 1m40s elapsed, about 1m10s left``."""
        parts = [f"{self.name}: {self.runs_done}/{self.total_runs} runs done"]
        if self.epoch is not None:
            parts.append(
                f"epoch {self.epoch + 1}" + (f"/{self.epochs_per_run}" if self.epochs_per_run else "")
            )
        if self.metric is not None:
            parts.append(f"{self.metric[0]} {self.metric[1]:.3f}")
        left = self.seconds_left()
        timing = f"{duration(self.clock() - self.started)} elapsed"
        timing += f", about {duration(left)} left" if left is not None else ", time left unknown yet"
        return ", ".join(parts) + " | " + timing


def metrics_progress(
    path: Path, metrics: tuple[str, ...] = METRICS
) -> tuple[int | None, tuple[str, float] | None]:
    """The last epoch and the last value of the first of ``metrics`` with a value in a Lightning CSV
    metrics file that may still be being written (a missing file or a cut last line reads as less)."""
    import csv

    try:
        rows = list(csv.DictReader(path.read_text(errors="replace").splitlines()))
    except (OSError, csv.Error):
        return None, None
    epoch, found = None, {}
    for row in rows:
        epoch = _number(row.get("epoch"), epoch)
        for name in metrics:
            found[name] = _number(row.get(name), found.get(name))
    found = {name: value for name, value in found.items() if value is not None}
    metric = next(((name, found[name]) for name in metrics if name in found), None)
    return (None if epoch is None else int(epoch)), metric


def _number(text: str | None, default: float | None) -> float | None:
    """``float(text)``, or ``default`` for an empty or cut-off value."""
    try:
        return float(text) if text else default
    except ValueError:
        return default


class StageWatcher:
    """Follows a running app: training runs finished (Lightning's ``FIT_END`` lines in its log) and
    the epoch and metric of the newest ``metrics.csv`` under ``folders`` written since it started.

    Args:
        progress: the stage's :class:`StageProgress`, updated by :meth:`poll`.
        log_file: the app's output.
        folders: where the app's runs write ``metrics.csv`` (CSV logger).
    """

    def __init__(self, progress: StageProgress, log_file: Path, folders: list[Path]) -> None:
        self.progress, self.log_file, self.folders = progress, log_file, folders
        self.since = time.time() - 1.0  # metrics files of earlier attempts are not this stage's runs
        self.offset, self.ends_plain, self.ends_logged = 0, 0, 0

    def _count_fit_ends(self) -> int:
        try:
            with self.log_file.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return max(self.ends_plain, self.ends_logged)
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a half-written line is read next time
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if FIT_END in line:  # Hydra's log format "[time][name][INFO] - ..." and Lightning's plain one
                if line.startswith("["):
                    self.ends_logged += 1
                else:
                    self.ends_plain += 1
        return max(self.ends_plain, self.ends_logged)

    def poll(self) -> tuple:
        """Update the progress from the log and metrics files; return what it saw (runs done, epoch,
        metric), which changes when there is something new to show."""
        runs_done = self._count_fit_ends()
        files = [p for folder in self.folders if folder.is_dir() for p in folder.rglob("metrics.csv")]
        files = [p for p in files if p.stat().st_mtime >= self.since]
        epoch = metric = None
        if len(files) > runs_done:  # a run is under way: the newest file is its
            epoch, metric = metrics_progress(max(files, key=lambda p: p.stat().st_mtime))
        self.progress.update(runs_done, epoch, metric)
        return runs_done, epoch, metric


def stage(out: Path, name: str, action) -> dict:
    """Run ``action()`` unless ``<out>/stages/<name>.json`` exists; record its result and wall time."""
    marker = out / "stages" / f"{name}.json"
    if marker.exists():
        log.info("stage %s: done before, skipped", name)
        return json.loads(marker.read_text())
    started = time.perf_counter()
    result = action() or {}
    result["seconds"] = round(time.perf_counter() - started, 1)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(result, indent=2))
    return result


def common_overrides(out: Path) -> list[str]:
    """Every app writes under ``out``: data, runs, aligned models, caches (built tiny models, scores)."""
    return [f"paths.root_dir={out}", f"paths.cache_dir={out / 'cache'}"]


def joined(values) -> str:
    return ",".join(str(v) for v in values)


# -- stages ------------------------------------------------------------------------------------------
def make_data(out: Path, size: Size) -> dict:
    from prefalign.config import bundled
    from prefalign.core.jsonl import read_jsonl, write_jsonl
    from prefalign.worlds.verifiable import write_principled, write_world

    world = write_world(
        out / "data" / "verifiable_world", size.world_train, 100, size.test, 0, FAMILIES, multi_turn_rate=0.1
    )
    principled = write_principled(
        out / "data" / "verifiable_principled",
        bundled("principles_correctness.yaml"),
        size.policy_train,
        100,
        size.test,
        size.sso_prompts,
        seed=10,
        families=FAMILIES,
    )
    files = {**world, **principled}
    if size.poft_clean is not None:
        rows = read_jsonl(world["train"])
        if size.poft_clean > len(rows):
            raise SystemExit(
                f"poft_clean={size.poft_clean} exceeds the world's {len(rows)} training conversations"
            )
        files["poft_train"] = write_jsonl(poft_train_path(out, size), rows[: size.poft_clean])
    return {"files": {k: str(v) for k, v in files.items()}}


def poft_train_path(out: Path, size: Size) -> Path:
    """The PoFT study's clean training conversations (before noise is mixed in)."""
    if size.poft_clean is None:
        return out / "data" / "verifiable_world" / "train.jsonl"
    return out / "data" / f"verifiable_world_{size.poft_clean}" / "train.jsonl"


def poft_data_overrides(out: Path, size: Size, noise: int | str) -> list[str]:
    """The PoFT study's training data: its clean conversations (the world's training split unless
    ``size.poft_clean`` is set) and ``noise`` noise samples."""
    subset = [f"data.train.path={poft_train_path(out, size)}"] if size.poft_clean is not None else []
    return [*subset, f"data.noise.num_samples={noise}"]


def app_stage(
    out: Path,
    name: str,
    module: str,
    overrides: list[str],
    multirun: bool = True,
    runs: int = 1,
    epochs: int | None = None,
    metrics_dir: Path | None = None,
) -> dict:
    """Run one app (a multirun with ``-m``) with its Hydra folder(s) in ``runs/<name>`` and its
    output in ``logs/<name>.log``; every app writes under ``out``. Its progress is logged as it
    goes (:class:`StageWatcher`): ``runs`` training runs of ``epochs`` epochs each, whose
    ``metrics.csv`` files are under ``runs/<name>`` (or ``metrics_dir``)."""
    folder = f"hydra.{'sweep' if multirun else 'run'}.dir={out / 'runs' / name}"
    command = ["-m"] * multirun + [*overrides, *common_overrides(out), folder]
    log_file = out / "logs" / f"{name}.log"
    watcher = StageWatcher(StageProgress(name, runs, epochs), log_file, [metrics_dir or out / "runs" / name])
    return {"app_seconds": run_app(module, command, log_file, watcher)}


def train_aligned(out: Path, size: Size) -> dict:
    overrides = [
        "experiment=cpu_world_aligned",
        "aligned_member=zephyr_bytes,llama3_bpe",
        f"trainer.max_epochs={size.aligned_epochs}",
        f"data.batch_size={size.batch}",
    ]
    return app_stage(out, "aligned", "prefalign.apps.train", overrides, runs=2, epochs=size.aligned_epochs)


def base_overrides(batch: int, epochs: int) -> list[str]:
    """The pretrained target's run (the ``base`` stage, here and in experiments/poft_mechanisms):
    the target's tiny model trained with CE on the clean world (its ChatML template and byte
    tokenizer), exported to ``runs/base/hf``."""
    return ["experiment=cpu_world_ce", f"data.batch_size={batch}", f"trainer.max_epochs={epochs}", "seed=0"]


def pretrained_target_overrides(out: Path) -> list[str]:
    """Start a training run from the pretrained target of the ``base`` stage instead of a fresh tiny model."""
    return ["model=hf", f"model.name_or_path={out / 'runs' / 'base' / 'hf'}", "model.dtype=float32"]


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


def train_policy(out: Path, size: Size) -> dict:
    overrides = ["experiment=cpu_world_policy", f"trainer.max_epochs={size.policy_epochs}"]
    return app_stage(
        out, "policy", "prefalign.apps.train", overrides, multirun=False, epochs=size.policy_epochs
    )


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
    runs = len(size.sso_variants) * len(size.sso_seeds) * iterations
    metrics_dir = out / "logs" / "cpu_world_sso"  # the pipelines' iteration folders
    return app_stage(
        out, "sso", "prefalign.apps.sso", overrides, runs=runs, epochs=epochs, metrics_dir=metrics_dir
    )


# -- reading results ---------------------------------------------------------------------------------
def job_overrides(run_dir: Path) -> dict[str, str]:
    """The command-line overrides of a Hydra job, as ``{key: value}``."""
    import yaml

    items = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    return dict(item.split("=", 1) for item in items)


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], scale: float = 100.0) -> str:
    mean, sd = mean_sd(values)
    return f"{scale * mean:.1f}" + (f" ± {scale * sd:.1f}" if len(values) > 1 else "")


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def wandb_runs(out: Path) -> list[Path]:
    return sorted(out.glob("**/wandb/offline-run-*"))


# -- main ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    size = SIZES[args.size]
    out = (args.out or HERE / "outputs" / args.size).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
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
        timings["policy"] = stage(out, "policy", lambda: train_policy(out, size))["seconds"]
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
