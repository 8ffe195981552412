"""experiments/sso_mechanisms/run.py adding cells to committed results: the merge keeps the committed
cells whose outputs are gone, and the checks that the new cells' data and π_0 are the committed ones
(π_0's exact match, iteration 1's samples, a rerun's figures) report what differs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from shared import load_script

RUN = Path(__file__).parents[2] / "experiments" / "sso_mechanisms" / "run.py"


@pytest.fixture(scope="module")
def study():
    return load_script("experiments/sso_mechanisms/run.py", "sso_mechanisms_run")


def cell(study, variant: str, temperature: float, gamma: float = 0.1, iterations: int = 3) -> dict:
    """A results entry with two seeds: π_0's exact match and iteration 1's rows."""
    spec = study.Cell(variant, temperature=temperature, gamma=gamma, iterations=iterations, seeds=(0, 1))
    rows = []
    for seed in spec.seeds:
        rows.append({"seed": seed, "iteration": 0, "exact_match": 0.6})
        row = {"seed": seed, "iteration": 1, "exact_match": 0.61 + gamma / 100}
        row |= {key: 0.5 + seed / 10 for key in study.SAMPLE_KEYS}
        row["on_policy_chosen"] = 0.8
        row["weight_epoch0"] = {"mean": 0.55, "std": 0.03}
        rows.append(row)
    return {"name": spec.name, "label": study.label(spec), "cell": spec.__dict__, "rows": rows}


def test_merge_keeps_committed_cells_not_measured_again_in_grid_order(study):
    pbaa = cell(study, "pbaa", 0.7)
    old_sso = cell(study, "sso", 0.7, gamma=2.0)
    new_sso = copy.deepcopy(old_sso) | {"source": "outputs"}
    new_sso["rows"][1]["exact_match"] = 0.9
    merged = study.merge_cells([new_sso], [old_sso, pbaa])
    grid = [c.name for c in study.GRID]
    assert [c["name"] for c in merged] == sorted([old_sso["name"], pbaa["name"]], key=grid.index)
    by_name = {c["name"]: c for c in merged}
    assert by_name[pbaa["name"]]["source"] == "committed"
    assert by_name[old_sso["name"]]["rows"][1]["exact_match"] == 0.9  # the measured one wins


def test_sample_check_compares_iteration_1_samples_at_the_same_temperature(study):
    committed = [cell(study, "pbaa", 0.7), cell(study, "sso", 1.3, iterations=5)]
    new = cell(study, "sso", 0.7, gamma=0.5)
    checks = study.sample_check([new], committed)
    # only the committed cell at T 0.7 with 3 iterations is comparable; every seed is
    assert [(c["against"], c["seed"], c["differ"]) for c in checks] == [
        (committed[0]["name"], 0, []),
        (committed[0]["name"], 1, []),
    ]
    new["rows"][2]["exact_match"] = 0.5  # seed 1's π_0
    new["rows"][3]["correct_chosen"] += 0.01
    checks = study.sample_check([new], committed)
    assert checks[1]["differ"] == ["exact_match (π_0)", "correct_chosen"]
    text = study.reproducibility_markdown({"samples": checks})
    assert "1 of 2" in text and "seed 1: exact_match (π_0), correct_chosen" in text


def test_rerun_comparison_reports_the_largest_difference_per_figure(study):
    committed = cell(study, "pbaa", 0.7)["rows"]
    rerun = [r for r in copy.deepcopy(committed) if r["seed"] == 0]
    same = study.rerun_comparison(rerun, committed)
    assert set(same["iterations"]) == {"0", "1"}
    assert max(same["max_abs_diff"].values()) == 0.0
    rerun[1]["weight_epoch0"]["mean"] = 0.56
    rerun[1]["exact_match"] += 0.02
    changed = study.rerun_comparison(rerun, committed)
    assert changed["max_abs_diff"]["weight_epoch0/mean"] == pytest.approx(0.01)
    assert changed["max_abs_diff"]["exact_match"] == pytest.approx(0.02)
    assert changed["iterations"]["1"]["weight_epoch0/mean"] == [0.56, 0.55]


def test_report_only_merge_rebuilds_the_committed_results_without_outputs(study, tmp_path):
    """With no pipelines in --out, --merge reproduces the committed cells' tables and plots."""
    committed = RUN.parent / "results" / "results.json"
    before = json.loads(committed.read_text())
    results = study.main(
        [
            "--report-only",
            "--out",
            str(tmp_path / "out"),
            "--results",
            str(tmp_path / "r"),
            "--merge",
            str(committed),
        ]
    )
    assert [c["name"] for c in results["cells"]] == [c["name"] for c in before["cells"]]
    assert all(c["source"] == "committed" for c in results["cells"])
    assert [c["rows"] for c in results["cells"]] == [c["rows"] for c in before["cells"]]
    assert results["policy"] == before["policy"]
    assert results["missing_cells"] == before["missing_cells"]
    text = (tmp_path / "r" / "results.md").read_text()
    assert "Cells from the committed results" in text and "| PBAA, T 0.7 |" in text
    assert (tmp_path / "r" / "sso_mechanisms.png").stat().st_size > 0


def test_the_cells_data_and_policy_are_the_cpu_studies_full_size(study):
    """The committed cells compare with experiments/cpu_studies' full size: same data, same π_0."""
    cpu_studies = load_script("experiments/cpu_studies/run.py", "cpu_studies_run")
    full = cpu_studies.SIZES["full"]
    assert {k: getattr(full, k) for k in study.DATA} == study.DATA and full.poft_clean is None
    assert full.policy_epochs == study.POLICY_EPOCHS
