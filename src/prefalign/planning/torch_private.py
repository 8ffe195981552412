"""Every private torch API the planner touches, in one place, with the torch versions it was
checked on. :func:`check` imports each and fails loudly, naming the API, when an upgrade moved or
changed one (``tests/planning/test_simulator.py`` runs it).

The planner imports these names from here only.

C++ (``fake_cuda.cpp``): ``c10::impl::FakeGuardImpl<CUDA>``, ``C10_REGISTER_GUARD_IMPL``,
``at::CUDAHooksInterface`` and ``C10_REGISTER_TYPED_CLASS(CUDAHooksRegistry, "CUDAHooks", ...)``:
checked by compiling and loading the shim (:mod:`prefalign.planning.shim`).

Python, below (also Lightning's private ``LightningModule._device_mesh`` / ``_trainer``, set by
:mod:`prefalign.planning.simulate` as Lightning's strategies do). Also patched (public names, private behaviour relied on): ``torch.cuda``'s device,
stream and event functions (:func:`prefalign.planning.fake_gpu.cuda_stubs`: FSDP2 calls them) and
``torch.nn.functional.scaled_dot_product_attention`` (routed to the flash / memory-efficient aten
ops, whose fake implementations exist, :func:`prefalign.planning.fake_gpu.route_sdpa`).
"""

from __future__ import annotations

import importlib

CHECKED_ON = ("2.13.0",)
"""torch versions (``torch.__version__`` without the local build tag) the planner was run on."""

PRIVATE_APIS = {
    "FakeTensorMode": ("torch._subclasses.fake_tensor", "FakeTensorMode"),
    "FakeTensorDeviceMismatchError": ("torch._subclasses.fake_tensor", "FakeTensorDeviceMismatchError"),
    "DynamicOutputShapeException": ("torch._subclasses.fake_tensor", "DynamicOutputShapeException"),
    "DataDependentOutputException": ("torch._subclasses.fake_tensor", "DataDependentOutputException"),
    "FakeStore": ("torch.testing._internal.distributed.fake_pg", "FakeStore"),
    "FSDPMemTracker": ("torch.distributed._tools.fsdp2_mem_tracker", "FSDPMemTracker"),
    "MemTracker": ("torch.distributed._tools.mem_tracker", "MemTracker"),
    "sharding_prop": ("torch.distributed.tensor", "_sharding_prop"),
    "TorchDispatchMode": ("torch.utils._python_dispatch", "TorchDispatchMode"),
    "checkpoint_wrapper": (
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper",
        "checkpoint_wrapper",
    ),
    "apply_activation_checkpointing": (
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper",
        "apply_activation_checkpointing",
    ),
    "CheckpointImpl": ("torch.distributed.algorithms._checkpoint.checkpoint_wrapper", "CheckpointImpl"),
    "scaled_dot_product_flash_attention": ("torch.ops.aten", "_scaled_dot_product_flash_attention"),
    "scaled_dot_product_efficient_attention": ("torch.ops.aten", "_scaled_dot_product_efficient_attention"),
}
"""name -> (module, attribute) of each private Python API."""

# attributes the planner reads or patches on those objects
REQUIRED_MEMBERS = {
    "FSDPMemTracker": ("track_external", "get_tracker_snapshot", "__enter__", "__exit__"),
    "MemTracker": ("track_external", "get_tracker_snapshot"),
    "sharding_prop": ("detect_fake_mode",),
}
# the memory categories the tracker reports (the names its snapshot keys end with)
FSDP_CATEGORIES = (
    "SHARDED_PARAM",
    "UNSHARDED_PARAM",
    "BUFFER",
    "SHARDED_GRAD",
    "UNSHARDED_GRAD",
    "ACT",
    "TEMP",
    "ALL_GATHER",
    "REDUCE_SCATTER",
    "OPT",
    "INP",
)


class PrivateAPIError(RuntimeError):
    """A private torch API the planner relies on is missing or changed in this torch version."""


def get(name: str):
    """The object registered as ``name`` in :data:`PRIVATE_APIS`, or a :class:`PrivateAPIError`."""
    import torch

    module_name, attribute = PRIVATE_APIS[name]
    try:
        if module_name == "torch.ops.aten":
            return getattr(torch.ops.aten, attribute)
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, RuntimeError) as err:
        raise PrivateAPIError(
            f"private torch API {module_name}.{attribute} ({name}) is gone in torch {torch.__version__} "
            f"(prefalign.planning was checked on torch {', '.join(CHECKED_ON)}): {err}. Update "
            "prefalign/planning/torch_private.py and the code using it"
        ) from err


def check() -> list[str]:
    """Resolve every private API and its required members; returns the names checked.

    Raises:
        PrivateAPIError: naming the first API or member that is missing.
    """
    import torch

    for name in PRIVATE_APIS:
        obj = get(name)
        for member in REQUIRED_MEMBERS.get(name, ()):
            if not hasattr(obj, member):
                raise PrivateAPIError(
                    f"private torch API {PRIVATE_APIS[name][0]}.{PRIVATE_APIS[name][1]} has no `{member}` in "
                    f"torch {torch.__version__} (checked on {', '.join(CHECKED_ON)})"
                )
    ref_type = importlib.import_module("torch.distributed._tools.fsdp2_mem_tracker")._FSDPRefType
    missing = [c for c in FSDP_CATEGORIES if not hasattr(ref_type, c)]
    if missing:
        raise PrivateAPIError(
            f"torch {torch.__version__}: FSDPMemTracker no longer reports the categories {missing} "
            f"(checked on {', '.join(CHECKED_ON)})"
        )
    return [*PRIVATE_APIS, "_FSDPRefType"]


def version_checked() -> bool:
    """Whether the running torch is one of :data:`CHECKED_ON`."""
    import torch

    return torch.__version__.split("+")[0] in CHECKED_ON
