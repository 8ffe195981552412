"""TRL's side of the start-up benchmark (``benchmarks/startup_vs_trl.py``), run with the TRL
virtual environment's Python (TRL is not a project dependency):

    <venv>/bin/python trl_first_step.py sft|dpo <model folder> <train jsonl> <val jsonl> \
        <output folder> <batch size> <lr> <max length> live|precomputed

Trains the given Hugging Face model folder with ``SFTTrainer`` (chat ``messages`` records) or
``DPOTrainer`` (``prompt`` / ``chosen`` / ``rejected`` strings, given to TRL in its conversational
format with the prompt as one user turn) on the CPU in fp32, with the prefalign runs' batch size,
maximum length and learning rate, no tracker and no checkpoints; the validation file is the
eval_dataset (tokenised before training, evaluated every epoch, as prefalign does). DPO's reference: a copy of the
model scored in every step (``live``, TRL's default) or the whole training set's reference
log-probs computed before training (``precomputed``: ``precompute_ref_log_probs=True``). At the end of the first optimiser
step it writes the wall-clock time, CPU time, peak RSS and the stages' marks (``startup_marks``)
to ``$FIRST_STEP_FILE`` and ends the process.
Imports happen here, after start: they count, as prefalign's do.
"""

from __future__ import annotations

import sys

from startup_marks import mark, marked, record_and_exit

mark("interpreter and site ready")


def main(
    kind: str,
    model_dir: str,
    data: str,
    val_data: str,
    out: str,
    batch_size: int,
    lr: float,
    max_length: int,
    reference: str,
) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    mark("import datasets, transformers")

    class FirstStep(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            mark("on_train_begin")

        def on_step_begin(self, args, state, control, **kwargs):
            if not marked("first step begin"):
                mark("first step begin")

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if not marked("first optimizer step"):
                mark("first optimizer step")

        def on_step_end(self, args, state, control, **kwargs):
            record_and_exit()

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    mark("tokenizer")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    mark("model")
    dataset = load_dataset("json", data_files={"train": data, "validation": val_data})
    mark("data read (load_dataset json)")
    common = dict(
        output_dir=out,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        eval_strategy="epoch",
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

        mark("import trl")
        dataset = dataset.select_columns(["messages"])
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common),
            train_dataset=dataset["train"],
            eval_dataset=dataset["validation"],
            processing_class=tokenizer,
            callbacks=[FirstStep()],
        )
    else:
        from trl import DPOConfig, DPOTrainer

        mark("import trl")

        def conversational(row):
            return {
                "prompt": [{"role": "user", "content": row["prompt"]}],
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            }

        dataset = dataset.map(conversational, remove_columns=dataset["train"].column_names)
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**common, beta=0.1, precompute_ref_log_probs=reference == "precomputed"),
            train_dataset=dataset["train"],
            eval_dataset=dataset["validation"],
            processing_class=tokenizer,
            callbacks=[FirstStep()],
        )
    mark("trainer built (tokenised data, reference model)")
    trainer.train()


if __name__ == "__main__":
    kind, model_dir, data, val_data, out = sys.argv[1:6]
    batch_size, lr, max_length, reference = (
        int(sys.argv[6]),
        float(sys.argv[7]),
        int(sys.argv[8]),
        sys.argv[9],
    )
    main(kind, model_dir, data, val_data, out, batch_size, lr, max_length, reference)
