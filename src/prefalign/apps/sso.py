"""``prefalign-sso``: iterative self-steering optimisation (:mod:`prefalign.pipelines.sso`).

Examples::

    prefalign-sso iterations=2 prompts.limit=16 sampling.max_new_tokens=16   # a tiny run on CPU
    prefalign-sso sso_experiment=sso_table1                                    # a paper run
    prefalign-sso run_name=<name>                                             # resume that run
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from prefalign.config import config_dir, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="sso")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    from prefalign.pipelines.sso import SSOPipeline  # torch and Lightning: not for --help / --cfg

    SSOPipeline(cfg).run()


if __name__ == "__main__":
    main()
