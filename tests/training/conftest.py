"""Compose the ``train`` config in-process, as the CLI would, with outputs under tmp_path."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from prefalign.config import config_dir, register_resolvers

# Small and quick: 48 training samples, batches of 8, no progress bar.
FAST = [
    "data.train.limit=48",
    "data.val.limit=16",
    "data.batch_size=8",
    "callbacks.progress_bar=null",
    "trainer.log_every_n_steps=1",
    "optimizer.lr=3e-3",
]


@pytest.fixture
def compose_train(tmp_path, session_cache):
    register_resolvers()

    def make(overrides=(), output="run", config_name="train"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                config_name=config_name,
                overrides=[
                    f"paths.root_dir={tmp_path}",
                    f"paths.output_dir={tmp_path / output}",
                    f"paths.cache_dir={session_cache}",
                    *FAST,
                    *overrides,
                ],
                return_hydra_config=True,
            )
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]  # the CLI's task config has no `hydra` node either
        return cfg

    yield make
    GlobalHydra.instance().clear()
