"""benchmarks/gpu_check.py as tests: the GPU items (marker ``gpu``), and on any machine its refusal
to run without a GPU and the validity of its app arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.subprocesses
def test_without_a_gpu_the_check_fails_loudly_and_writes_nothing(tmp_path):
    output = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--output", str(output)],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "gpu_check: no CUDA GPU is visible" in done.stderr
    assert "needs a machine with >= 1 CUDA GPU" in done.stderr
    assert not output.exists()


def test_training_items_compose_with_the_project_configs(tmp_path):
    """Every training item's overrides name existing config keys and groups (tiny model on CPU)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from prefalign.config import config_dir, register_resolvers

    register_resolvers()
    checked = 0
    for item in gpu_check.items(2, tmp_path):
        if item.module != "prefalign.apps.train":
            continue
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="train", overrides=item.args)
        assert cfg.model.dtype == "bfloat16" and cfg.callbacks.meter._target_ == "gpu_check.TokenMeter"
        checked += 1
    assert checked == 11  # 4 objectives x 2 attention implementations, SSO on flex, fsdp, fsdp2


GPU_ITEMS = [item.name for item in gpu_check.items(1, Path("."))]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpu_check")
    gpu_check.write_sso_data(path / "sso.jsonl")
    return path


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_ITEMS)
def test_gpu_item(name, work):
    gpus = gpu_check.require_gpu()
    by_name = {item.name: item for item in gpu_check.items(gpus, work)}
    for needed in by_name[name].needs:  # e.g. PoFT reads the scores of the score item
        if not (work / f"{needed}.done").exists():
            assert gpu_check.run_item(by_name[needed], work)["passed"]
            (work / f"{needed}.done").touch()
    result = gpu_check.run_item(by_name[name], work)
    assert result["passed"], result.get("error")
    if name.startswith(("train_", "fsdp")):
        assert result["tokens_per_s"] > 0 and result["peak_gpu_mib"] > 0, json.dumps(result)


@pytest.mark.gpu
def test_gpu_logprob_memory(work):
    gpu_check.require_gpu()
    result = gpu_check.logprob_memory_item(work)
    assert result["passed"], result.get("error")
