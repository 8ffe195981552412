"""Scoring with several real processes: ranks of one run share the work, concurrent jobs share the cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shared import CPU

from prefalign.scoring.engine import score_conversations

WORKER = Path(__file__).with_name("_score_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(specs: list[dict], envs: list[dict], timeout: float = 240) -> list[dict]:
    """Start one worker per spec at once; wait for all (bounded); return their results."""
    base = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        base.pop(key, None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(spec)],
            env={**base, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for spec, env in zip(specs, envs, strict=True)
    ]
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    return [json.loads(Path(spec["out"]).read_text()) for spec in specs]


def _rank_env(rank: int, world: int, port: int) -> dict:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _single(conversations, cfg, tmp_path):
    return score_conversations(
        conversations, cfg, max_length=256, cache_dir=tmp_path / "one", trainer_kwargs=CPU
    ).mean_by_id()


def _assert_finished_cache_only(cache: Path) -> None:
    (folder,) = list(cache.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "table"]


@pytest.mark.distributed
@pytest.mark.parametrize("launch", ["torchrun_env", "initialised_group"])
def test_two_ranks_score_each_row_once_and_match_one_process(launch, conversations, members, tmp_path):
    """Every rank calls the engine (as an app does before ``fit``): the work is split, all get the table.

    ``torchrun_env``: RANK/WORLD_SIZE/MASTER_* set, no group yet (the engine makes a temporary one
    and destroys it; a new group on the same port works afterwards, as Lightning's would).
    ``initialised_group``: the caller's gloo group exists and still works afterwards.
    """
    cfg = members["llama3_bpe"]
    port = _free_port()
    specs = [
        {
            "cache_dir": str(tmp_path / "cache"),
            "model": cfg,
            "out": str(tmp_path / f"rank{r}.json"),
            "group": launch == "initialised_group",
            "reinit": launch == "torchrun_env",
        }
        for r in range(2)
    ]
    results = _run(specs, [_rank_env(r, 2, port) for r in range(2)])
    single = _single(conversations, cfg, tmp_path)
    scored = [r["scored_here"] for r in results]
    assert sum(scored) == 40 and min(scored) > 0  # each row scored once, by one of the two ranks
    for result in results:
        assert not result["cache_hit"]
        assert result["group_after"] == (launch == "initialised_group")
        assert result["means"] == pytest.approx(single, rel=1e-5)
    _assert_finished_cache_only(tmp_path / "cache")


@pytest.mark.distributed
def test_two_concurrent_jobs_on_one_cache_both_finish_and_score_once(conversations, members, tmp_path):
    """Two independent jobs (a sweep's, a SLURM array's) start scoring the same (data, model) together."""
    cfg = members["zephyr_bytes"]
    (tmp_path / "ready").mkdir()
    specs = [
        {
            "cache_dir": str(tmp_path / "cache"),
            "model": cfg,
            "out": str(tmp_path / f"job{j}.json"),
            "sleep": 0.2,
            "ready_dir": str(tmp_path / "ready"),
            "parties": 2,
        }
        for j in range(2)
    ]
    results = _run(specs, [{}, {}])
    assert sorted(r["scored_here"] for r in results) == [0, 40]  # one wrote, the other waited
    assert sorted(r["cache_hit"] for r in results) == [False, True]
    single = _single(conversations, cfg, tmp_path)
    for result in results:
        assert result["means"] == pytest.approx(single, rel=1e-5)
    _assert_finished_cache_only(tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.distributed
def test_prefalign_score_with_ddp_subprocess_launcher_scores_once_and_matches_one_process(tmp_path):
    """``prefalign-score trainer.devices=2 trainer.strategy=ddp``: Lightning re-runs the app as rank 1.

    The first (split, member) is launched by Lightning's predict; the later ones find the group
    initialised. Every table is split between the two ranks and equals the one-process run's.
    """
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["PREFALIGN_ROOT"] = str(tmp_path)

    def score(cache: str, *extra: str) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "prefalign.apps.score", f"aligned.cache_dir={tmp_path / cache}"]
            + ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", *extra],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return run.stdout + run.stderr

    from prefalign.scoring.engine import load_score_table

    log = score("ddp", "trainer.devices=2", "trainer.strategy=ddp")
    assert log.count("512 sample(s) to score in 2 shard(s) on 2 rank(s)") >= 2  # train, both members
    assert log.count("64 sample(s) to score in 2 shard(s) on 2 rank(s)") >= 2  # val, both members
    score("one")
    folders = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert folders == sorted(p.name for p in (tmp_path / "one").iterdir()) and len(folders) == 4
    for name in folders:
        assert sorted(p.name for p in (tmp_path / "ddp" / name).iterdir()) == ["meta.json", "table"]
        ddp = load_score_table(tmp_path / "ddp" / name).mean_by_id()
        assert ddp == pytest.approx(load_score_table(tmp_path / "one" / name).mean_by_id(), rel=1e-5)
