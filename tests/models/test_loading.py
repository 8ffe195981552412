import pytest
import torch
from transformers import LlamaForCausalLM

from prefalign.models.chat_templates import TEMPLATES
from prefalign.models.loading import (
    TinySpec,
    load_causal_lm,
    load_model_and_tokenizer,
    load_tokenizer,
    materialize_tiny_model,
)


def _tiny_cfg(cache_dir, **overrides):
    cfg = {"tiny": {"template": "zephyr", "seed": 3}, "cache_dir": str(cache_dir), "dtype": "float32"}
    cfg.update(overrides)
    return cfg


def test_tiny_model_is_built_once_and_deterministic(tmp_path):
    spec = TinySpec(template="llama3", seed=7)
    first = materialize_tiny_model(spec, tmp_path)
    mtime = (first / "config.json").stat().st_mtime_ns
    assert materialize_tiny_model(spec, tmp_path) == first
    assert (first / "config.json").stat().st_mtime_ns == mtime  # not rebuilt
    other = materialize_tiny_model(TinySpec(template="llama3", seed=8), tmp_path)
    assert other != first
    a = load_causal_lm(str(first))
    b = load_causal_lm(str(other))
    rebuilt = materialize_tiny_model(spec, tmp_path / "again")
    c = load_causal_lm(str(rebuilt))
    assert torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)


def test_tiny_config_loads_model_and_tokenizer_with_its_template(tmp_path):
    model, tokenizer = load_model_and_tokenizer(_tiny_cfg(tmp_path))
    assert isinstance(model, LlamaForCausalLM)
    assert tokenizer.chat_template == TEMPLATES["zephyr"].jinja
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token is not None
    assert model.config.vocab_size == len(tokenizer)
    assert model.dtype == torch.float32
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|user|>\nhi</s>\n<|assistant|>\n"


def test_chat_template_override_by_name_sets_template_and_end_of_turn(tmp_path):
    path = materialize_tiny_model(TinySpec(template="zephyr"), tmp_path)
    tokenizer = load_tokenizer(str(path), chat_template="chatml")
    assert tokenizer.chat_template == TEMPLATES["chatml"].jinja
    assert tokenizer.eos_token == "<|im_end|>"
    custom = load_tokenizer(str(path), chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert custom.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "x"


def test_tokenizer_without_chat_template_is_a_clear_error(tmp_path):
    path = materialize_tiny_model(TinySpec(), tmp_path)
    tokenizer = load_tokenizer(str(path))
    tokenizer.chat_template = None
    bare = tmp_path / "bare"
    tokenizer.save_pretrained(bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no chat template"):
        load_tokenizer(str(bare))


def test_dtype_gradient_checkpointing_and_lora(tmp_path):
    model, _ = load_model_and_tokenizer(_tiny_cfg(tmp_path, dtype="bfloat16", gradient_checkpointing=True))
    assert model.dtype == torch.bfloat16
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    peft_model, _ = load_model_and_tokenizer(_tiny_cfg(tmp_path, lora=lora))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dtype": "float8"}, "model.dtype"),
        ({"attn_implementation": "magic"}, "attn_implementation"),
        ({"attn_implementation": "flash_attention_2"}, "flash-attn"),
    ],
)
def test_bad_model_options_are_clear_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_model_and_tokenizer(_tiny_cfg(tmp_path, **overrides))


def test_model_config_needs_a_name_or_tiny_spec():
    with pytest.raises(ValueError, match="name_or_path"):
        load_model_and_tokenizer({"name_or_path": None, "tiny": None})


@pytest.mark.parametrize("name", ["/no/such/model", "./models/mine", "~/no-such-model-folder", "a/b/c"])
def test_a_missing_local_model_folder_is_named_not_looked_up_on_the_hub(name):
    from pathlib import Path

    from prefalign.models.loading import load_model_and_tokenizer, missing_local_model

    assert missing_local_model(name)
    with pytest.raises(
        FileNotFoundError, match=f"model.name_or_path: no such folder {Path(name).expanduser()}"
    ):
        load_model_and_tokenizer({"name_or_path": name})


def test_hub_ids_and_existing_folders_are_not_missing_local_models(tmp_path):
    from prefalign.models.loading import missing_local_model

    assert not missing_local_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not missing_local_model("gpt2")
    assert not missing_local_model(str(tmp_path))
