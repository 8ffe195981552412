"""Small artefacts made once per session with the project's own apps, at tiny size (a pytest plugin
of tests/conftest.py; every test using ``artefacts`` runs in one xdist worker).

``artefacts`` runs, under one folder (``PREFALIGN_ROOT``), W&B offline:

- ``prefalign-score`` of the bundled tiny chats (48 train + 16 noise samples, 16 val) with the
  tiny two-member ensemble, into ``scores/``;
- ``prefalign-train objective=ce`` (CSV only, exported to ``hf/``) and ``objective=poft`` (W&B offline + CSV, τ / margin
  histograms and the sample table every 2 batches), two epochs each, into
  ``logs/train/runs/{ce,poft}``;
- ``prefalign-sso`` with two iterations of 4 prompts, 8 new tokens and the tiny LLM judge, into
  ``logs/sso/default``.

The notebooks, the analysis and W&B tests and the PoFT command-line test read them; each app's
output is in ``<root>/<name>.log``.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from shared import app_env

NOISE = "data.noise={num_samples: 16, seed: 0}"
DATA = ["data.train.limit=48", "data.val.limit=16", NOISE]
NOISE_SAMPLES = 16
TRAIN_SAMPLES = 48 + NOISE_SAMPLES
SSO_TRAIN = (
    '["data=tiny_preference","data.max_length=2048","data.batch_size=4","trainer.max_epochs=1",'
    '"optimizer.lr=1e-4","logger=csv","callbacks.progress_bar=null"]'
)
JUDGE = (
    "judge={_target_: prefalign.generation.judges.LLMJudge.from_model_config, "
    "model: {tiny: {template: chatml, seed: 5}, cache_dir: ${paths.cache_dir}/models}}"
)


@dataclass
class Artefacts:
    """Where the session's artefacts are, and the overrides that made them."""

    root: Path
    score_overrides: list[str]

    def output(self, name: str) -> str:
        """What the app that made ``name`` (``score``, ``ce``, ``poft`` or ``sso``) printed."""
        return (self.root / f"{name}.log").read_text(encoding="utf-8")

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def score_root(self) -> Path:
        return self.root / "scores"

    def run(self, name: str) -> Path:
        return self.logs / "train" / "runs" / name

    @property
    def sso(self) -> Path:
        return self.logs / "sso" / "default"


def _start(name: str, module: str, args: list[str], root: Path, cache: str) -> tuple[str, subprocess.Popen]:
    """Start an app, its output to ``<root>/<name>.log``; one thread each, as up to three run side
    by side on small machines."""
    env = app_env(root, cache, OMP_NUM_THREADS="1")
    with (root / f"{name}.log").open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    return name, process


def _wait(root: Path, *started: tuple[str, subprocess.Popen]) -> None:
    for name, process in started:
        process.wait(timeout=600)
        assert process.returncode == 0, (root / f"{name}.log").read_text(encoding="utf-8")[-4000:]


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory, session_cache) -> Artefacts:
    """The session's tiny score cache, CE and PoFT runs and SSO run (see the module docstring)."""
    root = tmp_path_factory.mktemp("artefacts")
    score_overrides = [*DATA, f"aligned.cache_dir={root / 'scores'}"]
    common = [
        *score_overrides,
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar=null",
        "optimizer.lr=3e-3",
    ]
    sso_args = [
        "iterations=2",
        "prompts.limit=8",
        "sampling.max_new_tokens=8",
        "sampling.batch_size=8",
        "allocation.max_new_tokens=8",
        f"train_overrides={SSO_TRAIN}",
        JUDGE,
        "hydra.run.dir=logs/sso_hydra",
    ]
    # score, CE and SSO side by side (tiny models are written to the cache atomically); PoFT after score
    score = _start(
        "score",
        "prefalign.apps.score",
        [*score_overrides, "trainer.enable_progress_bar=false"],
        root,
        session_cache,
    )
    ce = _start(
        "ce",
        "prefalign.apps.train",
        [*common, "objective=ce", "logger=csv", "hydra.run.dir=logs/train/runs/ce"],
        root,
        session_cache,
    )
    sso = _start("sso", "prefalign.apps.sso", sso_args, root, session_cache)
    _wait(root, score)
    poft = [
        *common,
        "objective=poft",
        "callbacks.hf_export=null",
        "callbacks.metric_histograms.every_n_steps=2",
        "callbacks.sample_table.every_n_steps=2",
        "callbacks.sample_table.max_rows=6",
        "tags=[dev,notebooks]",
        "hydra.run.dir=logs/train/runs/poft",
    ]
    _wait(root, _start("poft", "prefalign.apps.train", poft, root, session_cache), ce, sso)
    return Artefacts(root=root, score_overrides=score_overrides)
