"""Exports as other tools take them: no machine-local tokenizer settings, the project's chat
templates in their ``{% generation %}``-marked form, and TRL's ``SFTTrainer`` with
``assistant_only_loss=True`` training on an export as it is."""

from __future__ import annotations

import json
import logging

import pytest
from transformers import AutoTokenizer

from prefalign.models.chat_templates import CHATML
from prefalign.training.checkpointing import LOADING_SETTINGS, write_hf_export


@pytest.fixture
def export(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    tokenizer.init_kwargs.update(local_files_only=True, is_local=True)  # as loaded from a local folder
    folder = tmp_path / "hf"
    write_hf_export(model, tokenizer, folder)
    yield folder
    for key in ("local_files_only", "is_local"):
        tokenizer.init_kwargs.pop(key)


def test_the_export_carries_no_loading_settings_and_the_marked_template(export, tiny_model_and_tokenizer):
    saved = json.loads((export / "tokenizer_config.json").read_text())
    assert not set(saved) & set(LOADING_SETTINGS), saved
    loaded = AutoTokenizer.from_pretrained(export)
    assert loaded.chat_template == CHATML.training_jinja
    # the tokenizer in memory is left as it was
    _, tokenizer = tiny_model_and_tokenizer
    assert tokenizer.chat_template == CHATML.jinja and tokenizer.init_kwargs["local_files_only"] is True


def test_trl_trains_on_the_export_with_assistant_only_loss(export, tmp_path, caplog):
    trl = pytest.importorskip("trl", reason="pip install -e '.[dev]' (TRL is in the dev extra)")
    import datasets

    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    data = datasets.Dataset.from_list([{"messages": conversation}] * 4)
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "trl"),
        assistant_only_loss=True,
        max_steps=1,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    with caplog.at_level(logging.WARNING):
        trainer = trl.SFTTrainer(model=str(export), args=args, train_dataset=data)
        trainer.train()
    assert trainer.chat_template is None  # the export's own template was used, none swapped in
    assert "end-of-turn token in the loss mask" not in caplog.text
    row = trainer.train_dataset[0]  # TRL's labels: the assistant's answer and its end of turn only
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert tokenizer.decode([t for t in row["labels"] if t != -100]) == "hello there<|im_end|>"
