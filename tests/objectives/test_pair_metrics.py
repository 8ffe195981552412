"""pair_metrics: DPO / IPO metrics under TRL's names and conventions (rewards on SUMMED log-ratios,
logps summed), with IPO's own per-token view under ``rewards_per_token/*``."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from prefalign.objectives.pairwise import CHOSEN, REJECTED, PairwisePreference
from prefalign.objectives.sso import SSO
from prefalign.scoring.logprobs import SequenceLogProbs

TRL_KEYS = {
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
}
PER_TOKEN_KEYS = {f"rewards_per_token/{k}" for k in ("chosen", "rejected", "margins", "accuracies")}


def _lp(sums, counts):
    return SequenceLogProbs(sum=torch.tensor(sums), count=torch.tensor(counts))


# log-ratios, sample 0: chosen +2 over 2 tokens, rejected +6 over 24 tokens: the chosen answer is
# ahead per token (1.0 > 0.25) but behind in total (2 < 6); sample 1: ahead both ways
POLICY = {CHOSEN: _lp([-10.0, -30.0], [2, 10]), REJECTED: _lp([-30.0, -18.0], [24, 9])}
REFERENCE = {CHOSEN: _lp([-12.0, -33.0], [2, 10]), REJECTED: _lp([-36.0, -20.0], [24, 9])}


def _expected(beta, average):
    def ratio(name):
        policy, ref = POLICY[name], REFERENCE[name]
        if average:
            return policy.mean - ref.mean
        return policy.sum - ref.sum

    chosen, rejected = beta * ratio(CHOSEN), beta * ratio(REJECTED)
    return chosen, rejected


@pytest.mark.parametrize("base", ["dpo", "ipo"])
def test_trl_names_use_summed_log_ratios_for_every_base_loss(base):
    beta = 0.3
    metrics = PairwisePreference(base, beta)(POLICY, REFERENCE, {}).metrics
    chosen, rejected = _expected(beta, average=False)
    assert_close(metrics["rewards/chosen"], chosen)
    assert_close(metrics["rewards/rejected"], rejected)
    assert_close(metrics["rewards/margins"], chosen - rejected)
    assert metrics["rewards/accuracies"].tolist() == [0.0, 1.0]  # sample 0: 2 < 6 in total
    assert_close(metrics["logps/chosen"], POLICY[CHOSEN].sum)
    assert_close(metrics["logps/rejected"], POLICY[REJECTED].sum)
    expected_keys = TRL_KEYS | (PER_TOKEN_KEYS if base == "ipo" else set())
    assert set(metrics) == expected_keys


def test_ipo_keeps_its_per_token_rewards_under_their_own_name():
    beta = 0.3
    output = PairwisePreference("ipo", beta)(POLICY, REFERENCE, {})
    chosen, rejected = _expected(beta, average=True)
    assert_close(output.metrics["rewards_per_token/chosen"], chosen)
    assert_close(output.metrics["rewards_per_token/rejected"], rejected)
    assert_close(output.metrics["rewards_per_token/margins"], chosen - rejected)
    # the per-token margin is beta * h, the quantity IPO's loss pulls towards 1/2
    assert_close(output.losses, (output.metrics["rewards_per_token/margins"] / beta - 1 / (2 * beta)) ** 2)
    # short chosen answer: ahead per token, behind in total (sample 0)
    assert output.metrics["rewards_per_token/accuracies"].tolist() == [1.0, 1.0]
    assert output.metrics["rewards/accuracies"].tolist() == [0.0, 1.0]


def test_without_a_reference_the_rewards_are_the_policy_log_probs():
    metrics = PairwisePreference("dpo", 0.5)(POLICY, None, {}).metrics
    assert_close(metrics["rewards/chosen"], 0.5 * POLICY[CHOSEN].sum)
    assert_close(metrics["rewards/rejected"], 0.5 * POLICY[REJECTED].sum)


def test_sso_logs_its_main_pair_under_the_trl_names():
    sequences = SSO().sequences
    policy = {n: _lp([-10.0 - k, -20.0 + k], [4, 6]) for k, n in enumerate(sequences)}
    metrics = SSO()(policy, None, {}).metrics
    assert set(metrics) >= TRL_KEYS | PER_TOKEN_KEYS  # the paper's base loss is IPO
    assert_close(metrics["rewards/chosen"], 0.2 * policy[CHOSEN].sum)
    assert_close(metrics["rewards_per_token/chosen"], 0.2 * policy[CHOSEN].mean)
