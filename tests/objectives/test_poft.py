"""PoFT and bi-PoFT against hand computations, and PoFT's gradient identity (eq. 7–8)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from prefalign.data.batching import pad_collate
from prefalign.data.chat import encode_conversation
from prefalign.objectives import BiPoFT, CrossEntropy, PoFT
from prefalign.scoring.aligned import AGGREGATIONS
from prefalign.scoring.logprobs import SequenceLogProbs, sequence_logprobs

MEMBER_SCORES = [[-1.2, -0.7, -2.0], [-0.3, -0.9, -0.4], [-3.1, -2.2, -2.6]]  # per sample, per member
R_THETA = [(-2.4, 2), (-5.0, 10), (-1.5, 1)]  # (logp_sum, count) per sample


def _policy():
    return SequenceLogProbs(
        sum=torch.tensor([s for s, _ in R_THETA]), count=torch.tensor([n for _, n in R_THETA])
    )


@pytest.mark.parametrize("aggregation", ["avg", "min", "max"])
def test_poft_loss_matches_a_hand_computation(aggregation):
    agg = {"avg": lambda xs: sum(xs) / len(xs), "min": min, "max": max}[aggregation]
    r_agg = [agg(scores) for scores in MEMBER_SCORES]
    assert r_agg == [AGGREGATIONS[aggregation](s) for s in MEMBER_SCORES]
    output = PoFT()(_policy(), {"aligned_score": torch.tensor(r_agg)})
    expected = []
    for (logp_sum, n), r in zip(R_THETA, r_agg, strict=True):
        margin = logp_sum / n - r
        expected.append(-math.log(1 / (1 + math.exp(-margin))))
    assert_close(output.losses, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert_close(output.loss(), torch.tensor(sum(expected) / 3), rtol=1e-6, atol=1e-6)
    tau = [1 / (1 + math.exp(logp_sum / n - r)) for (logp_sum, n), r in zip(R_THETA, r_agg, strict=True)]
    assert_close(output.metrics["tau"], torch.tensor(tau), rtol=1e-6, atol=1e-6)


def test_poft_is_stable_for_large_margins():
    policy = SequenceLogProbs(sum=torch.tensor([-2000.0, 0.0]), count=torch.tensor([1, 1]))
    output = PoFT()(policy, {"aligned_score": torch.tensor([0.0, -2000.0])})
    assert torch.isfinite(output.losses).all()
    assert_close(output.losses, torch.tensor([2000.0, 0.0]))


def test_bi_poft_flips_the_preference_on_noise_samples():
    batch = {"aligned_score": torch.tensor([-1.0, -1.0]), "noise": torch.tensor([False, True])}
    policy = SequenceLogProbs(sum=torch.tensor([-0.5, -0.5]), count=torch.tensor([1, 1]))
    output = BiPoFT()(policy, batch)
    margin = 0.5
    assert_close(output.losses[0], torch.tensor(-math.log(1 / (1 + math.exp(-margin)))))
    assert_close(output.losses[1], torch.tensor(-math.log(1 / (1 + math.exp(margin)))))
    clean = PoFT()(policy, batch)
    assert_close(output.losses[0], clean.losses[0])
    assert not torch.isclose(output.losses[1], clean.losses[1])
    # on a noise sample the loss falls when the target's likelihood falls
    lower = SequenceLogProbs(sum=torch.tensor([-0.5, -3.0]), count=torch.tensor([1, 1]))
    assert BiPoFT()(lower, batch).losses[1] < output.losses[1]


def test_unknown_scored_tokens_is_rejected():
    with pytest.raises(ValueError, match="scored_tokens"):
        PoFT(scored_tokens="prompt")


CONVERSATIONS = [
    [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "3 plus 4 is 7."}],
    [
        {"role": "user", "content": "Reverse 'tiger'."},
        {"role": "assistant", "content": "The reverse of 'tiger' is 'regit'."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ],
]


def _scored_batch(tokenizer):
    """The three conversations, tokenised and padded, with aligned scores around the tiny model's own."""
    samples = []
    for i, messages in enumerate(CONVERSATIONS):
        enc = encode_conversation(tokenizer, messages, 512, str(i))
        samples.append({"id": str(i), "input_ids": enc.input_ids, "labels": enc.labels})
    batch = pad_collate(samples, tokenizer.pad_token_id)
    batch["aligned_score"] = torch.tensor([-5.0, -5.6, -5.3])
    return batch


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def test_poft_gradient_is_tau_times_sample_mean_ce_gradient(tiny_model_and_tokenizer):
    """∂L_PoFT/∂θ = τ · ∂L_CE/∂θ per sample, with L_CE = -(1/T0) log p(y|x) (eq. 7–8)."""
    model, tokenizer = tiny_model_and_tokenizer
    batch = _scored_batch(tokenizer)

    def policy():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return sequence_logprobs(logits, batch["labels"])

    poft = PoFT()(policy(), batch)
    tau = poft.metrics["tau"]
    assert tau.min() > 0.05 and tau.max() < 0.95  # a non-trivial weighting
    poft_grads = _grads(model, poft.loss())
    ce = CrossEntropy("sample_mean")(policy(), batch)
    weighted_ce_grads = _grads(model, (tau * ce.losses).mean())
    for a, b in zip(poft_grads, weighted_ce_grads, strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-7)
    plain_ce_grads = _grads(model, CrossEntropy("sample_mean")(policy(), batch).loss())
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(poft_grads, plain_ce_grads, strict=True))


def test_scored_tokens_all_averages_every_non_pad_token_like_the_official_code(tiny_model_and_tokenizer):
    from prefalign.modules import SingleSequenceModule

    model, tokenizer = tiny_model_and_tokenizer
    batch = _scored_batch(tokenizer)
    official = SingleSequenceModule(model, PoFT(scored_tokens="all"), optimizer=None).objective_output(batch)
    paper = SingleSequenceModule(model, PoFT(), optimizer=None).objective_output(batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for row in range(3):
        n = int(batch["attention_mask"][row].sum())
        logp = torch.log_softmax(logits[row, : n - 1].double(), -1)
        expected = logp.gather(-1, batch["input_ids"][row, 1:n, None]).mean()
        assert_close(official.metrics["r_theta"][row], expected.float(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(official.metrics["r_theta"], paper.metrics["r_theta"])
