"""``prefalign-train``: fine-tune a causal LM with any objective: CE, PoFT, bi-PoFT on chat data;
DPO, IPO, SSO and the reward model on preference data. The objective names its LightningModule
(one per batch shape); frozen-model columns it needs (aligned scores, reference log-probs) are
loaded from the score cache or scored before the fit (:func:`prefalign.training.run.train`).

Examples::

    prefalign-train                                    # CE on the bundled tiny chat data, CPU
    prefalign-train objective=ce objective.reduction=sample_mean trainer.max_epochs=3
    prefalign-train objective=dpo data=tiny_preference # a preference objective
    prefalign-train -m optimizer.lr=1e-4,3e-4          # a multirun sweep
    prefalign-train ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt   # resume
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from prefalign.config import config_dir, register_resolvers
from prefalign.training.launch import child_rank_argv, log_rank, parent_job

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def job(cfg: DictConfig) -> float | None:
    """One Hydra job; returns ``cfg.optimized_metric`` for hyper-parameter sweepers."""
    from prefalign.core.signals import raise_on_signals
    from prefalign.training.run import run_task, train  # torch and Lightning: not for --help / --cfg

    log_rank()
    # SIGTERM / SIGINT: exit 143 / 130; during the fit after writing step.ckpt (training.signals)
    with parent_job(), raise_on_signals():  # ranks Lightning starts for this job run this job
        metrics = run_task(train, cfg)
    metric_name = cfg.get("optimized_metric")
    return metrics.get(metric_name) if metric_name else None


def main() -> None:
    """Entry point: a Lightning child rank runs its parent's job, any other process the command line."""
    argv = child_rank_argv(sys.argv)
    if argv is not None:
        sys.argv = argv
    job()


if __name__ == "__main__":
    main()
