"""Progress bars: shown on rank 0 on a terminal or when forced, hidden elsewhere or when switched off."""

from __future__ import annotations

import io
import logging

import pytest

from prefalign.core.errors import ConfigError
from prefalign.core.progress import ENV, progress_bar, progress_enabled
from prefalign.core.ranks import RANK_VARIABLES


class _Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _rank_zero_no_switch(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _draw(stream, n=3, desc="sampling y+"):
    for _ in progress_bar(range(n), desc=desc, unit="prompt", file=stream):
        pass
    return stream.getvalue()


def test_a_bar_shows_on_a_terminal_and_not_in_a_redirected_stream():
    assert progress_enabled(_Terminal())
    drawn = _draw(_Terminal())
    assert "sampling y+" in drawn and "3/3" in drawn
    assert not progress_enabled(io.StringIO())
    assert _draw(io.StringIO()) == ""


@pytest.mark.parametrize("value", ["1", "true", "ON", "yes"])
def test_the_switch_forces_bars_into_a_file(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    assert "3/3" in _draw(io.StringIO())


@pytest.mark.parametrize("value", ["0", "false", "off", "No"])
def test_the_switch_hides_bars_even_on_a_terminal(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    assert not progress_enabled(_Terminal())
    assert _draw(_Terminal()) == ""


@pytest.mark.parametrize("variable", RANK_VARIABLES)
def test_only_rank_zero_draws(monkeypatch, variable):
    monkeypatch.setenv(ENV, "1")
    monkeypatch.setenv(variable, "1")
    assert _draw(_Terminal()) == ""
    monkeypatch.setenv(variable, "0")
    assert "3/3" in _draw(_Terminal())


def test_a_disabled_bar_still_passes_the_items_through():
    assert list(progress_bar([1, 2, 3], file=io.StringIO(), disable=True)) == [1, 2, 3]
    bar = progress_bar(total=5, file=_Terminal(), disable=True)
    bar.update(5)  # manual updates on a hidden bar are no-ops
    bar.close()


def test_a_bad_switch_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV, "sometimes")
    with pytest.raises(ConfigError, match=f"{ENV}='sometimes'.*auto"):
        progress_enabled()


def test_bars_never_reach_a_log_file(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, "1")
    path = tmp_path / "run.log"
    handler = logging.FileHandler(path)
    logger = logging.getLogger("prefalign.test_progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        stream = io.StringIO()
        for k in progress_bar(range(3), desc="bar", file=stream):
            logger.info("step %d", k)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert path.read_text().splitlines() == ["step 0", "step 1", "step 2"]
    assert "3/3" in stream.getvalue()
