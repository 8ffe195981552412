"""prefalign-sso end to end on a tiny model: two iterations, the previous policy as reference, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from shared import app_env

from prefalign.core.errors import DataError
from prefalign.pipelines.sso import load_prompt_splits
from prefalign.worlds.verifiable import write_world

TRAIN = '["data=tiny_preference","data.max_length=2048","data.batch_size=4","trainer.max_epochs=1","optimizer.lr=1e-4","logger=csv","callbacks.progress_bar=null"]'
ARGS = [
    "iterations=2",
    "prompts.limit=16",
    "sampling.max_new_tokens=12",
    "sampling.batch_size=8",
    "allocation.max_new_tokens=8",
    f"train_overrides={TRAIN}",
]


def _run(cwd, cache, *extra, args=ARGS):
    env = app_env(cwd, cache)
    result = subprocess.run(
        [sys.executable, "-m", "prefalign.apps.sso", *args, *extra],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


EXACT_MATCH = "prefalign.worlds.verifiable.exact_match_report"
JUDGE = (
    "+judge={_target_: prefalign.generation.judges.LLMJudge.from_model_config, "
    "model: {tiny: {template: chatml, seed: 5}, cache_dir: ${paths.cache_dir}/models}}"
)


@pytest.mark.subprocesses
def test_two_iterations_end_to_end_then_resume_without_sampling_again(tmp_path, session_cache):
    write_world(tmp_path / "world", train=1, val=1, test=6, families=["upper"])
    heldout = (
        f"heldout={{path: {tmp_path / 'world' / 'test.jsonl'}, metric: {EXACT_MATCH}, max_new_tokens: 8}}"
    )
    evaluation = (JUDGE.replace("+judge", "judge"), heldout)
    _run(tmp_path, session_cache, *evaluation)
    work = tmp_path / "logs" / "sso" / "default"
    report = json.loads((work / "report.json").read_text())
    assert [r["iteration"] for r in report] == [1, 2]
    # each policy pi_i answers the held-out records; iteration 1 also reports pi_0
    assert all(r["heldout/n"] == 6 and 0 <= r["heldout/exact_match"] <= 1 for r in report)
    assert "initial_heldout/exact_match" in report[0] and "initial_heldout/exact_match" not in report[1]
    assert all(r["samples"] == 8 and "train/weight" in r and "length/chosen" in r for r in report)
    # the tiny judge answers nonsense, so every pair is "unsure", and counted as such
    assert all(
        r["signal_unsure"] + r["signal_accuracy"] + r["signal_inverted"] == pytest.approx(1.0) for r in report
    )
    # the pipeline's own W&B run holds one point per iteration (offline: one folder per opening)
    run_files = sorted((work / "wandb").glob("offline-run-*/run-*.wandb"))
    run_id = (work / "wandb_run_id").read_text().strip()
    assert len(run_files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in run_files)
    assert all(
        b"sso/length/chosen" in f.read_bytes() and b"sso/train/weight" in f.read_bytes() for f in run_files
    )
    # every sample's W, as training met it, in the iteration folder; the report summarises epoch 0
    per_sample = [
        json.loads(line)
        for line in (work / "iter_1" / "train" / "per_sample_metrics.jsonl").read_text().splitlines()
    ]
    samples = {
        json.loads(line)["id"] for line in (work / "iter_1" / "preferences.jsonl").read_text().splitlines()
    }
    assert sorted(r["id"] for r in per_sample) == sorted(samples) and {r["epoch"] for r in per_sample} == {0}
    assert all(0.0 < r["weight"] < 1.0 for r in per_sample)
    weights = sorted(r["weight"] for r in per_sample)
    assert report[0]["per_sample/weight/mean"] == pytest.approx(sum(weights) / len(weights))
    assert (
        report[0]["per_sample/weight/q05"]
        <= report[0]["per_sample/weight/q50"]
        <= report[0]["per_sample/weight/q95"]
    )
    assert (
        weights[0] <= report[0]["per_sample/weight/q05"] and report[0]["per_sample/weight/q95"] <= weights[-1]
    )
    second = json.loads((work / "iter_2" / "train.done.json").read_text())
    assert second["reference"] == "iter_1/policy"  # pi_1 is iteration 2's reference (relative to the run)
    assert (work / "iter_2" / "policy" / "model.safetensors").exists()
    allocation = json.loads((work / "iter_1" / "allocate.done.json").read_text())
    assert (
        allocation["allocated"] == 8
        and allocation["fallbacks"]
        + sum(
            1
            for r in map(json.loads, (work / "iter_1" / "allocated.jsonl").read_text().splitlines())
            if not r["fallback"]
        )
        == 8
    )
    assert allocation["parse_rate"] == pytest.approx(1 - allocation["fallback_rate"])
    assert 0 <= allocation["exact_format_rate"] <= allocation["parse_rate"]

    # as if killed after sampling in iteration 2: training and evaluation are redone, sampling is not
    samples = (work / "iter_2" / "preferences.jsonl").read_text()
    sample_marker = (work / "iter_2" / "sample.done.json").stat().st_mtime_ns
    (work / "iter_2" / "train.done.json").unlink()
    (work / "iter_2" / "evaluate.done.json").unlink()
    log = _run(tmp_path, session_cache, *evaluation)  # the same settings: a rerun checks them
    assert "iteration 2: sample already done, skipping" in log
    assert "iteration 2: train" in log and "iteration 1: train" not in log.replace(
        "iteration 1: train already", ""
    )
    assert (work / "iter_2" / "preferences.jsonl").read_text() == samples
    assert (work / "iter_2" / "sample.done.json").stat().st_mtime_ns == sample_marker


def test_an_empty_prompt_set_is_an_error(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "  "}) + "\n")
    with pytest.raises(DataError, match="0 usable prompts cannot be split into 3 iterations"):
        load_prompt_splits({"path": str(path), "on_invalid": "drop"}, 3, 0)  # else: an error (the row)


def test_prompts_are_split_into_equal_seeded_parts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "prompt": f"q{i}"}) + "\n" for i in range(10)))
    splits = load_prompt_splits({"path": str(path)}, 3, seed=1)
    assert [len(s) for s in splits] == [3, 3, 3]
    assert len({p["id"] for s in splits for p in s}) == 9
    assert splits == load_prompt_splits({"path": str(path)}, 3, seed=1)


@pytest.mark.slow
def test_the_readme_tiny_command_changes_the_policy_every_iteration(tmp_path, session_cache):
    """`prefalign-sso iterations=2 prompts.limit=16 sampling.max_new_tokens=16` with the default
    training settings: each iteration takes optimiser steps at a non-zero learning rate, so π_1
    differs from π_0 and π_2 from π_1 (reported as policy_change/* in report.json)."""
    from safetensors.torch import load_file

    env = app_env(tmp_path, session_cache)
    command = ["iterations=2", "prompts.limit=16", "sampling.max_new_tokens=16", "wandb=null"]
    result = subprocess.run(
        [sys.executable, "-m", "prefalign.apps.sso", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    work = tmp_path / "logs" / "sso" / "default"
    report = json.loads((work / "report.json").read_text())
    assert all(r["policy_change/max_abs"] > 0 and r["policy_change/relative_l2"] > 0 for r in report)
    first, second = (load_file(str(work / f"iter_{i}" / "policy" / "model.safetensors")) for i in (1, 2))
    assert any(not (first[k] == second[k]).all() for k in first)


@pytest.mark.slow
@pytest.mark.distributed
def test_an_iteration_trained_by_two_ddp_ranks_runs_the_pipeline_once(tmp_path, session_cache):
    """Lightning's subprocess launcher re-runs ``prefalign-sso`` for rank 1: that rank trains the
    iteration's saved config and exits, it never allocates, samples or writes stage files."""
    train = TRAIN.replace(
        "]", ',"trainer=ddp","trainer.accelerator=cpu","trainer.devices=2","trainer.precision=32-true"]'
    )
    args = [a for a in ARGS if not a.startswith(("iterations=", "train_overrides="))]
    out = _run(tmp_path, session_cache, "iterations=1", f"train_overrides={train}", args=args)
    work = tmp_path / "logs" / "sso" / "default"
    report = json.loads((work / "report.json").read_text())
    assert [r["iteration"] for r in report] == [1]
    assert (work / "iter_1" / "train" / "train_config.yaml").exists()
    assert (work / "iter_1" / "policy" / "config.json").exists()
    assert out.count("iteration 1: allocate") == 1  # rank 1 never ran the pipeline
    assert not list(tmp_path.glob("logs/sso/*/iter_1/*.tmp"))
