"""``prefalign-train``: fine-tune a causal LM with any objective (CE, PoFT, bi-PoFT, DPO, IPO, SSO,
the reward model).

Examples::

    prefalign-train                                    # CE on the bundled tiny chat data, CPU
    prefalign-train objective=ce objective.reduction=sample_mean trainer.max_epochs=3
    prefalign-train objective=dpo data=tiny_preference # a preference objective
    prefalign-train -m optimizer.lr=1e-4,3e-4          # a multirun sweep
    prefalign-train ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt   # resume
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from prefalign.config import config_dir, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for hyper-parameter sweepers."""
    from prefalign.training.run import run_task, train  # torch and Lightning: not for --help / --cfg

    metrics = run_task(train, cfg)
    metric_name = cfg.get("optimized_metric")
    return metrics.get(metric_name) if metric_name else None


if __name__ == "__main__":
    main()
