"""Hugging Face exports of a training run: every epoch (``hf_epochs/epoch_<e>``), the final model alone
in ``hf/``, a LoRA
run's merged model beside its adapter, and a ``generation_config`` that stops ``generate()`` at
the chat template's end-of-turn token when the template is overridden.

The tiny model is built with the Zephyr template (EOS ``</s>``) and trained with the Llama-3
template as override (end of turn ``<|eot_id|>``), as a base Llama-3 is fine-tuned with its chat
template: a ``generation_config`` that kept only the model's own EOS would not stop at the end of
the answer. The run memorises one short answer, so greedy decoding emits ``<|eot_id|>`` after it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefalign.core.jsonl import write_jsonl
from prefalign.training.callbacks import ExportHF
from prefalign.training.run import run_task, train

ANSWER = "ok"  # memorised by the run
PROMPT = [{"role": "user", "content": "hi"}]
MAX_NEW_TOKENS = 24


def _data(tmp_path: Path) -> Path:
    conversation = [*PROMPT, {"role": "assistant", "content": ANSWER}]
    return write_jsonl(
        tmp_path / "one_answer.jsonl", ({"id": f"s{i}", "messages": conversation} for i in range(128))
    )


def _run(compose_train, tmp_path, *overrides, output="run"):
    data = _data(tmp_path)
    cfg = compose_train(
        [
            "model.tiny.template=zephyr",
            "model.chat_template=llama3",
            f"data.train.path={data}",
            f"data.val.path={data}",
            "data.train.limit=null",
            "data.val.limit=8",
            "logger=csv",
            "callbacks.model_checkpoint=null",
            "callbacks.hf_export.every_n_epochs=1",
            *overrides,
        ],
        output=output,
    )
    run_task(train, cfg)
    return Path(cfg.paths.output_dir) / "hf"


def _greedy(model, tokenizer, **kwargs) -> list[int]:
    """The greedy answer's new token ids to PROMPT."""
    input_ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt")
    if not isinstance(input_ids, torch.Tensor):  # transformers 5 returns a BatchEncoding
        input_ids = input_ids["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, **kwargs)
    return out[0, input_ids.shape[1] :].tolist()


def _assert_stops_at_the_end_of_turn(folder: Path) -> None:
    """The export in ``folder``, loaded as any HF user would, answers PROMPT and stops at
    ``<|eot_id|>``; with only the model's own EOS it would have run on."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eot, eos = tokenizer.convert_tokens_to_ids("<|eot_id|>"), tokenizer.convert_tokens_to_ids("</s>")
    assert tokenizer.eos_token == "<|eot_id|>"
    # the model's own EOS (</s>) and the template's end of turn both stop generation
    assert model.generation_config.eos_token_id == [eos, eot]
    new = _greedy(model, tokenizer)
    assert new[-1] == eot, f"{folder}: generation did not end at <|eot_id|>: {tokenizer.decode(new)!r}"
    assert 1 < len(new) < MAX_NEW_TOKENS  # an answer, then the end of turn
    # control: the generation config of the model alone (</s>) does not stop there
    assert len(_greedy(model, tokenizer, eos_token_id=eos)) > len(new)


@pytest.mark.slow
def test_every_epoch_and_the_final_export_load_and_stop_at_the_end_of_turn(compose_train, tmp_path):
    hf = _run(compose_train, tmp_path, "trainer.max_epochs=2", "optimizer.lr=3e-2")
    epochs = hf.parent / "hf_epochs"
    assert not [p for p in hf.iterdir() if p.is_dir()]  # the final model alone: it uploads as it is
    assert sorted(p.name for p in epochs.iterdir()) == ["epoch_000", "epoch_001"]
    for folder in (epochs / "epoch_000", epochs / "epoch_001", hf):
        assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
        _assert_stops_at_the_end_of_turn(folder)
    # the final export is the model after the last epoch
    last = AutoModelForCausalLM.from_pretrained(epochs / "epoch_001").state_dict()
    for name, tensor in AutoModelForCausalLM.from_pretrained(hf).state_dict().items():
        torch.testing.assert_close(tensor, last[name], rtol=0, atol=0, msg=name)
    assert not [p for p in tmp_path.rglob(".*tmp")]  # no temporary folder left behind


@pytest.mark.slow
def test_lora_run_exports_the_merged_model_beside_its_adapter(compose_train, tmp_path):
    lora = "{r: 8, lora_alpha: 16, lora_dropout: 0.0, target_modules: all-linear}"
    hf = _run(compose_train, tmp_path, "trainer.max_epochs=2", "optimizer.lr=3e-2", f"model.lora={lora}")
    for folder in (hf.parent / "hf_epochs" / "epoch_001", hf):
        assert (folder / "adapter" / "adapter_config.json").exists()
        assert not (folder / "adapter_config.json").exists()  # the top folder is a plain model
        _assert_stops_at_the_end_of_turn(folder)
    _adapter_matches_merged(hf)  # the adapter on its base gives the merged model's logits


def test_every_n_epochs_must_be_a_non_negative_integer():
    with pytest.raises(ValueError, match="every_n_epochs"):
        ExportHF("hf", every_n_epochs=-1)
    assert ExportHF("run/hf", every_n_epochs=2).epoch_dirpath(4) == Path("run/hf_epochs/epoch_004")
    assert ExportHF("hf", 1, epochs_dirpath="e").epoch_dirpath(0) == Path("e/epoch_000")


def test_the_default_config_puts_epoch_exports_beside_the_final_export(compose_train):
    cfg = compose_train(["callbacks.hf_export.every_n_epochs=1"])
    export = cfg.callbacks.hf_export
    assert export.dirpath == f"{cfg.paths.output_dir}/hf"
    assert export.epochs_dirpath == f"{cfg.paths.output_dir}/hf_epochs"


def _adapter_matches_merged(folder: Path) -> None:
    """The adapter in ``folder/adapter`` on its base gives the logits of the merged model in
    ``folder``, and moved the base."""
    from peft import PeftModel

    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]).eval()
    ids = torch.tensor([[5, 40, 41, 42, 9]])
    with torch.no_grad():
        before = base(ids).logits
        adapted = PeftModel.from_pretrained(base, folder / "adapter").eval()  # wraps `base` in place
        torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, rtol=1e-4, atol=1e-4)
        assert (before - merged(ids).logits).abs().max() > 1e-5  # the adapter trained


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_ddp_exports_every_epoch_from_rank_zero(compose_train, tmp_path):
    cfg = compose_train(
        [
            "trainer=ddp",
            "trainer.strategy=ddp_spawn",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.devices=2",
            "trainer.max_epochs=2",
            "logger=csv",
            "callbacks.hf_export.every_n_epochs=1",
            "model.chat_template=llama3",
        ]
    )
    run_task(train, cfg)
    hf = Path(cfg.paths.output_dir) / "hf"
    assert sorted(p.name for p in (hf.parent / "hf_epochs").iterdir()) == ["epoch_000", "epoch_001"]
    last = AutoModelForCausalLM.from_pretrained(hf.parent / "hf_epochs" / "epoch_001").state_dict()
    final = AutoModelForCausalLM.from_pretrained(hf)
    for name, tensor in final.state_dict().items():
        torch.testing.assert_close(tensor, last[name], rtol=0, atol=0, msg=name)
    eot = AutoTokenizer.from_pretrained(hf).convert_tokens_to_ids("<|eot_id|>")
    assert eot in final.generation_config.eos_token_id  # chatml tiny model, llama3 template
    assert not [p for p in Path(cfg.paths.output_dir).rglob(".*") if p.name.startswith(".hf")]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_fsdp2_lora_run_exports_merged_models_gathered_from_the_shards(
    tmp_path, session_cache, run_app
):
    lora = "{r: 4, lora_alpha: 8, lora_dropout: 0.0, target_modules: [q_proj, v_proj]}"
    result = run_app(
        "prefalign.apps.train",
        [
            "trainer=fsdp2",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.devices=2",
            "data.train.limit=32",
            "data.val.limit=16",
            "data.batch_size=8",
            "callbacks.progress_bar=null",
            "callbacks.model_checkpoint=null",
            "logger=csv",
            "trainer.max_epochs=2",
            "callbacks.hf_export.every_n_epochs=1",
            f"model.lora={lora}",
            f"paths.cache_dir={session_cache}",
            "hydra.run.dir=run",
        ],
        tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    hf = tmp_path / "run" / "hf"
    assert sorted(p.name for p in hf.iterdir() if p.is_dir()) == ["adapter"]
    assert sorted(p.name for p in (hf.parent / "hf_epochs").iterdir()) == ["epoch_000", "epoch_001"]
    for folder in (hf.parent / "hf_epochs" / "epoch_000", hf):
        assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["target_modules"]
        _adapter_matches_merged(folder)
