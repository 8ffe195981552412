"""Fault injection around a tiny training run.

A fault class joins this folder with one test: compose a tiny run with :func:`tiny_run` (the CE
quick start on 16 bundled chats, two steps per epoch, CSV logger only), inject the fault (an
override, a monkeypatched writer or objective, a corrupt file) and assert the clear error or the
correct recovery on what the run left in its folder (:class:`TinyRun`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from prefalign.config import config_dir, register_resolvers

TINY = [
    "data.train.limit=16",
    "data.val.limit=8",
    "data.batch_size=8",
    "callbacks.progress_bar=null",
    "trainer.log_every_n_steps=1",
    "optimizer.lr=3e-3",
    "logger=csv",
]


@dataclass
class TinyRun:
    """A composed tiny run and where it writes."""

    cfg: DictConfig

    @property
    def out(self) -> Path:
        return Path(self.cfg.paths.output_dir)

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def files(self, folder: str = "") -> list[str]:
        """Every file and folder name under the run's ``folder`` (hidden temporaries included)."""
        root = self.out / folder
        return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []

    def train(self):
        from prefalign.training.run import run_task, train

        return run_task(train, self.cfg)


@pytest.fixture
def tiny_run(tmp_path, session_cache):
    """``tiny_run(*overrides)``: a :class:`TinyRun` of ``train`` composed as the CLI would."""
    register_resolvers()

    def make(*overrides: str, output: str = "run") -> TinyRun:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[
                    f"paths.root_dir={tmp_path}",
                    f"paths.output_dir={tmp_path / output}",
                    f"paths.cache_dir={session_cache}",
                    *TINY,
                    *overrides,
                ],
                return_hydra_config=True,
            )
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return TinyRun(cfg)

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if training gets as far as loading a model (config checks must stop before)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config error was raised")

    monkeypatch.setattr("prefalign.training.run.load_model_and_tokenizer", refuse)
