"""Shared-prompt packing: score several responses to one prompt in one row, the prompt computed once.

SSO's six sequences are three prompts (x, x+, x−) with two responses each, DPO's two are one prompt
with two responses. Instead of one padded row per (prompt, response), a *shared-prompt row* holds
the prompt's tokens once followed by each response::

    tokens     [ p0 p1 p2 p3 | a0 a1 a2 | b0 b1 ]
    positions  [ 0  1  2  3  | 4  5  6  | 4  5  ]
    segment    [ 0  0  0  0  | 1  1  1  | 2  2  ]

Every response restarts its positions where the prompt ends and attends to the prompt and to
itself only (a block mask built from ``segment_ids``), so each response's log-probs are exactly
those of its own (prompt, response) sequence, while the prompt's tokens (e.g. a long principle in
the system message) are processed once instead of once per response.

The prompt part of a row is the longest common token prefix of the group's sequences, cut before
the first response token, so it never depends on how a template or tokenizer merges tokens at the
prompt/response boundary. Which logits score which tokens is precomputed in the collate function
(``target_*`` tensors), so the training step only gathers them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prefalign.data.batching import pad_targets
from prefalign.data.chat import IGNORE_INDEX

#: Attention implementations that accept the custom 4-D mask shared-prompt rows need.
MASKABLE_ATTENTION = ("sdpa", "eager", "flex_attention")


def _common_prefix(token_lists: Sequence[Sequence[int]]) -> int:
    first = token_lists[0]
    length = min(len(t) for t in token_lists)
    for i in range(length):
        if any(t[i] != first[i] for t in token_lists[1:]):
            return i
    return length


def _first_label(labels: Sequence[int], sample_id: str, name: str) -> int:
    for i, label in enumerate(labels):
        if label != IGNORE_INDEX:
            if i == 0:
                raise ValueError(f"sample {sample_id}: sequence {name} starts with a response token")
            return i
    raise ValueError(f"sample {sample_id}: sequence {name} has no response token")


def prompt_groups(sequences: Sequence[str]) -> dict[str, list[int]]:
    """Sequence indices grouped by prompt name, in order of first appearance (``"x+|y-"`` -> ``"x+"``)."""
    groups: dict[str, list[int]] = {}
    for k, name in enumerate(sequences):
        groups.setdefault(name.partition("|")[0], []).append(k)
    return groups


def collate_shared_prompts(
    samples: list[dict[str, Any]], sequences: Sequence[str], pad_token_id: int
) -> dict[str, Any]:
    """Pack every sample's sequences into one shared-prompt row per (prompt, sample).

    ``samples`` hold ``<sequence>.input_ids`` / ``.labels`` for each name in ``sequences``. Returns

    - ``input_ids``, ``position_ids``, ``segment_ids``: ``(R, T)``, ``R = prompts x samples``,
      right-padded (padding has segment ``-1``);
    - ``target_row``, ``target_position``, ``target_token``, ``target_slot``: ``(N,)``, one entry per
      response token: the row and position whose logits predict it, its id, and the output slot
      ``k * B + b`` of sequence ``k`` of sample ``b`` (the sequence-major order of
      :func:`prefalign.data.preference.collate_sequences`), padded to a bucket size
      (:func:`prefalign.data.batching.pad_targets`: padding adds to slot ``num_slots``, dropped);
    - ``num_slots`` (``len(sequences) * B``).
    """
    rows: list[tuple[list[int], list[int], list[int]]] = []  # (tokens, positions, segments)
    target_row, target_position, target_token, target_slot = [], [], [], []
    batch_size = len(samples)
    for members in prompt_groups(sequences).values():
        for b, sample in enumerate(samples):
            ids = [sample[f"{sequences[k]}.input_ids"] for k in members]
            labels = [sample[f"{sequences[k]}.labels"] for k in members]
            shared = min(
                _common_prefix(ids),
                *(
                    _first_label(lab, sample["id"], sequences[k])
                    for lab, k in zip(labels, members, strict=True)
                ),
            )
            row = len(rows)
            tokens, positions, segments = list(ids[0][:shared]), list(range(shared)), [0] * shared
            for segment, (k, seq_ids, seq_labels) in enumerate(zip(members, ids, labels, strict=True), 1):
                offset = len(tokens) - shared  # row index of sequence position j >= shared is offset + j
                tokens.extend(seq_ids[shared:])
                positions.extend(range(shared, len(seq_ids)))
                segments.extend([segment] * (len(seq_ids) - shared))
                for j in range(shared, len(seq_ids)):
                    if seq_labels[j] == IGNORE_INDEX:
                        continue
                    target_row.append(row)
                    target_position.append(shared - 1 if j == shared else offset + j - 1)
                    target_token.append(seq_labels[j])
                    target_slot.append(k * batch_size + b)
            rows.append((tokens, positions, segments))
    longest = max(len(tokens) for tokens, _, _ in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), longest), dtype=torch.long)
    segment_ids = torch.full((len(rows), longest), -1, dtype=torch.long)
    for r, (tokens, positions, segments) in enumerate(rows):
        input_ids[r, : len(tokens)] = torch.as_tensor(tokens)
        position_ids[r, : len(tokens)] = torch.as_tensor(positions)
        segment_ids[r, : len(tokens)] = torch.as_tensor(segments)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        **pad_targets(target_row, target_position, target_token, target_slot, len(sequences) * batch_size),
        "num_slots": len(sequences) * batch_size,
    }


def shared_prompt_attention_mask(
    segment_ids: torch.Tensor, attn_implementation: str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The ``(R, 1, T, T)`` mask of shared-prompt rows: causal, and a response sees only the prompt and itself.

    Boolean (True: attend) for ``sdpa``; additive (0 / dtype minimum) for ``eager``; a FlexAttention
    ``BlockMask`` for ``flex_attention`` (the fast kernel on GPU; torch's CPU build runs it
    forward-only and unfused). Other
    implementations (``flash_attention_2``) take no custom mask: set ``data.share_prompts=false``.
    """
    if attn_implementation not in MASKABLE_ATTENTION:
        raise ValueError(
            f"shared-prompt rows need a custom attention mask, which attn_implementation="
            f"{attn_implementation!r} does not take (use one of {MASKABLE_ATTENTION}), "
            "or set data.share_prompts=false"
        )
    if attn_implementation == "flex_attention":  # a block-sparse mask: FlexAttention skips empty blocks
        return shared_prompt_block_mask(segment_ids)
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = (causal & ((query == key) | (key == 0)))[:, None]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def shared_prompt_block_mask(segment_ids: torch.Tensor):
    """The mask of :func:`shared_prompt_attention_mask` as a FlexAttention ``BlockMask`` (no dense ``T x T``)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def allowed(batch, head, query, key):
        same = segment_ids[batch, query] == segment_ids[batch, key]
        return (query >= key) & (same | (segment_ids[batch, key] == 0))

    rows, length = segment_ids.shape
    return create_block_mask(allowed, rows, None, length, length, device=segment_ids.device)
