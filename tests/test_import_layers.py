"""The import graph of src/prefalign has no arrow from a lower layer to a higher one.

Layers, lowest first (design.md): core < data < models < scoring, generation < objectives <
modules < config (start-up validation) < training, evaluation < planning (pre-flight on simulated
GPUs: drives modules and training) < pipelines < apps < worlds, analysis, studies.
A module may import from its own layer or lower ones, at the top or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import prefalign

SRC = Path(prefalign.__file__).parent
LAYER = {
    "core": 0,
    "data": 1,
    "models": 2,
    "scoring": 3,
    "generation": 3,
    "objectives": 4,
    "modules": 5,
    "config": 6,
    "training": 7,
    "evaluation": 7,
    "planning": 8,
    "pipelines": 9,
    "apps": 10,
    "worlds": 11,
    "analysis": 11,
    "studies": 11,
}


def _prefalign_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prefalign."):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("prefalign.")]
    return found


def test_every_package_has_a_layer():
    packages = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert packages - {"__init__", "__pycache__", "conf"} <= set(LAYER)


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    upward = []
    for path in SRC.rglob("*.py"):
        here = path.relative_to(SRC).parts[0].removesuffix(".py")
        if here not in LAYER:
            continue
        for line, module in _prefalign_imports(path):
            there = module.split(".")[1]
            if LAYER.get(there, -1) > LAYER[here]:
                upward.append(f"{path.relative_to(SRC)}:{line} imports {module}")
    assert not upward, "\n".join(upward)
