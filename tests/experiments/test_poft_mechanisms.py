"""The token-role split of experiments/poft_mechanisms/run.py (part 2a): which response tokens are
answer format, end of turn, content or corruption, on clean and noise samples of the verifiable world."""

from __future__ import annotations

import pytest
from shared import load_script


@pytest.fixture(scope="module")
def study():
    return load_script("experiments/poft_mechanisms/run.py", "poft_mechanisms_run")


def test_char_roles_on_clean_and_corrupted_responses(study):
    assert study.char_roles("Answer: LEMON", "Answer: LEMON", 8) == ["format"] * 8 + ["content"] * 5
    # a deleted "A", an inserted "j" in place of "E": the rest still matched to its source
    roles = study.char_roles("nswer: LjMON", "Answer: LEMON", 8)
    assert roles == ["format"] * 7 + ["content", "corrupted", "content", "content", "content"]
    # another answer format: its prefix and suffix are format, the value content
    roles = study.char_roles("=> ab <=", "=> ab <=", 3, 3)
    assert roles == ["format"] * 3 + ["content"] * 2 + ["format"] * 3


def test_encoded_probe_roles_follow_the_tokens(study):
    from prefalign.data.chat import IGNORE_INDEX
    from prefalign.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer("chatml")
    probe = {
        "id": "p",
        "messages": [
            {"role": "user", "content": "Reverse 'ab'."},
            {"role": "assistant", "content": "Answr: bXa"},
        ],
        "source": "Answer: ba",
        "format": ("Answer: ", ""),
    }
    batch = study.encode_probes(tokenizer, [probe], 64)
    labelled = [
        r
        for r, label in zip(batch["roles"][0], batch["labels"][0].tolist(), strict=True)
        if label != IGNORE_INDEX
    ]
    assert labelled == ["format"] * 7 + ["content", "corrupted", "content", "end"]
    assert all(
        r is None
        for r, label in zip(batch["roles"][0], batch["labels"][0].tolist(), strict=True)
        if label == IGNORE_INDEX
    )
    # a template that trims the response (Llama-3) does not render it verbatim: refused, by sample id
    trimmed = {
        **probe,
        "id": "q",
        "messages": [probe["messages"][0], {"role": "assistant", "content": " x "}],
    }
    with pytest.raises(ValueError, match="sample q"):
        study.encode_probes(build_tokenizer("llama3"), [trimmed], 64)
