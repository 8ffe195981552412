"""DPO and IPO against independent formula computations."""

from __future__ import annotations

import pytest
import torch
from preference_cases import POLICY, REFERENCE, _dpo, _h, _ipo, _scores
from torch.testing import assert_close

from prefalign.objectives.pairwise import PairwisePreference


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
