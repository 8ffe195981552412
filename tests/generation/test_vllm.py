"""The vLLM backend's contract on CPU: a stand-in engine records what VLLMGenerator asks of vLLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from prefalign.core.errors import ConfigError, DataError
from prefalign.generation.backends import build_generator, check_generation_config
from prefalign.generation.sampling import Generation, HFGenerator, SamplingConfig, prompt_token_ids
from prefalign.generation.vllm import VLLMGenerator

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 plus 30?"}],
    [{"role": "user", "content": "Reverse the word 'forest'."}],
]


def params(**kwargs):
    """Stand-in for vllm.SamplingParams: keeps its arguments."""
    return SimpleNamespace(**kwargs)


@dataclass
class StandInEngine:
    """Records generate() calls; answers each request with fixed token ids (decoded by the tokenizer)."""

    tokenizer: object
    answer: list[int]
    finish_reason: str = "stop"
    calls: list = field(default_factory=list)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((prompts, sampling_params, use_tqdm))
        completion = SimpleNamespace(
            text=" " + self.tokenizer.decode(self.answer, skip_special_tokens=True) + " ",
            token_ids=self.answer,
            finish_reason=self.finish_reason,
        )
        return [SimpleNamespace(outputs=[completion]) for _ in prompts]


def test_requests_are_the_chat_template_token_ids_with_per_prompt_seeds(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    answer = tokenizer("forty-two", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    engine = StandInEngine(tokenizer, answer)
    generator = VLLMGenerator(engine, tokenizer, sampling_params=params, max_model_len=4096)
    config = SamplingConfig(temperature=0.7, top_p=0.8, max_new_tokens=64, seed=11)
    outputs = generator.generate(CONVERSATIONS, config)

    ((prompts, sent, use_tqdm),) = engine.calls
    assert prompts == [{"prompt_token_ids": prompt_token_ids(tokenizer, c)} for c in CONVERSATIONS]
    assert [p.seed for p in sent] == [11, 12, 13]
    for p in sent:
        assert (p.n, p.temperature, p.top_p, p.max_tokens) == (1, 0.7, 0.8, 64)
        assert p.stop_token_ids == HFGenerator(tiny_model_and_tokenizer[0], tokenizer).end_ids
        assert p.skip_special_tokens is True
    assert use_tqdm is False
    # the HF backend's outputs format: stripped text, response tokens without the end-of-turn token
    assert outputs == [Generation(text="forty-two", num_tokens=len(answer) - 1, hit_max_new_tokens=False)] * 3


def test_vllm_draws_its_bar_for_labelled_work_on_rank_zero(tiny_model_and_tokenizer, monkeypatch):
    from prefalign.core.progress import ENV

    _, tokenizer = tiny_model_and_tokenizer
    engine = StandInEngine(tokenizer, [5, 6, tokenizer.eos_token_id])
    generator = VLLMGenerator(engine, tokenizer, sampling_params=params, max_model_len=4096)
    config = SamplingConfig(temperature=0.0, max_new_tokens=8)
    monkeypatch.setenv(ENV, "1")
    generator.generate(CONVERSATIONS, config, desc="iteration 1: y+")
    generator.generate(CONVERSATIONS, config)  # unlabelled: no bar
    monkeypatch.setenv("RANK", "1")
    generator.generate(CONVERSATIONS, config, desc="iteration 1: y+")
    assert [use_tqdm for _, _, use_tqdm in engine.calls] == [True, False, False]


def test_greedy_and_length_limit_follow_the_hf_backend(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    engine = StandInEngine(tokenizer, [5, 6, 7], finish_reason="length")
    generator = VLLMGenerator(engine, tokenizer, sampling_params=params, max_model_len=40)
    outputs = generator.generate(CONVERSATIONS[:1], SamplingConfig(temperature=0.0, max_new_tokens=500))
    sent = engine.calls[0][1][0]
    prompt_length = len(prompt_token_ids(tokenizer, CONVERSATIONS[0]))
    assert (sent.temperature, sent.top_p, sent.max_tokens) == (0.0, 1.0, 40 - prompt_length)
    assert outputs[0].hit_max_new_tokens and outputs[0].num_tokens == 3
    with pytest.raises(DataError, match="prompt 0 has .* tokens; the model allows 40"):
        generator.generate([[{"role": "user", "content": "x" * 200}]], SamplingConfig())


def test_vllm_backend_without_vllm_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(
        ConfigError, match=r'generation.backend=vllm but vllm is not installed .*pip install -e "\.\[vllm\]"'
    ):
        build_generator({"backend": "vllm"}, {"tiny": {}})


def test_unknown_backend_and_bad_device_are_clear_errors(monkeypatch):
    import torch

    with pytest.raises(ConfigError, match="generation.backend must be one of"):
        check_generation_config({"backend": "tgi"}, {"tiny": {}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="generation.device=cuda but no CUDA GPU is visible"):
        check_generation_config({"backend": "hf", "device": "cuda"}, {"tiny": {}})


def test_hf_backend_loads_the_model_for_inference(session_cache):
    model_cfg = {"tiny": {"seed": 4}, "cache_dir": f"{session_cache}/models", "dtype": "auto"}
    generator = build_generator({"backend": "hf", "device": "auto"}, model_cfg)
    assert isinstance(generator, HFGenerator) and not generator.model.training
    outputs = generator.generate(CONVERSATIONS, SamplingConfig(temperature=0.0, max_new_tokens=4))
    assert len(outputs) == 3 and all(isinstance(g, Generation) for g in outputs)
