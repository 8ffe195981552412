"""SSO against independent formula computations (every switch, PBAA); gradient through W."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from preference_cases import POLICY, REFERENCE, _dpo, _ipo, _scores
from torch.testing import assert_close

from prefalign.objectives.pairwise import PairwisePreference
from prefalign.objectives.sso import SSO


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
