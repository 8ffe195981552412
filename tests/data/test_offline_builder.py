"""The SSO appendix A.1.4 offline dataset builder."""

from __future__ import annotations

import json
from pathlib import Path

from prefalign.data.offline_builder import build_offline_dataset


class _Judge:
    """Prefers the rejected response when its text contains 'better', is unsure on 'unsure'."""

    def judge_many(self, items):
        return ["b" if "better" in b else None if "unsure" in b else "a" for _, _, b in items]


def _pair(i, prompt, chosen, rejected):
    return {"id": f"p{i}", "prompt": prompt, "chosen": chosen, "rejected": rejected}


ROWS = [
    _pair(0, "q0", "a long good answer", "bad"),  # chosen longer
    _pair(1, "q0", "a long good answer", "bad"),  # duplicate
    _pair(2, "q1", "good", "x" * 3100),  # length gap > 3000
    _pair(3, "q2", "good", "this one is better"),  # a judge prefers the rejected
    _pair(4, "q3", "good", "unsure reply"),  # a judge's orders disagree
    _pair(5, "q4", "ok", "a longer bad answer"),  # chosen shorter
    _pair(6, "q5", "a long good answer", "bad"),  # chosen longer
    _pair(7, "q5", "another long good answer", "bad"),  # a second pair for q5
    _pair(8, "q6", "same", "size"),  # equal lengths
]


def test_each_step_removes_what_appendix_a14_says_and_counts_it():
    kept, report = build_offline_dataset(ROWS, judges=[_Judge(), _Judge()], seed=0)
    counts = dict(report.drops.counts)
    assert counts["duplicate"] == 1 and counts["length_gap"] == 1
    assert counts["judge0_prefers_rejected"] == 1 and counts["judge0_unsure"] == 1
    assert counts["extra_pair_for_query"] == 1
    # after one pair per query: chosen longer for q0 and q5, shorter for q4, equal for q6 -> balance to 1 + 1
    assert counts["length_balance"] == 1
    longer = [r for r in kept if len(r["chosen"]) > len(r["rejected"])]
    shorter = [r for r in kept if len(r["chosen"]) < len(r["rejected"])]
    assert len(longer) == len(shorter) == 1 and len({r["prompt"] for r in kept}) == len(kept)
    assert report.remaining == {"input": 9, "prefiltered": 7, "judged": 5, "balanced": 3}
    assert len(kept) + report.drops.dropped == len(ROWS)  # nothing lost without a count


def test_unsure_pairs_can_be_kept_and_the_result_is_seeded():
    kept, report = build_offline_dataset(ROWS, judges=[_Judge()], remove_unsure=False, seed=3)
    assert "judge0_unsure" not in report.drops.counts
    again, _ = build_offline_dataset(ROWS, judges=[_Judge()], remove_unsure=False, seed=3)
    assert [r["id"] for r in kept] == [r["id"] for r in again]


class KeywordJudge(_Judge):
    """The test judge, importable by the command line (``_target_: tests.data...``) through its module."""


def test_prompt_conversations_group_as_one_query():
    conversation = [{"role": "user", "content": "q"}]
    rows = [_pair(0, conversation, "good", "poor"), _pair(1, list(conversation), "fine", "vile")]
    kept, report = build_offline_dataset(rows)
    assert report.drops.counts["extra_pair_for_query"] == 1 and kept[0]["prompt"] == conversation


def test_command_line_builds_from_iteration_files_with_judges(tmp_path, run_app):
    for i, rows in enumerate((ROWS[:5], ROWS[5:]), 1):
        folder = tmp_path / "logs" / "sso" / "default" / f"iter_{i}"
        folder.mkdir(parents=True)
        (folder / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge = "{_target_: test_offline_builder.KeywordJudge}"
    result = run_app(
        "prefalign.apps.build_offline",
        [f"judges=[{judge},{judge}]"],
        tmp_path,
        PYTHONPATH=str(Path(__file__).parent),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "logs" / "build_offline" / "offline_pairs.jsonl"
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    expected, _ = build_offline_dataset(ROWS, judges=[_Judge(), _Judge()], seed=0)
    assert [r["id"] for r in kept] == [r["id"] for r in expected]
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["remaining"]["input"] == 9 and report["judges"] == 2
    assert sum(report["dropped"].values()) + len(kept) == 9


def test_command_line_names_the_file_and_line_of_a_bad_pair(tmp_path, run_app):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"id": "x9", "prompt": "q", "chosen": "a"}) + "\n")
    result = run_app("prefalign.apps.build_offline", [f"inputs=[{bad}]"], tmp_path)
    assert result.returncode != 0
    assert f"{bad}: line 2 (id=x9): missing or empty ['rejected']" in result.stderr


def _sso_iteration(folder, rows):
    """An ``iter_<i>/`` folder as prefalign-sso's sample stage leaves it: the pairs and the marker."""
    from prefalign.core.jsonl import write_json, write_jsonl
    from prefalign.pipelines.artefacts import file_record

    path = write_jsonl(folder / "preferences.jsonl", rows)
    record = {"preferences.jsonl": file_record(path)}
    write_json(
        folder / "sample.done.json", {"samples": len(rows), "artefacts": {"settings": {}, "files": record}}
    )
    return path


def test_build_offline_refuses_a_run_whose_recorded_preferences_are_missing_or_cut(tmp_path):
    import pytest

    from prefalign.core.errors import DataError
    from prefalign.pipelines.offline import read_pairs

    work = tmp_path / "sso"
    first = _sso_iteration(work / "iter_1", ROWS[:4])
    second = _sso_iteration(work / "iter_2", ROWS[4:])
    pattern = [str(work / "iter_*" / "preferences.jsonl")]
    assert len(read_pairs(pattern)) == len(ROWS)
    second.unlink()  # a finished iteration's pairs deleted: an error, not one file fewer
    with pytest.raises(
        DataError, match=r"iter_2/preferences.jsonl is missing \(its stage finished with 5 rows\)"
    ):
        read_pairs(pattern)
    _sso_iteration(work / "iter_2", ROWS[4:])
    first.write_text("".join(first.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(DataError, match=r"iter_1/preferences.jsonl has 2 rows, the stage wrote 4"):
        read_pairs(pattern)


def test_the_built_dataset_is_also_written_in_trl_conversational_format(tmp_path):
    import datasets
    from omegaconf import OmegaConf

    from prefalign.pipelines.offline import build

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({**r, "feature": f"f{k}"}) + "\n" for k, r in enumerate(ROWS)))
    output = tmp_path / "out" / "offline_pairs.jsonl"
    cfg = OmegaConf.create(
        {"inputs": [str(pairs)], "output": str(output), "judges": [], "max_char_diff": 3000}
        | {"remove_unsure": True, "seed": 0}
    )
    summary = build(cfg)
    kept = [json.loads(line) for line in output.read_text().splitlines()]
    hf, trl = output.with_name("offline_pairs.hf"), output.with_name("offline_pairs.trl.jsonl")
    assert summary["exports"] == {"hf": str(hf), "jsonl": str(trl)}
    for ds in (
        datasets.load_from_disk(str(hf)),
        datasets.load_dataset("json", data_files=str(trl), split="train"),
    ):
        assert ds["id"] == [r["id"] for r in kept] and len(kept) > 1
        assert set(ds.column_names) == {"id", "prompt", "chosen", "rejected", "feature"}
        for row, pair in zip(ds, kept, strict=True):
            assert row["prompt"] == [{"role": "user", "content": pair["prompt"]}]
            assert row["chosen"] == [{"role": "assistant", "content": pair["chosen"]}]
            assert row["rejected"] == [{"role": "assistant", "content": pair["rejected"]}]
            assert row["feature"] == pair["feature"]
