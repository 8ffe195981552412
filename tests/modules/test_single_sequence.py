"""SingleSequenceModule: the objective it accepts, and reference log-probs from the batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prefalign.core.names import SINGLE, reference_columns
from prefalign.data.batching import pad_collate
from prefalign.modules import SingleSequenceModule
from prefalign.objectives import CrossEntropy, PairwisePreference
from prefalign.objectives.base import ObjectiveOutput, SingleSequenceObjective


class _KeepsReference(SingleSequenceObjective):
    needs_reference = True

    def forward(self, policy, batch, reference):
        self.policy, self.reference = policy, reference
        return ObjectiveOutput(losses=-policy.mean)


def _batch():
    samples = [
        {"id": "a", "input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]},
        {"id": "b", "input_ids": [5, 9, 10], "labels": [-100, 9, 10]},
    ]
    return pad_collate(samples, pad_token_id=0)


def test_reference_columns_reach_a_single_sequence_objective(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    module = SingleSequenceModule(model, _KeepsReference(), optimizer=None)
    batch = _batch()
    total, count = reference_columns(SINGLE)
    batch[total] = torch.tensor([-3.0, -4.5], dtype=torch.float64)
    batch[count] = torch.tensor([2, 2])
    module.objective_output(batch)
    assert module.objective.reference.sum.tolist() == [-3.0, -4.5]
    assert module.objective.reference.sum.dtype == torch.float32
    assert module.objective.reference.count.tolist() == [2, 2]
    assert module.objective.policy.count.tolist() == [2, 2]


def test_a_missing_reference_column_is_an_error_naming_it(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    module = SingleSequenceModule(model, _KeepsReference(), optimizer=None)
    with pytest.raises(KeyError, match=r"ref\.x\|y\.sum"):
        module.objective_output(_batch())


def test_objectives_without_a_reference_get_none(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    output = SingleSequenceModule(model, CrossEntropy(), optimizer=None).objective_output(_batch())
    assert torch.isfinite(output.loss())


def test_module_rejects_objectives_of_another_batch_shape(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    for objective in (nn.Identity(), PairwisePreference()):
        with pytest.raises(TypeError, match="module._target_"):
            SingleSequenceModule(model, objective=objective, optimizer=None)


@pytest.mark.parametrize("scored_tokens", ["response", "all"])
def test_the_policy_head_projects_the_collates_response_targets(
    tiny_model_and_tokenizer, monkeypatch, scored_tokens
):
    """The module hands the collate's host-side targets to the lean path: the head projects only
    their (bucket-padded) positions; PoFT's scored_tokens=all scores every token, so every position."""
    import prefalign.scoring.logprobs as logprobs
    from prefalign.objectives import PoFT

    model, _ = tiny_model_and_tokenizer
    seen = []
    original = logprobs._chunk_logits
    monkeypatch.setattr(logprobs, "_chunk_logits", lambda h, w: seen.append(h.shape[0]) or original(h, w))
    samples = [
        {"id": str(k), "input_ids": list(range(5, 45)), "labels": [-100] * (30 + k) + list(range(35 + k, 45))}
        for k in range(3)
    ]
    batch = pad_collate(samples, pad_token_id=0)
    batch["aligned_score"] = torch.tensor([-1.0, -2.0, -3.0])
    output = SingleSequenceModule(model, PoFT(scored_tokens), optimizer=None).objective_output(batch)
    assert torch.isfinite(output.loss())
    assert len(batch["target_token"]) == 32  # 10 + 9 + 8 response tokens, padded to the 32 bucket
    assert sum(seen) == (32 if scored_tokens == "response" else 3 * 39)
