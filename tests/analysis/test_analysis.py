"""prefalign.analysis: readers of score caches, run folders, W&B offline files and SSO iterations."""

from __future__ import annotations

import json
import math

import datasets
import pandas as pd
import pytest
import torch

from prefalign import analysis
from prefalign.analysis import ArtefactError
from prefalign.data.filtering import filter_top_fraction
from prefalign.training.wandb_callbacks import SampleTable, split_prompt_response


# -- scores ---------------------------------------------------------------------------------------
def test_scores_from_the_config_carry_noise_flags_and_match_the_cache_root(artefacts):
    scores = analysis.load_scores(overrides=artefacts.score_overrides, splits=["train", "val"])
    assert set(scores["member"]) == {"zephyr_bytes", "llama3_bpe"}
    train = scores[scores["split"] == "train"]
    assert len(train) == 2 * 64 and train["noise"].sum() == 2 * 16
    assert (train.loc[train["noise"], "id"].str.startswith("noise-")).all()
    assert not scores.loc[scores["split"] == "val", "noise"].any()
    assert (scores["r"] == scores["logp_sum"] / scores["num_tokens"]).all()

    from_root = analysis.load_scores(artefacts.score_root)
    assert from_root["noise"].isna().all() and set(from_root["split"]) == {"train", "val"}
    merged = scores.merge(from_root, on=["split", "member", "id"], suffixes=("", "_root"))
    assert len(merged) == len(scores) and (merged["r"] == merged["r_root"]).all()


def test_missing_scores_name_the_cache_folder_and_the_command(artefacts, tmp_path):
    with pytest.raises(ArtefactError, match="no finished scores of aligned member .* run `prefalign-score`"):
        analysis.load_scores(overrides=[*artefacts.score_overrides, f"aligned.cache_dir={tmp_path}"])
    with pytest.raises(ArtefactError, match=f"{tmp_path}: no finished score tables"):
        analysis.load_scores(tmp_path)


def _long(rows):
    return pd.DataFrame(rows, columns=["split", "member", "id", "r", "noise"])


def test_aggregate_scores_gives_avg_min_max_and_nan_when_a_member_is_missing():
    scores = _long(
        [
            ("train", "a", "x", -1.0, False),
            ("train", "b", "x", -3.0, False),
            ("train", "a", "y", -2.0, True),
            ("train", "b", "y", -2.5, True),
            ("train", "a", "z", -1.5, False),  # no score from b
        ]
    )
    wide = analysis.aggregate_scores(scores).set_index("id")
    assert wide.loc["x", ["a", "b", "avg", "min", "max"]].tolist() == [-1.0, -3.0, -2.0, -3.0, -1.0]
    assert wide.loc["y", "avg"] == pytest.approx(-2.25) and bool(wide.loc["y", "noise"])
    assert wide.loc["z", ["avg", "min", "max"]].isna().all()
    with pytest.raises(ValueError, match="aggregations must be among"):
        analysis.aggregate_scores(scores, ["median"])


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9, 1.0])
def test_thresholds_follow_the_training_filter(fraction):
    scores = [math.sin(k) for k in range(37)]
    ds = datasets.Dataset.from_dict({"id": [f"s{k:02d}" for k in range(37)], "aligned_score": scores})
    _, report = filter_top_fraction(ds, fraction)
    (row,) = analysis.score_thresholds(scores, [fraction]).to_dict("records")
    assert row["kept"] == report.kept and row["threshold"] == report.threshold
    with pytest.raises(ValueError, match="must be in"):
        analysis.score_thresholds(scores, [0.0])


# -- runs -----------------------------------------------------------------------------------------
def test_run_metrics_epochs_checkpoints_and_runs_of_the_session(artefacts):
    found = analysis.find_runs(artefacts.logs)
    assert set(found["objective"]) == {"CrossEntropy", "PoFT"} and found["has_metrics"].all()
    metrics = analysis.load_run_metrics(artefacts.run("poft"))
    steps = metrics.dropna(subset=["train/tau"])
    assert len(steps) == 8  # 64 samples / 16 per batch x 2 epochs
    summary = analysis.epoch_summary(metrics)
    assert summary["epoch"].tolist() == [0, 1]
    by_epoch = steps.groupby("epoch")["train/tau"].mean().tolist()
    assert summary["train/tau"].tolist() == pytest.approx(by_epoch)
    assert summary["val/loss"].notna().all()
    checkpoints = analysis.list_checkpoints(artefacts.run("ce"))
    assert checkpoints["epoch"].tolist() == [1, 2] and (checkpoints["bytes"] > 0).all()


def test_bad_run_folders_are_errors_naming_the_file(tmp_path):
    with pytest.raises(ArtefactError, match=r"csv/metrics.csv: no such file"):
        analysis.load_run_metrics(tmp_path)
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("step,epoch,train/loss\n0,0,0.5\n1,0,oops\n")
    with pytest.raises(
        ArtefactError, match=r"metrics.csv: line 3 \(data row 1\), column 'train/loss': 'oops' is not"
    ):
        analysis.load_run_metrics(tmp_path)
    with pytest.raises(ArtefactError, match="no such folder"):
        analysis.list_checkpoints(tmp_path)
    with pytest.raises(ArtefactError, match="no W&B run file"):
        analysis.load_wandb_history(tmp_path)
    with pytest.raises(ArtefactError, match=r".hydra/config.yaml: no such file"):
        analysis.load_run_config(tmp_path)


def test_epoch_summary_assigns_rows_without_an_epoch_to_the_next_epoch():
    metrics = pd.DataFrame(
        {
            "step": [0, 0, 1, 1, 2, 3],
            "epoch": [None, 0, None, 0, 1, 1],
            "train/loss": [None, 1.0, 3.0, None, 5.0, 7.0],
            "val/loss": [None, None, None, 0.5, None, 0.25],
        }
    )
    summary = analysis.epoch_summary(metrics)
    assert summary["train/loss"].tolist() == [2.0, 6.0] and summary["val/loss"].tolist() == [0.5, 0.25]


def test_wandb_files_that_are_cut_off_or_not_wandb(artefacts, tmp_path):
    (run_file,) = analysis.find_wandb_run_files(artefacts.run("poft"))
    whole = list(analysis.read_wandb_records(run_file))
    cut = tmp_path / "run-cut.wandb"
    cut.write_bytes(run_file.read_bytes()[: run_file.stat().st_size // 2])
    partial = list(analysis.read_wandb_records(cut))
    assert 0 < len(partial) < len(whole)
    assert [r.SerializeToString() for r in partial] == [r.SerializeToString() for r in whole[: len(partial)]]
    other = tmp_path / "run-x.wandb"
    other.write_bytes(b"not a run")
    with pytest.raises(ArtefactError, match="not a W&B run file"):
        list(analysis.read_wandb_records(other))


# -- SSO ------------------------------------------------------------------------------------------
def test_sso_reports_and_samples_of_the_session(artefacts):
    reports = analysis.load_sso_reports(artefacts.sso)
    assert reports["iteration"].tolist() == [1, 2]
    for key in (
        "signal_accuracy",
        "length/chosen",
        "train/weight",
        "train/g",
        "allocate/fallback_rate",
        "reference",
    ):
        assert reports[key].notna().all(), key
    assert reports["stages_done"].map(len).tolist() == [4, 4]
    assert not [c for c in reports.columns if "artefacts" in c]  # markers' file records are not figures
    samples = analysis.load_sso_samples(artefacts.sso)
    assert samples.groupby("iteration").size().tolist() == reports["samples"].tolist()
    assert samples.groupby("iteration")["chosen_tokens"].mean().tolist() == reports["length/chosen"].tolist()


def test_unfinished_or_broken_sso_iterations_are_errors_naming_the_file(tmp_path):
    with pytest.raises(ArtefactError, match="no such prefalign-sso work folder"):
        analysis.load_sso_reports(tmp_path / "nope")
    with pytest.raises(ArtefactError, match="no iter_<i>/ folders"):
        analysis.load_sso_reports(tmp_path)
    iteration = tmp_path / "iter_1"
    iteration.mkdir()
    (iteration / "allocate.done.json").write_text(json.dumps({"prompts": 4, "features": {"Safety": 2}}))
    with pytest.raises(ArtefactError, match=r"iter_1/evaluate.done.json: iteration 1 is not evaluated"):
        analysis.load_sso_reports(tmp_path)
    partial = analysis.load_sso_reports(tmp_path, require_evaluated=False)
    assert partial.loc[0, "allocate/features/Safety"] == 2 and partial.loc[0, "stages_done"] == ["allocate"]
    (iteration / "evaluate.done.json").write_text("{broken")
    with pytest.raises(ArtefactError, match=r"evaluate.done.json: not valid JSON"):
        analysis.load_sso_reports(tmp_path)
    (iteration / "preferences.jsonl").write_text('{"id": "a"}\n{oops\n')
    with pytest.raises(ArtefactError, match=r"preferences.jsonl, line 2: not JSON"):
        analysis.load_sso_samples(tmp_path)


# -- the sample table's rows ----------------------------------------------------------------------
class _Chars:
    """Decodes token ids as characters (chr)."""

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_sample_table_rows_split_prompt_from_response_and_join_scores_and_metrics():
    text = "Q?A!x"
    ids = torch.tensor([[ord(c) for c in text] + [0], [ord(c) for c in "hi yo"] + [0]])
    labels = torch.tensor(
        [[-100, -100, ord("A"), ord("!"), -100, -100], [-100, -100, -100, ord("y"), ord("o"), -100]]
    )
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])
    assert split_prompt_response(ids[0], labels[0], mask[0]) == ([ord("Q"), ord("?")], [ord("A"), ord("!")])
    batch = {
        "id": ["a", "b"],
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "score_m2": torch.tensor([-2.0, -3.0]),
        "score_m1": torch.tensor([-1.0, -1.0]),
        "aligned_score": torch.tensor([-1.5, -2.0]),
        "noise": torch.tensor([False, True]),
    }
    metrics = {
        "r_theta": torch.tensor([-1.0, -4.0]),
        "r_agg": torch.tensor([-1.5, -2.0]),
        "tau": torch.tensor([0.4, 0.9]),
        "loss_scalar": torch.tensor(1.0),
    }
    columns, rows = SampleTable(every_n_steps=1, max_rows=1, max_chars=1).rows(batch, metrics, _Chars(), 7)
    assert columns == [
        "step",
        "id",
        "prompt",
        "response",
        "score_m1",
        "score_m2",
        "aligned_score",
        "r_theta",
        "tau",
        "noise",
    ]
    assert rows == [[7, "a", "?", "A", -1.0, -2.0, -1.5, -1.0, pytest.approx(0.4), False]]
    with pytest.raises(ValueError, match="callbacks.sample_table"):
        SampleTable(every_n_steps=0)


# -- W&B grouping from Hydra ----------------------------------------------------------------------
def test_wandb_group_tags_and_name_from_a_multirun(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, read_write

    from prefalign.config import config_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=["experiment=tiny_ce", "optimizer.lr=1e-3", f"paths.output_dir={tmp_path}"],
                return_hydra_config=True,
            )
        with read_write(cfg.hydra):
            cfg.hydra.mode = "MULTIRUN"
            cfg.hydra.sweep.dir = str(tmp_path / "multiruns" / "2026-01-02_03-04-05")
            cfg.hydra.job.num = 3
        HydraConfig.instance().set_config(cfg)
        wandb = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
        assert wandb["group"] == "tiny_ce/2026-01-02_03-04-05"
        assert wandb["tags"] == ["tiny", "ce", "experiment:tiny_ce", "multirun", "sweep:2026-01-02_03-04-05"]
        assert wandb["name"] == "tiny_ce-3"
        with read_write(cfg.hydra):
            cfg.hydra.mode = "RUN"
        HydraConfig.instance().set_config(cfg)
        wandb = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
        assert (wandb["group"], wandb["name"]) == ("tiny_ce", "tiny_ce")
        assert wandb["tags"] == ["tiny", "ce", "experiment:tiny_ce"]
    finally:
        GlobalHydra.instance().clear()


def test_analysis_uses_the_librarys_rules_not_copies():
    from prefalign import analysis
    from prefalign.data.filtering import top_fraction_count
    from prefalign.pipelines.sso import STAGES
    from prefalign.scoring.aligned import AGGREGATIONS

    assert analysis.SSO_STAGES is STAGES
    assert set(analysis.AGGREGATIONS) == set(AGGREGATIONS)
    assert analysis.top_fraction_count is top_fraction_count
    thresholds = analysis.score_thresholds([5.0, 4.0, 3.0, 2.0, 1.0], [0.3, 1.0])
    assert list(thresholds["kept"]) == [top_fraction_count(0.3, 5), 5] == [2, 5]
