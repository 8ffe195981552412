"""prefalign-score followed by prefalign-train objective=poft, from the command line."""

from __future__ import annotations

import csv

import pytest
from omegaconf import OmegaConf

DATA = ["data.train.limit=48", "data.val.limit=16", "data.batch_size=8"]


@pytest.fixture
def run_ok(run_app):
    """Run an app and require it to succeed."""

    def run(module, args, cwd):
        result = run_app(module, args, cwd)
        assert result.returncode == 0, result.stderr[-4000:]
        return result

    return run


@pytest.fixture
def scored(tmp_path, run_ok):
    scores = tmp_path / "scores"
    out = run_ok("prefalign.apps.score", [*DATA, f"aligned.cache_dir={scores}"], tmp_path)
    return scores, out


def test_score_then_train_poft_and_a_sweep_over_aggregations(tmp_path, scored, run_ok):
    scores, first = scored
    assert (first.stdout + first.stderr).count("cache_hit=False") == 4  # 2 members x (train, val)
    again = run_ok("prefalign.apps.score", [*DATA, f"aligned.cache_dir={scores}"], tmp_path)
    assert (again.stdout + again.stderr).count("cache_hit=True") == 4

    common = [
        *DATA,
        f"aligned.cache_dir={scores}",
        "objective=poft",
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar=null",
    ]
    run_ok(
        "prefalign.apps.train",
        [*common, "hydra.run.dir=poft", "callbacks.metric_histograms.every_n_steps=1"],
        tmp_path,
    )
    # the W&B offline run holds the tau histograms (history rows are JSON inside the .wandb file)
    (run_file,) = (tmp_path / "poft" / "wandb").glob("offline-run-*/run-*.wandb")
    content = run_file.read_bytes()
    assert b"train/tau_hist" in content and b"histogram" in content
    with (tmp_path / "poft" / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for key in (
        "train/loss",
        "train/tau",
        "train/tau_std",
        "train/r_theta",
        "train/r_agg",
        "train/margin",
        "train/ce",
    ):
        assert any(r.get(key) for r in rows), key

    run_ok(
        "prefalign.apps.train",
        ["-m", "aligned.aggregation=avg,min,max", *common, "logger=csv"],
        tmp_path,
    )
    runs = sorted((tmp_path / "logs" / "train" / "multiruns").glob("*/[0-9]"))
    assert len(runs) == 3
    assert {OmegaConf.load(r / ".hydra" / "config.yaml").aligned.aggregation for r in runs} == {
        "avg",
        "min",
        "max",
    }
    r_agg = set()
    for run in runs:
        with (run / "csv" / "metrics.csv").open() as f:
            r_agg.add(next(r["train/r_agg"] for r in csv.DictReader(f) if r.get("train/r_agg")))
    assert len(r_agg) == 3  # three different aggregated scores


def test_poft_without_cached_scores_fails_with_the_command_to_run(tmp_path, run_app):
    result = run_app(
        "prefalign.apps.train", [*DATA, f"aligned.cache_dir={tmp_path / 'empty'}", "objective=poft"], tmp_path
    )
    assert result.returncode != 0
    assert "prefalign-score" in result.stdout + result.stderr
