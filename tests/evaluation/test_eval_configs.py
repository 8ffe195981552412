"""Evaluation configs compose; task presets name real lm-eval tasks, metrics and filters; bad
settings, run folders and checkpoints are reported by name before any model is loaded."""

from __future__ import annotations

import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from prefalign.apps.evaluate import register_eval_resolvers
from prefalign.config import config_dir
from prefalign.evaluation.harness import (
    EvalConfigError,
    TaskSpec,
    build_task_manager,
    check_task_names,
    task_specs,
)
from prefalign.evaluation.runs import epoch_checkpoints, load_run_config, model_weights

PRESETS = sorted(p.stem for p in (config_dir() / "eval" / "tasks").glob("*.yaml"))
HUB_PRESETS = ["open_llm_leaderboard", "sso_objective"]


def _compose(config_name, overrides):
    register_eval_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def _specs(preset):
    cfg = _compose("eval", [f"tasks={preset}", "paths.output_dir=unused"])
    return task_specs(OmegaConf.to_container(cfg.tasks, resolve=True))


@pytest.fixture(scope="module")
def registry():
    """lm-eval's full task registry (indexed from the installed package, no download)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def test_presets_and_export_config_compose():
    assert set(HUB_PRESETS) | {"local_demo"} <= set(PRESETS)
    for preset in PRESETS:
        assert _specs(preset)
    export = _compose("export_answers", ["paths.output_dir=unused"])
    assert export.mt_bench.category_temperature.math == 0.0
    assert OmegaConf.to_container(export, resolve=True)["alpaca_eval"]["prompt_file"].endswith(".json")


def test_open_llm_leaderboard_is_the_poft_papers_table_6():
    specs = {s.label: (s.task, s.num_fewshot, s.result_key) for s in _specs("open_llm_leaderboard")}
    assert specs == {
        "arc": ("arc_challenge", 25, "acc_norm,none"),
        "truthfulqa": ("truthfulqa_mc2", 0, "acc,none"),
        "winogrande": ("winogrande", 5, "acc,none"),
        "gsm8k": ("gsm8k", 5, "exact_match,flexible-extract"),
        "hellaswag": ("hellaswag", 10, "acc_norm,none"),
        "mmlu": ("mmlu", 5, "acc,none"),
    }


@pytest.mark.parametrize("preset", HUB_PRESETS)
def test_hub_presets_name_registered_tasks_with_their_metric_and_filter(preset, registry):
    _yaml = pytest.importorskip(
        "lm_eval.tasks._yaml_loader", reason="pip install -e '.[eval]' (in the dev extra)"
    )
    specs = _specs(preset)
    check_task_names(specs, registry)
    for spec in specs:
        entry = registry.task_index[spec.task]
        task_cfg = _yaml.load_yaml(entry.yaml_path, resolve_func=False)
        if "group" in task_cfg:  # a group reports its aggregate metrics
            aggregates = task_cfg["aggregate_metric_list"]
            assert any(
                a["metric"] == spec.metric and a.get("filter_list", "none") == spec.filter for a in aggregates
            ), (spec, aggregates)
        else:
            assert spec.metric in [m["metric"] for m in task_cfg["metric_list"]], spec
            assert spec.filter in ["none", *[f["name"] for f in task_cfg.get("filter_list", [])]], spec


def test_unknown_task_is_named_with_close_matches(registry):
    spec = TaskSpec("arc", "arc_chalenge", 25, "acc_norm")
    with pytest.raises(
        EvalConfigError, match=r"tasks\.arc\.task.*'arc_chalenge'.*close matches: \['arc_challenge'"
    ):
        check_task_names([spec], registry)


def test_missing_include_path_is_named(tmp_path):
    spec = TaskSpec("x", "some_task", 0, "acc")
    with pytest.raises(EvalConfigError, match="lm_eval.include_path.*nowhere"):
        build_task_manager([spec], [tmp_path / "nowhere"])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"task": "arc_challenge", "num_fewshot": 25}, r"tasks\.arc\.metric"),
        ({"task": "arc_challenge", "num_fewshot": -1, "metric": "acc"}, r"tasks\.arc\.num_fewshot"),
        ({"num_fewshot": 0, "metric": "acc"}, r"tasks\.arc\.task"),
        (
            {"task": {"dataset_path": "json"}, "num_fewshot": 0, "metric": "acc"},
            "inline config needs a `task` name",
        ),
        ({"task": "arc_challenge", "num_fewshot": 0, "metric": "acc", "shots": 3}, "unknown keys"),
    ],
)
def test_bad_task_entries_are_named(entry, message):
    with pytest.raises(EvalConfigError, match=message):
        task_specs({"arc": entry})


def test_run_dir_problems_are_named(tmp_path):
    with pytest.raises(EvalConfigError, match="is not a folder"):
        load_run_config(tmp_path / "missing")
    with pytest.raises(
        EvalConfigError, match=r"not a prefalign-train run directory \(no .hydra/config.yaml\)"
    ):
        load_run_config(tmp_path)
    with pytest.raises(EvalConfigError, match="no per-epoch checkpoints.*no checkpoints/ folder"):
        epoch_checkpoints(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(EvalConfigError, match=r"no per-epoch checkpoints.*\['last.ckpt'\]"):
        epoch_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "epoch_000.ckpt").write_bytes(b"")
    (tmp_path / "checkpoints" / "epoch_001.ckpt").write_bytes(b"")
    assert [c.epoch for c in epoch_checkpoints(tmp_path)] == [1, 2]
    assert [c.path.name for c in epoch_checkpoints(tmp_path, [2])] == ["epoch_001.ckpt"]
    with pytest.raises(EvalConfigError, match=r"no checkpoint for epoch\(s\) \[3\].*available: \[1, 2\]"):
        epoch_checkpoints(tmp_path, [3])


def test_checkpoint_without_model_weights_is_named(tmp_path):
    path = tmp_path / "epoch_000.ckpt"
    torch.save({"state_dict": {"objective.scale": torch.ones(1)}}, path)
    with pytest.raises(EvalConfigError, match=re.escape(f"checkpoint {path} has no `model.*` weights")):
        model_weights(path)
    torch.save({"epoch": 0}, path)
    with pytest.raises(EvalConfigError, match="holds no Lightning state dict"):
        model_weights(path)
