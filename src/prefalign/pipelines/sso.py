"""The ``prefalign-sso`` pipeline: iterative self-steering optimisation (SSO paper §2.3, §3, §4.1).

The prompt set is split into K equal parts (the paper: UltraFeedback's prompts, 1:1:1). Iteration
i, with π_{i-1} the previous policy (π_0 the starting model):

1. ``allocate`` — π_{i-1} answers the Table 14 prompt for each query; one named feature is picked
   at random (seeded); unparseable answers fall back to a random feature and are counted.
2. ``sample`` — y+, y−, y_o are sampled from π_{i-1} under the good principle (x+), the bad
   principle (x−) and no principle (x). Empty generations are dropped and counted; responses that
   hit ``max_new_tokens`` are flagged.
3. ``train`` — π_i is trained from π_{i-1} with the configured objective (SSO by default); the
   reference is π_{i-1}, its log-probs precomputed by the scoring engine; π_i is exported in
   Hugging Face format.
4. ``evaluate`` — per-iteration figures: generation lengths (the paper tracks verbosity), W and G,
   reward margins, the on-policy measure e^{ā}, and signal accuracy when a judge is configured.

Every stage writes its artefacts and a ``<stage>.done.json`` under ``work_dir/iter_<i>/``; a rerun
with the same ``work_dir`` resumes at the first unfinished stage.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra import compose
from omegaconf import DictConfig, OmegaConf, open_dict

from prefalign.core.errors import DataError, DropReport
from prefalign.core.jsonl import read_jsonl, write_json, write_jsonl
from prefalign.data.records import load_raw
from prefalign.generation.principles import (
    AllocationStats,
    allocate_feature,
    allocation_prompt,
    load_principles,
    principle_system_message,
)
from prefalign.generation.sampling import HFGenerator, SamplingConfig, filter_prompts_by_length
from prefalign.models.loading import load_model_and_tokenizer

log = logging.getLogger(__name__)
STAGES = ("allocate", "sample", "train", "evaluate")


def load_prompt_splits(source: Mapping[str, Any], iterations: int, seed: int) -> list[list[dict]]:
    """The prompt set (``id``, ``prompt``), shuffled with ``seed`` and cut into ``iterations`` equal parts."""
    raw = load_raw(str(source["path"]), split=source.get("split", "train"))
    column, id_column = source.get("prompt_column", "prompt"), source.get("id_column", "id")
    if column not in raw.column_names:
        raise DataError(f"{source['path']}: no prompt column {column!r}; the file has {raw.column_names}")
    rows, seen = [], set()
    for index, row in enumerate(raw):
        prompt = row[column]
        sample_id = str(row.get(id_column) or f"row-{index}")
        if not isinstance(prompt, str) or not prompt.strip() or sample_id in seen:
            continue
        seen.add(sample_id)
        rows.append({"id": sample_id, "prompt": prompt})
    if source.get("limit"):
        rows = rows[: int(source["limit"])]
    if len(rows) < iterations:
        raise DataError(
            f"{source['path']}: {len(rows)} usable prompts cannot be split into {iterations} iterations"
        )
    random.Random(seed).shuffle(rows)
    size = len(rows) // iterations
    return [rows[k * size : (k + 1) * size] for k in range(iterations)]


class SSOPipeline:
    """The stages of one ``prefalign-sso`` run (see the module docstring)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.work_dir = Path(cfg.work_dir).resolve()
        self.principles = load_principles(
            cfg.principles.path, OmegaConf.to_container(cfg.principles.extra, resolve=True)
        )
        self.sampling = SamplingConfig(**OmegaConf.to_container(cfg.sampling, resolve=True))
        self.allocation = SamplingConfig(**OmegaConf.to_container(cfg.allocation, resolve=True))
        self._loaded: tuple[str, Any] | None = None

    # -- bookkeeping -------------------------------------------------------------------------------
    def iteration_dir(self, i: int) -> Path:
        return self.work_dir / f"iter_{i}"

    def done(self, i: int, stage: str) -> dict | None:
        marker = self.iteration_dir(i) / f"{stage}.done.json"
        return json.loads(marker.read_text()) if marker.exists() else None

    def mark_done(self, i: int, stage: str, stats: Mapping[str, Any]) -> None:
        marker = self.iteration_dir(i) / f"{stage}.done.json"
        write_json(marker, dict(stats))

    def policy_model_cfg(self, i: int) -> dict:
        """The model config of π_{i} (π_0: the configured starting model)."""
        base = OmegaConf.to_container(self.cfg.model, resolve=True)
        if i == 0:
            return base
        return {
            **base,
            "name_or_path": str(self.iteration_dir(i) / "policy"),
            "tiny": None,
            "chat_template": None,
        }

    def generator(self, i: int) -> HFGenerator:
        key = json.dumps(self.policy_model_cfg(i), sort_keys=True, default=str)
        if self._loaded is None or self._loaded[0] != key:
            model, tokenizer = load_model_and_tokenizer(self.policy_model_cfg(i))
            self._loaded = (key, HFGenerator(model, tokenizer))
        return self._loaded[1]

    # -- stages ------------------------------------------------------------------------------------
    def allocate(self, i: int, prompts: list[dict]) -> dict:
        generator = self.generator(i - 1)
        conversations = [[{"role": "user", "content": p["prompt"]}] for p in prompts]
        keep, drops = filter_prompts_by_length(
            [p["id"] for p in prompts], conversations, generator.tokenizer, int(self.cfg.max_prompt_tokens)
        )
        kept = [prompts[k] for k in keep]
        questions = [
            [{"role": "user", "content": allocation_prompt(p["prompt"], self.principles)}] for p in kept
        ]
        answers = generator.generate(questions, self.allocation)
        rng, stats = random.Random(int(self.cfg.seed) + i), AllocationStats()
        rows = []
        for prompt, answer in zip(kept, answers, strict=True):
            fallbacks = stats.fallbacks
            feature = allocate_feature(answer.text, self.principles, rng, stats)
            rows.append(
                {
                    **prompt,
                    "allocation_answer": answer.text,
                    "feature": feature,
                    "fallback": stats.fallbacks > fallbacks,
                }
            )
        write_jsonl(self.iteration_dir(i) / "allocated.jsonl", rows)
        return {
            "prompts": len(prompts),
            "dropped": dict(drops.counts),
            "allocated": len(rows),
            "fallbacks": stats.fallbacks,
            "fallback_rate": stats.fallback_rate,
            "features": dict(stats.picked),
        }

    def sample(self, i: int) -> dict:
        generator = self.generator(i - 1)
        allocated = read_jsonl(self.iteration_dir(i) / "allocated.jsonl")
        good = [principle_system_message(self.principles[r["feature"]], True) for r in allocated]
        bad = [principle_system_message(self.principles[r["feature"]], False) for r in allocated]

        def conversations(systems):
            return [
                ([{"role": "system", "content": s}] if s else []) + [{"role": "user", "content": r["prompt"]}]
                for s, r in zip(systems, allocated, strict=True)
            ]

        started = time.perf_counter()
        chosen = generator.generate(conversations(good), self.sampling)
        rejected = generator.generate(conversations(bad), self._shifted(1))
        original = generator.generate(conversations([None] * len(allocated)), self._shifted(2))
        seconds = time.perf_counter() - started
        drops, rows = DropReport(total=len(allocated)), []
        for r, g, y_pos, y_neg, y_o, b in zip(allocated, good, chosen, rejected, original, bad, strict=True):
            empty = [
                name
                for name, y in (("chosen", y_pos), ("rejected", y_neg), ("original", y_o))
                if not y.text.strip()
            ]
            if empty:
                drops.add(f"empty_{empty[0]}", r["id"])
                continue
            rows.append(
                {
                    "id": r["id"],
                    "prompt": r["prompt"],
                    "feature": r["feature"],
                    "chosen": y_pos.text,
                    "rejected": y_neg.text,
                    "original": y_o.text,
                    "system_good": g,
                    "system_bad": b,
                    "chosen_tokens": y_pos.num_tokens,
                    "rejected_tokens": y_neg.num_tokens,
                    "original_tokens": y_o.num_tokens,
                    "hit_max_new_tokens": y_pos.hit_max_new_tokens
                    or y_neg.hit_max_new_tokens
                    or y_o.hit_max_new_tokens,
                }
            )
        if not rows:
            raise DataError(f"iteration {i}: every generation was empty ({drops.summary('samples')})")
        write_jsonl(self.iteration_dir(i) / "preferences.jsonl", rows)
        new_tokens = sum(r["chosen_tokens"] + r["rejected_tokens"] + r["original_tokens"] for r in rows)
        return {
            "samples": len(rows),
            "dropped": dict(drops.counts),
            "dropped_examples": drops.examples,
            "hit_max_new_tokens": sum(r["hit_max_new_tokens"] for r in rows),
            "new_tokens_per_second": new_tokens / max(seconds, 1e-9),
        }

    def _shifted(self, offset: int) -> SamplingConfig:
        return SamplingConfig(**{**self.sampling.__dict__, "seed": self.sampling.seed + 1000 * offset})

    def train(self, i: int) -> dict:
        from prefalign.training.run import run_task, train

        self._loaded = None  # free the sampling copy of the policy before training
        previous = self.policy_model_cfg(i - 1)
        out = self.iteration_dir(i) / "train"
        overrides = [
            f"objective={self.cfg.objective}",
            *self.cfg.objective_overrides,
            *self.cfg.train_overrides,
            f"data.train.path={self.iteration_dir(i) / 'preferences.jsonl'}",
            "data.val=null",
            f"paths.output_dir={out}",
            f"callbacks.hf_export.dirpath={self.iteration_dir(i) / 'policy'}",
            f"seed={int(self.cfg.seed) + i}",
        ]
        train_cfg = compose(config_name="train", overrides=overrides)
        with open_dict(train_cfg):
            train_cfg.model = OmegaConf.create(previous)
            train_cfg.reference.model = OmegaConf.create(previous)  # π_{i-1}: frozen within the iteration
        if self.cfg.get("wandb") and "wandb" in (train_cfg.get("logger") or {}):
            with open_dict(train_cfg):  # the iterations' runs sit together with the pipeline's run
                train_cfg.logger.wandb.group = self.cfg.wandb.group
                train_cfg.logger.wandb.name = f"{self.cfg.run_name}-iter{i}"
        metrics = run_task(train, train_cfg)
        return {"metrics": metrics, "reference": previous.get("name_or_path") or "tiny"}

    def evaluate(self, i: int) -> dict:
        rows = read_jsonl(self.iteration_dir(i) / "preferences.jsonl")
        train_metrics = self.done(i, "train")["metrics"]
        mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
        report = {
            "iteration": i,
            "samples": len(rows),
            "length/chosen": mean("chosen_tokens"),
            "length/rejected": mean("rejected_tokens"),
            "length/original": mean("original_tokens"),
            "hit_max_new_tokens": mean("hit_max_new_tokens"),
            **{k: v for k, v in train_metrics.items() if k.startswith("train/")},
        }
        if self.cfg.get("judge"):
            from prefalign.generation.judges import signal_accuracy

            judge = hydra.utils.instantiate(self.cfg.judge)
            report.update(signal_accuracy(judge, [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]))
        if self.cfg.get("heldout"):
            if i == 1:  # the starting policy's figure, for the iteration-0 row of a study's table
                report.update({f"initial_heldout/{k}": v for k, v in self.heldout(0).items()})
            # π_i last: its loaded copy then serves the next iteration's allocation and sampling
            report.update({f"heldout/{k}": v for k, v in self.heldout(i).items()})
        return report

    def heldout(self, i: int) -> dict[str, float]:
        """π_i's metric on the ``heldout`` records (:class:`prefalign.training.callbacks.GenerationEval`)."""
        from prefalign.training.callbacks import GenerationEval

        evaluation = GenerationEval(**OmegaConf.to_container(self.cfg.heldout, resolve=True))
        generator = self.generator(i)
        values, _ = evaluation.evaluate(generator.model, generator.tokenizer)
        return values

    # -- driver ------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        splits = load_prompt_splits(
            OmegaConf.to_container(self.cfg.prompts, resolve=True),
            int(self.cfg.iterations),
            int(self.cfg.seed),
        )
        reports = []
        for i in range(1, int(self.cfg.iterations) + 1):
            self.iteration_dir(i).mkdir(parents=True, exist_ok=True)
            for stage in STAGES:
                if self.done(i, stage) is not None:
                    log.info("iteration %d: %s already done, skipping", i, stage)
                    continue
                log.info("iteration %d: %s", i, stage)
                if stage == "evaluate":  # a new report: log it to W&B even if an earlier one was
                    (self.iteration_dir(i) / "wandb.done").unlink(missing_ok=True)
                stats = self.allocate(i, splits[i - 1]) if stage == "allocate" else getattr(self, stage)(i)
                self.mark_done(i, stage, stats)
            reports.append(self.done(i, "evaluate"))
            log.info("iteration %d: %s", i, json.dumps(reports[-1], default=str))
            self.log_to_wandb(i, reports[-1])
        write_json(self.work_dir / "report.json", reports)
        return reports

    # -- W&B ---------------------------------------------------------------------------------------
    def log_to_wandb(self, i: int, report: Mapping[str, Any]) -> None:
        """Log iteration ``i``'s report to the pipeline's W&B run (once: a resumed run skips it).

        The run is opened for each iteration and closed again, since every iteration's training
        run opens and closes its own; its id is kept in ``work_dir/wandb_run_id``, so all iterations
        (and a resumed pipeline) log to the same run, one point per ``iteration``.
        """
        marker = self.iteration_dir(i) / "wandb.done"
        if not self.cfg.get("wandb") or marker.exists():
            return
        import wandb

        from prefalign.training.run import choose_wandb_mode

        choose_wandb_mode()
        id_file = self.work_dir / "wandb_run_id"
        if not id_file.exists():
            id_file.write_text(secrets.token_hex(4))
        numbers = {k: v for k, v in report.items() if isinstance(v, (int, float)) and k != "iteration"}
        with wandb.init(
            id=id_file.read_text().strip(),
            resume="allow",
            dir=str(self.work_dir),
            name=f"{self.cfg.run_name}-pipeline",
            job_type="sso-pipeline",
            config=OmegaConf.to_container(self.cfg, resolve=True),
            **OmegaConf.to_container(self.cfg.wandb, resolve=True),
        ) as run:
            run.define_metric("iteration")
            run.define_metric("sso/*", step_metric="iteration")
            run.log({"iteration": i, **{f"sso/{k}": v for k, v in numbers.items()}})
        marker.touch()
