"""The fake-CUDA shim: a C++ extension (``fake_cuda.cpp``) that lets a CPU-only torch build run
autograd and FSDP over fake ``cuda`` tensors.

It registers c10's ``FakeGuardImpl<CUDA>`` as the CUDA device guard and CUDA hooks that report
``PREFALIGN_FAKE_CUDA_DEVICES`` devices. torch caches its CUDA hooks on first use, so the shim is
loaded (``RTLD_GLOBAL``) **before torch is imported**: :func:`load_fake_cuda` refuses to run once
torch is in ``sys.modules``. It is compiled on first use with ``torch.utils.cpp_extension`` in a
child process (which may import torch) and cached under ``$PREFALIGN_CACHE/planning/`` keyed by
the torch version and the source's hash; later loads take milliseconds.

Where the shim cannot work the functions raise :class:`ShimUnavailable` with what to do: no C++
compiler, or a CUDA build of torch (whose own CUDA hooks are registered: with a visible GPU the
simulator needs no shim; without one, on a login node, it cannot simulate CUDA):
:func:`prepare_simulated_cuda` decides. Tried on torch 2.13.0+cu130 without a GPU (2026-12-06, a
scratch venv): a fake CUDA tensor kills the process ("CUDA driver version is insufficient for CUDA
runtime version", ``terminate called``), so the planner stops before with what to do. The CUDA
build with a visible GPU has not been run.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_cuda.cpp")
NAME = "prefalign_fake_cuda"
DEVICES_ENV = "PREFALIGN_FAKE_CUDA_DEVICES"
_loaded: Path | None = None


class ShimUnavailable(RuntimeError):
    """The fake-CUDA shim cannot be built or loaded here; the message says why and what to do."""


def torch_dir() -> Path:
    """The installed torch package's folder, found without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise ShimUnavailable("torch is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def torch_build() -> tuple[str, str | None]:
    """``(version, cuda)`` of the installed torch read from ``torch/version.py`` without importing it
    (``cuda`` is ``None`` for a CPU build)."""
    text = (torch_dir() / "version.py").read_text(encoding="utf-8")
    version = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    cuda = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return (version.group(1) if version else "unknown", cuda.group(1) if cuda else None)


def cache_dir() -> Path:
    """Where built shims live: ``$PREFALIGN_CACHE/planning`` (default ``~/.cache/prefalign/planning``)."""
    root = os.environ.get("PREFALIGN_CACHE") or Path.home() / ".cache" / "prefalign"
    return Path(root) / "planning"


def compiler() -> str | None:
    """The C++ compiler torch.utils.cpp_extension would use (``$CXX``, else ``c++`` / ``g++``), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def shim_path() -> Path:
    """The cached shared library for this torch version and source (it may not exist yet)."""
    version, _ = torch_build()
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return cache_dir() / f"torch-{version}-{digest}" / f"{NAME}.so"


def check_supported() -> None:
    """Raise :class:`ShimUnavailable` where the shim does not apply: a CUDA build of torch, or no
    C++ compiler to build it."""
    version, cuda = torch_build()
    if cuda is not None:
        raise ShimUnavailable(
            f"torch {version} is a CUDA {cuda} build: its own CUDA hooks are registered, so the fake-CUDA "
            "shim cannot be loaded, and without a visible GPU they refuse fake CUDA devices. Run "
            "prefalign-plan in an environment with torch's CPU build (e.g. `python -m venv plan-env && "
            f"plan-env/bin/pip install torch=={version.split('+')[0]} --index-url "
            "https://download.pytorch.org/whl/cpu && plan-env/bin/pip install -e .`), or on a node "
            "with a GPU"
        )
    if not shim_path().exists() and compiler() is None:
        raise ShimUnavailable(
            "no C++ compiler found (looked for $CXX, c++, g++): the fake-CUDA shim is compiled on first "
            "use; install one (e.g. `apt-get install g++`) or set CXX"
        )


def build() -> Path:
    """Compile the shim if it is not cached yet (about 2 s) and return its path.

    The build runs in a child process, because ``torch.utils.cpp_extension`` imports torch and this
    process must not import torch before the shim is loaded.
    """
    check_supported()
    path = shim_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys; from torch.utils.cpp_extension import load; "
        f"load(name={NAME!r}, sources=[sys.argv[1]], build_directory=sys.argv[2], "
        "is_python_module=False, verbose=False)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(SOURCE), str(path.parent)], capture_output=True, text=True
    )
    if done.returncode != 0 or not path.exists():
        raise ShimUnavailable(
            f"compiling the fake-CUDA shim ({SOURCE}) failed:\n{done.stderr.strip()[-3000:]}"
        )
    return path


def load_fake_cuda(devices: int = 8) -> Path:
    """Build (if needed) and load the shim reporting ``devices`` fake CUDA devices; call it before
    the first ``import torch`` of the process. Loading twice is a no-op.

    Raises:
        ShimUnavailable: torch is already imported, the build is a CUDA one, or no compiler exists.
    """
    global _loaded
    if _loaded is not None:
        return _loaded
    if "torch" in sys.modules:
        raise ShimUnavailable(
            "torch is already imported in this process; the fake-CUDA shim must be loaded first "
            "(run the plan in a fresh process: python -m prefalign.apps.plan ...)"
        )
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    path = build()
    os.environ[DEVICES_ENV] = str(devices)
    lib = torch_dir() / "lib"
    for name in ("libc10.so", "libtorch_cpu.so"):  # the shim's dependencies, found before torch is
        ctypes.CDLL(str(lib / name), mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    _loaded = path
    return path


def prepare_simulated_cuda(devices: int = 8) -> str:
    """Make fake ``cuda`` tensors work in this process, before torch is imported; returns how.

    - CPU build of torch: the shim is built (first use) and loaded: ``"shim"``.
    - CUDA build with a visible GPU: torch's own CUDA hooks serve the fake tensors; no memory is
      allocated on the GPU (every CUDA tensor of the plan is fake, and ``torch.cuda``'s device,
      stream and event calls are stubbed while planning): ``"cuda build"``.
    - CUDA build without a visible GPU (a login node): :class:`ShimUnavailable`, saying what to do.
    """
    version, cuda = torch_build()
    if cuda is None:
        load_fake_cuda(devices)
        return "shim"
    import torch

    if not torch.cuda.is_available():
        raise ShimUnavailable(
            f"torch {version} is a CUDA {cuda} build and this machine has no visible GPU: the CUDA "
            "runtime aborts the process at the first (even fake) CUDA tensor, and the fake-CUDA shim "
            "cannot replace a CUDA build's own hooks. "
            "Plan on a node with a GPU, or in a virtual environment with torch's CPU build: "
            f"`python -m venv plan-env && plan-env/bin/pip install torch=={version.split('+')[0]} "
            "--index-url https://download.pytorch.org/whl/cpu && plan-env/bin/pip install -e .` "
            "(then plan-env/bin/prefalign-plan ...)"
        )
    return "cuda build"


def loaded() -> bool:
    """Whether this process loaded the shim."""
    return _loaded is not None
