"""The SSO pipeline checks what it saved before trusting it (issue 16): each test injects one fault.

The sampling backend is a fake chosen by config (``generator._target_``) and training is replaced
by a stub that writes a small ``policy/model.safetensors``, so every stage's bookkeeping runs in a
second; the real end-to-end run is in ``test_sso_pipeline.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import save_file

from prefalign.config import compose_config
from prefalign.core.errors import DataError
from prefalign.core.jsonl import read_jsonl, write_jsonl
from prefalign.generation.sampling import Generation
from prefalign.pipelines.sso import NonFinitePolicyError, ResumeError, SSOPipeline, load_prompt_splits

CALLS: list[str] = []  # one entry per generate call of any FakeGenerator


class FakeTokenizer:
    """Word-count tokens; the chat template joins the messages."""

    def apply_chat_template(self, conversation, tokenize=False, add_generation_prompt=True):
        return " ".join(m["content"] for m in conversation)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}


class FakeGenerator:
    """Answers every conversation with text derived from it and the sampling settings; an answer
    to a prompt holding ``NEL`` carries a U+0085 (which ``str.splitlines`` splits on)."""

    def __init__(self, model):
        self.model_cfg = model
        self.tokenizer = FakeTokenizer()

    def generate(self, conversations, config):
        CALLS.append("generate")
        out = []
        for conversation in conversations:
            text = f"answer {len(conversation)} {config.seed} {config.max_new_tokens}"
            if "NEL" in conversation[-1]["content"]:
                text += " next\u0085line"
            out.append(Generation(text=text, num_tokens=4, hit_max_new_tokens=False))
        return out


def fake_fit(nan: bool = False, metric: float = 0.5):
    """A stand-in for training: writes π_i's weights (NaN if asked) and returns the metrics."""

    def fit(train_cfg):
        CALLS.append("fit")
        policy = Path(train_cfg.callbacks.hf_export.dirpath)
        policy.mkdir(parents=True, exist_ok=True)
        weight = torch.full((3, 4), float("nan")) if nan else torch.arange(12.0).reshape(3, 4)
        save_file({"lm_head.weight": weight}, str(policy / "model.safetensors"))
        (policy / "config.json").write_text("{}")
        return {"train/loss": metric, "train/weight": 0.9}

    return fit


def _prompts(path: Path, n: int = 16, extra: list[dict] | None = None) -> Path:
    rows = [{"id": f"q{i}", "prompt": f"question {i} \u2028 with a line separator"} for i in range(n)]
    return write_jsonl(path, rows + (extra or []))


def _pipeline(tmp_path, monkeypatch, *overrides, fit=None) -> SSOPipeline:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        _prompts(prompts)
    GlobalHydra.instance().clear()
    overrides = [
        "iterations=2",
        f"prompts.path={prompts}",
        "prompts.limit=16",
        "sampling.max_new_tokens=12",
        f"work_dir={tmp_path / 'work'}",
        f"generator._target_={__name__}.FakeGenerator",
        "~generator.generation",  # a factory of its own takes only `model=`
        "wandb=null",
        f"paths.root_dir={tmp_path}",
        *overrides,
    ]
    pipeline = SSOPipeline(compose_config("sso", overrides))
    monkeypatch.setattr(pipeline, "_fit", fit or fake_fit())
    return pipeline


@pytest.fixture
def finished(tmp_path, monkeypatch):
    """A finished two-iteration run; its work folder."""
    CALLS.clear()
    _pipeline(tmp_path, monkeypatch).run()
    return tmp_path / "work"


def _stops(tmp_path, monkeypatch, *overrides, match: str):
    CALLS.clear()
    with pytest.raises(ResumeError, match=match) as err:
        _pipeline(tmp_path, monkeypatch, *overrides).run()
    assert "run_name=<new name>" in str(err.value) and "resume.force=true" in str(err.value)
    assert CALLS == []  # nothing sampled or trained on the stale artefacts
    return err


def test_a_rerun_with_the_same_settings_and_files_redoes_nothing(tmp_path, monkeypatch, finished):
    marker = json.loads((finished / "iter_1" / "sample.done.json").read_text())
    assert marker["samples"] == 8
    assert marker["artefacts"]["files"]["preferences.jsonl"]["rows"] == 8
    assert marker["artefacts"]["settings"]["sampling"]["max_new_tokens"] == 12
    allocate = json.loads((finished / "iter_1" / "allocate.done.json").read_text())["artefacts"]
    assert len(allocate["settings"]["prompt_ids"]) == 8
    CALLS.clear()
    reports = _pipeline(tmp_path, monkeypatch).run()
    assert CALLS == [] and [r["iteration"] for r in reports] == [1, 2]
    assert "artefacts" not in reports[0]


def test_a_rerun_with_another_prompts_limit_stops_naming_the_setting(tmp_path, monkeypatch, finished):
    _stops(
        tmp_path, monkeypatch, "prompts.limit=12", match=r"allocate.done.json: setting `prompts.limit` was 16"
    )


def test_a_rerun_with_another_max_new_tokens_stops_naming_the_setting(tmp_path, monkeypatch, finished):
    _stops(
        tmp_path,
        monkeypatch,
        "sampling.max_new_tokens=16",
        match=r"iteration 1, stage sample: .*setting `sampling.max_new_tokens` was 12 .*now 16",
    )


def test_a_refusal_names_every_changed_setting_not_only_the_first(tmp_path, monkeypatch, finished):
    err = _stops(
        tmp_path, monkeypatch, "allocation.max_new_tokens=7", "max_prompt_tokens=99", "seed=5", match=""
    )
    message = str(err.value)
    assert "setting `seed` was 0 when the stage ran, now 5" in message
    assert "setting `max_prompt_tokens` was 1024 when the stage ran, now 99" in message
    assert "setting `allocation.max_new_tokens` was 32 when the stage ran, now 7" in message


@pytest.mark.parametrize("finished_stages", ["all", "partial"])
def test_a_copied_run_folder_resumes_where_it_stopped(tmp_path, monkeypatch, finished, finished_stages):
    """Markers hold paths relative to the run folder (issue 23, point 6): a copy resumes."""
    import shutil

    assert str(finished) not in "".join(p.read_text() for p in finished.rglob("*.done.json"))
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(finished, moved)
    shutil.rmtree(finished)
    if finished_stages == "partial":
        for stage in ("train", "evaluate"):
            (moved / "iter_2" / f"{stage}.done.json").unlink()
    CALLS.clear()
    reports = _pipeline(tmp_path, monkeypatch, f"work_dir={moved}").run()
    assert ([] if finished_stages == "all" else ["fit"]) == CALLS
    assert [r["iteration"] for r in reports] == [1, 2] and not finished.exists()
    assert (moved / "iter_2" / "policy" / "model.safetensors").is_file()


def test_markers_of_an_older_version_with_absolute_paths_still_match(tmp_path, monkeypatch, finished):
    """Markers written before paths were made relative record them absolute: same settings."""
    for marker in finished.rglob("*.done.json"):
        text = marker.read_text().replace('"iter_', f'"{finished}/iter_')
        marker.write_text(text)
    assert str(finished) in (finished / "iter_2" / "train.done.json").read_text()
    CALLS.clear()
    _pipeline(tmp_path, monkeypatch).run()
    assert CALLS == []


@pytest.mark.parametrize("name", ["preferences.jsonl", "allocated.jsonl"])
def test_a_file_cut_at_a_line_boundary_is_caught(tmp_path, monkeypatch, finished, name):
    path = finished / "iter_1" / name
    lines = path.read_text().splitlines(keepends=False)
    path.write_text("".join(line + "\n" for line in path.read_text().split("\n")[:5]))
    assert len(lines) >= 8
    _stops(tmp_path, monkeypatch, match=rf"iter_1/{name} has 5 rows, the stage wrote 8")


def test_a_file_cut_mid_line_is_caught(tmp_path, monkeypatch, finished):
    path = finished / "iter_2" / "preferences.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _stops(tmp_path, monkeypatch, match=r"iter_2/preferences.jsonl has \d rows, the stage wrote 8")


def test_an_edited_file_of_the_same_size_is_caught(tmp_path, monkeypatch, finished):
    path = finished / "iter_1" / "preferences.jsonl"
    path.write_text(path.read_text().replace("answer", "ANSWER", 1))
    _stops(tmp_path, monkeypatch, match=r"preferences.jsonl has the recorded size but different content")


def test_a_deleted_file_of_a_finished_iteration_is_caught(tmp_path, monkeypatch, finished):
    (finished / "iter_1" / "preferences.jsonl").unlink()
    _stops(
        tmp_path, monkeypatch, match=r"iter_1/preferences.jsonl is missing \(its stage finished with 8 rows\)"
    )


def test_changed_policy_weights_are_caught(tmp_path, monkeypatch, finished):
    save_file(
        {"lm_head.weight": torch.zeros(3, 4)}, str(finished / "iter_1" / "policy" / "model.safetensors")
    )
    _stops(
        tmp_path, monkeypatch, match=r"iter_1/policy/model.safetensors has .*changed after its stage finished"
    )


def test_a_garbled_marker_is_an_error_naming_it_then_force_redoes_from_there(tmp_path, monkeypatch, finished):
    (finished / "iter_2" / "sample.done.json").write_text('{"samples": 8, "artef')
    _stops(tmp_path, monkeypatch, match=r"iter_2/sample.done.json: the stage marker is not valid JSON")
    CALLS.clear()
    _pipeline(tmp_path, monkeypatch, "resume.force=true").run()
    assert CALLS == ["generate", "generate", "generate", "fit"]  # iteration 2: sample, train (evaluate)
    assert json.loads((finished / "iter_2" / "sample.done.json").read_text())["samples"] == 8


def test_force_redoes_the_first_differing_stage_and_every_later_one(tmp_path, monkeypatch, finished):
    CALLS.clear()
    _pipeline(tmp_path, monkeypatch, "sampling.max_new_tokens=16", "resume.force=true").run()
    assert CALLS.count("fit") == 2 and CALLS.count("generate") == 3 + 4  # it.1 sample; it.2 all
    marker = json.loads((finished / "iter_1" / "sample.done.json").read_text())
    assert marker["artefacts"]["settings"]["sampling"]["max_new_tokens"] == 16
    assert all(r["chosen"].endswith(" 16") for r in read_jsonl(finished / "iter_1" / "preferences.jsonl"))
    CALLS.clear()
    _pipeline(tmp_path, monkeypatch, "sampling.max_new_tokens=16").run()
    assert CALLS == []


def test_line_separators_in_prompts_and_generations_survive_a_rerun(tmp_path, monkeypatch):
    """U+2028 in a prompt and U+0085 in a generation: written, read back and verified on rerun."""
    _prompts(tmp_path / "prompts.jsonl", extra=[])
    rows = [{"id": f"q{i}", "prompt": f"question {i} \u2028 NEL"} for i in range(16)]
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    CALLS.clear()
    _pipeline(tmp_path, monkeypatch).run()
    samples = read_jsonl(tmp_path / "work" / "iter_1" / "preferences.jsonl")
    assert len(samples) == 8 and all("\u2028" in r["prompt"] and "\u0085" in r["chosen"] for r in samples)
    CALLS.clear()
    assert len(_pipeline(tmp_path, monkeypatch).run()) == 2 and CALLS == []


def test_a_duplicate_id_or_an_empty_prompt_is_an_error_naming_file_and_row(tmp_path):
    path = _prompts(tmp_path / "prompts.jsonl", n=6, extra=[{"id": "q2", "prompt": "again"}])
    with pytest.raises(DataError, match=rf"{path}, row 6 \(id=q2\): duplicate id \(first at row 2\)"):
        load_prompt_splits({"path": str(path)}, 2, 0)
    path = _prompts(tmp_path / "prompts.jsonl", n=6, extra=[{"id": "e", "prompt": "  "}])
    with pytest.raises(DataError, match=rf"{path}, row 6 \(id=e\): empty prompt .*prompts.on_invalid=drop"):
        load_prompt_splits({"path": str(path)}, 2, 0)


def test_invalid_prompts_dropped_on_request_are_counted_in_the_allocation_marker(tmp_path, monkeypatch):
    extra = [{"id": "q1", "prompt": "a duplicate"}, {"id": "e1", "prompt": ""}, {"id": "e2", "prompt": " "}]
    _prompts(tmp_path / "prompts.jsonl", extra=extra)
    CALLS.clear()
    _pipeline(tmp_path, monkeypatch, "prompts.on_invalid=drop").run()
    stats = json.loads((tmp_path / "work" / "iter_1" / "allocate.done.json").read_text())
    assert stats["prompt_file_dropped"] == {"duplicate_id": 1, "empty_prompt": 2}
    assert stats["allocated"] == 8


@pytest.mark.parametrize(("nan", "metric"), [(True, 0.5), (False, math.nan)])
def test_a_broken_policy_stops_the_run_before_anything_samples_from_it(tmp_path, monkeypatch, nan, metric):
    CALLS.clear()
    with pytest.raises(
        NonFinitePolicyError, match=r"iteration 1: the trained policy π_1 .* is broken"
    ) as err:
        _pipeline(tmp_path, monkeypatch, fit=fake_fit(nan=nan, metric=metric)).run()
    what = "tensor lm_head.weight has 12 non-finite of 12 values" if nan else "non-finite train metrics"
    assert what in str(err.value)
    work = tmp_path / "work"
    assert not (work / "iter_1" / "train.done.json").exists()
    assert not (work / "iter_2").exists() or not list((work / "iter_2").iterdir())
    assert CALLS == ["generate"] * 4 + ["fit"]  # allocation, three samplings, the training; no more


def test_policy_change_measures_how_far_the_weights_moved(tmp_path):
    from prefalign.pipelines.sso import policy_change

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    save_file({"w": torch.tensor([3.0, 4.0]), "x": torch.zeros(2)}, str(tmp_path / "a" / "model.safetensors"))
    save_file({"w": torch.tensor([3.0, 4.5]), "x": torch.zeros(2)}, str(tmp_path / "b" / "model.safetensors"))
    change = policy_change(tmp_path / "a", tmp_path / "b")
    assert change == pytest.approx({"max_abs": 0.5, "relative_l2": 0.1})
    assert policy_change(tmp_path / "a", tmp_path / "a") == {"max_abs": 0.0, "relative_l2": 0.0}
    assert policy_change(tmp_path / "missing", tmp_path / "a") is None
