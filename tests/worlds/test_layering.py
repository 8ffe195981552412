"""The world sits on top: nothing below the apps imports it (the apps, analysis and the study runner
may), and it uses only public names below it."""

from __future__ import annotations

import ast
from pathlib import Path

import prefalign

SRC = Path(prefalign.__file__).parent
ABOVE_WORLDS = ("apps", "worlds", "analysis", "studies")  # may import prefalign.worlds


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_no_module_below_the_apps_imports_a_world():
    offenders = [
        f"{path.relative_to(SRC)} imports {module}"
        for path in SRC.rglob("*.py")
        if path.relative_to(SRC).parts[0] not in ABOVE_WORLDS
        for module, _ in _imports(path)
        if module.startswith("prefalign.worlds")
    ]
    assert offenders == []


def test_the_world_imports_no_private_name_and_not_the_synthetic_chats():
    offenders = [
        f"{path.relative_to(SRC)}: {module} {names}"
        for path in (SRC / "worlds").rglob("*.py")
        for module, names in _imports(path)
        if module == "prefalign.data.synthetic" or any(n.startswith("_") for n in names)
    ]
    assert offenders == []


def test_the_world_and_the_synthetic_chats_share_one_word_list():
    from prefalign.data import synthetic
    from prefalign.data.words import WORDS
    from prefalign.worlds.verifiable import Reverse

    assert synthetic.WORDS is WORDS and Reverse().words is WORDS
