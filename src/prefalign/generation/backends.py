"""One factory for the sampling backend of every app that generates outside the Trainer.

``build_generator(generation_cfg, model_cfg)`` reads ``generation.backend`` (``hf`` | ``vllm``,
``conf/generation/*.yaml``) and returns a :class:`prefalign.generation.sampling.Generator`:

- ``hf``: the model loaded by :func:`prefalign.models.loading.load_for_inference` on
  ``generation.device`` (``auto``: this rank's GPU, else the CPU) in the model's dtype and attention
  implementation, sampled with :class:`~prefalign.generation.sampling.HFGenerator`;
- ``vllm``: a vLLM engine serving the model's Hugging Face folder
  (:class:`~prefalign.generation.vllm.VLLMGenerator`).

Errors at start-up name the setting and the fix (:func:`check_generation_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefalign.core.checksums import verify_checksums
from prefalign.core.errors import ConfigError
from prefalign.generation.sampling import HFGenerator
from prefalign.generation.vllm import VLLMGenerator, require_vllm
from prefalign.models.loading import (
    frozen_model_config,
    load_for_inference,
    load_tokenizer,
    resolve_model_path,
    resolve_placement,
)

BACKENDS = ("hf", "vllm")


def check_generation_config(generation: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> None:
    """Validate ``generation`` against the installed packages and the machine (call at start-up)."""
    backend = generation.get("backend", "hf")
    if backend not in BACKENDS:
        raise ConfigError(f"generation.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "hf":
        resolve_placement(model_cfg, str(generation.get("device", "auto")), setting="generation.device")
        return
    require_vllm()
    if model_cfg.get("gguf_file"):
        raise ConfigError(
            f"generation.backend=vllm serves a Hugging Face model folder, not the GGUF file "
            f"model.gguf_file={model_cfg['gguf_file']!r}: set generation.backend=hf"
        )
    if model_cfg.get("lora"):
        raise ConfigError(
            "generation.backend=vllm serves merged weights; a model with model.lora set must be exported "
            "(merged) first, or use generation.backend=hf"
        )


def build_generator(
    generation: Mapping[str, Any], model: Mapping[str, Any], seed: int = 0
) -> HFGenerator | VLLMGenerator:
    """The generator for the ``model`` config on the backend chosen by ``generation.backend``
    (the SSO pipeline's ``generator._target_``: it passes each policy's model config as ``model``).
    The sampler is a frozen copy: ``hf`` loads it in ``model.frozen_dtype`` when that is set."""
    model = frozen_model_config(model)
    check_generation_config(generation, model)
    if generation.get("backend", "hf") == "hf":
        loaded, tokenizer = load_for_inference(
            model, str(generation.get("device", "auto")), setting="generation.device"
        )
        return HFGenerator(loaded, tokenizer)
    path = resolve_model_path(model)
    if Path(path).is_dir():  # vLLM reads the folder itself: a prefalign export is verified first
        verify_checksums(path)
    tokenizer = load_tokenizer(
        path,
        revision=model.get("revision"),
        chat_template=model.get("chat_template"),
        trust_remote_code=bool(model.get("trust_remote_code", False)),
    )
    return VLLMGenerator.from_config(path, tokenizer, generation, seed=seed)
