"""The planner's tests run it in child processes (the fake-CUDA shim must load before torch);
without a C++ compiler they skip, saying so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def shim():
    """The built shim's path (``"cuda build"`` on a CUDA build with a GPU, which needs none); the tests
    skip with the reason where the simulator cannot run."""
    from prefalign.planning import shim as shim_module

    _, cuda = shim_module.torch_build()
    if cuda is not None:  # a CUDA build: its own hooks serve fake tensors where a GPU is visible
        import torch

        if torch.cuda.is_available():
            return "cuda build"
        pytest.skip(f"a CUDA {cuda} build of torch without a visible GPU cannot simulate CUDA")
    try:
        return shim_module.build()
    except shim_module.ShimUnavailable as err:
        pytest.skip(f"fake-CUDA shim unavailable: {err}")


def run_python(
    code: str, *args: str, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python -c code args`` in a fresh process from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def plan_batch():
    """:func:`run_plan_batch` (fixtures are how the planner's test files share it)."""
    return run_plan_batch


@pytest.fixture(scope="session")
def python_child():
    """:func:`run_python`."""
    return run_python


def run_plan_batch(specs: list[dict], tmp_path: Path, timeout: int = 1800) -> list[dict]:
    """Plans of ``specs`` from one ``python -m prefalign.apps.plan --batch`` process."""
    specs_path, results_path = tmp_path / "specs.json", tmp_path / "results.json"
    specs_path.write_text(json.dumps(specs), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "prefalign.apps.plan", "--batch", str(specs_path), str(results_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    results = json.loads(results_path.read_text(encoding="utf-8"))
    (tmp_path / "seconds.txt").write_text(
        "\n".join(f"{r['overrides']} {[p['plan_seconds'] for p in r.get('plans', [])]}" for r in results)
    )
    return results
