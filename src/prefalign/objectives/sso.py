"""Self-steering optimisation (SSO paper §3, eq. 1–5; appendix A.3 for W′).

    L = W · [γ·G + L_base(x, y+, y−)]
    G = L_base(x+, y+, y−) + L_base(x−, y_o, y+)
    W = σ(−(α·ā_θ(y+|x) + (1−α)·ā_θ(y−|x)))          ā: the policy's per-token average log-prob
    W′ = σ(−(α·ā_θ(y_o|x+) + (1−α)·ā_θ(y_o|x−)))     (``weight: w_prime``)

x+ / x− are the instruction with the good / bad principle as system message; y+, y−, y_o were
sampled under x+, x− and x. Defaults follow the paper: IPO base, β = 0.2, α = 0.66, γ = 0.1.
Switches reproduce the released code and the ablations:

- ``detach_weight`` (default false, as released): W keeps its gradient, which pushes y+ and y−
  towards being on-policy; true makes W a pure weight.
- ``weight_scope``: ``all`` (the paper, W on the whole bracket) or ``steering_only``
  (the released code's later variant, W·γ·G + L_base).
- ``use_weight`` / ``use_steering``: the Table 5 / 12 ablations (W = 1 / G = 0); both false is
  the modified PBAA baseline (plain L_base on (x, y+, y−)).
"""

from __future__ import annotations

import torch

from prefalign.core.names import (
    CHOSEN,
    REJECTED,
    X_BAD,
    X_GOOD,
    Y_CHOSEN,
    Y_ORIGINAL,
    Y_REJECTED,
    sequence,
)
from prefalign.objectives.base import MultiSequenceObjective, ObjectiveOutput
from prefalign.objectives.pairwise import (
    make_base_loss,
    pair_metrics,
)

# G's first term: under the good principle, y+ over y-
STEER_CHOSEN, STEER_REJECTED = sequence(X_GOOD, Y_CHOSEN), sequence(X_GOOD, Y_REJECTED)
# G's second term: under the bad principle, y_o over y+
GUARD_CHOSEN, GUARD_REJECTED = sequence(X_BAD, Y_ORIGINAL), sequence(X_BAD, Y_CHOSEN)
W_PRIME_EXTRA = sequence(X_GOOD, Y_ORIGINAL)  # with GUARD_CHOSEN (x-|yo), the two sequences of W′
WEIGHTS = ("w", "w_prime")
SCOPES = ("all", "steering_only")


class SSO(MultiSequenceObjective):
    """The SSO loss with its ablation switches (see the module docstring).

    Metrics: the main pair (x, y+, y−) under TRL's names (``rewards/*``, ``logps/*``, and with the
    IPO base ``rewards_per_token/*``; :func:`~prefalign.objectives.pairwise.pair_metrics`), ``g``
    (G) with its terms ``g_steer`` / ``g_guard``, ``weight`` (W or W′), ``base_loss`` and
    ``on_policy/{chosen,rejected}`` (e^{ā}).
    """

    distribution_metrics = ("weight",)

    def __init__(
        self,
        base: str = "ipo",
        beta: float = 0.2,
        alpha: float = 0.66,
        gamma: float = 0.1,
        use_weight: bool = True,
        use_steering: bool = True,
        weight: str = "w",
        weight_scope: str = "all",
        detach_weight: bool = False,
    ) -> None:
        super().__init__()
        if weight not in WEIGHTS:
            raise ValueError(f"objective.weight must be one of {WEIGHTS}, got {weight!r}")
        if weight_scope not in SCOPES:
            raise ValueError(f"objective.weight_scope must be one of {SCOPES}, got {weight_scope!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"objective.alpha must be in [0, 1], got {alpha}")
        self.base = make_base_loss(base, beta)
        self.alpha, self.gamma = alpha, gamma
        self.use_weight, self.use_steering = use_weight, use_steering
        self.weight, self.weight_scope, self.detach_weight = weight, weight_scope, detach_weight
        names = [CHOSEN, REJECTED]
        if use_steering:
            names += [STEER_CHOSEN, STEER_REJECTED, GUARD_CHOSEN, GUARD_REJECTED]
        if use_weight and weight == "w_prime":
            names += [n for n in (W_PRIME_EXTRA, GUARD_CHOSEN) if n not in names]
        self.sequences = tuple(names)

    def weight_function(self, policy) -> torch.Tensor:
        """W (or W′) from the policy's per-token average log-probs."""
        if self.weight == "w":
            first, second = policy[CHOSEN].mean, policy[REJECTED].mean
        else:
            first, second = policy[W_PRIME_EXTRA].mean, policy[GUARD_CHOSEN].mean
        w = torch.sigmoid(-(self.alpha * first + (1.0 - self.alpha) * second))
        return w.detach() if self.detach_weight else w

    def forward(self, policy, reference, batch) -> ObjectiveOutput:
        ref = reference or {}

        def term(chosen: str, rejected: str):
            return self.base.terms(policy[chosen], policy[rejected], ref.get(chosen), ref.get(rejected))

        main = term(CHOSEN, REJECTED)
        metrics = pair_metrics(main)
        steering = torch.zeros_like(main.losses)
        if self.use_steering:
            steer, guard = term(STEER_CHOSEN, STEER_REJECTED), term(GUARD_CHOSEN, GUARD_REJECTED)
            steering = steer.losses + guard.losses
            metrics.update(
                {"g": steering.detach(), "g_steer": steer.losses.detach(), "g_guard": guard.losses.detach()}
            )
        w = self.weight_function(policy) if self.use_weight else torch.ones_like(main.losses)
        if self.weight_scope == "all":
            losses = w * (self.gamma * steering + main.losses)
        else:
            losses = w * self.gamma * steering + main.losses
        metrics.update(
            {
                "weight": w.detach(),
                "base_loss": main.losses.detach(),
                # e^{ā}: the per-token probability of the policy's own samples (the on-policy measure)
                "on_policy/chosen": policy[CHOSEN].mean.detach().exp(),
                "on_policy/rejected": policy[REJECTED].mean.detach().exp(),
            }
        )
        return ObjectiveOutput(losses=losses, metrics=metrics)
