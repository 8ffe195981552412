"""A cross-entropy that reads a device value in its forward (a host sync per step on a GPU), for
the planner's sync detection tests (imported by the plan's child process through PYTHONPATH)."""

from prefalign.objectives.ce import CrossEntropy


class SyncingCrossEntropy(CrossEntropy):
    def forward(self, policy, batch):
        if policy.count.sum().item() == 0:  # the host sync the planner must name
            raise ValueError("no response tokens")
        return super().forward(policy, batch)
