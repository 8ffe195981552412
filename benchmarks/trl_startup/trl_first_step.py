"""TRL's side of the start-up benchmark (``benchmarks/startup_vs_trl.py``), run with the TRL
virtual environment's Python (TRL is not a project dependency):

    <venv>/bin/python trl_first_step.py sft|dpo <model folder> <train jsonl> <output folder> \
        <batch size> <lr> <max length> live|precomputed

Trains the given Hugging Face model folder with ``SFTTrainer`` (chat ``messages`` records) or
``DPOTrainer`` (``prompt`` / ``chosen`` / ``rejected`` strings, given to TRL in its conversational
format with the prompt as one user turn) on the CPU in fp32, with the prefalign runs' batch size,
maximum length and learning rate, no tracker and no checkpoints. DPO's reference: a copy of the
model scored in every step (``live``, TRL's default) or the whole training set's reference
log-probs computed before training (``precomputed``: ``precompute_ref_log_probs=True``). At the end of the first optimiser
step it writes the wall-clock time and the peak RSS to ``$FIRST_STEP_FILE`` and ends the process.
Imports happen here, after start: they count, as prefalign's do.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def record_and_exit() -> None:
    record = {
        "t_first_step": time.time(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    with open(os.environ["FIRST_STEP_FILE"], "w") as f:
        json.dump(record, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(
    kind: str,
    model_dir: str,
    data: str,
    out: str,
    batch_size: int,
    lr: float,
    max_length: int,
    reference: str,
) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record_and_exit()

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    dataset = load_dataset("json", data_files=data, split="train")
    common = dict(
        output_dir=out,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        num_train_epochs=1,
        max_length=max_length,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        seed=42,
    )
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        dataset = dataset.select_columns(["messages"])
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[FirstStep()],
        )
    else:
        from trl import DPOConfig, DPOTrainer

        def conversational(row):
            return {
                "prompt": [{"role": "user", "content": row["prompt"]}],
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            }

        dataset = dataset.map(conversational, remove_columns=dataset.column_names)
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**common, beta=0.1, precompute_ref_log_probs=reference == "precomputed"),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[FirstStep()],
        )
    trainer.train()


if __name__ == "__main__":
    kind, model_dir, data, out = sys.argv[1:5]
    batch_size, lr, max_length, reference = (
        int(sys.argv[5]),
        float(sys.argv[6]),
        int(sys.argv[7]),
        sys.argv[8],
    )
    main(kind, model_dir, data, out, batch_size, lr, max_length, reference)
