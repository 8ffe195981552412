"""Atomic checkpoints and exports: everything is written under a temporary name beside its final
name, synced, and renamed, so a failed write (a full disk, a killed process) never leaves a
truncated file or half a folder under the final name, and leaves no temporary behind.

Lightning's own writer serialises the whole checkpoint into memory and, through fsspec, writes it
to the system temporary folder before moving it; across file systems that move is a copy into
the final name, which a full disk truncates. Here the temporary file is in the checkpoint's own
folder (same file system: ``os.replace`` is atomic) and ``torch.save`` streams into it.

Hugging Face exports (:func:`write_hf_export`: full model, merged LoRA plus its adapter, the
tokenizer, a generation config that stops at the chat template's end-of-turn token) are written
into an :func:`atomic_folder` (:mod:`prefalign.core.jsonl`, re-exported here).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from prefalign.core.jsonl import atomic_folder, atomic_write

log = logging.getLogger(__name__)
__all__ = [
    "AtomicCheckpointIO",
    "AtomicCheckpoints",
    "atomic_folder",
    "atomic_write",
    "is_peft_model",
    "merged_lora_copy",
    "write_hf_export",
]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic local writes (remote URLs keep Lightning's writer)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path)
        with atomic_write(Path(path), "wb") as f:
            torch.save(checkpoint, f)
        return None


class AtomicCheckpoints(L.Callback):
    """Makes the trainer write checkpoint files atomically (:class:`AtomicCheckpointIO`).

    Strategies that save a single file through Lightning's default ``TorchCheckpointIO`` (single
    device, DDP, FSDP2 with ``save_distributed_checkpoint: false``) get the atomic writer; a
    custom checkpoint IO plugin is left alone (with a warning). Sharded checkpoint folders
    (FSDP / FSDP2 with distributed checkpoints) are written by ``torch.distributed.checkpoint``
    and are not covered.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        current = strategy.checkpoint_io
        if type(current) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()
        elif not isinstance(current, AtomicCheckpointIO):
            log.warning("checkpoint IO %s is custom: checkpoints are written by it, not atomically", current)


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` is a peft model (a LoRA adapter on a frozen base)."""
    return callable(getattr(model, "merge_and_unload", None)) and hasattr(model, "peft_config")


def merged_lora_copy(model: Any, state_dict: dict[str, torch.Tensor] | None = None) -> Any:
    """A CPU copy of the peft ``model`` with its active adapter merged into the base weights
    (peft's ``merge_and_unload``); ``model`` itself is not changed.

    Args:
        state_dict: the peft model's full state dict (gathered from the shards under FSDP / FSDP2);
            ``None`` reads ``model.state_dict()``. Its tensors are copied to the CPU, loaded into a
            skeleton of the base model (built on the meta device, so no second random
            initialisation is paid) wrapped with the same adapter config, and merged there.
    """
    from peft import get_peft_model

    if state_dict is None:
        state_dict = model.state_dict()
    weights = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
    base = model.get_base_model()
    adapter = model.active_adapter
    with torch.device("meta"):
        skeleton = type(base)(base.config)
    wrapped = get_peft_model(skeleton, copy.deepcopy(model.peft_config[adapter]), adapter_name=adapter)
    wrapped.load_state_dict(weights, strict=True, assign=True)
    if getattr(base.config, "tie_word_embeddings", False):
        skeleton.tie_weights()  # assign=True loaded the tied head as a tensor of its own
    merged = wrapped.merge_and_unload()
    if getattr(base, "generation_config", None) is not None:
        merged.generation_config = copy.deepcopy(base.generation_config)
    return merged


# Tokenizer settings of how it was loaded on this machine (``from_pretrained`` keeps them in
# ``init_kwargs``, ``save_pretrained`` writes them out): an export carries none of them.
LOADING_SETTINGS = (
    "is_local",
    "local_files_only",
    "cache_dir",
    "revision",
    "token",
    "use_auth_token",
    "force_download",
    "proxies",
    "subfolder",
    "trust_remote_code",
    "gguf_file",
    "_commit_hash",
)


def save_tokenizer(tokenizer: Any, folder: str | Path) -> None:
    """Save ``tokenizer`` into ``folder`` as an export should hold it: without the loading-time
    settings of this machine (:data:`LOADING_SETTINGS`), and with the ``{% generation %}``-marked
    form of the project's own chat templates (:func:`prefalign.models.chat_templates.training_template`:
    it renders byte-identically, and TRL's ``assistant_only_loss=True`` accepts it). The tokenizer
    object itself is left as it was."""
    from prefalign.models.chat_templates import training_template

    template, kwargs = tokenizer.chat_template, tokenizer.init_kwargs
    tokenizer.chat_template = training_template(template)
    tokenizer.init_kwargs = {k: v for k, v in kwargs.items() if k not in LOADING_SETTINGS}
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.chat_template, tokenizer.init_kwargs = template, kwargs


def write_hf_export(
    model: Any,
    tokenizer: Any,
    folder: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
    dtype: str | None = None,
) -> None:
    """Write ``model`` (and ``tokenizer``) in Hugging Face format into ``folder`` (an empty folder:
    the temporary one of :func:`atomic_folder`).

    Layout: ``folder/`` holds a full model that ``AutoModelForCausalLM.from_pretrained`` (vLLM,
    lm-eval) loads, with the tokenizer. A LoRA (peft) model is written merged there (adapter
    merged into a copy of the base, :func:`merged_lora_copy`), and its adapter alone goes to
    ``folder/adapter/`` (``PeftModel.from_pretrained(base, folder/adapter)``, with the tokenizer too).
    The ``generation_config.json`` of a causal LM lists as ``eos_token_id`` the model's own EOS, the
    tokenizer's EOS and the chat template's end-of-turn token
    (:func:`prefalign.models.chat_templates.end_of_turn_ids`), so ``generate()`` stops at the end
    of an answer also when the chat template was overridden (``model.chat_template``).

    Args:
        state_dict: the full state dict to write (gathered from FSDP / FSDP2 shards); ``None``: the
            model's own weights.
        dtype: ``bfloat16`` | ``float16`` | ``float32``: the floating-point weights are written in
            this dtype and ``config.json`` says so (``from_pretrained(dtype="auto")``, vLLM and the
            Hub read it); ``None``: the trained weights' own dtype.
    """
    from prefalign.models.chat_templates import end_of_turn_ids

    folder = Path(folder)
    if is_peft_model(model):
        model.save_pretrained(folder / "adapter", state_dict=state_dict)
        if tokenizer is not None:
            save_tokenizer(tokenizer, folder / "adapter")
        full, state_dict = merged_lora_copy(model, state_dict), None
    else:
        full = model
    if dtype is None:
        full.save_pretrained(folder, state_dict=state_dict)
    else:
        from prefalign.models.loading import DTYPES

        if dtype not in DTYPES:
            raise ValueError(
                f"callbacks.hf_export.dtype must be one of {sorted(DTYPES)} or null, got {dtype!r}"
            )
        weights = full.state_dict() if state_dict is None else state_dict
        weights = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in weights.items()}
        full.save_pretrained(folder, state_dict=weights)
        # config.json names the dtype the files hold (save_pretrained writes the model's own)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config["dtype"] = dtype
        (folder / "config.json").write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    if tokenizer is None:
        return
    save_tokenizer(tokenizer, folder)
    generation = getattr(full, "generation_config", None)
    if generation is not None and (folder / "generation_config.json").exists():
        generation = copy.deepcopy(generation)
        ids = end_of_turn_ids(tokenizer, generation.eos_token_id)
        generation.eos_token_id = ids[0] if len(ids) == 1 else ids
        generation.save_pretrained(folder)
