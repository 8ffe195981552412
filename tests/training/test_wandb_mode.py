"""choose_wandb_mode asks wandb whether it has an API key for its server (self-hosted included)."""

from __future__ import annotations

import logging
import os

import pytest

from prefalign.training.run import choose_wandb_mode

KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters, the shape of a W&B API key
HOST = "https://wandb.example.com"


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    return tmp_path


def _netrc(folder, machine):
    path = folder / "custom_netrc"
    path.write_text(f"machine {machine}\n  login user\n  password {KEY}\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def test_a_self_hosted_key_in_a_custom_netrc_means_online(clean_env, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_BASE_URL", HOST)
    monkeypatch.setenv("NETRC", str(_netrc(clean_env, "wandb.example.com")))
    with caplog.at_level(logging.INFO, logger="prefalign.training.run"):
        assert choose_wandb_mode() == "online"
    lines = [r.getMessage() for r in caplog.records if r.name == "prefalign.training.run"]
    assert lines == [f"W&B online at {HOST} (API key from netrc ({clean_env / 'custom_netrc'}))"]


def test_a_key_for_another_host_does_not_count(clean_env, monkeypatch, caplog):
    """The old rule (grep ~/.netrc for api.wandb.ai) said online here; wandb would fail."""
    monkeypatch.setenv("WANDB_BASE_URL", HOST)
    (clean_env / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {KEY}\n")
    (clean_env / ".netrc").chmod(0o600)
    with caplog.at_level(logging.INFO, logger="prefalign.training.run"):
        assert choose_wandb_mode() == "offline"
    assert os.environ["WANDB_MODE"] == "offline"
    lines = [r.getMessage() for r in caplog.records if r.name == "prefalign.training.run"]
    assert lines == [f"W&B offline: no API key for {HOST} (sync later with `wandb sync`)"]


def test_an_api_key_in_the_environment_means_online(clean_env, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", HOST)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert choose_wandb_mode() == "online"


def test_an_explicit_mode_wins_and_is_logged(clean_env, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    with caplog.at_level(logging.INFO, logger="prefalign.training.run"):
        assert choose_wandb_mode() == "disabled"
    assert [r.getMessage() for r in caplog.records if r.name == "prefalign.training.run"] == [
        "W&B mode disabled (WANDB_MODE)"
    ]
