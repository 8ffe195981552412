"""A model loaded from a GGUF file (dequantised) is a plain model: it trains and saves.

transformers keeps its GGUF quantizer on the dequantised model and then refuses ``save_pretrained``,
which broke the SSO pipeline's export of every iteration's policy trained from SmolLM2's GGUF.
The fixture is a tiny Llama written with the ``gguf`` package (tests/shared.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from shared import GGUF_HIDDEN, GGUF_VOCAB, write_tiny_llama_gguf

from prefalign.models.loading import load_causal_lm

pytest.importorskip("gguf", reason="gguf is not installed: pip install -e '.[dev]' (or '.[demo]')")


@pytest.fixture(autouse=True)
def _model_cache(tmp_path, monkeypatch):
    """GGUF copies (prefalign.models.loading.gguf_hf_copy) go to this test's folder, not ~/.cache."""
    monkeypatch.setenv("PREFALIGN_CACHE", str(tmp_path / "prefalign-cache"))


def test_a_dequantised_gguf_model_trains_and_saves_like_a_plain_model(tmp_path):
    name = write_tiny_llama_gguf(tmp_path)
    model = load_causal_lm(str(tmp_path), gguf_file=name)
    assert model.config.hidden_size == GGUF_HIDDEN and model.config.vocab_size == GGUF_VOCAB
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert not hasattr(model.config, "quantization_config")
    ids = torch.tensor([[2, 3, 4, 5]])
    model(input_ids=ids, labels=ids).loss.backward()  # trainable: plain tensors with gradients
    assert model.lm_head.weight.grad is not None
    model.save_pretrained(tmp_path / "saved")  # refused before the fix ("not serializable")
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert torch.equal(saved["lm_head.weight"], model.lm_head.weight.detach())
    reloaded = load_causal_lm(str(tmp_path / "saved"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_a_gguf_file_is_dequantised_once_into_a_cached_folder_that_loads_the_same_weights(
    tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM

    from prefalign.models import loading

    name = write_tiny_llama_gguf(tmp_path)
    cache = tmp_path / "cache"
    direct = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=name, dtype=torch.float32)
    model = load_causal_lm(str(tmp_path), gguf_file=name, cache_dir=cache)
    (copy,) = cache.glob("gguf-tiny-*")
    assert (copy / "model.safetensors").is_file() and (copy / "gguf_source.json").is_file()
    ids = torch.tensor([[2, 3, 4, 5, 6]])
    with torch.no_grad():  # the copy holds exactly the dequantised weights
        torch.testing.assert_close(model(ids).logits, direct(ids).logits, rtol=0, atol=0)

    calls = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        loading.AutoModelForCausalLM,
        "from_pretrained",
        lambda *a, **k: calls.append(k.get("gguf_file")) or real(*a, **k),
    )
    again = load_causal_lm(str(tmp_path), gguf_file=name, cache_dir=cache, dtype="bfloat16")
    assert calls == [None]  # read from the copy: the GGUF file is not dequantised again
    assert again.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(again.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))

    # a rewritten file (other size / modification time) gets a new copy
    import os

    os.utime(tmp_path / name, ns=(0, 0))
    load_causal_lm(str(tmp_path), gguf_file=name, cache_dir=cache)
    assert calls[1:] == [name, None] and len(list(cache.glob("gguf-tiny-*"))) == 2


def test_a_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.gguf_file: no such file .*absent.gguf"):
        load_causal_lm(str(tmp_path), gguf_file="absent.gguf", cache_dir=tmp_path / "cache")
