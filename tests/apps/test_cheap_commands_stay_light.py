"""``--help`` and ``--cfg job`` of every app import none of the heavy packages (torch, Lightning,
transformers, datasets, wandb, lm-eval, pandas): they only compose and print a config, so they
answer in about a second instead of the ten or more that importing torch and Lightning takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src"
HYDRA_APPS = ["train", "score", "sso", "evaluate", "export_answers", "build_offline"]
COMMANDS = [(app, flag) for app in HYDRA_APPS for flag in ("--help", "--cfg job")]
COMMANDS.append(("wandb_dashboard", "--help"))  # an argparse app
HEAVY = ["torch", "lightning", "transformers", "datasets", "wandb", "lm_eval", "pandas"]
# Runs the app's entry point as `python -m` would, then reports which heavy packages got imported.
PROBE = """
import contextlib, io, json, runpy, sys
app, flags = sys.argv[1], sys.argv[2:]
sys.argv = [app, *flags]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        runpy.run_module("prefalign.apps." + app, run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code in (0, None), exit_.code
print(json.dumps(sorted(name for name in {heavy} if name in sys.modules)))
"""


@pytest.mark.slow  # thirteen interpreters at once: about a minute on a busy 2-core machine
def test_help_and_cfg_job_import_no_heavy_package(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    probe = PROBE.replace("{heavy}", repr(HEAVY))
    runs = {
        (app, flag): subprocess.Popen(
            [sys.executable, "-c", probe, app, *flag.split()],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for app, flag in COMMANDS
    }
    imported = {}
    for (app, flag), process in runs.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"{app} {flag}: {err[-2000:]}"
        imported[f"{app} {flag}"] = json.loads(out.strip().splitlines()[-1])
    assert imported == {key: [] for key in imported}
