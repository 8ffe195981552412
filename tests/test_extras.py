"""pyproject.toml: the CPU-installable extras are satisfied by this environment; bounds match the code."""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
# GPU-only (CUDA builds) or assets installed apart (the demo's GGUF package): not installable here.
CPU_EXTRAS = ("lora", "eval", "notebooks", "studies", "dashboard", "dev")


def unsatisfied(requirement: str, extra: str | None = None) -> list[str]:
    """What the installed distributions lack for ``requirement`` (with its own extras, recursively)."""
    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate({"extra": extra or ""}):
        return []
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return [f"{requirement}: {req.name} is not installed"]
    if installed not in req.specifier and not req.specifier.contains(installed, prereleases=True):
        return [f"{requirement}: {req.name} {installed} is installed"]
    missing = []
    for sub_extra in req.extras:
        for sub in metadata.requires(req.name) or []:
            if Requirement(sub).marker is not None and f'"{sub_extra}"' in str(Requirement(sub).marker):
                missing += unsatisfied(sub, sub_extra)
    return missing


@pytest.mark.parametrize("extra", CPU_EXTRAS)
def test_installed_distributions_satisfy_the_cpu_extras(extra):
    missing = [m for requirement in EXTRAS[extra] for m in unsatisfied(requirement)]
    assert not missing, f"prefalign[{extra}]: " + "; ".join(missing)


def test_core_dependencies_are_satisfied():
    missing = [m for requirement in PYPROJECT["project"]["dependencies"] for m in unsatisfied(requirement)]
    assert not missing, "; ".join(missing)


def test_lower_bounds_cover_the_apis_used():
    deps = {Requirement(r).name: Requirement(r).specifier for r in PYPROJECT["project"]["dependencies"]}
    # fully_shard / MixedPrecisionPolicy public in torch.distributed.fsdp from 2.6; the CPU build 2.13 fits
    assert (
        not deps["torch"].contains("2.5.1")
        and deps["torch"].contains("2.6.0")
        and deps["torch"].contains("2.13.0")
    )
    assert not deps["torch"].contains("2.14.0")
    # from_pretrained(dtype=...) and logits_to_keep
    assert not deps["transformers"].contains("4.55.0") and deps["transformers"].contains("4.56.0")
    # analysis.py parses W&B offline files: the version range is bounded above
    assert any(spec.operator == "<" for spec in deps["wandb"])
    gpu = [Requirement(r) for r in EXTRAS["gpu"]]
    assert any(r.name == "flash-attn" for r in gpu)
    assert [Requirement(r).name for r in EXTRAS["vllm"]] == ["vllm"]
    eval_names = {Requirement(r).name: Requirement(r) for r in EXTRAS["eval"]}
    assert "hf" in eval_names["lm-eval"].extras and "math-verify" in eval_names
    assert Version("0.4.9") in eval_names["lm-eval"].specifier


def test_minerva_math_scoring_imports():
    """The sso_objective preset's minerva_math task scores answers with math-verify (eval extra)."""
    from math_verify import parse, verify

    assert verify(parse("$\\frac{1}{2}$"), parse("0.5"))


@pytest.mark.slow
def test_pip_resolves_the_cpu_extras_together():
    """pip (online) finds one consistent set for the core package and every CPU extra."""
    root = Path(__file__).parents[1]
    spec = f"{root}[{','.join(CPU_EXTRAS)}]"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", spec],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
