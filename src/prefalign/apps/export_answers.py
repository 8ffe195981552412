"""``prefalign-export-answers``: answers for the judge-based benchmarks (MT-Bench, AlpacaEval 2.0).

Examples::

    prefalign-export-answers                                   # the tiny model, bundled demo questions
    prefalign-export-answers model=hf model.name_or_path=<model> model_id=mistral-sft \\
        mt_bench.question_file=<FastChat>/fastchat/llm_judge/data/mt_bench/question.jsonl \\
        alpaca_eval.prompt_file=alpaca_eval.json
    prefalign-export-answers run_dir=logs/train/runs/<time> alpaca_eval=null   # MT-Bench, every epoch

Writes ``mt_bench/model_answer/<model_id>.jsonl`` (FastChat's answer format) and
``alpaca_eval/<model_id>.json`` (alpaca_eval's model outputs), each with a ``<model_id>.settings.json``
sidecar, to the run folder (``logs/export_answers/runs/<time>/``). Judge them with FastChat's
``gen_judgment.py --model-list <model_id>`` and ``alpaca_eval --model_outputs <file>``.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from prefalign.config import config_dir, register_resolvers
from prefalign.core.errors import ConfigError

log = logging.getLogger(__name__)
register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export_answers")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``prefalign-export-answers``."""
    from prefalign.evaluation.answers import export_answers  # torch: not for --help / --cfg job

    try:
        export_answers(cfg)
    except ConfigError as error:  # a bad setting: one clear line, no traceback
        log.error("%s", error)
        raise SystemExit(f"prefalign-export-answers: {error}") from None


if __name__ == "__main__":
    main()
