"""prefalign-score followed by prefalign-train objective=poft, from the command line.

The first score run and the PoFT run are the session's (``artefacts``, tests/app_artefacts.py):
this file reruns the score command on their cache and sweeps the aggregation over it.
"""

from __future__ import annotations

import csv

import pytest
from omegaconf import OmegaConf

from prefalign.scoring.cache import ScoreCacheError
from prefalign.training.run import train


@pytest.fixture
def run_ok(run_app):
    """Run an app and require it to succeed."""

    def run(module, args, cwd):
        result = run_app(module, args, cwd)
        assert result.returncode == 0, result.stderr[-4000:]
        return result

    return run


def test_score_reruns_hit_the_cache_and_poft_logs_its_metrics(artefacts, run_ok, tmp_path):
    assert artefacts.output("score").count("cache_hit=False") == 4  # 2 members x (train, val)
    again = run_ok("prefalign.apps.score", artefacts.score_overrides, tmp_path)
    assert (again.stdout + again.stderr).count("cache_hit=True") == 4
    with (artefacts.run("poft") / "csv" / "metrics.csv").open() as f:
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


def test_a_sweep_over_aggregations_trains_one_run_each_from_one_score_cache(artefacts, run_ok, tmp_path):
    sweep = [
        *artefacts.score_overrides,
        "data.batch_size=8",
        "objective=poft",
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar=null",
        "logger=csv",
    ]
    run_ok("prefalign.apps.train", ["-m", "aligned.aggregation=avg,min,max", *sweep], tmp_path)
    runs = sorted((tmp_path / "logs" / "train" / "multiruns").glob("*/[0-9]"))
    assert [r.name for r in runs] == ["0", "1", "2"]
    assert {OmegaConf.load(r / ".hydra" / "config.yaml").aligned.aggregation for r in runs} == {
        "avg",
        "min",
        "max",
    }
    r_agg = set()
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").exists()
        with (run / "csv" / "metrics.csv").open() as f:
            r_agg.add(next(r["train/r_agg"] for r in csv.DictReader(f) if r.get("train/r_agg")))
    assert len(r_agg) == 3  # three different aggregated scores


def test_poft_without_cached_scores_fails_with_the_command_to_run(compose_train, tmp_path):
    cfg = compose_train(["objective=poft", f"aligned.cache_dir={tmp_path / 'empty'}"])
    with pytest.raises(ScoreCacheError, match="prefalign-score"):
        train(cfg)
