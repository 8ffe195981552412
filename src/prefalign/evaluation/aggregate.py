"""Per-epoch benchmark scores -> the PoFT paper's Table 1 summary (Last / Avg / Std).

The paper reports, per benchmark and for the overall average over benchmarks, the score of the
last epoch, the mean over all epochs except the first ("typically considered unstable") and the
standard deviation over those same epochs.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OVERALL = "overall"


@dataclass
class EpochSummary:
    """Per-epoch scores and their summary, one column per task plus ``overall``.

    Attributes:
        tasks: task columns in order (``overall`` is added after them).
        epochs: per epoch, ``{task: score}`` including ``overall`` (the mean over tasks).
        last: the last epoch's scores.
        avg: the mean over ``summary_epochs``.
        std: the population standard deviation over ``summary_epochs``.
        summary_epochs: the epochs that Avg and Std cover (all but the first ``skip_first``).
    """

    tasks: list[str]
    epochs: dict[int, dict[str, float]]
    last: dict[str, float]
    avg: dict[str, float]
    std: dict[str, float]
    summary_epochs: list[int]

    @property
    def columns(self) -> list[str]:
        """The task columns followed by ``overall``."""
        return [*self.tasks, OVERALL]

    def rows(self) -> dict[str, dict[str, float]]:
        """Table rows: ``epoch <n>`` for every epoch, then ``Last``, ``Avg`` and ``Std``."""
        rows = {f"epoch {epoch}": scores for epoch, scores in self.epochs.items()}
        return {**rows, "Last": self.last, "Avg": self.avg, "Std": self.std}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (epoch keys become strings)."""
        return {
            "tasks": self.tasks,
            "epochs": {str(epoch): scores for epoch, scores in self.epochs.items()},
            "last": self.last,
            "avg": self.avg,
            "std": self.std,
            "summary_epochs": self.summary_epochs,
        }

    def to_markdown(self, digits: int = 2) -> str:
        """The summary as a markdown table, rows = epochs + Last / Avg / Std, columns = tasks + overall."""
        return markdown_table(self.rows(), self.columns, digits=digits, corner="epoch")


def aggregate_epochs(per_epoch: Mapping[int, Mapping[str, float]], skip_first: int = 1) -> EpochSummary:
    """Summarise per-epoch scores ``{epoch: {task: score}}`` as Last / Avg / Std per task and overall.

    Args:
        per_epoch: every epoch's scores; every epoch must score the same tasks.
        skip_first: leading epochs left out of Avg and Std (the PoFT paper: 1). When a run has no
            more epochs than that, Avg and Std cover all of them.

    Raises:
        ValueError: no epochs, no tasks, epochs scoring different tasks, or a score that is not finite.
    """
    if not per_epoch:
        raise ValueError("no epoch scores to aggregate")
    if skip_first < 0:
        raise ValueError(f"skip_first must be >= 0, got {skip_first}")
    epochs = sorted(per_epoch)
    tasks = list(per_epoch[epochs[0]])
    if not tasks:
        raise ValueError(f"epoch {epochs[0]} has no task scores")
    if OVERALL in tasks:
        raise ValueError(f"{OVERALL!r} is reserved for the average over tasks; rename that task")
    table: dict[int, dict[str, float]] = {}
    for epoch in epochs:
        scores = per_epoch[epoch]
        if set(scores) != set(tasks):
            raise ValueError(
                f"epoch {epoch} scores tasks {sorted(scores)}, epoch {epochs[0]} scores {sorted(tasks)}"
            )
        row = {task: float(scores[task]) for task in tasks}
        bad = [task for task, value in row.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"epoch {epoch}: non-finite score for {bad}")
        row[OVERALL] = statistics.fmean(row.values())
        table[epoch] = row
    summary_epochs = epochs[skip_first:] or epochs
    columns = [*tasks, OVERALL]
    return EpochSummary(
        tasks=tasks,
        epochs=table,
        last=dict(table[epochs[-1]]),
        avg={c: statistics.fmean(table[e][c] for e in summary_epochs) for c in columns},
        std={c: statistics.pstdev([table[e][c] for e in summary_epochs]) for c in columns},
        summary_epochs=summary_epochs,
    )


def markdown_table(
    rows: Mapping[str, Mapping[str, float]], columns: Sequence[str], digits: int = 2, corner: str = ""
) -> str:
    """A markdown table with one row per entry of ``rows`` and the given columns, numbers rounded."""
    lines = [
        "| " + " | ".join([corner, *columns]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for name, scores in rows.items():
        cells = [f"{scores[c]:.{digits}f}" for c in columns]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def write_summary(summary: EpochSummary, out_dir: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``summary.json`` (the summary plus ``extra``) and ``summary.md`` to ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**summary.to_dict(), **(extra or {})}
    (out / "summary.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    (out / "summary.md").write_text(summary.to_markdown() + "\n", encoding="utf-8")
    return out / "summary.json"
