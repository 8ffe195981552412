"""prefalign-sso's generation across ranks (issue 12): two gloo processes on CPU allocate and sample
exactly what one process does, and only rank 0 writes the files and markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from shared import app_env


def _pipeline(work: Path, cache: str, prompts: Path, batch_size: int):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from prefalign.config import config_dir, register_resolvers
    from prefalign.pipelines.sso import SSOPipeline

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                config_name="sso",
                overrides=[
                    "iterations=1",
                    f"prompts.path={prompts}",
                    "prompts.limit=16",
                    "sampling.max_new_tokens=8",
                    f"sampling.batch_size={batch_size}",
                    "allocation.max_new_tokens=8",
                    f"allocation.batch_size={batch_size}",
                    f"work_dir={work}",
                    f"paths.cache_dir={cache}",
                    "wandb=null",
                ],
            )
            pipeline = SSOPipeline(cfg)
    finally:
        GlobalHydra.instance().clear()
    pipeline.stages = ("allocate", "sample")  # generation only; training across ranks is not tested here
    return pipeline


def _worker(rank: int, world_size: int, init_file: str, work: str, cache: str, prompts: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        _pipeline(Path(work), cache, Path(prompts), batch_size=3).run()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_generate_what_one_process_does(tmp_path, session_cache):
    from prefalign.core.jsonl import write_jsonl

    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"id": f"q{i}", "prompt": f"Question {i}: name {i % 5 + 2} colours."} for i in range(16)],
    )
    _pipeline(tmp_path / "one", session_cache, prompts, batch_size=8).run()
    mp.spawn(
        _worker,
        args=(2, str(tmp_path / "pg"), str(tmp_path / "two"), session_cache, str(prompts)),
        nprocs=2,
        join=True,
    )
    for i in (1,):
        for name in ("allocated.jsonl", "preferences.jsonl"):
            one, two = (tmp_path / run / f"iter_{i}" / name for run in ("one", "two"))
            assert one.read_bytes() == two.read_bytes(), name
        for stage in ("allocate", "sample"):
            one, two = (
                json.loads((tmp_path / r / f"iter_{i}" / f"{stage}.done.json").read_text())
                for r in ("one", "two")
            )
            assert one["artefacts"]["files"] == two["artefacts"]["files"]
    # one writer: no temporary files of a second writer left behind
    assert not list((tmp_path / "two").rglob(".*.tmp"))


# -- prefalign-sso started by torchrun: the whole pipeline on two ranks ---------------------------
# The effective batch is the same in both runs: one process accumulates two batches of 4 per
# optimiser step; two DDP ranks take one batch of 4 each (the length-grouped sampler gives rank r the
# global batches r, r + 2, ...: the same two batches) and average their gradients.
TRAIN = [
    "data=tiny_preference",
    "data.max_length=2048",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "optimizer.lr=1e-4",
    "scheduler.warmup_ratio=0.0",
    "logger=csv",
    "callbacks.progress_bar=null",
]
ONE_PROCESS = ["trainer.accumulate_grad_batches=2"]
TWO_RANKS = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
# The reference log-probs are fp32 sums over a response's tokens (about -124 here, where one fp32
# ulp is 7.6e-6): two processes may add them in another order, so they are compared to within
# LOGP_ULPS units in the last place of the sum, not to an absolute 1e-6 (less than one ulp). The
# trained weights differ by at most 6.0e-8 (the two batches' gradients are summed in another
# order, then AdamW's steps): 1e-6.
LOGP_ULPS = 8
WEIGHT_ATOL = 1e-6


def fp32_ulp(value: float) -> float:
    """The spacing of float32 numbers at ``value`` (one unit in the last place)."""
    import numpy as np

    return float(np.spacing(np.float32(abs(value))))


def _sso(tmp_path, cache, name, train, *, ranks=1, expect_ok=True, extra=()):
    import subprocess
    import sys

    from prefalign.worlds.verifiable import write_world

    if not (tmp_path / "world" / "test.jsonl").exists():
        write_world(tmp_path / "world", train=1, val=1, test=6, families=["upper"])
    heldout = (
        f"heldout={{path: {tmp_path / 'world' / 'test.jsonl'}, "
        "metric: prefalign.worlds.verifiable.exact_match_report, max_new_tokens: 8}"
    )
    judge = (
        "judge={_target_: prefalign.generation.judges.LLMJudge.from_model_config, "
        "model: {tiny: {template: chatml, seed: 5}, cache_dir: ${paths.cache_dir}/models}}"
    )
    overrides = [*train, f"reference.cache_dir={tmp_path / name / 'scores'}"]
    args = [
        "iterations=1",
        "prompts.limit=16",
        "sampling.max_new_tokens=12",
        "sampling.batch_size=8",
        "allocation.max_new_tokens=8",
        f"run_name={name}",
        "wandb=null",
        heldout,
        judge,
        f"train_overrides={json.dumps(overrides)}",
        *extra,
    ]
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    )
    env = app_env(tmp_path, cache)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, *launcher, "-m", "prefalign.apps.sso", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if expect_ok:
        assert result.returncode == 0, result.stderr[-6000:]
    return result, tmp_path / "logs" / "sso" / name


def _score_tables(folder: Path) -> dict[str, tuple[float, int]]:
    from prefalign.scoring.engine import load_score_table

    tables = [load_score_table(meta.parent).table for meta in folder.rglob("meta.json")]
    assert len(tables) == 1, tables  # the reference log-probs of iteration 1's pairs
    return {
        i: (s, n)
        for i, s, n in zip(tables[0]["id"], tables[0]["logp_sum"], tables[0]["num_tokens"], strict=True)
    }


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_ranks_make_every_artefact_of_one_process(tmp_path, session_cache):
    """``torchrun --nproc_per_node 2 -m prefalign.apps.sso`` (gloo on CPU): allocation, sampling,
    the reference log-probs, DDP training on the same two ranks, held-out evaluation and the judge
    give what one process gives; rank 0 alone writes the files."""
    from safetensors.torch import load_file

    _, one = _sso(tmp_path, session_cache, "one", TRAIN + ONE_PROCESS)
    result, two = _sso(tmp_path, session_cache, "two", TRAIN + TWO_RANKS, ranks=2)
    assert "rank 1 of 2: gloo process group from the launcher" in result.stdout + result.stderr
    for name in ("allocated.jsonl", "preferences.jsonl"):
        assert (one / "iter_1" / name).read_bytes() == (two / "iter_1" / name).read_bytes(), name
    for stage in ("allocate", "sample"):
        markers = [json.loads((run / "iter_1" / f"{stage}.done.json").read_text()) for run in (one, two)]
        assert markers[0]["artefacts"]["files"] == markers[1]["artefacts"]["files"]
    # the reference log-probs: scored by both ranks (one shard file each) in run "two"
    ref_one, ref_two = (_score_tables(tmp_path / run / "scores") for run in ("one", "two"))
    assert ref_one.keys() == ref_two.keys() and len(ref_one) >= 8
    for i, (logp, n) in ref_one.items():
        tolerance = LOGP_ULPS * fp32_ulp(logp)
        assert ref_two[i][1] == n and abs(ref_two[i][0] - logp) <= tolerance, (i, logp, ref_two[i], tolerance)
    # the fit ran on the two launched ranks
    saved = (two / "iter_1" / "train" / "train_config.yaml").read_text()
    assert "devices: 2" in saved and "strategy: ddp" in saved
    weights = [load_file(str(run / "iter_1" / "policy" / "model.safetensors")) for run in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    differences = {k: float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0]}
    assert max(differences.values()) <= WEIGHT_ATOL, sorted(differences.items(), key=lambda kv: -kv[1])[:3]
    reports = [json.loads((run / "report.json").read_text())[0] for run in (one, two)]
    assert reports[0]["policy_change/max_abs"] > 1e-4  # the iteration trained
    for key in ("heldout/n", "heldout/exact_match", "initial_heldout/exact_match", "signal_accuracy"):
        assert reports[0][key] == reports[1][key], key
    assert not list(two.rglob(".*.tmp"))


@pytest.mark.distributed
def test_torchrun_with_a_one_device_fit_stops_naming_the_keys(tmp_path, session_cache):
    """Two launched ranks and ``train_overrides`` asking for one device: a ConfigError at start-up
    naming ``train_overrides``, ``trainer.devices`` and ``WORLD_SIZE``, before any model loads."""
    result, work = _sso(tmp_path, session_cache, "bad", TRAIN, ranks=2, expect_ok=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "iteration 1's training config (config key `train_overrides`)" in out
    assert "trainer.devices=1 x trainer.num_nodes=1 = 1 rank(s), but WORLD_SIZE=2" in out
    assert not (work / "iter_1" / "allocated.jsonl").exists()
