"""The ``prefalign-sso`` pipeline: iterative self-steering optimisation (SSO paper §2.3, §3, §4.1).

The prompt set is split into K equal parts (the paper: UltraFeedback's prompts, 1:1:1). Iteration
i, with π_{i-1} the previous policy (π_0 the starting model):

1. ``allocate`` — π_{i-1} answers the Table 14 prompt for each query; one named feature is picked
   at random (seeded); unparseable answers fall back to a random feature and are counted.
2. ``sample`` — y+, y−, y_o are sampled from π_{i-1} under the good principle (x+), the bad
   principle (x−) and no principle (x). Empty generations are dropped and counted; responses that
   hit ``max_new_tokens`` are flagged. Every generation (here and in ``allocate``) is seeded by
   (``sampling.seed``, iteration, prompt id, role) when the backend takes keys (``HFGenerator``),
   so a prompt's samples do not depend on batch size or on which other prompts share its batch.
3. ``train`` — π_i is trained from π_{i-1} with the configured objective (SSO by default); the
   reference is π_{i-1}, its log-probs precomputed by the scoring engine; π_i is exported in
   Hugging Face format, checked to be finite, and compared with π_{i-1} (``policy_change``).
4. ``evaluate`` — per-iteration figures: generation lengths (the paper tracks verbosity), W and G,
   reward margins, the on-policy measure e^{ā}, and signal accuracy when a judge is configured.

Every stage writes its artefacts and a ``<stage>.done.json`` under ``work_dir/iter_<i>/``; a rerun
with the same ``work_dir`` resumes at the first unfinished stage. The marker records, under
``artefacts``, the settings that shaped the stage's output (the config keys it read, the prompts'
ids, the fingerprints of its inputs) and the row count, size and SHA-256 of every file it wrote. A
rerun checks each finished stage against them: all equal, the stage is skipped; otherwise the run
stops with a :class:`ResumeError` naming the file or setting that differs, unless
``resume.force=true``, which redoes that stage and every later one.

**Several ranks.** In a ``torch.distributed`` process group (``prefalign-sso`` started by torchrun
or ``srun`` initialises one), every rank runs the pipeline: allocation, sampling, held-out
evaluation and the judge share the prompts across the ranks and gather the results (per-prompt
seeds make them equal to one process's), rank 0 alone writes the stage files, markers, report and
the pipeline's W&B run, and each iteration's fit runs on the same ranks, so its ``trainer.devices``
x ``trainer.num_nodes`` must equal the world size (checked when :meth:`SSOPipeline.run` starts).

Every iteration's training config is composed and validated when the pipeline is built, before
any model is loaded, so a typo in ``objective_overrides`` / ``train_overrides`` fails at once. After
training, a policy with non-finite weights or non-finite train metrics stops the run before anything
samples from it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from prefalign.core.errors import ConfigError, DataError, DropReport
from prefalign.core.jsonl import read_jsonl, write_json, write_jsonl
from prefalign.core.ranks import barrier, world
from prefalign.core.signals import Interrupted
from prefalign.data.hf_datasets import export_preferences
from prefalign.data.records import load_raw
from prefalign.generation.principles import (
    AllocationStats,
    allocate_feature,
    allocation_prompt,
    load_principles,
    principle_system_message,
)
from prefalign.generation.sampling import Generator, SamplingConfig, filter_prompts_by_length
from prefalign.generation.sharded import ShardedGenerator, ShardedJudge, generate
from prefalign.pipelines.artefacts import (
    ARTEFACTS,
    ResumeError,
    fingerprint,
    portable,
    read_marker,
    shaping,
    verify_marker,
    write_marker,
)
from prefalign.pipelines.interruptions import interruption_path, read_interruption, record_interruption

log = logging.getLogger(__name__)
STAGES = ("allocate", "sample", "train", "evaluate")
# The files each stage writes, relative to iter_<i>/ (the train stage: every file of policy/).
STAGE_FILES = {"allocate": ("allocated.jsonl",), "sample": ("preferences.jsonl",), "evaluate": ()}


class NonFinitePolicyError(RuntimeError):
    """The trained policy has non-finite weights or train metrics; nothing samples from it."""


def load_prompt_splits(
    source: Mapping[str, Any], iterations: int, seed: int, report: DropReport | None = None
) -> list[list[dict]]:
    """The prompt set (``id``, ``prompt``), shuffled with ``seed`` and cut into ``iterations`` equal parts.

    Prompts are validated like training data: an empty (or non-text) prompt or a duplicate id is a
    :class:`DataError` naming the file, the row and the id, or with ``on_invalid: drop`` in
    ``source`` the row is dropped and counted in ``report``. A row without an id gets ``row-<index>``.
    """
    path = source["path"]
    raw = load_raw(str(path), split=source.get("split", "train"))
    column, id_column = source.get("prompt_column", "prompt"), source.get("id_column", "id")
    on_invalid = source.get("on_invalid", "raise")
    if on_invalid not in ("raise", "drop"):
        raise ConfigError(f"config key `prompts.on_invalid` must be 'raise' or 'drop', got {on_invalid!r}")
    if column not in raw.column_names:
        raise DataError(f"{path}: no prompt column {column!r}; the file has {raw.column_names}")
    drops = report if report is not None else DropReport()
    drops.total += len(raw)
    rows, first_row = [], {}
    for index, row in enumerate(raw):
        prompt, raw_id = row[column], row.get(id_column)
        sample_id = f"row-{index}" if raw_id is None or str(raw_id).strip() == "" else str(raw_id)
        problem = None
        if not isinstance(prompt, str) or not prompt.strip():
            problem = ("empty_prompt", f"empty prompt (column {column!r}: {prompt!r})")
        elif sample_id in first_row:
            problem = ("duplicate_id", f"duplicate id (first at row {first_row[sample_id]})")
        if problem is not None:
            if on_invalid == "raise":
                raise DataError(
                    f"{path}, row {index} (id={sample_id}): {problem[1]}; fix the file or set "
                    "prompts.on_invalid=drop to drop and count such rows"
                )
            drops.add(problem[0], sample_id)
            continue
        first_row[sample_id] = index
        rows.append({"id": sample_id, "prompt": prompt})
    if drops.dropped:
        log.warning(drops.summary(str(path)))
    if source.get("limit"):
        rows = rows[: int(source["limit"])]
    if len(rows) < iterations:
        raise DataError(f"{path}: {len(rows)} usable prompts cannot be split into {iterations} iterations")
    random.Random(seed).shuffle(rows)
    size = len(rows) // iterations
    return [rows[k * size : (k + 1) * size] for k in range(iterations)]


def check_finite_policy(policy_dir: Path, metrics: Mapping[str, float]) -> str | None:
    """``None`` when the exported policy's weights and the train metrics are all finite, else what
    is not (the tensor or metric named)."""
    bad = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isfinite(v)]
    if bad:
        return f"non-finite train metrics {bad}"
    from safetensors import safe_open

    files = sorted(policy_dir.glob("*.safetensors"))
    if not files:
        return f"{policy_dir} holds no *.safetensors weights"
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                tensor = f.get_tensor(name)
                if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                    count = int((~tensor.isfinite()).sum())
                    return f"{file.name}: tensor {name} has {count} non-finite of {tensor.numel()} values"
    return None


def policy_change(previous_dir: Path, policy_dir: Path) -> dict[str, float] | None:
    """How far training moved the weights: ``max_abs`` |π_i − π_{i−1}| over all parameters and
    ``relative_l2`` = ‖π_i − π_{i−1}‖ / ‖π_{i−1}‖, read one tensor at a time from the two
    ``*.safetensors`` folders (``None`` when π_{i−1} is not a local safetensors folder, e.g. a hub
    name). Zero means the iteration trained nothing."""
    from safetensors import safe_open

    previous_files = sorted(Path(previous_dir).glob("*.safetensors"))
    if not previous_files:
        return None
    where = {}
    for file in previous_files:
        with safe_open(str(file), framework="pt") as f:
            where.update({name: file for name in f.keys()})  # noqa: SIM118 - not a Mapping
    max_abs, diff_sq, base_sq = 0.0, 0.0, 0.0
    for file in sorted(Path(policy_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as new:
            for name in new.keys():  # noqa: SIM118
                if name not in where:
                    continue
                with safe_open(str(where[name]), framework="pt") as old:
                    before = old.get_tensor(name).double()
                after = new.get_tensor(name).double()
                if before.shape != after.shape:
                    continue
                delta = after - before
                max_abs = max(max_abs, float(delta.abs().max())) if delta.numel() else max_abs
                diff_sq += float((delta * delta).sum())
                base_sq += float((before * before).sum())
    return {"max_abs": max_abs, "relative_l2": math.sqrt(diff_sq) / max(math.sqrt(base_sq), 1e-30)}


def distribution_summary(values: list[float]) -> dict[str, float]:
    """Mean, population standard deviation and the 5/25/50/75/95 % quantiles (linear interpolation
    between order statistics) of a non-empty list of numbers."""
    import statistics

    if not values:
        raise ValueError("distribution_summary needs at least one value")
    ordered = sorted(values)

    def quantile(q: float) -> float:
        position = q * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    summary = {"mean": statistics.fmean(ordered), "std": statistics.pstdev(ordered)}
    summary.update({f"q{round(100 * q):02d}": quantile(q) for q in (0.05, 0.25, 0.5, 0.75, 0.95)})
    return summary


class SSOPipeline:
    """The stages of one ``prefalign-sso`` run (see the module docstring).

    Building it composes and validates every iteration's training config (:meth:`train_config`);
    nothing is loaded until :meth:`run`.
    """

    def __init__(self, cfg: DictConfig) -> None:
        if cfg.get("objective") is not None or cfg.get("module") is not None:
            raise ConfigError(
                "config key `objective`: prefalign-sso names every iteration's objective with "
                "`train_objective=<name>` (e.g. train_objective=pbaa), its settings with "
                "`objective_overrides=[objective.<key>=<value>]`"
            )
        self.cfg = cfg
        self.work_dir = Path(cfg.work_dir).resolve()
        self.principles = load_principles(
            cfg.principles.path, OmegaConf.to_container(cfg.principles.extra, resolve=True)
        )
        self.sampling = SamplingConfig(**OmegaConf.to_container(cfg.sampling, resolve=True))
        self.allocation = SamplingConfig(**OmegaConf.to_container(cfg.allocation, resolve=True))
        if not cfg.get("generator") or "_target_" not in cfg.generator:
            raise ConfigError(
                "config key `generator._target_` is required (e.g. prefalign.generation.backends.build_generator)"
            )
        self.force = bool(OmegaConf.select(cfg, "resume.force", default=False))
        self.train_configs = {i: self.train_config(i) for i in range(1, int(cfg.iterations) + 1)}
        self._loaded: tuple[str, Generator] | None = None
        self._prompt_drops = DropReport()
        self._resume_fit = False  # the train stage continues an interrupted fit (see _run_stage)
        self.stages = STAGES  # the stages run per iteration (tests may run a prefix)

    # -- bookkeeping -------------------------------------------------------------------------------
    def iteration_dir(self, i: int) -> Path:
        return self.work_dir / f"iter_{i}"

    def marker_path(self, i: int, stage: str) -> Path:
        return self.iteration_dir(i) / f"{stage}.done.json"

    def done(self, i: int, stage: str) -> dict | None:
        """The stage's marker (``None`` if the stage has not finished); a garbled one is an error."""
        return read_marker(self.marker_path(i, stage), self._how_to_proceed())

    def stats(self, i: int, stage: str) -> dict:
        """A finished stage's statistics (its marker without the artefact records)."""
        return {k: v for k, v in (self.done(i, stage) or {}).items() if k != ARTEFACTS}

    def _how_to_proceed(self) -> str:
        return (
            "to keep this run's artefacts start a new run (run_name=<new name>), or redo this stage "
            "and every later one with resume.force=true"
        )

    def mark_done(self, i: int, stage: str, stats: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
        """Write the stage's marker: its statistics, the settings that shaped it, its files' records."""
        names = self.policy_files(i) if stage == "train" else STAGE_FILES[stage]
        stats = portable(stats, self.work_dir)  # e.g. the reference π_{i-1}: relative to the run folder
        write_marker(self.marker_path(i, stage), self.iteration_dir(i), stats, settings, names)

    def policy_files(self, i: int) -> list[str]:
        folder = self.iteration_dir(i) / "policy"
        return sorted(str(p.relative_to(self.iteration_dir(i))) for p in folder.rglob("*") if p.is_file())

    def verify(
        self, i: int, stage: str, marker: Mapping[str, Any], settings: Mapping[str, Any]
    ) -> str | None:
        """``None`` when a finished stage's files and settings are as its marker records, else what differs."""
        return verify_marker(
            self.marker_path(i, stage), self.iteration_dir(i), marker, settings, self.work_dir
        )

    def settings(self, i: int, stage: str, prompts: list[dict]) -> dict[str, Any]:
        """What shapes a stage's output: the config keys it reads and its inputs' fingerprints, with
        paths inside the run folder relative to it (a copied or renamed run folder resumes)."""
        return portable(shaping(self._settings(i, stage, prompts)), self.work_dir)

    def _settings(self, i: int, stage: str, prompts: list[dict]) -> dict[str, Any]:
        container = lambda key: OmegaConf.to_container(self.cfg[key], resolve=True)  # noqa: E731
        if stage == "train":
            return {
                "train_config": OmegaConf.to_container(self.train_configs[i], resolve=True),
                "input": self._recorded_file(i, "sample", "preferences.jsonl"),
            }
        if stage == "evaluate":
            judge, heldout = self.cfg.get("judge"), self.cfg.get("heldout")
            return {
                "judge": OmegaConf.to_container(judge, resolve=True) if judge else None,
                "heldout": OmegaConf.to_container(heldout, resolve=True) if heldout else None,
                "input": self._recorded_file(i, "sample", "preferences.jsonl"),
                "policy": self._policy_fingerprint(i),
            }
        common = {
            "model": self.policy_model_cfg(i - 1),
            "policy": self._policy_fingerprint(i - 1),
            "generator": container("generator"),
            "principles": self.principles,
        }
        if stage == "allocate":
            return {
                "prompts": container("prompts"),
                "iterations": int(self.cfg.iterations),
                "seed": int(self.cfg.seed),
                "max_prompt_tokens": int(self.cfg.max_prompt_tokens),
                "allocation": container("allocation"),
                **common,
                "prompt_ids": [p["id"] for p in prompts],
                "prompts_sha256": fingerprint(prompts),
            }
        return {
            "sampling": container("sampling"),
            **common,
            "input": self._recorded_file(i, "allocate", "allocated.jsonl"),
        }

    def _recorded_file(self, i: int, stage: str, name: str) -> Any:
        marker = self.done(i, stage) or {}
        return marker.get(ARTEFACTS, {}).get("files", {}).get(name)

    def _policy_fingerprint(self, i: int) -> str | None:
        """π_i's weights as iteration i's train marker records them (π_0: the configured model)."""
        if i == 0:
            return None
        return fingerprint((self.done(i, "train") or {}).get(ARTEFACTS, {}).get("files"))

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
            # π_i is a safetensors folder: a starting model's GGUF file (an absolute path) would
            # otherwise be loaded in its place, silently sampling and training from π_0 again
            "gguf_file": None,
        }

    def generator(self, i: int) -> Generator:
        """π_i's sampling backend, instantiated from ``cfg.generator`` with ``model=`` π_i's model config."""
        key = json.dumps(self.policy_model_cfg(i), sort_keys=True, default=str)
        if self._loaded is None or self._loaded[0] != key:
            self._release_generator()  # free the previous policy first
            self._loaded = (key, hydra.utils.instantiate(self.cfg.generator, model=self.policy_model_cfg(i)))
        return self._loaded[1]

    def _release_generator(self) -> None:
        """Drop the loaded sampler (closing a vLLM engine frees its GPU memory)."""
        if self._loaded is not None and callable(getattr(self._loaded[1], "close", None)):
            self._loaded[1].close()
        self._loaded = None

    # -- the training configs --------------------------------------------------------------------
    def train_config(self, i: int) -> DictConfig:
        """Iteration ``i``'s ``train`` config: ``objective``, ``objective_overrides``,
        ``train_overrides``, this iteration's data and output folders, π_{i-1} as model and reference.

        Raises:
            ConfigError: naming the override or key that does not compose or validate (a typo in a
                paper config's overrides fails here, before any model is loaded).
        """
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        from prefalign.config import compose_config, validate_train_config

        previous = self.policy_model_cfg(i - 1)
        overrides = [
            f"objective={self.cfg.train_objective}",
            *self.cfg.objective_overrides,
            *self.cfg.train_overrides,
            f"data.train.path={self.iteration_dir(i) / 'preferences.jsonl'}",
            "data.val=null",
            f"paths.output_dir={self.iteration_dir(i) / 'train'}",
            f"callbacks.hf_export.dirpath={self.iteration_dir(i) / 'policy'}",
            f"seed={int(self.cfg.seed) + i}",
        ]
        where = "config keys `train_objective` / `objective_overrides` / `train_overrides`"
        try:
            train_cfg = compose_config("train", overrides)
            with open_dict(train_cfg):
                train_cfg.model = OmegaConf.create(previous)
                train_cfg.reference.model = OmegaConf.create(previous)  # π_{i-1}: frozen within the iteration
            if self.cfg.get("wandb") and "wandb" in (train_cfg.get("logger") or {}):
                with open_dict(train_cfg):  # the iterations' runs sit together with the pipeline's run
                    train_cfg.logger.wandb.group = self.cfg.wandb.group
                    train_cfg.logger.wandb.name = f"{self.cfg.run_name}-iter{i}"
            OmegaConf.to_container(train_cfg, resolve=True)  # every interpolation resolves
            startup = train_cfg.copy()
            with open_dict(startup):
                startup.data.train = None  # preferences.jsonl is written by the sample stage
            validate_train_config(startup, check_model_paths=i == 1)  # π_{i-1} for i > 1 comes later
            hydra.utils.instantiate(train_cfg.objective)  # hyper-parameters in range
        except ConfigError as err:
            raise ConfigError(f"iteration {i}'s training config ({where}): {err}") from err
        except (HydraException, OmegaConfBaseException, TypeError, ValueError) as err:
            raise ConfigError(f"iteration {i}'s training config ({where}): {err}") from err
        return train_cfg

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
        answers = generate(
            generator,
            questions,
            self.allocation,
            [f"{i}/{p['id']}/allocate" for p in kept],
            f"iteration {i}: allocate features",
        )
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
        if world()[0] == 0:  # one writer; the other ranks hold the same rows
            write_jsonl(self.iteration_dir(i) / "allocated.jsonl", rows)
        return {
            "prompts": len(prompts),
            "dropped": dict(drops.counts),
            "allocated": len(rows),
            "fallbacks": stats.fallbacks,
            "fallback_rate": stats.fallback_rate,
            "parse_rate": stats.parse_rate,  # answers naming at least one known feature
            "exact_format_rate": stats.exact_rate,  # answers exactly "Feature1,Feature2"
            "features": dict(stats.picked),
            "prompt_file_dropped": dict(self._prompt_drops.counts),
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
        keys = lambda role: [f"{i}/{r['id']}/{role}" for r in allocated]  # noqa: E731
        chosen = generate(generator, conversations(good), self.sampling, keys("chosen"), f"iteration {i}: y+")
        rejected = generate(
            generator, conversations(bad), self._shifted(1), keys("rejected"), f"iteration {i}: y-"
        )
        original = generate(
            generator,
            conversations([None] * len(allocated)),
            self._shifted(2),
            keys("original"),
            f"iteration {i}: y_o",
        )
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
        if world()[0] == 0:
            write_jsonl(self.iteration_dir(i) / "preferences.jsonl", rows)
            # the same pairs in TRL's conversational format: preferences.hf/, preferences.trl.jsonl
            export_preferences(self.iteration_dir(i) / "preferences.jsonl", rows)
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
        """Train π_i from π_{i-1}; stop if the result has non-finite weights or metrics."""
        self._release_generator()  # free the sampling copy of the policy before training
        train_cfg = self.train_configs[i]
        if self._resume_fit:  # interrupted by a signal (see _run_stage): continue from its step.ckpt
            train_cfg = train_cfg.copy()
            with open_dict(train_cfg):
                train_cfg.ckpt_path = "auto"
        metrics = self._fit(train_cfg)
        policy = self.iteration_dir(i) / "policy"
        problem = check_finite_policy(policy, metrics)
        if problem:
            raise NonFinitePolicyError(
                f"iteration {i}: the trained policy π_{i} ({policy}) is broken: {problem}. Nothing "
                "samples from it and the train stage is not marked done; lower optimizer.lr in "
                "train_overrides (or check the data) and rerun with resume.force=true"
            )
        previous = self.policy_model_cfg(i - 1)
        if i > 1 or previous.get("tiny") or Path(str(previous.get("name_or_path"))).is_dir():
            from prefalign.models.loading import resolve_model_path

            change = policy_change(Path(resolve_model_path(previous)), policy)
        else:
            change = None  # a hub model: not compared
        if change is not None:
            log.info("iteration %d: the policy moved by %s", i, change)
        return {
            "metrics": metrics,
            "reference": previous.get("name_or_path") or "tiny",
            "policy_change": change,
        }

    @staticmethod
    def _fit(train_cfg: DictConfig) -> dict[str, float]:
        from prefalign.training.launch import train_in_child_ranks
        from prefalign.training.run import run_task, train

        # ranks Lightning starts for this fit (trainer.devices > 1) train this config, not the pipeline
        saved = Path(train_cfg.paths.output_dir) / "train_config.yaml"
        with train_in_child_ranks(train_cfg, saved):
            return run_task(train, train_cfg)

    def evaluate(self, i: int) -> dict:
        rows = read_jsonl(self.iteration_dir(i) / "preferences.jsonl")
        train_metrics = self.stats(i, "train")["metrics"]
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
        report.update(self.per_sample_summary(i))
        change = self.stats(i, "train").get("policy_change")
        if change:  # how far π_i moved from π_{i-1} (0: the iteration trained nothing)
            report.update({f"policy_change/{k}": v for k, v in change.items()})
        if self.cfg.get("judge"):
            from prefalign.generation.judges import signal_accuracy

            judge = ShardedJudge(hydra.utils.instantiate(self.cfg.judge))  # every rank judges a part
            report.update(signal_accuracy(judge, [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]))
        if self.cfg.get("heldout"):
            if i == 1:  # the starting policy's figure, for the iteration-0 row of a study's table
                report.update({f"initial_heldout/{k}": v for k, v in self.heldout(0).items()})
            # π_i last: its loaded copy then serves the next iteration's allocation and sampling
            report.update({f"heldout/{k}": v for k, v in self.heldout(i).items()})
        return report

    def per_sample_summary(self, i: int) -> dict[str, float]:
        """The distribution over iteration ``i``'s samples of each per-example training metric
        (SSO: W) in the first epoch, when the samples are met by (nearly) π_{i-1}:
        ``per_sample/<name>/{mean,std,q05,q25,q50,q75,q95}``, from the training run's
        ``per_sample_metrics.jsonl`` (:class:`prefalign.training.callbacks.PerSampleMetrics`;
        empty when the run has no such file)."""
        path = self.iteration_dir(i) / "train" / "per_sample_metrics.jsonl"
        if not path.exists():
            return {}
        rows = [r for r in read_jsonl(path) if r["epoch"] == 0]
        return {
            f"per_sample/{name}/{stat}": value
            for name in sorted({k for r in rows for k in r} - {"epoch", "id"})
            for stat, value in distribution_summary([float(r[name]) for r in rows if name in r]).items()
        }

    def heldout(self, i: int) -> dict[str, float]:
        """π_i's metric on the ``heldout`` records (:class:`prefalign.training.callbacks.GenerationEval`),
        answered by π_i's sampler (the configured backend: HF or vLLM), each record keyed
        ``heldout/<i>/<index>`` and the records shared across ranks (:class:`ShardedGenerator`)."""
        from prefalign.training.callbacks import GenerationEval

        evaluation = GenerationEval(**OmegaConf.to_container(self.cfg.heldout, resolve=True))
        values, _ = evaluation.evaluate_with(
            ShardedGenerator(self.generator(i), f"heldout/{i}"), desc=f"policy {i}: held-out answers"
        )
        return values

    # -- driver ------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Run (or resume) every iteration; returns the per-iteration reports."""
        if "train" in self.stages:  # the fits run on this program's ranks (torchrun / srun)
            from prefalign.training.launch import check_train_world

            for i, train_cfg in self.train_configs.items():
                where = f"iteration {i}'s training config (config key `train_overrides`)"
                check_train_world(train_cfg.trainer, world()[1], where)
        self._prompt_drops = DropReport()
        splits = load_prompt_splits(
            OmegaConf.to_container(self.cfg.prompts, resolve=True),
            int(self.cfg.iterations),
            int(self.cfg.seed),
            self._prompt_drops,
        )
        reports, redo = [], False
        for i in range(1, int(self.cfg.iterations) + 1):
            self.iteration_dir(i).mkdir(parents=True, exist_ok=True)
            for stage in self.stages:
                earlier_redone = redo
                redo = self._needs_redo(i, stage, splits[i - 1], redo)
                if not redo and self.marker_path(i, stage).exists():
                    log.info("iteration %d: %s already done, skipping", i, stage)
                    continue
                log.info("iteration %d: %s", i, stage)
                barrier()  # every rank has decided before rank 0 removes the stale marker
                rank = world()[0]
                if rank == 0:
                    self.marker_path(i, stage).unlink(missing_ok=True)
                    if stage == "evaluate":  # a new report: log it to W&B even if an earlier one was
                        (self.iteration_dir(i) / "wandb.done").unlink(missing_ok=True)
                stats = self._run_stage(i, stage, splits[i - 1], resumable=not earlier_redone)
                barrier()  # the stage's files are written
                if rank == 0:
                    self.mark_done(i, stage, stats, self.settings(i, stage, splits[i - 1]))
                    interruption_path(self.iteration_dir(i), stage).unlink(missing_ok=True)
                barrier()  # its marker too: every rank reads it next
            reports.append(self.stats(i, "evaluate"))
            log.info("iteration %d: %s", i, json.dumps(reports[-1], default=str))
            if world()[0] == 0:
                self.log_to_wandb(i, reports[-1])
        if world()[0] == 0:
            write_json(self.work_dir / "report.json", reports)
        return reports

    def _run_stage(self, i: int, stage: str, prompts: list[dict], resumable: bool) -> dict:
        """Run one stage; a stage stopped by SIGTERM / SIGINT is recorded
        (:mod:`prefalign.pipelines.interruptions`) and the rerun resumes it: an interrupted fit
        continues from its ``step.ckpt`` when no earlier stage was redone and its settings are
        unchanged (``resumable`` says the former), any other stage runs again."""
        folder, settings = self.iteration_dir(i), fingerprint(self.settings(i, stage, prompts))
        before = read_interruption(folder, stage)
        self._resume_fit = False
        if before is not None:
            self._resume_fit = stage == "train" and resumable and before.get("settings") == settings
            how = (
                "continuing its fit from the checkpoint" if self._resume_fit else "running it from its start"
            )
            log.warning(
                "iteration %d: %s was interrupted by %s (%s); %s",
                i,
                stage,
                before.get("signal"),
                before.get("detail"),
                how,
            )
        try:
            return self.allocate(i, prompts) if stage == "allocate" else getattr(self, stage)(i)
        except Interrupted as stop:
            if world()[0] == 0:
                record_interruption(folder, stage, stop, settings)
            raise

    def _needs_redo(self, i: int, stage: str, prompts: list[dict], redo: bool) -> bool:
        """Whether a stage must run again: it has no marker, or an earlier stage was redone under
        ``resume.force``, or (forced) its marker does not match; unforced, a mismatch is an error."""
        if redo:
            return True
        try:
            marker = self.done(i, stage)
            problem = (
                None if marker is None else self.verify(i, stage, marker, self.settings(i, stage, prompts))
            )
        except ResumeError as err:
            if not self.force:
                raise
            problem = str(err)
        if problem is None:
            return False
        if not self.force:
            raise ResumeError(
                f"iteration {i}, stage {stage}: {problem}. This run's artefacts were made with other "
                f"settings or files; {self._how_to_proceed()}"
            )
        log.warning(
            "iteration %d: %s differs (%s); resume.force=true: redoing it and every later stage",
            i,
            stage,
            problem,
        )
        return True

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
