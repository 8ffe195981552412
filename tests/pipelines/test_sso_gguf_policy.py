"""An SSO run that starts from a GGUF model (SmolLM2's) samples and trains π_i from π_i's own
exported folder: the starting model's ``gguf_file`` (an absolute path) is not carried over, or
transformers would load the GGUF in its place and every iteration would restart from π_0."""

from __future__ import annotations

import pytest
import torch
from shared import write_tiny_llama_gguf

from prefalign.models.loading import load_causal_lm

pytest.importorskip("gguf", reason="gguf is not installed: pip install -e '.[dev]' (or '.[demo]')")


@pytest.fixture(autouse=True)
def _model_cache(tmp_path, monkeypatch):
    """GGUF copies (prefalign.models.loading.gguf_hf_copy) go to this test's folder, not ~/.cache."""
    monkeypatch.setenv("PREFALIGN_CACHE", str(tmp_path / "prefalign-cache"))


def test_later_policies_are_loaded_from_their_folder_not_the_starting_gguf(tmp_path, compose_sso):
    start = tmp_path / "start"
    start.mkdir()
    gguf_file = str(start / write_tiny_llama_gguf(start))  # absolute, as ${package_file:...} gives
    pipeline = compose_sso(
        "model=hf",
        f"model.name_or_path={start}",
        f"model.gguf_file={gguf_file}",
        "model.dtype=float32",
        "iterations=2",
        f"paths.root_dir={tmp_path}",
        "wandb=null",
    )
    assert pipeline.policy_model_cfg(0)["gguf_file"] == gguf_file
    assert pipeline.policy_model_cfg(1)["gguf_file"] is None
    assert pipeline.train_configs[1].model.gguf_file == gguf_file  # π_0 trains from the GGUF
    assert pipeline.train_configs[2].model.gguf_file is None  # π_1 from iteration 1's export
    assert pipeline.train_configs[2].reference.model.gguf_file is None

    # π_1 = π_0 with other weights, exported where the pipeline reads it
    pi_1 = load_causal_lm(str(start), gguf_file=gguf_file)
    with torch.no_grad():
        pi_1.lm_head.weight.add_(1.0)
    pi_1.save_pretrained(pipeline.iteration_dir(1) / "policy")
    cfg_1 = pipeline.policy_model_cfg(1)
    loaded = load_causal_lm(cfg_1["name_or_path"], gguf_file=cfg_1["gguf_file"])
    assert torch.equal(loaded.lm_head.weight, pi_1.lm_head.weight)
    # what the carried-over GGUF path loaded instead: π_0's weights
    stale = load_causal_lm(cfg_1["name_or_path"], gguf_file=gguf_file)
    assert not torch.equal(stale.lm_head.weight, pi_1.lm_head.weight)
