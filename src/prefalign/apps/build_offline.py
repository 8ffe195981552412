"""``prefalign-build-offline``: the SSO paper's offline preference dataset (appendix A.1.4).

Examples::

    prefalign-build-offline                                         # the default SSO run's pairs, no judge
    prefalign-build-offline 'inputs=[logs/sso/llama/iter_*/preferences.jsonl]' \\
        'judges=[{_target_: prefalign.generation.judges.LLMJudge.from_model_config, model: {name_or_path: <judge>}}]'
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from prefalign.config import config_dir, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="build_offline")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``prefalign-build-offline``."""
    from prefalign.pipelines.offline import build  # datasets: not for --help / --cfg job

    build(cfg)


if __name__ == "__main__":
    main()
