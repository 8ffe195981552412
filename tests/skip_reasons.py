"""The skip-reason check of the test suite (used by tests/conftest.py).

On CI (a clean virtual environment, `.ci/run`), every skip must be one the README's install leaves
on purpose (tests/expected_skips.txt); an unlisted reason means a test silently depends on something
installed by hand, and fails the run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

EXPECTED_SKIPS_FILE = Path(__file__).parent / "expected_skips.txt"


def expected_skip_patterns(path: Path = EXPECTED_SKIPS_FILE) -> list[re.Pattern]:
    """The allowed skip reasons: one regular expression a line (searched in the reason), ``#`` comments."""
    lines = (line.split(" #", 1)[0].strip() for line in path.read_text().splitlines())
    return [re.compile(line) for line in lines if line and not line.startswith("#")]


def unexpected_skip_reasons(reasons, patterns) -> list[str]:
    """The reasons that no allowed pattern matches."""
    return sorted(r for r in reasons if not any(p.search(r) for p in patterns))


def checking_skips() -> bool:
    """Whether unlisted skip reasons fail the run: on CI (``CI=true``, set by `.ci/run`)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
