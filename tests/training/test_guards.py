"""The non-finite guard's pieces: finding non-finite terms and parameters, the gradient norm."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.training.guards import NonFiniteGuard, gradient_norm, nonfinite_parameters, nonfinite_terms


def test_nonfinite_terms_name_the_samples_of_per_example_terms_and_skip_finite_ones():
    ids = ["a", "b", "c"]
    terms = {
        "loss": torch.tensor(float("nan")),
        "tau": torch.tensor([0.5, 0.2, 0.1]),
        "r_agg": torch.tensor([-1.0, float("-inf"), float("inf")]),
        "noise": torch.tensor([True, False, True]),
    }
    found = nonfinite_terms(terms, ids)
    assert found == {"loss": "[nan]", "r_agg": "2 of 3 samples: b=-inf, c=inf"}


def test_nonfinite_parameters_and_gradient_norm():
    model = torch.nn.Linear(3, 2)
    assert nonfinite_parameters(model.named_parameters()) == []
    assert gradient_norm(model.parameters()) == 0.0  # no gradients yet
    model(torch.ones(1, 3)).sum().backward()
    assert math.isclose(gradient_norm(model.parameters()), math.sqrt(2 * 3 + 2), rel_tol=1e-6)
    with torch.no_grad():
        model.bias[1] = float("nan")
    model.weight.grad[0, 0] = float("inf")
    assert nonfinite_parameters(model.named_parameters()) == ["bias"]
    assert gradient_norm(model.parameters()) == math.inf


def test_max_skipped_steps_must_be_a_non_negative_integer():
    with pytest.raises(ValueError, match="max_skipped_steps"):
        NonFiniteGuard(max_skipped_steps=-1)
    guard = NonFiniteGuard(max_skipped_steps=3)
    guard.load_state_dict({"skipped": 2})
    assert guard.state_dict() == {"skipped": 2}
