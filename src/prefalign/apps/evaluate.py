"""``prefalign-eval``: lm-evaluation-harness on a model, or on each epoch checkpoint of a training run.

Examples::

    prefalign-eval tasks=local_demo                              # the tiny model, bundled offline tasks
    prefalign-eval model=hf model.name_or_path=<hub name or folder> tasks=open_llm_leaderboard
    prefalign-eval run_dir=logs/train/runs/<time> tasks=open_llm_leaderboard   # Last / Avg / Std
    prefalign-eval run_dir=<run> tasks=sso_objective epochs=[2,3] lm_eval.limit=10   # a quick look

Writes to the run folder (``logs/eval/runs/<time>/``): ``lm_eval/<model or epoch<N>>/<task>.json``
(lm-eval's own output per task), ``scores.json`` and ``scores.md`` (one model), or ``summary.json``
and ``summary.md`` (per-epoch scores, Last / Avg / Std per task and overall).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from prefalign.config import config_dir, register_resolvers
from prefalign.core.errors import ConfigError

log = logging.getLogger(__name__)


def register_eval_resolvers() -> None:
    """Register the project's resolvers and ``${prefalign_conf_dir:<sub>}`` (a folder of ``conf/``)."""
    register_resolvers()
    if not OmegaConf.has_resolver("prefalign_conf_dir"):
        OmegaConf.register_new_resolver("prefalign_conf_dir", lambda sub: str(config_dir() / sub))


register_eval_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``prefalign-eval``."""
    from prefalign.evaluation.evaluate import evaluate  # torch and lm-eval: not for --help / --cfg job

    try:
        evaluate(cfg)
    except ConfigError as error:  # a bad setting: one clear line, no traceback
        log.error("%s", error)
        raise SystemExit(f"prefalign-eval: {error}") from None


if __name__ == "__main__":
    main()
