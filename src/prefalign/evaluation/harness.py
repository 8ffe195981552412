"""lm-evaluation-harness on an in-memory model: task specs from the ``tasks`` config, name checks
against lm-eval's registry, and one score per task.

A task spec says which lm-eval task (or group) to run, with how many few-shot examples, and which
of its results to report: ``<metric>,<filter>`` in lm-eval's results (e.g. ``acc_norm,none``,
``exact_match,flexible-extract``). ``task`` is a registered name (lm-eval's own tasks, or YAML
tasks in ``include_path`` folders) or an inline lm-eval task config (a mapping with a ``task`` key).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefalign.core.errors import ConfigError

log = logging.getLogger(__name__)


class EvalConfigError(ConfigError):
    """A bad evaluation setting; the message names the config key, task, file or checkpoint."""


@dataclass(frozen=True)
class TaskSpec:
    """One reported score: an lm-eval task, its few-shot count, and the result to report.

    Attributes:
        label: the column name in the results (the key under ``tasks``).
        task: a registered lm-eval task / group name, or an inline lm-eval task config.
        num_fewshot: few-shot examples per prompt.
        metric: the metric to report (``acc``, ``acc_norm``, ``exact_match``...).
        filter: the lm-eval filter whose result is reported (``none`` when the task has none).
    """

    label: str
    task: str | dict[str, Any]
    num_fewshot: int
    metric: str
    filter: str = "none"

    @property
    def task_name(self) -> str:
        """The lm-eval name the results are filed under."""
        return self.task if isinstance(self.task, str) else str(self.task["task"])

    @property
    def result_key(self) -> str:
        """The key of the reported score in lm-eval's per-task results."""
        return f"{self.metric},{self.filter}"

    def describe(self) -> dict[str, Any]:
        """What was run, for the results file."""
        return {
            "task": self.task_name,
            "num_fewshot": self.num_fewshot,
            "metric": self.metric,
            "filter": self.filter,
        }


def task_specs(tasks: Mapping[str, Any]) -> list[TaskSpec]:
    """Parse the ``tasks`` config (``{label: {task, num_fewshot, metric, filter}}``) into task specs.

    Raises:
        EvalConfigError: naming the ``tasks.<label>.<key>`` that is missing or malformed.
    """
    if not tasks:
        raise EvalConfigError("config key `tasks`: no tasks to evaluate (e.g. tasks=local_demo)")
    specs = []
    for label, entry in tasks.items():
        if entry is None:  # `tasks.<label>=null` drops a task from a preset
            continue
        if not isinstance(entry, Mapping):
            raise EvalConfigError(f"config key `tasks.{label}` must be a mapping, got {entry!r}")
        unknown = set(entry) - {"task", "num_fewshot", "metric", "filter"}
        if unknown:
            raise EvalConfigError(f"config key `tasks.{label}`: unknown keys {sorted(unknown)}")
        task = entry.get("task")
        if isinstance(task, Mapping):
            if not task.get("task"):
                raise EvalConfigError(
                    f"config key `tasks.{label}.task`: an inline config needs a `task` name"
                )
            task = dict(task)
        elif not isinstance(task, str) or not task:
            raise EvalConfigError(f"config key `tasks.{label}.task`: an lm-eval task name, got {task!r}")
        shots = entry.get("num_fewshot")
        if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
            raise EvalConfigError(
                f"config key `tasks.{label}.num_fewshot` must be an integer >= 0, got {shots!r}"
            )
        metric = entry.get("metric")
        if not isinstance(metric, str) or not metric:
            raise EvalConfigError(f"config key `tasks.{label}.metric`: a metric name, got {metric!r}")
        filter_name = entry.get("filter") or "none"
        specs.append(TaskSpec(str(label), task, shots, metric, str(filter_name)))
    if not specs:
        raise EvalConfigError("config key `tasks`: every task was removed")
    return specs


def build_task_manager(specs: Sequence[TaskSpec], include_path: Sequence[str | Path] = ()) -> Any:
    """An lm-eval ``TaskManager`` that knows every task in ``specs``; raises naming an unknown one.

    lm-eval's own registry (thousands of YAML files, ~10 s to index) is only indexed when a spec
    names a task that is neither inline nor in an ``include_path`` folder.

    Raises:
        EvalConfigError: an ``include_path`` folder is missing, or a task name is unknown.
    """
    from lm_eval.tasks import TaskManager

    paths = [str(Path(p).expanduser()) for p in include_path]
    for path in paths:
        if not Path(path).is_dir():
            raise EvalConfigError(f"config key `lm_eval.include_path`: {path} is not a folder")
    manager = TaskManager(include_path=paths or None, include_defaults=False)
    known = set(manager.all_tasks)
    if any(isinstance(s.task, str) and s.task not in known for s in specs):
        manager = TaskManager(include_path=paths or None)
    check_task_names(specs, manager, paths)
    return manager


def check_task_names(specs: Sequence[TaskSpec], task_manager: Any, include_path: Sequence[str] = ()) -> None:
    """Raise :class:`EvalConfigError` naming the first spec whose task is not in ``task_manager``'s registry."""
    known = set(task_manager.all_tasks)
    for spec in specs:
        if isinstance(spec.task, str) and spec.task not in known:
            close = difflib.get_close_matches(spec.task, sorted(known), n=5)
            hint = f"; close matches: {close}" if close else ""
            where = (
                f" or in {list(include_path)}"
                if include_path
                else " (local task folders go in lm_eval.include_path)"
            )
            raise EvalConfigError(
                f"config key `tasks.{spec.label}.task`: no lm-eval task or group named {spec.task!r} "
                f"in lm-eval's registry{where}{hint}"
            )


@dataclass
class HarnessSettings:
    """Settings of every ``lm_eval.simple_evaluate`` call (see ``lm_eval`` in ``conf/eval.yaml``).

    Attributes:
        batch_size: requests per forward pass.
        max_length: longest context in tokens (``None``: the model's ``max_position_embeddings``).
        limit: documents per task (``None``: all; for debugging only, never for reported numbers).
        apply_chat_template: render prompts with the tokenizer's chat template.
        fewshot_as_multiturn: few-shot examples as chat turns (needs ``apply_chat_template``).
        seed: lm-eval's python / numpy / torch / few-shot sampling seeds.
        bootstrap_iters: bootstrap resamples for the standard errors of non-mean metrics.
    """

    batch_size: int = 8
    max_length: int | None = None
    limit: int | float | None = None
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    seed: int = 1234
    bootstrap_iters: int = 100_000


def run_tasks(
    model: Any, tokenizer: Any, specs: Sequence[TaskSpec], task_manager: Any, settings: HarnessSettings
) -> tuple[dict[str, float], dict[str, Any]]:
    """Evaluate ``model`` on every task spec; returns ``({label: score}, {label: lm-eval's output})``.

    Each spec is its own ``simple_evaluate`` call, so every task gets its own few-shot count. The
    model is evaluated as is (its device and dtype); scores are lm-eval's, unscaled.

    Raises:
        EvalConfigError: a task's results lack the configured ``<metric>,<filter>``.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    model.eval()
    lm = HFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, max_length=settings.max_length
    )
    scores: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    for spec in specs:
        log.info("lm-eval: %s (%s, %d-shot)", spec.label, spec.task_name, spec.num_fewshot)
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[spec.task],
            num_fewshot=spec.num_fewshot,
            task_manager=task_manager,
            limit=settings.limit,
            apply_chat_template=settings.apply_chat_template,
            fewshot_as_multiturn=settings.fewshot_as_multiturn,
            log_samples=False,
            bootstrap_iters=settings.bootstrap_iters,
            random_seed=settings.seed,
            numpy_random_seed=settings.seed,
            torch_random_seed=settings.seed,
            fewshot_random_seed=settings.seed,
        )
        results = output["results"].get(spec.task_name, {})
        if spec.result_key not in results:
            available = sorted(k for k in results if "," in k and "_stderr" not in k)
            raise EvalConfigError(
                f"config key `tasks.{spec.label}`: lm-eval's results for {spec.task_name!r} have no "
                f"{spec.result_key!r} (metric,filter); available: {available}"
            )
        scores[spec.label] = float(results[spec.result_key])
        outputs[spec.label] = {
            key: output.get(key)
            for key in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "n-samples")
            if key in output
        }
        log.info("lm-eval: %s = %s", spec.label, scores[spec.label])
    return scores, outputs
