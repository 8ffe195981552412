"""Every app answers ``--help`` and ``--cfg job --resolve``, for its default config and for every
``experiment`` / ``sso_experiment`` (issue: the W&B tags resolver broke ``--cfg job --resolve``).

Each app's Hydra entry point runs in this process with a patched ``sys.argv`` (the real code path,
only without a new interpreter); one real subprocess per app checks the console entry as users
start it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra

from prefalign.config import config_dir

CONF = config_dir()
SRC = Path(__file__).parents[2] / "src"
# app module -> (console script, config groups whose every option is checked)
APPS = {
    "train": ("prefalign-train", "experiment"),
    "score": ("prefalign-score", None),
    "sso": ("prefalign-sso", "sso_experiment"),
    "evaluate": ("prefalign-eval", None),
    "export_answers": ("prefalign-export-answers", None),
    "build_offline": ("prefalign-build-offline", None),
}
EXPERIMENTS = [
    (app, f"{group}={path.stem}")
    for app, (_, group) in APPS.items()
    if group
    for path in sorted((CONF / group).glob("*.yaml"))
]


def _run_in_process(app: str, args: list[str], monkeypatch, capsys) -> str:
    module = importlib.import_module(f"prefalign.apps.{app}")
    monkeypatch.setattr(sys, "argv", [f"prefalign-{app}", *args])
    GlobalHydra.instance().clear()
    try:
        module.main()
    except SystemExit as exit_:  # --help exits 0
        assert exit_.code in (0, None), capsys.readouterr().err
    finally:
        GlobalHydra.instance().clear()
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing the apps might write lands in the repository


@pytest.mark.parametrize("app", list(APPS))
def test_help_lists_the_config_groups(app, monkeypatch, capsys):
    out = _run_in_process(app, ["--help"], monkeypatch, capsys)
    assert "== Configuration groups ==" in out
    assert "== Config ==" in out


@pytest.mark.parametrize("app", list(APPS))
def test_cfg_job_resolve_prints_the_resolved_default_config(app, monkeypatch, capsys):
    out = _run_in_process(app, ["--cfg", "job", "--resolve"], monkeypatch, capsys)
    cfg = yaml.safe_load(out)
    assert isinstance(cfg, dict) and cfg["task_name"]
    assert "${" not in out  # every interpolation resolved


def _missing_asset_packages(app: str, override: str) -> list[str]:
    """The asset packages (``${package_file:<package>,...}``) the experiment's config files name
    that are not installed here (the demo assets: skipped on a clean environment, see README)."""
    group, name = override.split("=")
    text = (CONF / group / f"{name}.yaml").read_text()
    text += "".join(
        (CONF / sub / f"{choice}.yaml").read_text()
        for sub, choice in re.findall(r"^\s*- (?:override )?/?(\w+): (\w+)", text, flags=re.M)
        if (CONF / sub / f"{choice}.yaml").exists()
    )
    return sorted(
        p for p in set(re.findall(r"package_file:(\w+)", text)) if importlib.util.find_spec(p) is None
    )


@pytest.mark.parametrize(("app", "override"), EXPERIMENTS)
def test_cfg_job_resolve_for_every_experiment(app, override, monkeypatch, capsys):
    missing = _missing_asset_packages(app, override)
    if missing:  # a clear one-line message with the pip command, exit 1, no traceback
        module = importlib.import_module(f"prefalign.apps.{app}")
        monkeypatch.setattr(sys, "argv", [f"prefalign-{app}", override, "--cfg", "job", "--resolve"])
        GlobalHydra.instance().clear()
        with pytest.raises(SystemExit) as exit_:
            module.main()
        GlobalHydra.instance().clear()
        err = capsys.readouterr().err
        assert exit_.value.code == 1
        assert f"package {missing[0]!r} is not installed; install it with `pip install" in err
        assert "Traceback" not in err
        return
    out = _run_in_process(app, [override, "--cfg", "job", "--resolve"], monkeypatch, capsys)
    cfg = yaml.safe_load(out)
    assert isinstance(cfg, dict) and "${" not in out
    logger = cfg.get("logger") or {}
    if "wandb" in logger:  # the resolver that used to break: tags are a list with the experiment
        assert f"experiment:{override.split('=')[1]}" in logger["wandb"]["tags"]


def test_the_wandb_tags_of_the_default_train_config_resolve(monkeypatch, capsys):
    out = _run_in_process("train", ["logger=wandb", "--cfg", "job", "--resolve"], monkeypatch, capsys)
    assert yaml.safe_load(out)["logger"]["wandb"]["tags"] == ["dev"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def test_prefalign_train_resolves_its_wandb_config_in_a_subprocess(tmp_path):
    """The command of the bug report, as users type it (``logger=wandb``: the tags resolver)."""
    result = subprocess.run(
        [sys.executable, "-m", "prefalign.apps.train", "logger=wandb", "--cfg", "job", "--resolve"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load(result.stdout)["logger"]["wandb"]["tags"] == ["dev"]


@pytest.mark.slow  # twelve interpreters importing torch and Lightning: minutes on a busy 2-core machine
def test_each_console_entry_point_resolves_and_helps_in_a_subprocess(tmp_path):
    """One real process per app and flag (``python -m prefalign.apps.<app>``), all at once."""
    env = _env()
    runs = {
        (app, flags[0]): subprocess.Popen(
            [sys.executable, "-m", f"prefalign.apps.{app}", *flags],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for app in APPS
        for flags in (["--cfg", "job", "--resolve"], ["--help"])
    }
    for (app, flag), process in runs.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"{app} {flag}: {err[-2000:]}"
        if flag == "--help":
            assert "== Configuration groups ==" in out
        else:
            assert yaml.safe_load(out)["task_name"] and "${" not in out
