"""Cost of the fault checks of issue 23: the content fingerprint of a model folder (score-cache keys),
the CRC verification of a checkpoint before it is used, and the SHA-256 record of an export.

- ``fingerprint``: :func:`prefalign.models.identity.folder_fingerprint` of a ``--folder-mb`` MB
  model folder (two safetensors shards, their index, a config and a tokenizer file).
- ``checkpoint``: :func:`prefalign.training.verification.verify_checkpoint` of a ``--checkpoint-mb``
  MB checkpoint written by ``torch.save``, and the shape check
  (:func:`~prefalign.training.verification.check_checkpoint_fits`), beside ``torch.load`` of the
  same file (what the resume does next) for scale.
- ``export``: :func:`prefalign.core.checksums.write_checksums` (at export) and
  :func:`~prefalign.core.checksums.verify_checksums` (before loading) of a folder holding that
  same ``--checkpoint-mb`` MB as safetensors.

Each is timed ``--repeat`` times with the files in the page cache (``warm``: the usual case right
after writing or on a resume on the same node) and after evicting them
(``posix_fadvise(DONTNEED)``: ``cold``, as read from disk); the medians go to
``benchmarks/results/fault_checks.json`` with the machine's load (a shared machine makes times
noisy)::

    python benchmarks/fault_checks.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from prefalign.core.checksums import verify_checksums, write_checksums
from prefalign.core.jsonl import write_json
from prefalign.models.identity import folder_fingerprint
from prefalign.training.verification import check_checkpoint_fits, verify_checkpoint

RESULTS = Path(__file__).parent / "results" / "fault_checks.json"
MB = 1 << 20


def evict(folder: Path) -> None:
    """Drop ``folder``'s files from the page cache (clean pages only; no root needed)."""
    for path in [folder] if folder.is_file() else folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(fn: Callable[[], object], target: Path, repeat: int) -> dict[str, float]:
    """Median seconds of ``fn`` with ``target`` cold (evicted first) and warm (read just before)."""
    cold, warm = [], []
    for _ in range(repeat):
        evict(target)
        start = time.perf_counter()
        fn()
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - start)
    return {"cold_s": round(statistics.median(cold), 4), "warm_s": round(statistics.median(warm), 4)}


def tensors(total_mb: int, parts: int = 1) -> list[dict[str, torch.Tensor]]:
    """``parts`` dicts of random fp32 matrices of about ``total_mb`` MB in all."""
    per_part = total_mb * MB // 4 // parts
    rows = 4096
    return [
        {f"layer.{p}.{k}.weight": torch.randn(rows, per_part // rows // 4) for k in range(4)}
        for p in range(parts)
    ]


def model_folder(folder: Path, total_mb: int) -> Path:
    folder.mkdir(parents=True)
    shards = tensors(total_mb, parts=2)
    index = {"metadata": {}, "weight_map": {}}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / name)
        index["weight_map"].update(dict.fromkeys(shard, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({"hidden_size": 4096, "num_hidden_layers": 2}))
    (folder / "tokenizer.json").write_bytes(os.urandom(2 * MB))
    return folder


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / MB, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder-mb", type=int, default=500)
    parser.add_argument("--checkpoint-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "repeat": args.repeat,
    }
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        folder = model_folder(Path(tmp) / "model", args.folder_mb)
        results["fingerprint"] = {
            "folder_mb": size_mb(folder),
            **timed(lambda: folder_fingerprint(folder), folder, args.repeat),
        }
        print("fingerprint", results["fingerprint"], flush=True)

        (state,) = tensors(args.checkpoint_mb)
        checkpoint = Path(tmp) / "last.ckpt"
        torch.save({"global_step": 1, "state_dict": state}, checkpoint)
        results["checkpoint"] = {
            "checkpoint_mb": size_mb(checkpoint),
            "verify_checkpoint": timed(lambda: verify_checkpoint(checkpoint), checkpoint, args.repeat),
            "check_checkpoint_fits": timed(  # the shape check: a memory-mapped load, shapes compared
                lambda: check_checkpoint_fits(checkpoint, SimpleNamespace(state_dict=lambda: state)),
                checkpoint,
                args.repeat,
            ),
            "torch_load_for_scale": timed(
                lambda: torch.load(checkpoint, map_location="cpu", weights_only=False),
                checkpoint,
                args.repeat,
            ),
        }
        print("checkpoint", results["checkpoint"], flush=True)
        checkpoint.unlink()

        export = Path(tmp) / "hf"
        export.mkdir()
        save_file(state, export / "model.safetensors")
        start = time.perf_counter()
        write_checksums(export)
        written = time.perf_counter() - start
        results["export"] = {
            "export_mb": size_mb(export),
            "write_checksums_s": round(written, 4),
            "verify_checksums": timed(lambda: verify_checksums(export), export, args.repeat),
        }
        print("export", results["export"], flush=True)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, results)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
