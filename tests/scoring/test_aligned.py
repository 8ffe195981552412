"""Aligned-score columns from cached member scores, by id: aggregation, missing and bad scores."""

from __future__ import annotations

import json

import datasets
import pytest
from shared import CPU

from prefalign.scoring.aligned import members_used
from prefalign.scoring.engine import ScoreCacheError, score_conversations
from prefalign.scoring.frozen import aligned_score_columns


def attach_aligned_scores(ds, aligned_cfg, source, trainer_kwargs=None):
    """The columns of :func:`aligned_score_columns` as a dataset of rows, for the assertions below."""
    columns, report = aligned_score_columns(ds, aligned_cfg, source, trainer_kwargs)
    return datasets.Dataset.from_dict(columns), report


@pytest.fixture
def aligned(members, tmp_path):
    return {
        "members": members,
        "aggregation": "avg",
        "max_length": 256,
        "cache_dir": str(tmp_path / "scores"),
    }


@pytest.fixture
def scored(conversations, aligned):
    tables = {}
    for name, cfg in aligned["members"].items():
        tables[name] = score_conversations(
            conversations,
            cfg,
            max_length=256,
            cache_dir=aligned["cache_dir"],
            member=name,
            trainer_kwargs=CPU,
        ).mean_by_id()
    return tables


@pytest.mark.parametrize("aggregation", ["avg", "min", "max", "zephyr_bytes", "llama3_bpe"])
def test_aggregations_and_single_members(conversations, aligned, scored, aggregation):
    ds, report = attach_aligned_scores(conversations, {**aligned, "aggregation": aggregation}, "val")
    assert report.dropped == 0
    combine = {"avg": lambda xs: sum(xs) / len(xs), "min": min, "max": max}.get(aggregation)
    for row in ds:
        values = [scored[name][row["id"]] for name in scored]
        expected = combine(values) if combine else scored[aggregation][row["id"]]
        assert row["aligned_score"] == pytest.approx(expected)
    single = aggregation in scored
    assert ("score_llama3_bpe" in ds.column_names) == (not single or aggregation == "llama3_bpe")


def test_scores_joined_by_id_survive_a_shuffled_dataset(conversations, aligned, scored):
    shuffled = conversations.shuffle(seed=7)
    ds, _ = attach_aligned_scores(shuffled, aligned, "val")
    assert ds["id"] == shuffled["id"]
    for row in ds:
        assert row["score_zephyr_bytes"] == pytest.approx(scored["zephyr_bytes"][row["id"]])


def test_missing_cache_is_an_error_with_the_command_to_run(conversations, aligned):
    with pytest.raises(ScoreCacheError, match="prefalign-score"):
        attach_aligned_scores(conversations, aligned, "val")


def test_score_missing_scores_inline(conversations, aligned):
    ds, _ = attach_aligned_scores(
        conversations, {**aligned, "score_missing": True}, "val", trainer_kwargs=CPU
    )
    assert len(ds) == len(conversations) and "aligned_score" in ds.column_names


def test_ids_missing_from_the_cache_raise_or_are_counted(conversations, aligned, scored):
    extra = datasets.Dataset.from_list(
        [
            {
                "id": "new-1",
                "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            }
        ]
    )
    grown = datasets.concatenate_datasets([conversations, extra])
    # the cache is keyed by the data, so give the grown data the old tables under its own key
    for name, cfg in aligned["members"].items():
        old = score_conversations(
            conversations, cfg, max_length=256, cache_dir=aligned["cache_dir"], member=name
        )
        from prefalign.scoring.engine import find_cached_scores

        folder, _ = find_cached_scores(grown, cfg, 256, aligned["cache_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        old.table.save_to_disk(str(folder / "table"))
        recorded = json.loads((old.path / "meta.json").read_text())  # the member's identity, as recorded
        identity = {k: recorded[k] for k in ("model", "weights")}
        (folder / "meta.json").write_text(json.dumps({"num_samples": len(conversations), **identity}))
    with pytest.raises(ScoreCacheError, match=r"id=new-1\): no score from aligned member"):
        attach_aligned_scores(grown, aligned, "val")
    ds, report = attach_aligned_scores(grown, {**aligned, "on_missing": "drop"}, "val")
    assert len(ds) == len(conversations)
    assert report.dropped == 1 and report.examples == {"missing_score_zephyr_bytes": ["new-1"]}


def test_non_finite_cached_scores_are_an_error(conversations, aligned, scored):
    from prefalign.scoring.engine import find_cached_scores

    cfg = aligned["members"]["zephyr_bytes"]
    folder, finished = find_cached_scores(conversations, cfg, 256, aligned["cache_dir"])
    assert finished
    table = datasets.load_from_disk(str(folder / "table")).to_list()
    table[3]["logp_sum"] = float("inf")
    (folder / "table").rename(folder / "old")
    datasets.Dataset.from_list(table).save_to_disk(str(folder / "table"))
    with pytest.raises(ScoreCacheError, match=rf"id={table[3]['id']}\): non-finite score"):
        attach_aligned_scores(conversations, aligned, "val")


def test_unknown_aggregation_is_rejected(aligned):
    with pytest.raises(ValueError, match="aligned.aggregation"):
        members_used({**aligned, "aggregation": "median"})
