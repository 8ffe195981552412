"""prefalign-sso's generation across ranks (issue 12): two gloo processes on CPU allocate and sample
exactly what one process does, and only rank 0 writes the files and markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp


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
