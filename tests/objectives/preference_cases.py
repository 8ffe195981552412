"""Shared cases of the preference-loss tests: per-sequence log-probs of two samples, and the
independent formula computations of h, DPO and IPO."""

from __future__ import annotations

import math

import torch

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
