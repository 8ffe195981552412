"""What the simulated step catches, each located at the file and line of the project's code:
host syncs, dtype mixes and device mismatches.

:class:`StepWatch` is a dispatch mode above the fake mode. Ops whose output shape or value depends
on tensor data would make a GPU wait for the host every step (``nonzero``, boolean indexing,
``masked_select``, ``unique``, ``.item()`` / ``bool()`` / ``int()`` of a device tensor): they are
recorded with the Python line that called them and then answered with a worst case so the step
goes on (every mask element true; a scalar read as 1). Matrix products whose floating inputs have
different dtypes are recorded as dtype mixes. A CPU tensor meeting a CUDA one raises in the fake
mode; :func:`located_error` turns that (and any other error of the step) into a
:class:`PlanStepError` naming the project's line.

A collective called on some ranks only (a hang on a cluster) is out of reach: the simulation runs
one process, rank 0, whose collectives return at once.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import prefalign
from prefalign.planning import torch_private

PROJECT = Path(prefalign.__file__).resolve().parent
PLANNING = PROJECT / "planning"

aten = torch.ops.aten
SYNC_OPS = {
    aten.nonzero.default: "nonzero (data-dependent shape)",
    aten.masked_select.default: "masked_select (data-dependent shape)",
    aten._local_scalar_dense.default: ".item() / bool() / int() of a device tensor",
    aten.is_nonzero.default: "bool() of a device tensor",
    aten.equal.default: "torch.equal of device tensors",
}
UNIQUE_OPS = {aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default}
MATMUL_OPS = {
    aten.mm.default,
    aten.bmm.default,
    aten.addmm.default,
    aten.baddbmm.default,
    aten.addmm_.default,
}


@dataclass(frozen=True)
class Finding:
    """One problem of the step: ``kind`` (``host_sync`` | ``dtype_mix``), what happened, and where:
    ``location`` is the innermost line of the project's code (``src/prefalign/...:line``), ``via``
    the innermost line outside it (torch, transformers), when different."""

    kind: str
    what: str
    location: str
    via: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        via = f" (via {self.via})" if self.via else ""
        return f"{self.kind}: {self.what} at {self.location}{via}"


class PlanStepError(RuntimeError):
    """The simulated step failed (device mismatch, dtype error, unsupported op...) at a project line."""


# torch's dispatch machinery: never the interesting frame
_MACHINERY = (
    "torch/utils/_python_dispatch",
    "torch/_dynamo/",
    "torch/_compile.py",
    "torch/_ops.py",
    "torch/_subclasses/",
)


def _short(filename: str, line: int) -> str:
    path = Path(filename).resolve()
    try:
        return f"src/prefalign/{path.relative_to(PROJECT)}:{line}"
    except ValueError:
        parts = path.parts
        for anchor in ("site-packages", "dist-packages"):
            if anchor in parts:
                return f"{'/'.join(parts[parts.index(anchor) + 1 :])}:{line}"
        return f"{path}:{line}"


def _is_project(filename: str) -> bool:
    path = Path(filename).resolve()
    return path.is_relative_to(PROJECT) and not path.is_relative_to(PLANNING)


def locate(frames: list[tuple[str, int]]) -> tuple[str, str | None]:
    """``(location, via)`` for a list of ``(filename, line)`` frames, outermost first: the innermost
    project frame (outside the planner) and the innermost frame of all if it is not that one."""
    inner = next(((f, n) for f, n in reversed(frames) if not any(m in f for m in _MACHINERY)), None)
    project = next(((f, n) for f, n in reversed(frames) if _is_project(f)), None)
    if project is None:
        return (_short(*inner) if inner else "<unknown>"), None
    via = _short(*inner) if inner and inner != project else None
    return _short(*project), via


def _here() -> tuple[str, str | None]:
    frames = [(f.filename, f.lineno or 0) for f in traceback.extract_stack()]
    frames = [f for f in frames if not Path(f[0]).resolve().is_relative_to(PLANNING)]
    return locate(frames)


def located_error(err: BaseException, what: str) -> PlanStepError:
    """A :class:`PlanStepError` for ``err`` raised in the step, naming the project line it came from."""
    frames = [(f.filename, f.lineno or 0) for f in traceback.extract_tb(err.__traceback__)]
    location, via = locate(frames)
    kind = type(err).__name__
    message = str(err).strip().splitlines()[0] if str(err).strip() else kind
    if "DeviceMismatch" in kind:
        message = f"a CPU tensor meets a CUDA tensor: {message}"
    via_text = f" (via {via})" if via else ""
    return PlanStepError(f"{what}: {kind} at {location}{via_text}: {message}")


class StepWatch(torch_private.get("TorchDispatchMode")):
    """Records host syncs and dtype mixes of the ops it sees (see the module docstring); entered
    inside the fake mode so it sees every op first."""

    def __init__(self) -> None:
        super().__init__()
        self._data_dependent = torch_private.get("DataDependentOutputException")
        self._dynamic_shape = torch_private.get("DynamicOutputShapeException")
        self.findings: list[Finding] = []
        self._seen: set[tuple[str, str]] = set()

    def _record(self, kind: str, what: str) -> None:
        location, via = _here()
        if os.environ.get("PREFALIGN_PLAN_DEBUG"):
            traceback.print_stack()
        if (kind, location) in self._seen:
            return
        self._seen.add((kind, location))
        self.findings.append(Finding(kind, what, location, via))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNC_OPS:
            if args[0].device.type != "cpu":  # a CPU tensor's value needs no wait for the GPU
                self._record("host_sync", SYNC_OPS[func])
                return self._worst_case(func, args)
            try:
                return func(*args, **kwargs)
            except (self._data_dependent, self._dynamic_shape):  # a fake CPU tensor without a value
                return self._worst_case(func, args)
        if func in UNIQUE_OPS:
            self._record("host_sync", f"{func.__name__} (data-dependent shape)")
        if func is aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1]
        ):
            self._record("host_sync", "boolean-mask indexing (data-dependent shape)")
            indices = []
            for index in args[1]:
                if isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8):
                    indices.extend(self._worst_case(aten.nonzero.default, (index,)).unbind(1))
                else:
                    indices.append(index)
            return func(args[0], indices)
        if func in MATMUL_OPS:
            dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}
            if len(dtypes) > 1:
                names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
                self._record("dtype_mix", f"{func.__name__} of {names} inputs")
        return func(*args, **kwargs)

    @staticmethod
    def _worst_case(func, args):
        """A stand-in result of a data-dependent op: every element selected, scalars read as 1."""
        tensor = args[0]
        if func is aten.nonzero.default:
            return torch.empty((tensor.numel(), tensor.dim()), dtype=torch.long, device=tensor.device)
        if func is aten.masked_select.default:
            return torch.empty(args[1].numel(), dtype=tensor.dtype, device=tensor.device)
        if tensor.dtype == torch.bool or func in (aten.is_nonzero.default, aten.equal.default):
            return True
        return 1.0 if tensor.is_floating_point() else 1


def print_traceback(err: BaseException) -> None:
    """Print ``err``'s full traceback to stderr."""
    traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
