"""The PoFT run of the session (W&B offline) holds the τ histograms, the aligned-score histograms
and the sample table, with the right contents; runs are grouped and tagged from Hydra."""

from __future__ import annotations

import json
import math

import pytest

from prefalign import analysis

NOISE_SAMPLES = 16  # data.noise.num_samples of the session's runs (conftest.py)
TRAIN_SAMPLES = 48 + NOISE_SAMPLES  # data.train.limit + noise
BATCH = 16  # data.batch_size of the tiny_chat config


def test_tau_histograms_pool_the_samples_of_their_interval(artefacts):
    history = analysis.load_wandb_history(artefacts.run("poft"))
    rows = analysis.histogram_rows(history, "train/tau_hist")
    counts = rows.groupby("step")["count"].sum()
    # every 2 batches of 16: 32 per-example tau values, all in (0, 1)
    assert len(counts) == 4 and (counts == 2 * BATCH).all()
    assert rows["left"].min() > 0.0 and rows["right"].max() < 1.0
    assert "train/margin_hist" in history


def test_aligned_score_histograms_cover_the_training_split_and_split_clean_from_noise(artefacts):
    history = analysis.load_wandb_history(artefacts.run("poft"))
    totals = {}
    for key in ("data/aligned_score_hist", "data/aligned_score_noise_hist", "data/aligned_score_clean_hist"):
        totals[key] = analysis.histogram_rows(history, key)["count"].sum()
    assert totals == {
        "data/aligned_score_hist": TRAIN_SAMPLES,
        "data/aligned_score_noise_hist": NOISE_SAMPLES,
        "data/aligned_score_clean_hist": TRAIN_SAMPLES - NOISE_SAMPLES,
    }
    assert {"data/score_zephyr_bytes_hist", "data/score_llama3_bpe_hist"} <= set(history.columns)


def test_the_sample_table_holds_prompts_responses_scores_tau_and_noise(artefacts):
    run_dir = artefacts.run("poft")
    (table_file, *_) = sorted(
        run_dir.glob("wandb/offline-run-*/files/media/table/train/samples_*.table.json")
    )
    assert table_file.stat().st_size > 0
    table = analysis.load_wandb_tables(run_dir, "train/samples")
    assert list(table.columns[:4]) == ["step", "id", "prompt", "response"]
    assert {
        "score_zephyr_bytes",
        "score_llama3_bpe",
        "aligned_score",
        "r_theta",
        "tau",
        "margin",
        "noise",
    } <= set(table.columns)
    assert "r_agg" not in table.columns  # the same as aligned_score
    assert sorted(table["_step"].unique()) == sorted(table["step"].unique())
    assert len(table) == 6 * table["_step"].nunique() and table["_step"].nunique() == 4
    for row in table.itertuples():
        members = (row.score_zephyr_bytes + row.score_llama3_bpe) / 2  # aligned.aggregation=avg
        assert row.aligned_score == pytest.approx(members, abs=1e-5)
        assert row.margin == pytest.approx(row.r_theta - row.aligned_score, abs=1e-5)
        assert row.tau == pytest.approx(1 / (1 + math.exp(row.margin)), abs=1e-5)
        assert row.noise == row.id.startswith("noise-")
        assert row.prompt and row.response and "<|im_start|>assistant" in row.prompt


def test_runs_are_tagged_and_the_full_config_is_logged(artefacts):
    (run_file,) = analysis.find_wandb_run_files(artefacts.run("poft"))
    run, config = None, {}
    for record in analysis.read_wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "config":
            config.update({item.key: item.value_json for item in record.config.update})
    assert run is not None and list(run.tags) == ["dev", "notebooks"] and run.job_type == "train"
    assert run.run_group == ""  # a single run without an experiment is in no group
    for key in ("model", "data", "objective", "aligned", "trainer", "callbacks", "optimizer", "_hydra"):
        assert key in config, key
    hydra = json.loads(config["_hydra"])
    assert hydra["mode"] == "run" and hydra["choices"]["objective"] == "poft"
    assert "objective=poft" in hydra["overrides"]


def _dashboard_script():
    from prefalign.apps import wandb_dashboard

    return wandb_dashboard


def test_the_dashboard_layout_is_documented_and_its_poft_keys_are_logged(artefacts):
    from pathlib import Path

    script = _dashboard_script()
    doc = (Path(__file__).resolve().parents[2] / "notebooks" / "wandb_dashboard.md").read_text()
    history = analysis.load_wandb_history(artefacts.run("poft"))
    logged = set(history.columns) | {"train/samples"}
    for _, panels in script.LAYOUT:
        for _, _, keys in panels:
            for key in keys:
                assert f"`{key}`" in doc, key
                if key.startswith(
                    ("train/tau", "train/margin", "train/r_", "data/aligned_score", "train/samples")
                ):
                    assert key in logged, key
    pytest.importorskip("wandb_workspaces", reason="pip install -e '.[dashboard]' (in the dev extra)")
    workspace = script.build_workspace("someone", "prefalign", "view")  # offline: nothing is saved
    assert [s.name for s in workspace.sections] == [name for name, _ in script.LAYOUT]
    assert script.main(["--dry-run"]) == 0
