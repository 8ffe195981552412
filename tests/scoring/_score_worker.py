"""A process that scores the test conversations, for the multi-process tests (not collected by pytest).

Usage: ``python _score_worker.py SPEC_JSON``, where the spec holds ``cache_dir``, ``model`` (a
model config), ``out`` (where to write the result as JSON), and optionally ``group`` (initialise a
gloo process group from the torchrun variables before scoring), ``sleep`` (seconds per batch, to
make concurrent runs overlap), ``ready_dir`` + ``parties`` (start scoring once that many workers have written a file there),
``shard_size``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch.distributed as dist

from prefalign.config import bundled
from prefalign.data.records import ColumnMap, load_raw, normalise_records
from prefalign.scoring.engine import score_conversations


class CountAndSleep(L.Callback):
    def __init__(self, sleep: float) -> None:
        self.samples, self.sleep = 0, sleep

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.samples += len(batch["id"])
        time.sleep(self.sleep)


def main() -> None:
    spec = json.loads(sys.argv[1])
    path = bundled("tiny_chat_val.jsonl")
    ds, _ = normalise_records(load_raw(path), ColumnMap(), path)
    ds = ds.select(range(40))
    if spec.get("group"):
        dist.init_process_group("gloo")
    counter = CountAndSleep(spec.get("sleep", 0.0))
    if "ready_dir" in spec:  # start together with the other workers
        ready = Path(spec["ready_dir"])
        (ready / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(ready.iterdir())) < spec["parties"] and time.monotonic() < deadline:
            time.sleep(0.05)
    table = score_conversations(
        ds,
        spec["model"],
        max_length=256,
        cache_dir=spec["cache_dir"],
        shard_size=spec.get("shard_size", 8),
        batch_size=4,
        trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False, "callbacks": [counter]},
        lock_timeout=spec.get("lock_timeout"),
    )
    result = {
        "rank": int(os.environ.get("RANK", 0)),
        "scored_here": counter.samples,
        "cache_hit": table.cache_hit,
        "means": table.mean_by_id(),
        "group_after": dist.is_initialized(),
    }
    if spec.get("group"):
        dist.barrier()  # the caller's group still works after the collective call
        dist.destroy_process_group()
    elif spec.get("reinit"):
        # as Lightning's fit would after scoring: a new group on the same MASTER_PORT
        dist.init_process_group("gloo")
        dist.barrier()
        dist.destroy_process_group()
    with open(spec["out"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
