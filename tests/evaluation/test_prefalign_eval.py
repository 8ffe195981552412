"""prefalign-eval end to end: the session's tiny two-epoch CE run (tests/app_artefacts.py), each
epoch checkpoint evaluated with a local lm-eval task, the Last / Avg / Std table equal to lm-eval's
own per-epoch results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from prefalign.evaluation.runs import load_checkpoint_weights, load_run_config, run_model_config
from prefalign.models.loading import load_model_and_tokenizer

DATA = Path(__file__).parent / "data" / "test_qa.jsonl"


def write_local_tasks(folder: Path) -> Path:
    """Two lm-eval tasks over the bundled test questions: multiple choice, and answer perplexity."""
    folder.mkdir(parents=True)
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(DATA)}},
        "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
    }
    tasks = {
        "prefalign_test_mc": {
            "output_type": "multiple_choice",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        },
        "prefalign_test_ppl": {
            "output_type": "loglikelihood",
            "doc_to_target": "{{choices[label]}}",
            "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}],
        },
    }
    for name, task in tasks.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **common, **task}))
    return folder


def test_eval_of_each_epoch_checkpoint_prints_last_avg_std_of_lm_eval_scores(artefacts, tmp_path, run_app):
    run = artefacts.run("ce")  # two epochs of prefalign-train objective=ce, exported (tests/app_artefacts.py)
    tasks = write_local_tasks(tmp_path / "tasks")
    evaluated = run_app(
        "prefalign.apps.evaluate",
        [
            f"run_dir={run}",
            f"lm_eval.include_path=[{tasks}]",
            "lm_eval.bootstrap_iters=0",
            "~tasks",
            "+tasks.mc={task: prefalign_test_mc, num_fewshot: 0, metric: acc_norm}",
            "+tasks.ppl={task: prefalign_test_ppl, num_fewshot: 0, metric: perplexity}",
            "hydra.run.dir=eval",
        ],
        tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    out = tmp_path / "eval"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary_epochs"] == [2]
    assert summary["checkpoints"] == {
        "1": str(run / "checkpoints" / "epoch_000.ckpt"),
        "2": str(run / "checkpoints" / "epoch_001.ckpt"),
    }
    # every score is lm-eval's own result for that epoch's checkpoint, in percent
    for epoch in ("1", "2"):
        for label, task, key in (
            ("mc", "prefalign_test_mc", "acc_norm,none"),
            ("ppl", "prefalign_test_ppl", "perplexity,none"),
        ):
            raw = json.loads((out / "lm_eval" / f"epoch{epoch}" / f"{label}.json").read_text())
            assert raw["n-shot"][task] == 0
            assert summary["epochs"][epoch][label] == pytest.approx(
                100 * raw["results"][task][key], rel=1e-12
            )
    ppl = [summary["epochs"][e]["ppl"] for e in ("1", "2")]
    assert ppl[0] != ppl[1]  # each epoch's own weights were evaluated
    epochs = summary["epochs"]
    for label in ("mc", "ppl"):
        assert epochs["1"]["overall"] == pytest.approx((epochs["1"]["mc"] + epochs["1"]["ppl"]) / 2)
        assert summary["last"][label] == summary["avg"][label] == epochs["2"][label]  # Avg leaves out epoch 1
        assert summary["std"][label] == 0.0
    printed = evaluated.stdout
    assert "| epoch | mc | ppl | overall |" in printed
    for row, scores in (
        ("epoch 1", epochs["1"]),
        ("epoch 2", epochs["2"]),
        ("Last", summary["last"]),
        ("Avg", summary["avg"]),
        ("Std", summary["std"]),
    ):
        cells = " | ".join(f"{scores[c]:.2f}" for c in ("mc", "ppl", "overall"))
        assert f"| {row} | {cells} |" in printed
    assert (out / "summary.md").read_text().strip() in printed

    # the last epoch's checkpoint loads to exactly the weights the run exported at the end of fit
    model, _ = load_model_and_tokenizer(run_model_config(load_run_config(run), "float32"))
    exported = load_file(run / "hf" / "model.safetensors")
    load_checkpoint_weights(model, run / "checkpoints" / "epoch_001.ckpt")
    state = model.state_dict()
    assert all(state[name].equal(value) for name, value in exported.items())
    load_checkpoint_weights(model, run / "checkpoints" / "epoch_000.ckpt")
    assert not all(model.state_dict()[name].equal(value) for name, value in exported.items())


def test_eval_names_a_missing_run_dir_before_loading_anything(tmp_path, run_app):
    result = run_app("prefalign.apps.evaluate", [f"run_dir={tmp_path / 'nope'}"], tmp_path)
    assert result.returncode != 0
    assert f"config key `run_dir`: {tmp_path / 'nope'} is not a folder" in result.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_fsdp2_checkpoint_loads_to_the_exported_weights(tmp_path, run_app):
    train = run_app(
        "prefalign.apps.train",
        [
            "trainer=fsdp2",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.devices=2",
            "trainer.max_epochs=1",
            "data.train.limit=32",
            "data.val.limit=16",
            "data.batch_size=8",
            "logger=csv",
            "callbacks.progress_bar=null",
            "hydra.run.dir=run",
        ],
        tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert train.returncode == 0, train.stderr[-4000:]
    run = tmp_path / "run"
    assert (run / "checkpoints" / "epoch_000.ckpt").is_dir()  # torch.distributed.checkpoint shards
    model, _ = load_model_and_tokenizer(run_model_config(load_run_config(run), "float32"))
    load_checkpoint_weights(model, run / "checkpoints" / "epoch_000.ckpt")
    exported = load_file(run / "hf" / "model.safetensors")  # gathered from the shards at the end of fit
    state = model.state_dict()
    assert all(state[name].equal(value) for name, value in exported.items())
