"""Pre-flight of a configured training run on simulated GPUs (``prefalign-plan``).

The project's own training step (data collate output, objective, LightningModule, optimizer) runs
at the configured world size on fake CUDA devices: :mod:`~prefalign.planning.shim` makes a
CPU-only torch build accept ``cuda`` tensors that are never allocated (FakeTensorMode), a fake
process group stands in for NCCL, and FSDP2 / FSDP / DDP shard the model as on the cluster.
Per-rank memory by category, FLOPs and GPU-hours, and the device / dtype / host-sync problems of
the step come out as a :class:`~prefalign.planning.plan.Plan`.

Importing this package does not import torch: the shim must be loaded before torch
(:func:`prefalign.planning.shim.load_fake_cuda`).
"""
