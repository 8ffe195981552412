"""Batched sampling from the policy with HF ``generate`` (vLLM: :mod:`prefalign.generation.vllm`).

Prompts are rendered with the model's chat template (generation prompt added), sorted by length,
left-padded and generated in batches with the KV cache; each batch is seeded from the base seed, so
a run is reproducible. A response that reaches ``max_new_tokens`` without an end-of-turn token is
flagged. Defaults are the SSO paper's: top-p 0.8, temperature 0.7, max_new_tokens 2048.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from prefalign.core.errors import DataError, DropReport


@dataclass
class SamplingConfig:
    """Sampling settings (SSO paper §4.1 defaults).

    Attributes:
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass.
        max_new_tokens: longest response.
        batch_size: prompts per ``generate`` call.
        seed: base seed; batch ``b`` samples with ``seed + b``.
    """

    temperature: float = 0.7
    top_p: float = 0.8
    max_new_tokens: int = 2048
    batch_size: int = 16
    seed: int = 0


@dataclass
class Generation:
    """One sampled response: its text, its token count, and whether it hit ``max_new_tokens``."""

    text: str
    num_tokens: int
    hit_max_new_tokens: bool


class Generator(Protocol):
    """What the SSO pipeline needs from a sampling backend."""

    def generate(
        self, conversations: Sequence[list[dict[str, str]]], config: SamplingConfig
    ) -> list[Generation]: ...


def prompt_token_ids(tokenizer, conversation: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation rendered with its generation prompt."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def filter_prompts_by_length(
    ids: Sequence[str], conversations: Sequence[list[dict[str, str]]], tokenizer, max_prompt_tokens: int
) -> tuple[list[int], DropReport]:
    """Indices of the prompts that fit in ``max_prompt_tokens``; the others are counted as dropped."""
    report = DropReport(total=len(conversations))
    keep = []
    for i, (sample_id, conversation) in enumerate(zip(ids, conversations, strict=True)):
        if len(prompt_token_ids(tokenizer, conversation)) > max_prompt_tokens:
            report.add("prompt_too_long", sample_id)
        else:
            keep.append(i)
    return keep, report


class HFGenerator:
    """Batched sampling with ``model.generate`` (KV cache, left padding, length-sorted batches)."""

    def __init__(self, model, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.end_ids = sorted(
            {tokenizer.eos_token_id, *([tokenizer.convert_tokens_to_ids(tokenizer.eos_token)])}
        )

    @torch.inference_mode()
    def generate(
        self, conversations: Sequence[list[dict[str, str]]], config: SamplingConfig
    ) -> list[Generation]:
        prompts = [prompt_token_ids(self.tokenizer, c) for c in conversations]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        for i, ids in enumerate(prompts):
            if limit is not None and len(ids) + 1 > limit:
                raise DataError(f"prompt {i} has {len(ids)} tokens; the model allows {limit}")
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        for b, start in enumerate(range(0, len(order), config.batch_size)):
            rows = order[start : start + config.batch_size]
            width = max(len(prompts[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):  # left padding: the prompts end where generation starts
                input_ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                attention[r, width - len(prompts[i]) :] = 1
            max_new = config.max_new_tokens
            if limit is not None:
                max_new = min(max_new, limit - width)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed + b)
                out = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    do_sample=config.temperature > 0,
                    temperature=config.temperature if config.temperature > 0 else None,
                    top_p=config.top_p if config.temperature > 0 else None,
                    max_new_tokens=max_new,
                    pad_token_id=pad,
                    eos_token_id=self.end_ids,
                    use_cache=True,
                )
            for r, i in enumerate(rows):
                new = out[r, width:].tolist()
                stop = next((k for k, t in enumerate(new) if t in self.end_ids), None)
                tokens = new if stop is None else new[:stop]
                results[i] = Generation(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    num_tokens=len(tokens),
                    hit_max_new_tokens=stop is None and len(new) >= max_new,
                )
        self.model.train(was_training)
        return results  # type: ignore[return-value]
