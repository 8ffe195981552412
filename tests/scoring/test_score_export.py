"""``prefalign-score export.dir=...``: the scored data with its score columns, in TRL's
conversational format, readable with ``load_from_disk`` and ``load_dataset("json")``."""

from __future__ import annotations

import math

import datasets
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from prefalign.config import config_dir, register_resolvers

MEMBERS = ("zephyr_bytes", "llama3_bpe")


def _score_cfg(tmp_path, session_cache, *overrides):
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(
                config_name="score",
                overrides=[
                    f"paths.root_dir={tmp_path}",
                    f"paths.cache_dir={session_cache}",
                    f"aligned.cache_dir={tmp_path / 'scores'}",
                    "data.train.limit=12",
                    "data.val.limit=6",
                    "trainer.accelerator=cpu",
                    "trainer.enable_progress_bar=false",
                    *overrides,
                ],
            )
    finally:
        GlobalHydra.instance().clear()


def test_score_exports_every_split_with_member_and_aligned_score_columns(
    tmp_path, session_cache, monkeypatch
):
    from prefalign.apps.score import score

    elsewhere = tmp_path / "launched_here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative export.dir follows paths.root_dir, not the current folder
    summary = score(_score_cfg(tmp_path, session_cache, "export.dir=scored", "export.format=both"))
    out = tmp_path / "scored"
    assert not list(elsewhere.iterdir())
    means = {(row["split"], row["member"]): row["mean_score"] for row in summary}
    for split, size in (("train", 12), ("val", 6)):
        for ds in (
            datasets.load_from_disk(str(out / split)),
            datasets.load_dataset("json", data_files=str(out / f"{split}.jsonl"), split="train"),
        ):
            assert len(ds) == size
            columns = {f"score_{m}" for m in MEMBERS} | {"id", "messages", "aligned_score"}
            assert columns <= set(ds.column_names)
            for row in ds:
                assert [m["role"] for m in row["messages"]][-1] == "assistant"
                assert set(m["role"] for m in row["messages"]) <= {"system", "user", "assistant"}
                # aligned.aggregation=avg of the two members
                expected = sum(row[f"score_{m}"] for m in MEMBERS) / 2
                assert math.isclose(row["aligned_score"], expected, rel_tol=1e-9)
            for m in MEMBERS:  # the exported scores are the ones the app scored
                values = ds[f"score_{m}"]
                assert math.isclose(sum(values) / len(values), means[(split, m)], rel_tol=1e-9)
                assert all(v < 0 for v in values)  # log-probs


def test_no_export_by_default_and_a_bad_format_names_the_key(tmp_path, session_cache):
    from prefalign.apps.score import score

    score(_score_cfg(tmp_path, session_cache))
    assert not (tmp_path / "scored").exists()
    with pytest.raises(ValueError, match="export.format"):  # before anything is scored
        score(_score_cfg(tmp_path, session_cache, f"export.dir={tmp_path / 'scored'}", "export.format=csv"))
