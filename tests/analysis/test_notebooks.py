"""The analysis notebooks run top to bottom on the session's tiny artefacts and save their figures;
the committed notebooks carry no outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[notebooks]' (in the dev extra)")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[notebooks]' (in the dev extra)")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def execute(name: str, parameters: dict, env_artefacts: Path, monkeypatch) -> None:
    """Run ``notebooks/<name>`` with ``parameters`` injected after its ``parameters`` cell (as papermill does)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    (index,) = [k for k, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    source = "\n".join(f"{key} = {value}" for key, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source)
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    monkeypatch.setenv("PREFALIGN_NB_ARTEFACTS", str(env_artefacts))  # the kernel inherits it
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()


def assert_pngs(folder: Path, names: list[str]) -> None:
    for name in names:
        path = folder / f"{name}.png"
        assert path.exists(), (
            f"{path} was not written; the folder has {sorted(p.name for p in folder.glob('*'))}"
        )
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, path


def test_preference_scores_notebook(artefacts, monkeypatch):
    figures = artefacts.root / "figures_scores"
    datasets = {"tiny_chat+noise": artefacts.score_overrides}
    execute(
        "preference_scores.ipynb",
        {"DATASETS": repr(datasets), "FIG_DIR": repr(str(figures))},
        artefacts.logs,
        monkeypatch,
    )
    assert_pngs(
        figures, ["scores_by_dataset_and_member", "aggregations", "noise_long_tail", "filter_thresholds"]
    )


def test_training_dynamics_notebook_finds_the_ce_and_poft_runs_by_default(artefacts, monkeypatch):
    execute("training_dynamics.ipynb", {}, artefacts.logs, monkeypatch)
    assert_pngs(
        artefacts.logs / "figures" / "training_dynamics",
        ["poft_per_epoch", "ce_vs_poft", "tau_margin_histograms"],
    )


def test_sso_iterations_notebook(artefacts, monkeypatch):
    execute("sso_iterations.ipynb", {}, artefacts.logs, monkeypatch)
    assert_pngs(
        artefacts.logs / "figures" / "sso_iterations",
        ["signal_accuracy_and_on_policy", "generation_lengths", "weight_and_g"],
    )


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, path
    for k, cell in enumerate(code):
        assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
            f"{path.name}: code cell {k}"
        )
    parameters = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(parameters) == 1 and code.index(parameters[0]) == 0, f"{path.name}: one parameters cell, first"


def test_there_are_three_notebooks():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} >= {
        "preference_scores.ipynb",
        "training_dynamics.ipynb",
        "sso_iterations.ipynb",
    }


def test_the_readme_papermill_command_runs_a_notebook_on_ones_own_artefacts(artefacts, tmp_path):
    """``papermill`` (the `notebooks` extra) with YAML parameters, as the README shows it."""
    pytest.importorskip("papermill", reason="pip install -e '.[notebooks]' (in the dev extra)")
    import os
    import subprocess
    import sys

    import yaml

    figures = tmp_path / "figures"
    parameters = {"SSO_RUNS": {"mine": str(artefacts.sso)}, "FIG_DIR": str(figures)}
    out = tmp_path / "sso_iterations.out.ipynb"
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "papermill", str(NOTEBOOKS / "sso_iterations.ipynb"), str(out)]
        + ["--cwd", str(NOTEBOOKS), "-y", yaml.safe_dump(parameters), "--no-progress-bar"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_pngs(figures, ["signal_accuracy_and_on_policy", "generation_lengths", "weight_and_g"])
    executed = nbformat.read(out, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "mine" in injected[0].source
