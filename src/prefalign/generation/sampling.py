"""Batched sampling from the policy with HF ``generate`` (vLLM: :mod:`prefalign.generation.vllm`).

Prompts are rendered with the model's chat template (generation prompt added), sorted by length,
left-padded and generated in batches with the KV cache; each batch is seeded from the base seed, so
a run is reproducible. When all the prompts of a call start with the same long token prefix (the
SSO paper's Table 14 allocation prompt: ~900 tokens of instructions and examples before the
query), the prefix is run once and its KV cache is copied into every batch, which then computes
only its prompts' own tokens (``shared_prefix_min_tokens``). A response that reaches ``max_new_tokens`` without an end-of-turn token is
flagged. Defaults are the SSO paper's: top-p 0.8, temperature 0.7, max_new_tokens 2048.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from prefalign.core.errors import DataError, DropReport
from prefalign.core.progress import progress_bar


@dataclass
class SamplingConfig:
    """Sampling settings (SSO paper §4.1 defaults).

    Attributes:
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass.
        max_new_tokens: longest response.
        batch_size: prompts per ``generate`` call.
        seed: base seed; batch ``b`` samples with ``seed + b``.
        shared_prefix_min_tokens: when the prompts of one call share a token prefix at least this
            long, it is computed once and its KV cache reused by every batch (0: never).
    """

    temperature: float = 0.7
    top_p: float = 0.8
    max_new_tokens: int = 2048
    batch_size: int = 16
    seed: int = 0
    shared_prefix_min_tokens: int = 64


@dataclass
class Generation:
    """One sampled response: its text, its token count, and whether it hit ``max_new_tokens``."""

    text: str
    num_tokens: int
    hit_max_new_tokens: bool


class Generator(Protocol):
    """What the SSO pipeline needs from a sampling backend: ``generate`` and the ``tokenizer`` whose
    chat template renders the prompts (prompt lengths are checked with it)."""

    tokenizer: Any

    def generate(
        self, conversations: Sequence[list[dict[str, str]]], config: SamplingConfig
    ) -> list[Generation]: ...


def labelled(generator: Any, desc: str) -> dict[str, str]:
    """``{"desc": desc}`` when ``generator.generate`` takes a progress-bar label (the HF and vLLM
    backends do), else ``{}``; call ``generator.generate(..., **labelled(generator, "judge"))``."""
    import inspect

    return {"desc": desc} if "desc" in inspect.signature(generator.generate).parameters else {}


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


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all ``prompts`` share, leaving every prompt at least one
    token of its own (the first step of generation needs an uncached token per row)."""
    if not prompts:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    length = 0
    while length < limit and all(p[length] == first[length] for p in prompts):
        length += 1
    return max(length, 0)


def row_seed(seed: int, key: str) -> int:
    """A 63-bit seed from the base seed and a row's key (stable across processes and runs)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8], "big") >> 1


class PerRowSampler(LogitsProcessor):
    """Temperature, top-p, then a sample per row from the row's own seeded stream (Gumbel-max:
    argmax(log p + g), g ~ Gumbel(0, 1), is a draw from p), so greedy decoding of the processed
    scores samples each row independently of the rest of the batch.

    Args:
        keys: one key per batch row; row r draws from ``torch.Generator`` seeded by
            :func:`row_seed` (``config.seed``, ``keys[r]``), one vocabulary-sized draw per step.
    """

    def __init__(self, keys: Sequence[str], config: SamplingConfig) -> None:
        self.generators = [torch.Generator().manual_seed(row_seed(config.seed, k)) for k in keys]
        self.temperature, self.top_p = float(config.temperature), float(config.top_p)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:  # keep the smallest set of top tokens whose mass reaches top_p
            ordered, order = logits.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            beyond = (probs.cumsum(dim=-1) - probs) >= self.top_p  # the top token always stays
            drop = torch.zeros_like(beyond).scatter(-1, order, beyond)
            logits = logits.masked_fill(drop, float("-inf"))
        log_probs = logits.log_softmax(dim=-1)
        uniform = torch.stack(
            [torch.rand(logits.shape[-1], generator=g, dtype=torch.float64) for g in self.generators]
        ).clamp_(min=1e-300)
        gumbel = -torch.log(-torch.log(uniform)).to(logits.device, logits.dtype)
        return log_probs + gumbel


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
        self,
        conversations: Sequence[list[dict[str, str]]],
        config: SamplingConfig,
        keys: Sequence[str] | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        """Sample (or, at temperature 0, greedily decode) one response per conversation.

        Args:
            keys: one string per conversation (e.g. ``"<iteration>/<prompt id>/chosen"``). Given,
                each conversation is sampled with its own random stream seeded by
                (``config.seed``, key), so its response does not depend on which other prompts
                share its batch, their order, or how prompts are split over processes (see
                :class:`PerRowSampler`). Without keys, batch ``b`` is seeded with ``seed + b``.
            desc: the label of a progress bar over the prompts (:func:`prefalign.core.progress.progress_bar`:
                rank 0, a terminal or ``PREFALIGN_PROGRESS=1``); None: no bar (e.g. inside the
                Trainer, whose own bar is showing).
        """
        if keys is not None and len(keys) != len(conversations):
            raise ValueError(f"{len(keys)} keys for {len(conversations)} conversations")
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
        shared = shared_prefix_length(prompts)
        prefix_cache = None
        if config.shared_prefix_min_tokens > 0 and shared >= config.shared_prefix_min_tokens:
            prefix_cache = self.model(
                input_ids=torch.tensor([prompts[0][:shared]], device=device), use_cache=True, logits_to_keep=1
            ).cache
        else:
            shared = 0
        bar = progress_bar(total=len(order), desc=desc, unit="prompt", disable=desc is None)
        for b, start in enumerate(range(0, len(order), config.batch_size)):
            rows = order[start : start + config.batch_size]
            # [shared prefix | left padding | the prompt's own tokens]: the padding is masked and the
            # positions count unmasked tokens only, so every row sees its prompt as without padding
            own = max(len(prompts[i]) - shared for i in rows)
            width = shared + own
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):  # left padding: the prompts end where generation starts
                input_ids[r, width - len(prompts[i]) + shared :] = torch.tensor(prompts[i][shared:])
                attention[r, width - len(prompts[i]) + shared :] = 1
            if shared:
                input_ids[:, :shared] = torch.tensor(prompts[0][:shared])
                attention[:, :shared] = 1
                extra_cache = {"cache": copy.deepcopy(prefix_cache)}
                extra_cache["cache"].batch_repeat_interleave(len(rows))
            else:
                extra_cache = {}
            max_new = config.max_new_tokens
            if limit is not None:
                max_new = min(max_new, limit - width)
            sample = config.temperature > 0
            per_row = sample and keys is not None
            extra = {}
            if per_row:  # sampling done by the processor; generate then takes its argmax
                sampler = PerRowSampler([keys[i] for i in rows], config)
                extra["logits_processor"] = LogitsProcessorList([sampler])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed + b)
                out = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    do_sample=sample and not per_row,
                    temperature=config.temperature if sample and not per_row else None,
                    top_p=config.top_p if sample and not per_row else None,
                    max_new_tokens=max_new,
                    pad_token_id=pad,
                    eos_token_id=self.end_ids,
                    use_cache=True,
                    **extra,
                    **extra_cache,
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
            bar.update(len(rows))
        bar.close()
        self.model.train(was_training)
        return results  # type: ignore[return-value]
