"""The sequence log-prob primitive shared by every objective (design idea 1).

For a batch of token sequences with labels (``IGNORE_INDEX`` outside the response), the sum of the
response tokens' log-probabilities under the model and the number of response tokens, per
sequence. CE uses it per token, PoFT's r_θ and the aligned scores r_j its average, DPO the sums,
IPO and SSO's W the averages. Log-probs are always computed in fp32 with a fused log-softmax
(``cross_entropy``), never ``log(softmax)`` in low precision.

Two paths give the same values:

- from logits (:func:`sequence_logprobs`, :func:`gathered_sequence_logprobs`): the model's full
  ``(B, T, V)`` logits, the reference;
- memory-lean (:func:`model_sequence_logprobs`, :func:`model_gathered_sequence_logprobs`, the
  default of training and scoring): the model's last hidden states, projected to the vocabulary a
  bounded chunk at a time, so no full-vocabulary logits exist for every position at once (the idea
  of fused linear cross-entropy kernels). Only the response positions are projected: the collate
  function finds them on the host and hands the batch their indices (``target_*``,
  :func:`prefalign.data.batching.response_targets` for padded rows,
  :func:`prefalign.data.packing.collate_shared_prompts` for shared-prompt rows), padded to a
  bucket size so shapes repeat, so the device never waits for the host (no ``nonzero()``). Without
  them (labels built on the device, e.g. PoFT's ``scored_tokens=all``) every position is projected
  and the non-response ones zeroed. Peak memory then no longer grows with the vocabulary beyond the
  output matrix itself (``benchmarks/logprob_memory.py``, ``benchmarks/logprobs_real_vocab.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from prefalign.data.batching import TARGET_KEYS
from prefalign.data.chat import IGNORE_INDEX


@dataclass
class SequenceLogProbs:
    """Per-sequence response log-likelihood.

    Attributes:
        sum: ``(B,)`` fp32, sum of the response tokens' log-probs.
        count: ``(B,)`` long, number of response tokens.
    """

    sum: torch.Tensor
    count: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """Length-normalised log-likelihood, ``sum / count`` (the papers' r(x, y))."""
        return self.sum / self.count.clamp(min=1).to(self.sum.dtype)


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the next token and the response mask, both ``(B, T-1)``.

    Position ``t`` holds log p(labels[t+1] | tokens[:t+1]); masked positions hold 0. The fp32 copy
    of the logits is made ``chunk_rows`` sequences at a time to bound peak memory.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~mask, 0)
    shifted = logits[:, :-1]
    rows = logits.shape[0]
    step = rows if chunk_rows is None else max(1, chunk_rows)
    pieces = []
    for start in range(0, rows, step):
        chunk = shifted[start : start + step]
        nll = F.cross_entropy(
            chunk.float().flatten(0, 1), safe_targets[start : start + step].flatten(), reduction="none"
        ).view(chunk.shape[0], chunk.shape[1])
        pieces.append(-nll)
    logps = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    return logps * mask, mask


def sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None = None
) -> SequenceLogProbs:
    """Sum and count of response-token log-probs per sequence (fp32, masked).

    Args:
        logits: ``(B, T, V)`` model outputs for ``input_ids`` (any float dtype).
        labels: ``(B, T)`` ``input_ids`` on response tokens, ``IGNORE_INDEX`` elsewhere (unshifted).
        chunk_rows: sequences per fp32 log-softmax chunk (``None``: whole batch).
    """
    logps, mask = token_logprobs(logits, labels, chunk_rows)
    return SequenceLogProbs(sum=logps.sum(-1), count=mask.sum(-1))


def gathered_sequence_logprobs(
    logits: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    tokens: torch.Tensor,
    slots: torch.Tensor,
    num_slots: int,
    chunk_tokens: int | None = None,
) -> SequenceLogProbs:
    """Sum and count of response-token log-probs from explicitly indexed logits (fp32).

    For layouts where the logits predicting a token are not simply those of the previous position
    (shared-prompt rows, :mod:`prefalign.data.packing`): token ``tokens[i]`` is scored by
    ``logits[rows[i], positions[i]]`` and added to sequence ``slots[i]`` of ``num_slots``. Only the
    response positions go through the log-softmax, ``chunk_tokens`` at a time (``None``: all) to
    bound the fp32 copy.
    """
    step = len(tokens) if chunk_tokens is None else max(1, chunk_tokens)
    pieces = [
        -F.cross_entropy(
            logits[rows[i : i + step], positions[i : i + step]].float(),
            tokens[i : i + step],
            reduction="none",
        )
        for i in range(0, len(tokens), step)
    ]
    logps = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    return _per_sequence(logps, slots, num_slots, logits.device)


# -- memory-lean path: from the model's last hidden states --------------------------------------------

LOGIT_CHUNK_ELEMENTS = 2**24
"""fp32 logits held at once by the lean path when no chunk size is given (64 MiB): the chunk holds
``LOGIT_CHUNK_ELEMENTS // vocab_size`` response tokens, so the memory it needs does not grow with the
vocabulary."""


def last_hidden_states(model: torch.nn.Module, **inputs: Any) -> torch.Tensor:
    """The decoder's final (normalised) hidden states ``(B, T, H)`` for ``inputs``, without the
    full-vocabulary logits.

    The model's own ``forward`` runs (so wrappers such as FSDP, peft and activation checkpointing
    see an ordinary call) with ``logits_to_keep=1``, i.e. the head projects only the last position;
    the decoder's output is captured by a forward hook on ``model.get_decoder()``.
    """
    captured: list[torch.Tensor] = []

    def keep(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = model.get_decoder().register_forward_hook(keep)
    try:
        model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(
            f"{type(model).__name__}: expected one decoder call per forward, saw {len(captured)}"
        )
    return captured[0]


def _output_head(model: torch.nn.Module) -> tuple[torch.nn.Module, float | None]:
    """The LM head (``get_output_embeddings``) and the model's final-logit soft-cap, if any."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (language-model head)")
    config = model.config
    if getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        raise ValueError(
            f"{type(model).__name__} scales its logits (config.logit_scale); score it with lean=False"
        )
    return head, getattr(config, "final_logit_softcapping", None)


def _chunk_logprobs(
    hidden: torch.Tensor, tokens: torch.Tensor, head: torch.nn.Module, softcap: float | None
) -> torch.Tensor:
    """log p(token | hidden) for a chunk of positions: head projection, then fp32 log-softmax."""
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return -F.cross_entropy(logits, tokens, reduction="none")


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 logits of a chunk of positions (the matmul in the weights' dtype, as the model's head)."""
    return (hidden @ weight.T).float()


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _LinearLogProbs(torch.autograd.Function):
    """log p(token | hidden) through a bias-free linear head, one chunk of logits at a time.

    Forward keeps each position's log-normaliser and the last chunk's logits; backward takes that
    chunk first (no recomputation: with a single chunk, the head's matmuls are those of the full
    path, one forward and two backward), frees it, then recomputes each other chunk's logits under
    the forward's autocast state (so a bf16-autocast forward's normaliser matches the recomputed
    logits: the softmax stays normalised). The head's gradient accumulates into a single fp32
    buffer, so neither pass holds more than one chunk of logits, and the output matrix's gradient
    exists once (not once per chunk).
    """

    @staticmethod
    def forward(ctx, hidden, weight, tokens, step):
        lse = torch.empty(len(tokens), dtype=torch.float32, device=hidden.device)
        target = torch.empty_like(lse)
        starts = range(0, len(tokens), step)
        for start in starts:
            logits = _chunk_logits(hidden[start : start + step], weight)
            lse[start : start + step] = torch.logsumexp(logits, dim=-1)
            target[start : start + step] = logits.gather(1, tokens[start : start + step, None])[:, 0]
        ctx.save_for_backward(hidden, weight, tokens, lse)
        ctx.step = step
        ctx.autocast = _autocast_state(hidden.device.type)
        # the last chunk's logits, consumed (in place) by the first backward; a second backward
        # (retain_graph) recomputes it like the others
        ctx.kept = (starts[-1], logits)
        return target - lse

    @staticmethod
    def backward(ctx, grad_output):
        hidden, weight, tokens, lse = ctx.saved_tensors
        step = ctx.step
        enabled, autocast_dtype = ctx.autocast
        kept_start, kept, ctx.kept = *ctx.kept, (None, None)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        starts = list(range(0, len(tokens), step))
        for start in reversed(starts):  # the kept chunk first, then it is freed
            h = hidden[start : start + step]
            if start == kept_start:
                logits, kept = kept, None
            else:
                with torch.autocast(hidden.device.type, dtype=autocast_dtype, enabled=enabled):
                    logits = _chunk_logits(h, weight)
            # d logp[t] / d logits = onehot(t) - softmax, scaled by the upstream gradient; in place,
            # so one chunk of logits is alive
            grad_logits = logits.sub_(lse[start : start + step, None]).exp_().neg_()
            grad_logits.scatter_add_(
                1, tokens[start : start + step, None], torch.ones_like(grad_logits[:, :1])
            )
            grad_logits.mul_(grad_output[start : start + step, None])
            if grad_hidden is not None:
                grad_hidden[start : start + step] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, h.float())
            del logits, grad_logits
        if grad_weight is not None and weight.dtype != torch.float32:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def hidden_logprobs(
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    head: torch.nn.Module,
    chunk_tokens: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """``(N,)`` fp32 log-probs of ``tokens`` given the hidden states ``(N, H)`` that predict them.

    The head's logits exist for ``chunk_tokens`` positions at a time (default: as many as fit in
    :data:`LOGIT_CHUNK_ELEMENTS`). With gradients on, each chunk is recomputed in the backward pass,
    so the backward also holds one chunk of logits, not all of them: by :class:`_LinearLogProbs` for
    a plain bias-free linear head (the usual LM head, tied or not), else by activation checkpointing.
    """
    if chunk_tokens is None:
        chunk_tokens = max(1, LOGIT_CHUNK_ELEMENTS // head.weight.shape[0])
    step = max(1, chunk_tokens)
    if len(tokens) == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    if type(head) is torch.nn.Linear and head.bias is None and not softcap:
        return _LinearLogProbs.apply(hidden, head.weight, tokens, step)
    # other heads (LoRA on the head, a bias, soft-capping): checkpointed chunks
    recompute = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    pieces = []
    for start in range(0, len(tokens), step):
        args = (hidden[start : start + step], tokens[start : start + step], head, softcap)
        if recompute:
            pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(*args))
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def _per_sequence(
    logps: torch.Tensor, slots: torch.Tensor, num_slots: int, device: torch.device
) -> SequenceLogProbs:
    """Sums and counts per slot; one extra slot (``num_slots``) takes the bucket padding of
    :func:`prefalign.data.batching.pad_targets` and is dropped."""
    sums = torch.zeros(num_slots + 1, dtype=torch.float32, device=device).index_add(0, slots, logps)
    counts = torch.zeros(num_slots + 1, dtype=torch.long, device=device).index_add(
        0, slots, torch.ones_like(slots)
    )
    return SequenceLogProbs(sum=sums[:num_slots], count=counts[:num_slots])


def _lean_gathered(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    targets: Sequence[torch.Tensor],
    num_slots: int,
    chunk_tokens: int | None,
) -> SequenceLogProbs:
    """The lean path over explicit targets ``(rows, positions, tokens, slots)``: the hidden states at
    ``(rows, positions)`` gathered by a flat ``index_select`` (a shape fixed by the targets)."""
    rows, positions, tokens, slots = targets
    hidden = last_hidden_states(model, **inputs)
    head, softcap = _output_head(model)
    flat = hidden.flatten(0, 1).index_select(0, rows * hidden.shape[1] + positions)
    logps = hidden_logprobs(flat, tokens, head, chunk_tokens, softcap)
    return _per_sequence(logps, slots, num_slots, hidden.device)


def batch_targets(batch: Any) -> tuple[torch.Tensor, ...] | None:
    """The batch's response targets (:data:`prefalign.data.batching.TARGET_KEYS`) as a tuple, or
    ``None`` when its collate did not add them."""
    if not all(key in batch for key in TARGET_KEYS):
        return None
    return tuple(batch[key] for key in TARGET_KEYS)


def model_sequence_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    chunk_rows: int | None = None,
    lean: bool = True,
    targets: Sequence[torch.Tensor] | None = None,
) -> SequenceLogProbs:
    """:func:`sequence_logprobs` of ``model`` on a padded batch (one row per sequence).

    Args:
        model: a causal LM (transformers, optionally peft-wrapped).
        labels: ``(B, T)`` as for :func:`sequence_logprobs`.
        chunk_rows: chunk size in sequences' worth of tokens (``chunk_rows * T`` positions per
            chunk on the lean path, ``chunk_rows`` rows on the full-logits path); ``None``: the lean
            path's :data:`LOGIT_CHUNK_ELEMENTS` budget, the full path's whole batch.
        lean: ``True`` (default): the hidden states are projected to the vocabulary in chunks;
            ``False``: the reference path over the model's full logits.
        targets: the response targets of ``labels`` found on the host
            (:func:`prefalign.data.batching.response_targets`, in :func:`batch_targets` order): the
            lean path then projects only those positions. ``None``: every position is projected
            and the non-response ones zeroed (static shapes, no host sync either).
    """
    if not lean:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return sequence_logprobs(logits, labels, chunk_rows)
    chunk = None if chunk_rows is None else chunk_rows * input_ids.shape[1]
    if targets is not None:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        return _lean_gathered(model, inputs, targets, input_ids.shape[0], chunk)
    hidden = last_hidden_states(model, input_ids=input_ids, attention_mask=attention_mask)
    head, softcap = _output_head(model)
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    # Every position is projected and the non-response ones are zeroed: the labels' response
    # positions would need nonzero(), whose data-dependent shape makes the GPU wait for the host
    # (found by prefalign-plan). The zeros added in order leave the sums as they were.
    batch, positions = shifted.shape
    logps = hidden_logprobs(
        hidden[:, :-1].reshape(batch * positions, hidden.shape[-1]),
        shifted.masked_fill(~mask, 0).reshape(-1),
        head,
        chunk,
        softcap,
    )
    logps = torch.where(mask.reshape(-1), logps, 0.0)
    rows = torch.arange(batch, device=hidden.device).repeat_interleave(positions)
    sums = torch.zeros(batch, dtype=torch.float32, device=hidden.device).index_add(0, rows, logps)
    return SequenceLogProbs(sum=sums, count=mask.sum(-1))


def model_gathered_sequence_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    tokens: torch.Tensor,
    slots: torch.Tensor,
    num_slots: int,
    chunk_tokens: int | None = None,
    lean: bool = True,
) -> SequenceLogProbs:
    """:func:`gathered_sequence_logprobs` of ``model`` on shared-prompt rows.

    ``attention_mask`` is the rows' block mask (:func:`prefalign.data.packing.shared_prompt_attention_mask`)
    and ``position_ids`` each token's position within its own sequence. With ``lean`` (default)
    only the hidden states at ``(rows, positions)`` are projected, ``chunk_tokens`` at a time
    (``None``: the :data:`LOGIT_CHUNK_ELEMENTS` budget); ``lean=False`` is the full-logits reference.
    """
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    if not lean:
        logits = model(**inputs, use_cache=False).logits
        return gathered_sequence_logprobs(logits, rows, positions, tokens, slots, num_slots, chunk_tokens)
    return _lean_gathered(model, inputs, (rows, positions, tokens, slots), num_slots, chunk_tokens)
