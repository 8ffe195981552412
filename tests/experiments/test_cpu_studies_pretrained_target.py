"""The CPU PoFT study from a pretrained target (the README main job's setting, ``--size quick``),
at a few-minute size: the base is trained first, and every PoFT-study run starts from its export
and trains on the clean subset plus the noise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from shared import load_script


@pytest.mark.slow
def test_the_poft_study_fine_tunes_the_pretrained_target_on_the_clean_subset(tmp_path, monkeypatch):
    module = load_script("experiments/cpu_studies/run.py", "cpu_studies_run_pretrained")
    monkeypatch.setenv("WANDB_MODE", "offline")
    quick = module.SIZES["quick"]
    assert quick.base_epochs > 0 and quick.poft_clean is not None  # what this test shrinks
    module.SIZES["pretrained_test"] = dataclasses.replace(
        quick,
        world_train=300,
        test=20,
        noise=(60,),
        seeds=(1,),
        epochs=2,
        aligned_epochs=1,
        base_epochs=1,
        poft_clean=40,
    )
    out = tmp_path / "out"
    results = module.main(["--size", "pretrained_test", "--out", str(out), "--only", "poft"])

    assert set(results["timings_s"]) == {"data", "aligned", "base", "poft"}
    assert (out / "runs" / "base" / "hf" / "config.json").exists()
    assert len((out / "data" / "verifiable_world_40" / "train.jsonl").read_text().splitlines()) == 40
    assert sorted(r["objective"] for r in results["poft"]["runs"]) == ["ce", "poft"]
    for run in results["poft"]["runs"]:
        cfg = yaml.safe_load((Path(run["run_dir"]) / ".hydra" / "config.yaml").read_text())
        assert cfg["model"]["name_or_path"] == str(out / "runs" / "base" / "hf")
        assert cfg["data"]["train"]["path"].endswith("verifiable_world_40/train.jsonl")
        assert len(run["exact_match"]) == 2  # one held-out evaluation per epoch
        log = (Path(run["run_dir"]) / "train.log").read_text()
        assert "mixed in 60 hand-crafted noise samples" in log
        assert "'data/train_samples': 100" in log  # 40 clean + 60 noise
    assert "From a target pretrained with CE" in (out / "results.md").read_text()
