"""Shared fixtures: offline tokenizers with real chat templates, tiny models, isolated caches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from shared import app_env
from skip_reasons import (
    EXPECTED_SKIPS_FILE,
    checking_skips,
    expected_skip_patterns,
    unexpected_skip_reasons,
)

from prefalign.models.chat_templates import TEMPLATES

pytest_plugins = ["app_artefacts"]  # the session's artefacts made by the apps (``artefacts``)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- Parallel runs: pytest-xdist (`-n auto --dist loadscope` in pyproject.toml; `-n 0` runs the
# suite in one process, e.g. under a debugger). Each worker gets its share of the cores as threads
# (inherited by the apps and ranks a test starts); a file's tests run in one worker (its module
# fixtures are built once), and so do all the tests that use one expensive session fixture.
# (Handing out the groups whose tests start processes first was tried: the suite took 6.5 instead of
# 5.5 minutes on 2 cores, as those tests then ran against each other.)
MAX_WORKERS = 4  # each worker collects the suite and builds the session's tiny models again
SHARED_FIXTURES = ("artefacts", "shim")  # tests/app_artefacts.py, tests/planning/conftest.py
# fixtures that start processes: their tests are marked ``subprocesses`` without saying so
PROCESS_FIXTURES = ("run_app", "artefacts", "shim")
GROUPS_KEY = "prefalign_test_groups"  # the workers tell the scheduler which tests share a fixture


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if os.environ.get("PYTEST_XDIST_WORKER"):  # before torch is imported: its thread pool reads this
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, _usable_cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per usable core, at most :data:`MAX_WORKERS`."""
    return min(_usable_cores(), MAX_WORKERS)


def pytest_configure_node(node) -> None:
    """Give each worker the folder where it writes its tests' shared-fixture groups."""
    config = node.config
    if not hasattr(config, "_prefalign_groups"):
        config._prefalign_groups = tempfile.mkdtemp(prefix="prefalign-test-groups-")
    node.workerinput[GROUPS_KEY] = config._prefalign_groups


def pytest_unconfigure(config) -> None:
    if hasattr(config, "_prefalign_groups"):
        shutil.rmtree(config._prefalign_groups, ignore_errors=True)


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` with a file as the scope, except that the tests using a
    :data:`SHARED_FIXTURES` fixture are one scope (told by the workers, which collect the tests:
    xdist's own ``loadgroup`` passes groups as node-id suffixes, which pytest 9.2 no longer keeps,
    pytest-dev/pytest-xdist#1386). xdist hands out the scopes with the most tests first."""
    from xdist.scheduler import LoadScopeScheduling

    class FileOrSharedFixtureScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # written by every worker during collection: read after it
                written = sorted(Path(config._prefalign_groups).glob("*.json"))
                self.groups = json.loads(written[0].read_text()) if written else {}
            return self.groups.get(nodeid) or nodeid.split("::", 1)[0]

    if config.getvalue("dist") != "loadscope":
        return None
    return FileOrSharedFixtureScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark the tests using a :data:`PROCESS_FIXTURES` fixture ``subprocesses``; in an xdist worker,
    write which tests use a :data:`SHARED_FIXTURES` fixture for the scheduler."""
    groups = {}
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if any(name in fixtures for name in PROCESS_FIXTURES):
            item.add_marker(pytest.mark.subprocesses)
        shared = [name for name in SHARED_FIXTURES if name in fixtures]
        if shared:
            groups[item.nodeid] = shared[0]
    folder = getattr(config, "workerinput", {}).get(GROUPS_KEY)
    if folder:
        worker = Path(folder) / config.workerinput["workerid"]
        worker.with_suffix(".tmp").write_text(json.dumps(groups))
        os.replace(worker.with_suffix(".tmp"), worker.with_suffix(".json"))


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> str:
    """A cache folder shared by the whole session (built tiny models are reused)."""
    path = tmp_path_factory.mktemp("prefalign-cache")
    os.environ["PREFALIGN_CACHE"] = str(path)
    return str(path)


@pytest.fixture(scope="session", params=sorted(TEMPLATES))
def template_name(request) -> str:
    """Each public chat template in turn (chatml, llama3, mistral, zephyr)."""
    return request.param


@pytest.fixture(scope="session")
def make_tokenizer():
    """Build (and memoise) the offline tokenizer for a template name."""
    from prefalign.models.tokenizer import build_tokenizer

    built = {}

    def make(template: str = "chatml", bpe_merges: int = 0):
        key = (template, bpe_merges)
        if key not in built:
            built[key] = build_tokenizer(template, bpe_merges=bpe_merges)
        return built[key]

    return make


@pytest.fixture(scope="session")
def _session_tiny_model_and_tokenizer():
    from prefalign.models.loading import TinySpec, build_tiny_model

    return build_tiny_model(TinySpec())


@pytest.fixture
def tiny_model_and_tokenizer(_session_tiny_model_and_tokenizer):
    """A tiny random Llama with the ChatML offline tokenizer (in memory), shared by the session: a
    test that leaves it frozen or in eval mode fails (pass a copy as a frozen reference model)."""
    model, tokenizer = _session_tiny_model_and_tokenizer
    yield model, tokenizer
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert not frozen and model.training, (
        f"the test left the session's tiny model {'frozen' if frozen else 'in eval mode'} ({frozen[:3]}): "
        "later tests would silently get no gradients; freeze a copy.deepcopy of it instead"
    )


@pytest.fixture(scope="session")
def compose_sso():
    """``compose_sso(*overrides)``: the SSO pipeline of ``prefalign-sso <overrides>`` (the ``sso``
    config composed as the command line would, every iteration's ``train`` config composed and
    validated; nothing loaded), from a fresh Hydra state."""
    from hydra.core.global_hydra import GlobalHydra

    from prefalign.config import compose_config
    from prefalign.pipelines.sso import SSOPipeline

    def make(*overrides: str):
        GlobalHydra.instance().clear()
        return SSOPipeline(compose_config("sso", overrides))

    return make


@pytest.fixture(autouse=True)
def _clean_process_group():
    """Never leak an initialised torch.distributed process group into the next test."""
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture
def run_app(session_cache):
    """Run one of the project's apps (``python -m <module> <args>``) in ``cwd``, W&B offline.

    Returns the ``CompletedProcess``; outputs go under ``cwd`` (``PREFALIGN_ROOT``), built models
    to the session cache.
    """

    def run(module, args, cwd, timeout=600, **env):
        environment = app_env(cwd, session_cache, **env)
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


# --- Skip reasons (tests/skip_reasons.py): listed after every run; on CI an unlisted one fails it.
_skip_reasons: Counter = Counter()


def _record_skip(report) -> None:
    if report.skipped and isinstance(report.longrepr, tuple):
        _skip_reasons[report.longrepr[2].removeprefix("Skipped: ")] += 1


def pytest_runtest_logreport(report):
    if report.when in ("setup", "call"):
        _record_skip(report)


def pytest_collectreport(report):
    _record_skip(report)


def pytest_terminal_summary(terminalreporter):
    if not _skip_reasons:
        return
    unexpected = set(unexpected_skip_reasons(_skip_reasons, expected_skip_patterns()))
    terminalreporter.section("skip reasons")
    for reason, count in sorted(_skip_reasons.items()):
        terminalreporter.write_line(f"{'UNEXPECTED ' if reason in unexpected else ''}{count:4d} x {reason}")
    if unexpected and checking_skips():
        terminalreporter.write_line(
            f"{len(unexpected)} skip reason(s) not in {EXPECTED_SKIPS_FILE.name}: a test depends on "
            "something the README's install does not provide (install it in the dev extra, or skip "
            "with the install command and list the reason)",
            red=True,
        )


def pytest_sessionfinish(session, exitstatus):
    if checking_skips() and unexpected_skip_reasons(_skip_reasons, expected_skip_patterns()):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
