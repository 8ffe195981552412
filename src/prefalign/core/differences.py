"""What differs between two settings trees, key by key: the one comparison behind every "the
settings changed" message (a finished stage's recorded settings, a checkpoint's model config)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any


class _Absent:
    """A key one side lacks (shown as ``<absent>``)."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()


def differences(
    recorded: Any,
    current: Any,
    *,
    absent: Any = ABSENT,
    skip: Callable[[str], bool] = lambda name: False,
    key: str = "",
) -> list[tuple[str, Any, Any]]:
    """Every dotted key whose value differs between two settings trees, as (key, recorded,
    current), in the current tree's order (keys only ``recorded`` has last); empty when they agree.

    Values compare as JSON (a tuple equals the list of its items; other objects by ``str``).

    Args:
        absent: the value a key one side lacks has there (:data:`ABSENT`; ``None`` treats a
            missing key as one set to ``None``).
        skip: key names (at any depth) left out of the comparison.
    """
    if isinstance(recorded, Mapping) and isinstance(current, Mapping):
        found: list[tuple[str, Any, Any]] = []
        for name in [*current, *(name for name in recorded if name not in current)]:
            if skip(str(name)):
                continue
            found += differences(
                recorded.get(name, absent),
                current.get(name, absent),
                absent=absent,
                skip=skip,
                key=f"{key}.{name}" if key else str(name),
            )
        return found
    if json.dumps(recorded, sort_keys=True, default=str) != json.dumps(current, sort_keys=True, default=str):
        return [(key, recorded, current)]
    return []
