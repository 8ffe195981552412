import sys

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


def test_lora_without_peft_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError, as when not installed
    lora = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
    with pytest.raises(ImportError, match=r"model\.lora is set, but LoRA needs peft.*\.\[lora\]"):
        load_model_and_tokenizer(_tiny_cfg(tmp_path, lora=lora))


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


# -- device, dtype and attention for models outside the Trainer ---------------------------------------


def test_device_auto_is_the_cpu_without_a_gpu_and_this_ranks_gpu_with_one(monkeypatch):
    from prefalign.models.loading import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"sso.device=cuda:7 but only 4 CUDA device"):
        resolve_device("cuda:7", setting="sso.device")


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_a_clear_error_naming_the_setting(monkeypatch, device):
    from prefalign.models.loading import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ValueError, match=rf"generation.device={device} but no CUDA GPU is visible.*device=auto"
    ):
        resolve_device(device, setting="generation.device")


def test_unknown_device_is_a_clear_error():
    from prefalign.models.loading import resolve_device

    with pytest.raises(ValueError, match="device='gpu0': use auto, cpu, cuda or cuda:<index>"):
        resolve_device("gpu0")


def test_dtype_auto_is_bf16_on_a_gpu_and_fp32_on_the_cpu(monkeypatch):
    from prefalign.models.loading import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", torch.device("cuda", 0)) == "bfloat16"
    assert resolve_dtype("float16", torch.device("cuda", 0)) == "float16"
    with pytest.raises(ValueError, match="model.dtype must be one of"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_flash_attention_missing_is_a_clear_error_with_the_fix(monkeypatch):
    import transformers.utils

    from prefalign.models.loading import resolve_placement

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    cfg = {"tiny": {}, "attn_implementation": "flash_attention_2"}
    with pytest.raises(
        ValueError, match=r"flash-attn is not installed.*\[gpu\]\" --no-build-isolation.*sdpa"
    ):
        resolve_placement(cfg, "cpu")
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    with pytest.raises(ValueError, match="runs on CUDA GPUs only, but the model runs on cpu"):
        resolve_placement(cfg, "cpu")


def test_load_for_inference_places_the_model_in_eval_mode_with_its_settings(tmp_path):
    from prefalign.models.loading import load_for_inference, resolve_placement

    cfg = _tiny_cfg(tmp_path, dtype="auto", attn_implementation="eager", gradient_checkpointing=True)
    placement = resolve_placement(cfg, "auto")
    model, tokenizer = load_for_inference(cfg, device="auto")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert placement.device.type == expected.type
    assert next(model.parameters()).device.type == expected.type
    assert model.dtype == (torch.bfloat16 if placement.dtype == "bfloat16" else torch.float32)
    assert model.config._attn_implementation == "eager"
    assert not model.training
    assert not model.is_gradient_checkpointing
    assert tokenizer.chat_template == TEMPLATES["zephyr"].jinja


# -- dropout --------------------------------------------------------------------------------------------


def _dropout_model():
    """A tiny Llama with attention dropout and a LoRA adapter with dropout."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_dropout=0.5,
    )
    model = LlamaForCausalLM(config)
    return get_peft_model(model, LoraConfig(r=4, lora_dropout=0.5, target_modules=["q_proj", "v_proj"]))


def test_disable_dropout_makes_train_mode_deterministic():
    from prefalign.models.loading import disable_dropout

    model = _dropout_model().train()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
        assert disable_dropout(model) > 0
        first = model(input_ids=ids).logits
        assert torch.equal(first, model(input_ids=ids).logits)
        assert model.training
        assert torch.allclose(first, model.eval()(input_ids=ids).logits)
    assert disable_dropout(model) == 0


@pytest.mark.parametrize(
    ("objective", "setting", "expect_off"),
    [
        ("PoFT", None, True),
        ("CrossEntropy", None, False),
        ("PoFT", False, False),
        ("CrossEntropy", True, True),
    ],
)
def test_modules_turn_dropout_off_for_objectives_comparing_logprobs(objective, setting, expect_off):
    import functools

    from prefalign import objectives
    from prefalign.modules import SingleSequenceModule

    model = _dropout_model()
    SingleSequenceModule(
        model,
        getattr(objectives, objective)(),
        functools.partial(torch.optim.AdamW, lr=1e-3),
        disable_dropout=setting,
    )
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    rates += [m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")]
    assert rates and all((r == 0) == expect_off for r in rates)


def test_multi_sequence_objectives_turn_dropout_off_by_default():
    import functools

    from prefalign.modules import MultiSequenceModule
    from prefalign.objectives import SSO

    model = _dropout_model()
    MultiSequenceModule(model, SSO(), functools.partial(torch.optim.AdamW, lr=1e-3))
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
