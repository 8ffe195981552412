"""Simulated GPUs for the planner: the fake process group and device mesh, ``torch.cuda`` stubs,
a private fake mode for DTensor's sharding propagation, and SDPA routed to kernels with fake
implementations. Needs the fake-CUDA shim loaded (:mod:`prefalign.planning.shim`) on a CPU build.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

from prefalign.planning import torch_private


class _FakeStream:
    """A CUDA stream that does nothing (FSDP2 creates streams and waits on them)."""

    def __init__(self, *args, **kwargs) -> None:
        self.device = torch.device("cuda", 0)
        self.priority = kwargs.get("priority", 0)

    def wait_stream(self, other) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None):
        return event if event is not None else _FakeEvent()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def __eq__(self, other) -> bool:
        return isinstance(other, _FakeStream)

    def __hash__(self) -> int:
        return 0


class _FakeEvent:
    """A CUDA event that does nothing."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def record(self, stream=None) -> None:
        pass

    def wait(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


_STREAM = _FakeStream()


@contextlib.contextmanager
def _stream_context(stream=None) -> Iterator[None]:
    yield


@contextlib.contextmanager
def cuda_stubs(devices: int) -> Iterator[None]:
    """``torch.cuda``'s device, stream, event and sync functions as no-ops reporting ``devices``
    devices, restored on exit. FSDP2 calls them; with them stubbed no real GPU is ever touched."""
    stubs = {
        "is_available": lambda: True,
        "is_initialized": lambda: True,
        "_lazy_init": lambda: None,
        "device_count": lambda: devices,
        "current_device": lambda: 0,
        "set_device": lambda device: None,
        "synchronize": lambda device=None: None,
        "is_bf16_supported": lambda including_emulation=True: True,  # the GPUs planned for: Ampere or newer
        "Stream": _FakeStream,
        "Event": _FakeEvent,
        "current_stream": lambda device=None: _STREAM,
        "default_stream": lambda device=None: _STREAM,
        "stream": _stream_context,
    }
    saved = {name: getattr(torch.cuda, name) for name in stubs}
    for name, value in stubs.items():
        setattr(torch.cuda, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(torch.cuda, name, value)


@contextlib.contextmanager
def private_sharding_propagation() -> Iterator[None]:
    """DTensor's sharding propagation in a fake mode of its own.

    By default it reuses the ambient fake mode, so the memory tracker counts its scratch tensors,
    at the DTensor's global size (fused AdamW then showed 101 GiB of optimizer state for an 8B
    model on 8 ranks); in a separate mode the tracker skips them.
    """
    module = torch_private.get("sharding_prop")
    fake_mode_cls = torch_private.get("FakeTensorMode")
    private = fake_mode_cls(allow_non_fake_inputs=True)
    saved = module.detect_fake_mode
    module.detect_fake_mode = lambda *args, **kwargs: private
    try:
        yield
    finally:
        module.detect_fake_mode = saved


@contextlib.contextmanager
def route_sdpa() -> Iterator[None]:
    """``scaled_dot_product_attention`` on CUDA tensors through the flash kernel (no mask) or the
    memory-efficient kernel (a mask), as on a GPU.

    On fake CUDA the dispatcher's choice falls back to the math kernel, which materialises the
    S x S attention matrix (an 8B model's activations then read 32 GiB instead of 14). Both kernels
    keep O(S) state per head, like flash-attn 2 (``attn_implementation=flash_attention_2``).
    """
    flash = torch_private.get("scaled_dot_product_flash_attention")
    efficient = torch_private.get("scaled_dot_product_efficient_attention")
    original = torch.nn.functional.scaled_dot_product_attention

    def routed(
        query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
    ):
        if query.device.type != "cuda":
            return original(
                query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
            )
        if attn_mask is None:  # flash reads grouped-query key / value heads as they are
            return flash(query, key, value, dropout_p, is_causal, False, scale=scale)[0]
        if key.shape[-3] != query.shape[-3]:  # the memory-efficient kernel needs as many heads
            repeats = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(repeats, dim=-3)
            value = value.repeat_interleave(repeats, dim=-3)
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(~attn_mask, float("-inf"))
        attn_mask = attn_mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        return efficient(query, key, value, attn_mask, False, dropout_p, is_causal, scale=scale)[0]

    torch.nn.functional.scaled_dot_product_attention = routed
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[None]:
    """A fake process group of ``world_size`` ranks, this process being rank 0: collectives return
    at once with outputs of the right shape."""
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process; plan in a fresh one")
    store = torch_private.get("FakeStore")()
    dist.init_process_group("fake", store=store, rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()
