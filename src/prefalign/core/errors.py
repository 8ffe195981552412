"""Project-wide errors and the counting of dropped samples."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """A bad input file or record. The message names the source, the row and the sample id."""


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


@dataclass
class DropReport:
    """Samples removed from a dataset, counted by reason, with a few example ids per reason.

    Nothing is dropped silently anywhere in the project: every filter returns one of these, the
    data modules merge them and log ``data/<split>_dropped_<reason>``.
    """

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    total: int = 0

    def add(self, reason: str, sample_id: str) -> None:
        self.counts[reason] += 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < 5:
            ids.append(sample_id)

    def merge(self, other: DropReport) -> DropReport:
        for reason, count in other.counts.items():
            self.counts[reason] += count
            ids = self.examples.setdefault(reason, [])
            ids.extend(other.examples.get(reason, [])[: max(0, 5 - len(ids))])
        return self

    @property
    def dropped(self) -> int:
        return sum(self.counts.values())

    def summary(self, source: str) -> str:
        if not self.dropped:
            return f"{source}: kept all {self.total} samples"
        parts = ", ".join(
            f"{reason}: {n} (e.g. {self.examples[reason]})" for reason, n in sorted(self.counts.items())
        )
        return f"{source}: dropped {self.dropped} of {self.total} samples — {parts}"
