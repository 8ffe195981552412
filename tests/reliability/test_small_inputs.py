"""Issue 33 point 4: ``prefalign-score``'s settings are checked naming the key before any folder is
made, and an empty user message is refused naming the file and the sample."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from prefalign.config import config_dir, register_resolvers, validate_score_config
from prefalign.core.errors import ConfigError


def _score_cfg(tmp_path, *overrides):
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(
                config_name="score",
                overrides=[f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
            )
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("aligned.max_length=0", "config key `aligned.max_length` must be an integer >= 1, got 0"),
        ("data.max_length=-3", "config key `aligned.max_length` must be an integer >= 1, got -3"),
        ("aligned.batch_size=0", "config key `aligned.batch_size` must be an integer >= 1, got 0"),
        ("shard_size=abc", "config key `shard_size` must be an integer >= 1, got 'abc'"),
        ("splits=[train,test]", "config key `splits`: the data config has no `data.test` source"),
        ("splits=[]", "config key `splits`: a non-empty list"),
        (
            "aligned.aggregation=median",
            "config key `aligned.aggregation`: aligned.aggregation must be one of",
        ),
        ("lock_timeout=-1", "config key `lock_timeout`: seconds >= 0 or null"),
        (
            "data.train.path=/nonexistent/train.jsonl",
            "config key `data.train.path`: /nonexistent/train.jsonl",
        ),
    ],
)
def test_score_settings_name_the_key_before_any_folder_is_made(tmp_path, override, message):
    from prefalign.apps.score import score

    cfg = _score_cfg(tmp_path, override)
    with pytest.raises(ConfigError) as err:
        validate_score_config(cfg)
    assert message in str(err.value)
    with pytest.raises(ConfigError):
        score(cfg)
    assert not (tmp_path / "cache").exists()  # no cache folder, empty or not


def test_the_default_score_config_is_valid(tmp_path):
    validate_score_config(_score_cfg(tmp_path))
