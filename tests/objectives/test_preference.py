"""DPO, IPO and SSO against independent formula computations; gradient through W."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from prefalign.objectives.pairwise import PairwisePreference
from prefalign.objectives.sso import SSO
from prefalign.scoring.logprobs import SequenceLogProbs

# Two samples; per sequence: (logp_sum, token count) for the policy and the reference.
POLICY = {
    "x|y+": [(-12.0, 6), (-30.0, 10)],
    "x|y-": [(-20.0, 8), (-18.0, 9)],
    "x+|y+": [(-9.0, 6), (-25.0, 10)],
    "x+|y-": [(-26.0, 8), (-21.0, 9)],
    "x-|yo": [(-14.0, 7), (-16.0, 8)],
    "x-|y+": [(-15.0, 6), (-33.0, 10)],
    "x+|yo": [(-13.0, 7), (-17.0, 8)],
}
REFERENCE = {name: [(s * 1.1 + 0.5, n) for s, n in rows] for name, rows in POLICY.items()}


def _scores(table, requires_grad=False):
    return {
        name: SequenceLogProbs(
            sum=torch.tensor([s for s, _ in rows], requires_grad=requires_grad),
            count=torch.tensor([n for _, n in rows]),
        )
        for name, rows in table.items()
    }


def _h(chosen, rejected, i, average):
    def ll(table, name):
        s, n = table[name][i]
        return s / n if average else s

    return (ll(POLICY, chosen) - ll(REFERENCE, chosen)) - (ll(POLICY, rejected) - ll(REFERENCE, rejected))


def _dpo(chosen, rejected, i, beta):
    return -math.log(1 / (1 + math.exp(-beta * _h(chosen, rejected, i, average=False))))


def _ipo(chosen, rejected, i, beta):
    return (_h(chosen, rejected, i, average=True) - 1 / (2 * beta)) ** 2


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_on_sums_and_ipo_on_averages_match_the_formulas(beta):
    dpo = PairwisePreference("dpo", beta)(_scores(POLICY), _scores(REFERENCE), {})
    ipo = PairwisePreference("ipo", beta)(_scores(POLICY), _scores(REFERENCE), {})
    assert_close(
        dpo.losses, torch.tensor([_dpo("x|y+", "x|y-", i, beta) for i in range(2)]), rtol=1e-5, atol=1e-6
    )
    assert_close(
        ipo.losses, torch.tensor([_ipo("x|y+", "x|y-", i, beta) for i in range(2)]), rtol=1e-5, atol=1e-6
    )
    chosen_reward = beta * ((-12.0) - (-12.0 * 1.1 + 0.5))
    assert dpo.metrics["rewards/chosen"][0].item() == pytest.approx(chosen_reward, rel=1e-5)
    expected_accuracy = [float(_h("x|y+", "x|y-", i, False) > 0) for i in range(2)]
    assert dpo.metrics["rewards/accuracies"].tolist() == expected_accuracy


def _w(i, alpha, prime=False):
    def avg(name):
        s, n = POLICY[name][i]
        return s / n

    first, second = ("x+|yo", "x-|yo") if prime else ("x|y+", "x|y-")
    return 1 / (1 + math.exp(alpha * avg(first) + (1 - alpha) * avg(second)))


@pytest.mark.parametrize(
    ("base", "use_weight", "use_steering", "scope", "weight"),
    [
        (b, uw, us, sc, w)
        for b, uw, us, sc, w in itertools.product(
            ["ipo", "dpo"], [True, False], [True, False], ["all", "steering_only"], ["w", "w_prime"]
        )
        if uw or w == "w"
    ],
)
def test_sso_matches_a_hand_computation_for_every_switch(base, use_weight, use_steering, scope, weight):
    beta, alpha, gamma = 0.2, 0.66, 0.1
    pair = _ipo if base == "ipo" else _dpo
    objective = SSO(
        base=base,
        beta=beta,
        alpha=alpha,
        gamma=gamma,
        use_weight=use_weight,
        use_steering=use_steering,
        weight=weight,
        weight_scope=scope,
    )
    policy = {name: s for name, s in _scores(POLICY).items() if name in objective.sequences}
    output = objective(policy, _scores(REFERENCE), {})
    expected = []
    for i in range(2):
        main = pair("x|y+", "x|y-", i, beta)
        g = pair("x+|y+", "x+|y-", i, beta) + pair("x-|yo", "x-|y+", i, beta) if use_steering else 0.0
        w = _w(i, alpha, prime=weight == "w_prime") if use_weight else 1.0
        expected.append(w * (gamma * g + main) if scope == "all" else w * gamma * g + main)
    assert_close(output.losses, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6)


def test_without_weight_and_steering_sso_is_the_base_loss_pbaa():
    sso = SSO(use_weight=False, use_steering=False)
    ipo = PairwisePreference("ipo", 0.2)
    assert sso.sequences == ("x|y+", "x|y-")
    assert_close(
        sso(_scores(POLICY), _scores(REFERENCE), {}).losses,
        ipo(_scores(POLICY), _scores(REFERENCE), {}).losses,
    )


@pytest.mark.parametrize("detach", [False, True])
def test_gradient_flows_through_w_unless_detached(detach):
    """With G and L_base held at zero gradient, only W can move ā(y+|x): it does unless detached."""
    policy = _scores(POLICY, requires_grad=True)
    objective = SSO(detach_weight=detach)
    output = objective(policy, _scores(REFERENCE), {})
    output.loss().backward()
    total = policy["x|y+"].sum.grad.clone()
    for p in policy.values():
        p.sum.grad = None
    # the same loss with W replaced by its value, as a constant
    policy2 = _scores(POLICY, requires_grad=True)
    w_const = output.metrics["weight"]
    ref = _scores(REFERENCE)
    main = objective.base.terms(policy2["x|y+"], policy2["x|y-"], ref["x|y+"], ref["x|y-"]).losses
    steer = objective.base.terms(policy2["x+|y+"], policy2["x+|y-"], ref["x+|y+"], ref["x+|y-"]).losses
    guard = objective.base.terms(policy2["x-|yo"], policy2["x-|y+"], ref["x-|yo"], ref["x-|y+"]).losses
    (w_const * (0.1 * (steer + guard) + main)).mean().backward()
    without_w_gradient = policy2["x|y+"].sum.grad
    if detach:
        assert_close(total, without_w_gradient)
    else:
        assert not torch.allclose(total, without_w_gradient)


def test_bad_sso_switches_are_rejected():
    with pytest.raises(ValueError, match="weight_scope"):
        SSO(weight_scope="half")
    with pytest.raises(ValueError, match="objective.base"):
        SSO(base="kto")
    with pytest.raises(ValueError, match="beta"):
        PairwisePreference("dpo", 0.0)
