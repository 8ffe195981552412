"""Peak memory of a lean log-prob training step against its floor, and against the previous backward.

At the issue's shape (vocabulary 128,256, hidden 256, untied, 2 layers, batch 8 x 128, the first 40
positions of each row prompt), one forward + backward of the response log-probs, fp32 on the CPU:

- ``backbone``: the decoder alone (its hidden states' mean square as the loss): its activations and
  gradients, the input embedding's dense V x H gradient included;
- ``lean``: ``model_sequence_logprobs`` with the collate's response targets (this tree);
- ``previous``: the same with ``_LinearLogProbs`` of ``--previous`` (a commit; default: the one
  before the in-place backward), read with ``git show``, whose backward made ``logits - lse`` and
  ``exp`` as new chunk-sized tensors.

Each runs in its own process (glibc's mmap threshold fixed at 128 KiB, so freed tensors leave the
resident set); peak = ``VmHWM`` after ``clear_refs`` minus the resident set before the step, as a
multiple of the batch's fp32 logits (8 x 128 x 128,256 x 4 bytes). The floor is the backbone plus
one fp32 output-matrix gradient plus one chunk of logits (``LOGIT_CHUNK_ELEMENTS`` x 4 bytes).

    python benchmarks/lean_head_memory.py          # results/lean_head_memory.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "lean_head_memory.json"
ROOT = Path(__file__).resolve().parents[1]
VOCAB, HIDDEN, BATCH, LENGTH, PROMPT = 128256, 256, 8, 128, 40


def _kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(key)


def measure(which: str, previous_file: str | None) -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefalign.data.batching import response_targets
    from prefalign.scoring import logprobs

    if which == "previous":
        spec = importlib.util.spec_from_file_location("previous_logprobs", previous_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        logprobs._LinearLogProbs = module._LinearLogProbs
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=704,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).train()
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    targets = logprobs.batch_targets(response_targets(labels))

    def step() -> None:
        if which == "backbone":
            hidden = logprobs.last_hidden_states(model, input_ids=ids, attention_mask=mask)
            hidden.square().mean().backward()
        else:
            logprobs.model_sequence_logprobs(model, ids, mask, labels, targets=targets).mean.sum().backward()

    step()
    model.zero_grad(set_to_none=True)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmRSS")
    step()
    return (_kib("VmHWM") - before) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--previous", default="ee0d076~1", help="commit whose _LinearLogProbs is 'previous'")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps({"bytes": measure(args.worker[0], args.worker[1])}))
        return
    from prefalign.scoring.logprobs import LOGIT_CHUNK_ELEMENTS

    previous = Path("/tmp") / f"prefalign_previous_logprobs_{os.getpid()}.py"
    previous.write_text(
        subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{args.previous}:src/prefalign/scoring/logprobs.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    logits = BATCH * LENGTH * VOCAB * 4
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = {}
    for which in ("backbone", "lean", "previous"):
        out = subprocess.run(
            [sys.executable, __file__, "--worker", which, str(previous)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        rows[which] = round(json.loads(out.stdout.strip().splitlines()[-1])["bytes"] / logits, 3)
    previous.unlink()
    floor = rows["backbone"] + (VOCAB * HIDDEN * 4 + LOGIT_CHUNK_ELEMENTS * 4) / logits
    result = {
        "shape": {"vocab": VOCAB, "hidden": HIDDEN, "layers": 2, "batch": [BATCH, LENGTH], "prompt": PROMPT},
        "previous_commit": args.previous,
        "fp32_logits_mib": logits / 2**20,
        "peak_over_fp32_logits": rows,
        "floor_over_fp32_logits": round(floor, 3),
        "load_1min": round(os.getloadavg()[0], 2),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
