"""What several test files share that is not a fixture (tests/ is on ``sys.path``: ``from shared
import ...``): the environment of an app run in a child process, the trainer settings of in-process
CPU scoring, importing a script by its path, a tiny GGUF model file, and a callback that stops an
in-process run as a killed job would."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import lightning as L
import pytest


def app_env(root, cache, *, python_path=None, **extra: str) -> dict[str, str]:
    """The environment a test runs one of the project's apps in: this one, W&B offline, outputs under
    ``root`` (``PREFALIGN_ROOT``), built models in ``cache`` (``PREFALIGN_CACHE``), ``python_path``
    ahead of ``PYTHONPATH`` (a callback or plugin the test wrote), then ``extra``."""
    env = {**os.environ, "WANDB_MODE": "offline", "PREFALIGN_ROOT": str(root), "PREFALIGN_CACHE": str(cache)}
    if python_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(python_path), os.environ.get("PYTHONPATH", "")])
    return {**env, **extra}


class Preempted(RuntimeError):
    """Raised by :class:`StopAtStep`, standing for a killed job."""


class StopAtStep(L.Callback):
    """Stops the run at the start of the batch that would make optimiser step ``step + 1``; in a
    callbacks config: ``{"_target_": STOP_AT_STEP, "step": k}``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Preempted(f"stopped at step {self.step}")


STOP_AT_STEP = f"{StopAtStep.__module__}.StopAtStep"


# Lightning trainer keyword arguments of the scoring engine's in-process CPU runs.
CPU = {"accelerator": "cpu", "enable_progress_bar": False}

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, name: str) -> ModuleType:
    """The script at ``ROOT / relative_path`` (an ``experiments/<study>/run.py``, which is not in a
    package) imported as module ``name``, once a session; registered in ``sys.modules`` as its
    dataclasses need."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# The tiny GGUF model's shape.
GGUF_VOCAB, GGUF_HIDDEN, GGUF_FFN, GGUF_LAYERS, GGUF_HEADS = 64, 32, 64, 2, 4


def write_tiny_llama_gguf(folder: Path) -> str:
    """A 2-layer Llama (hidden 32, vocabulary 64, float32 tensors) written with the ``gguf`` package
    as ``folder/tiny.gguf``; returns the file name."""
    gguf = pytest.importorskip("gguf", reason="gguf is not installed: pip install -e '.[dev]' (or '.[demo]')")
    import numpy as np

    writer = gguf.GGUFWriter(str(folder / "tiny.gguf"), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(GGUF_HIDDEN)
    writer.add_block_count(GGUF_LAYERS)
    writer.add_feed_forward_length(GGUF_FFN)
    writer.add_head_count(GGUF_HEADS)
    writer.add_head_count_kv(GGUF_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(GGUF_HIDDEN // GGUF_HEADS)
    writer.add_vocab_size(GGUF_VOCAB)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(GGUF_VOCAB)])
    writer.add_token_types([1] * GGUF_VOCAB)
    writer.add_token_scores([0.0] * GGUF_VOCAB)  # transformers derives the (no) BPE merges from them
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    rng = np.random.default_rng(0)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(GGUF_VOCAB, GGUF_HIDDEN))
    for i in range(GGUF_LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(GGUF_HIDDEN, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(GGUF_HIDDEN, GGUF_HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(GGUF_HIDDEN, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(GGUF_FFN, GGUF_HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(GGUF_FFN, GGUF_HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(GGUF_HIDDEN, GGUF_FFN))
    writer.add_tensor("output_norm.weight", np.ones(GGUF_HIDDEN, np.float32))
    writer.add_tensor("output.weight", weight(GGUF_VOCAB, GGUF_HIDDEN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return "tiny.gguf"
