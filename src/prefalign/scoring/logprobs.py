"""The sequence log-prob primitive shared by every objective (design idea 1).

For a batch of token sequences with labels (``IGNORE_INDEX`` outside the response), the sum of the
response tokens' log-probabilities under the model and the number of response tokens, per
sequence. CE uses it per token, PoFT's r_θ and the aligned scores r_j its average, DPO the sums,
IPO and SSO's W the averages. Log-probs are always computed in fp32 with a fused log-softmax
(``cross_entropy``), never ``log(softmax)`` in low precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
    sums = torch.zeros(num_slots, dtype=torch.float32, device=logits.device).index_add(0, slots, logps)
    counts = torch.zeros(num_slots, dtype=torch.long, device=logits.device).index_add(
        0, slots, torch.ones_like(slots)
    )
    return SequenceLogProbs(sum=sums, count=counts)
