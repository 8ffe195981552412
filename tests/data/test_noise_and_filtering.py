"""Hand-crafted noise (PoFT §4.3) and top-p score filtering (Figure 4)."""

from __future__ import annotations

import random

import datasets
import pytest

from prefalign.core.errors import DataError
from prefalign.data.filtering import filter_top_fraction
from prefalign.data.noise import NoiseConfig, build_noisy_dataset, corrupt_text, make_noise_samples

CLEAN = datasets.Dataset.from_list(
    [
        {
            "id": f"c{i}",
            "messages": [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": f"answer number {i} " * 3},
            ],
        }
        for i in range(20)
    ]
)
TEXT = "The quick brown fox jumps over the lazy dog. " * 200


def test_noise_is_deterministic_per_seed():
    a = make_noise_samples(CLEAN, NoiseConfig(num_samples=10, seed=4))
    b = make_noise_samples(CLEAN, NoiseConfig(num_samples=10, seed=4))
    c = make_noise_samples(CLEAN, NoiseConfig(num_samples=10, seed=5))
    assert a.to_list() == b.to_list()
    assert a["messages"] != c["messages"]


def test_noise_rematches_a_prompt_with_another_conversations_corrupted_response():
    noise = make_noise_samples(
        CLEAN, NoiseConfig(num_samples=30, seed=0, insert_rate=0, delete_rate=0, modify_rate=0)
    )
    by_id = {row["id"]: row["messages"] for row in CLEAN}
    for row in noise:
        assert row["noise"] is True and row["id"].startswith("noise-0-")
        assert row["noise_source_prompt_id"] != row["noise_source_response_id"]
        assert row["messages"][:-1] == by_id[row["noise_source_prompt_id"]][:-1]
        assert row["messages"][-1]["content"] == by_id[row["noise_source_response_id"]][-1]["content"]


def test_noise_in_another_answer_format():
    exact = {"num_samples": 30, "seed": 0, "insert_rate": 0, "delete_rate": 0, "modify_rate": 0}
    reformatted = make_noise_samples(
        CLEAN, NoiseConfig(**exact, strip_prefix="answer ", add_prefix="=> ", add_suffix=" <=")
    )
    by_id = {row["id"]: row["messages"] for row in CLEAN}
    for after in reformatted:
        assert after["messages"][:-1] == by_id[after["noise_source_prompt_id"]][:-1]
        source = by_id[after["noise_source_response_id"]][-1]["content"]
        assert after["messages"][-1]["content"] == "=> " + source[len("answer ") :] + " <="
    # a prefix the response does not start with is left alone
    config = NoiseConfig(num_samples=1, strip_prefix="Answer: ", add_prefix="> ")
    assert config.reformat("answer 1") == "> answer 1"
    assert config.reformat("Answer: 1") == "> 1"
    assert NoiseConfig(num_samples=1).reformat("Answer: 1") == "Answer: 1"
    # the format is corrupted with the rest of the response
    corrupted = make_noise_samples(
        CLEAN, NoiseConfig(num_samples=30, seed=0, add_prefix="=> ", modify_rate=0.5)
    )
    assert any(not row["messages"][-1]["content"].startswith("=> ") for row in corrupted)
    with pytest.raises(ValueError, match="noise.add_prefix must be a string"):
        NoiseConfig(num_samples=1, add_prefix=3)


@pytest.mark.parametrize(
    ("rates", "length_ratio", "changed"),
    [
        ((0.1, 0.0, 0.0), 1.10, None),
        ((0.0, 0.1, 0.0), 0.90, None),
        ((0.0, 0.0, 0.1), 1.00, 0.10),
        ((0.0, 0.0, 0.0), 1.00, 0.0),
    ],
)
def test_corruption_rates(rates, length_ratio, changed):
    out = corrupt_text(TEXT, random.Random(1), *rates)
    assert len(out) / len(TEXT) == pytest.approx(length_ratio, abs=0.015)
    if changed is not None:
        assert sum(a != b for a, b in zip(out, TEXT, strict=True)) / len(TEXT) == pytest.approx(
            changed, abs=0.015
        )


def test_corruption_never_empties_a_response():
    assert corrupt_text("ab", random.Random(0), 0.0, 1.0, 0.0) in ("a", "b")


def test_mixing_labels_shuffles_and_keeps_ids_unique():
    mixed = build_noisy_dataset(CLEAN, NoiseConfig(num_samples=8, seed=2))
    assert len(mixed) == 28 and sum(mixed["noise"]) == 8
    assert len(set(mixed["id"])) == 28
    assert mixed["id"] != sorted(mixed["id"], key=lambda i: (i.startswith("noise"), i))  # shuffled
    assert mixed["id"] == build_noisy_dataset(CLEAN, NoiseConfig(num_samples=8, seed=2))["id"]


def test_noise_errors():
    with pytest.raises(DataError, match="at least 2"):
        make_noise_samples(CLEAN.select([0]), NoiseConfig(num_samples=1))
    with pytest.raises(ValueError, match="insert_rate"):
        NoiseConfig(num_samples=1, insert_rate=1.5)
    with pytest.raises(ValueError, match="num_samples"):
        NoiseConfig(num_samples=-1)


SCORED = datasets.Dataset.from_list(
    [
        {"id": i, "aligned_score": s}
        for i, s in [("e", -2.0), ("a", -1.0), ("d", -3.0), ("b", -1.0), ("c", -0.5)]
    ]
)


def test_filter_keeps_the_top_fraction_in_original_order_ties_by_id():
    kept, report = filter_top_fraction(SCORED, 0.6)
    assert kept["id"] == ["a", "b", "c"]
    assert (report.total, report.kept, report.dropped, report.threshold) == (5, 3, 2, -1.0)
    kept, _ = filter_top_fraction(SCORED, 0.4)
    assert kept["id"] == ["a", "c"]  # "a" wins the tie with "b"
    assert filter_top_fraction(SCORED, 1.0)[0]["id"] == SCORED["id"]
    assert "kept the top 60%" in filter_top_fraction(SCORED, 0.6)[1].summary()


def test_filter_errors():
    with pytest.raises(ValueError, match="fraction"):
        filter_top_fraction(SCORED, 0.0)
    with pytest.raises(DataError, match="no 'aligned_score' column"):
        filter_top_fraction(SCORED.remove_columns("aligned_score"), 0.5)
    bad = datasets.Dataset.from_list(
        [{"id": "x", "aligned_score": float("nan")}, {"id": "y", "aligned_score": 1.0}]
    )
    with pytest.raises(DataError, match="sample x has a non-finite aligned_score"):
        filter_top_fraction(bad, 0.5)
