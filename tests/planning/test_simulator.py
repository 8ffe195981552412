"""The simulator's own machinery: torch's private APIs it relies on (fails loudly on an upgrade),
the fake-CUDA shim (built on first use, skipped with a reason without a compiler), and the step
checks (host syncs, device mismatches named by file and line)."""

from __future__ import annotations

import pytest

from prefalign.planning import shim as shim_module
from prefalign.planning import torch_private

CHECKS = r"""
import json, sys
from prefalign.planning.shim import prepare_simulated_cuda
prepare_simulated_cuda()
import torch
from prefalign.planning import fake_gpu
from prefalign.planning.checks import StepWatch, located_error
from prefalign.planning.torch_private import get

out = {}
with fake_gpu.cuda_stubs(8), get("FakeTensorMode")(allow_non_fake_inputs=True):
    x = torch.ones(4, 3, device="cuda")
    w = torch.ones(3, device="cuda", requires_grad=True)
    (x * w).sum().backward()  # autograd over fake CUDA: needs the shim's device guard
    out["grad_device"] = str(w.grad.device)
    watch = StepWatch()
    with watch:
        x.nonzero()
        x[x > 0]
        float(x.sum())
        torch.zeros(2).nonzero()  # a CPU tensor: no GPU sync
    out["findings"] = [f.as_dict() for f in watch.findings]
    try:
        x + torch.ones(4, 3)
    except Exception as err:
        out["mismatch"] = str(located_error(err, "test"))
json.dump(out, sys.stdout)
"""


def test_every_private_torch_api_the_planner_uses_still_exists():
    names = torch_private.check()
    assert "FakeTensorMode" in names and "FSDPMemTracker" in names


def test_the_torch_version_is_one_the_planner_was_checked_on():
    import torch

    assert torch_private.version_checked(), (
        f"torch {torch.__version__} is not in prefalign.planning.torch_private.CHECKED_ON "
        f"{torch_private.CHECKED_ON}: run tests/planning and benchmarks/plan_validation.py on it, "
        "then add the version"
    )


def test_a_missing_compiler_is_a_clear_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFALIGN_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(shim_module.ShimUnavailable, match="no C\\+\\+ compiler"):
        shim_module.check_supported()


def test_a_cuda_build_without_a_gpu_stops_with_what_to_do(monkeypatch):
    import torch

    monkeypatch.setattr(shim_module, "torch_build", lambda: ("2.13.0+cu130", "13.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(shim_module.ShimUnavailable, match="no visible GPU.*CPU build"):
        shim_module.prepare_simulated_cuda()


def test_the_shim_refuses_to_load_after_torch():
    import torch  # noqa: F401  (already imported by the suite)

    with pytest.raises(shim_module.ShimUnavailable, match="already imported"):
        shim_module.load_fake_cuda()


def test_host_syncs_and_device_mismatches_are_named_by_file_and_line(shim, python_child):
    import json

    done = python_child(CHECKS)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["grad_device"] == "cuda:0"
    whats = [f["what"] for f in out["findings"]]
    assert whats == [
        "nonzero (data-dependent shape)",
        "boolean-mask indexing (data-dependent shape)",
        ".item() / bool() / int() of a device tensor",
    ]
    assert all("<string>:" in f["location"] for f in out["findings"]), out["findings"]
    assert "a CPU tensor meets a CUDA tensor" in out["mismatch"]
