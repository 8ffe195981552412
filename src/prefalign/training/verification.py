"""Checkpoints are verified before they are used.

- **Bytes.** A Lightning checkpoint file is a zip archive (``torch.save``'s format) whose entries
  carry CRC-32s; :func:`verify_checkpoint` reads every entry and checks it, so flipped bytes, a
  truncated file or a file that is no checkpoint at all stop the run naming the file and the entry
  (:class:`~prefalign.core.checksums.CorruptArtefactError`) instead of training on. Of a sharded
  checkpoint folder (FSDP / FSDP2) only ``meta.pt`` (the loop state) is checked; torch.distributed's
  shard files carry no checksums. ``ckpt_path=auto`` skips a damaged checkpoint and falls back to
  the newest intact one, saying so (:func:`prefalign.training.resume.latest_checkpoint`).
- **Shape.** Every checkpoint records the model's config (:class:`RecordModelConfig`, under
  ``model_config``); resuming one into a model of another shape is refused naming the checkpoint
  and the config keys that differ (:func:`check_checkpoint_fits`), not with torch's ``size
  mismatch for model.model.embed_tokens.weight``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from prefalign.core.checksums import CorruptArtefactError
from prefalign.core.differences import differences
from prefalign.core.errors import ConfigError

MODEL_CONFIG_KEY = "model_config"
_CHUNK = 16 << 20
# Config entries that describe where or how a model was saved, not its shape.
_IGNORED_CONFIG_KEYS = {"transformers_version", "dtype", "torch_dtype", "architectures", "use_cache"}


def verify_checkpoint(path: str | Path) -> None:
    """Check a checkpoint's bytes: every entry of the zip archive against its CRC-32 (a sharded
    checkpoint folder: its ``meta.pt``).

    Raises:
        CorruptArtefactError: naming the file and the damaged entry (or why the file is unreadable:
            permissions, not a zip archive, truncated).
    """
    path = Path(path)
    source = path / "meta.pt" if path.is_dir() else path
    try:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                try:
                    with archive.open(info) as entry:
                        while entry.read(_CHUNK):
                            pass
                except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:  # BadZipFile: CRC
                    raise CorruptArtefactError(
                        f"checkpoint {source}: entry {info.filename} is damaged ({err}); use another "
                        "checkpoint (ckpt_path=auto falls back to the newest intact one)"
                    ) from err
    except CorruptArtefactError:
        raise
    except zipfile.BadZipFile as err:
        raise CorruptArtefactError(
            f"checkpoint {source} is not a readable checkpoint archive ({err}): truncated or overwritten"
        ) from err
    except OSError as err:
        raise CorruptArtefactError(
            f"checkpoint {source} cannot be read ({type(err).__name__}: {err.strerror or err})"
        ) from err


class RecordModelConfig(L.Callback):
    """Stores the model's Hugging Face config (``model.config.to_dict()``; a LoRA model's base
    config) in every checkpoint under ``model_config``, so that a resume into a model of another
    shape names the keys that differ (:func:`check_checkpoint_fits`)."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        config = model_config(getattr(pl_module, "model", None))
        if config is not None:
            checkpoint[MODEL_CONFIG_KEY] = config


def model_config(model: Any) -> dict[str, Any] | None:
    """A model's Hugging Face config as a dict (a peft model: its base model's), or ``None``."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = getattr(base, "config", None)
    return config.to_dict() if config is not None and hasattr(config, "to_dict") else None


def check_checkpoint_fits(path: str | Path, module: L.LightningModule) -> None:
    """Refuse a checkpoint whose weights do not fit ``module`` (other names or shapes).

    The checkpoint is memory-mapped (its tensors are not read). A sharded checkpoint folder is not
    checked here (torch.distributed.checkpoint reports its own mismatches).

    Raises:
        ConfigError: naming the checkpoint file, the config keys that differ (when the checkpoint
            records its model config) and the first differing tensors.
    """
    path = Path(path)
    if path.is_dir():
        return
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    saved = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items()}
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    tensors = [
        f"{name}: {saved.get(name, 'absent')} in the checkpoint, {expected.get(name, 'absent')} in the model"
        for name in sorted(set(saved) | set(expected))
        if saved.get(name) != expected.get(name)
    ]
    if not tensors:
        return
    recorded = checkpoint.get(MODEL_CONFIG_KEY)
    current = model_config(getattr(module, "model", None))
    if recorded is not None and current is not None:
        found = differences(
            recorded, current, skip=lambda name: name.startswith("_") or name in _IGNORED_CONFIG_KEYS
        )
        keys = [f"{key}: {before!r} in the checkpoint, {now!r} now" for key, before, now in found]
        keys = keys or ["(no config key differs)"]
        what = "model config keys that differ: " + "; ".join(keys)
    else:
        what = "the checkpoint records no model config (written before prefalign recorded it)"
    shown = "; ".join(tensors[:5]) + (f"; and {len(tensors) - 5} more" if len(tensors) > 5 else "")
    raise ConfigError(
        f"checkpoint {path} was saved from a model of another shape than config key `model` builds: "
        f"{what}. Tensors: {shown}. Resume with the model it was trained with, or start afresh"
    )
