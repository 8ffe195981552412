"""``prefalign-sso``: iterative self-steering optimisation (:mod:`prefalign.pipelines.sso`).

Examples::

    prefalign-sso iterations=2 prompts.limit=16 sampling.max_new_tokens=16   # a tiny run on CPU
    prefalign-sso sso_experiment=sso_table1                                    # a paper run
    prefalign-sso run_name=<name>                                             # resume that run

An iteration that trains on several devices (``train_overrides=[trainer=ddp,trainer.devices=N]``)
has Lightning start ranks 1..N-1 by re-running this program: those ranks train the iteration's
saved ``train`` config and exit (:mod:`prefalign.training.launch`), they never run the pipeline.

Started on every rank by torchrun or ``srun``, every process runs the pipeline in one process group
(NCCL on GPUs, gloo on CPU; :func:`prefalign.core.ranks.process_group`): generation
is shared across the ranks, rank 0 writes the files, and each iteration's fit uses the same ranks,
so its ``train_overrides`` must ask for them::

    torchrun --nproc_per_node 8 -m prefalign.apps.sso sso_experiment=sso_table1 \
        'train_overrides=[...,trainer=fsdp,trainer.devices=8]'
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from prefalign.config import config_dir, register_resolvers
from prefalign.core.ranks import process_group
from prefalign.training.launch import child_train_config

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="sso")
def job(cfg: DictConfig) -> None:
    """The pipeline, as one Hydra job (on every rank under torchrun / srun)."""
    from prefalign.core.signals import raise_on_signals
    from prefalign.pipelines.sso import SSOPipeline  # torch and Lightning: not for --help / --cfg

    # SIGTERM / SIGINT: the stage under way is recorded and the run exits 143 / 130 (a rerun resumes it)
    with process_group("auto"), raise_on_signals():
        SSOPipeline(cfg).run()


def main() -> None:
    """Entry point: a rank Lightning started for an iteration's fit trains that fit's config; any
    other process runs the pipeline."""
    saved = child_train_config()
    if saved is None:
        job()
        return
    from omegaconf import OmegaConf

    from prefalign.training.run import run_task, train

    run_task(train, OmegaConf.load(saved))


if __name__ == "__main__":
    main()
