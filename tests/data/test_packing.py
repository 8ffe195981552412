"""Shared-prompt rows: the layout, and log-probs and gradients equal to one row per sequence."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from prefalign.data.chat import IGNORE_INDEX
from prefalign.data.packing import collate_shared_prompts, shared_prompt_attention_mask
from prefalign.data.preference import collate_sequences, tokenize_preferences
from prefalign.models.loading import TinySpec, build_tiny_model
from prefalign.modules import MultiSequenceModule, RewardModelModule
from prefalign.objectives import SSO, BradleyTerry
from prefalign.scoring.logprobs import sequence_logprobs

I = IGNORE_INDEX  # noqa: E741


def test_layout_of_a_hand_made_sample():
    sample = {
        "id": "s0",
        # prompt 1 2 3, responses 7 8 and 9; the tokens at the first label differ (7 / 9)
        "x|y+.input_ids": [1, 2, 3, 7, 8],
        "x|y+.labels": [I, I, I, 7, 8],
        "x|y-.input_ids": [1, 2, 3, 9],
        "x|y-.labels": [I, I, I, 9],
    }
    batch = collate_shared_prompts([sample], ["x|y+", "x|y-"], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3]]
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 2]]
    # 7 and 9 are both predicted by the last prompt token (position 2); 8 by 7 (position 3)
    assert batch["target_position"][:3].tolist() == [2, 3, 2]
    assert batch["target_token"][:3].tolist() == [7, 8, 9]
    assert batch["target_slot"][:3].tolist() == [0, 0, 1]
    # padded to the 16-entry bucket: the padding adds to slot num_slots (2), which is dropped
    assert len(batch["target_slot"]) == 16 and set(batch["target_slot"][3:].tolist()) == {2}
    mask = shared_prompt_attention_mask(batch["segment_ids"], "sdpa")[0, 0]
    assert mask[5].tolist() == [True, True, True, False, False, True]  # y- sees the prompt and itself
    assert mask[4].tolist() == [True, True, True, True, True, False]


def test_shared_prefix_stops_at_the_first_response_token():
    # identical responses: the common prefix covers everything, but the prompt part stops at the label
    sample = {"id": "s", "x|y+.input_ids": [1, 2, 5], "x|y+.labels": [I, I, 5]}
    sample |= {"x|yo.input_ids": [1, 2, 5], "x|yo.labels": [I, I, 5]}
    batch = collate_shared_prompts([sample], ["x|y+", "x|yo"], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 5, 5]]
    assert batch["target_position"][:2].tolist() == [1, 1]


def test_a_sequence_starting_with_a_response_token_is_an_error():
    sample = {"id": "bad-7", "x|y+.input_ids": [5, 6], "x|y+.labels": [5, 6]}
    with pytest.raises(ValueError, match="bad-7.*starts with a response token"):
        collate_shared_prompts([sample], ["x|y+"], pad_token_id=0)


def test_flash_attention_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="data.share_prompts=false"):
        shared_prompt_attention_mask(torch.zeros(1, 3, dtype=torch.long), "flash_attention_2")


def _records(n=4):
    import datasets

    rows = [
        {
            "id": f"r{i}",
            "prompt": [{"role": "user", "content": f"What is {i} plus {i + 3}?"}],
            "chosen": f"{i} plus {i + 3} is {2 * i + 3}.",
            "rejected": f"It is {2 * i + 4}" + "!" * i,
            "original": f"{2 * i + 3}",
            "system_good": "Answer correctly and precisely.",
            "system_bad": "Answer wrongly.",
        }
        for i in range(n)
    ]
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_rows_score_every_template_like_separate_rows(template_name, attn):
    torch.manual_seed(0)
    model, tokenizer = build_tiny_model(TinySpec(template=template_name, bpe_merges=200))
    model.config._attn_implementation = attn
    # Mistral's template has no system turn, so no principle prompts there
    sequences = ("x|y+", "x|y-", "x|yo") if template_name == "mistral" else SSO().sequences
    tokenised, _ = tokenize_preferences(_records(), tokenizer, 256, sequences, "inline")
    samples = list(tokenised)
    module = MultiSequenceModule(model, SSO(), optimizer=None)
    shared = module._score(model, collate_sequences(samples, sequences, tokenizer.pad_token_id, True))
    padded = collate_sequences(samples, sequences, tokenizer.pad_token_id, False)
    with torch.no_grad():
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    alone = sequence_logprobs(logits, padded["labels"])
    assert_close(shared.sum.detach(), alone.sum, rtol=1e-5, atol=1e-4)
    assert torch.equal(shared.count, alone.count)


def test_sso_gradients_are_the_same_in_both_layouts(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    sequences = SSO().sequences
    tokenised, _ = tokenize_preferences(_records(), tokenizer, 256, sequences, "inline")
    samples = [dict(s) for s in tokenised]
    for s in samples:  # a reference that differs from the policy, so every part of the loss is live
        for k, name in enumerate(sequences):
            s[f"ref.{name}.sum"], s[f"ref.{name}.count"] = -30.0 - k, 10
    grads = []
    for share in (False, True):
        model.zero_grad()
        module = MultiSequenceModule(model, SSO(), optimizer=None)
        module.objective_output(
            collate_sequences(samples, sequences, tokenizer.pad_token_id, share)
        ).loss().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.zero_grad()
    assert grads[0].abs().sum() > 0
    assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_reward_model_refuses_shared_rows(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    tokenised, _ = tokenize_preferences(_records(), tokenizer, 256, ("x|y+", "x|y-"), "inline")
    batch = collate_sequences(list(tokenised), ("x|y+", "x|y-"), tokenizer.pad_token_id, True)
    with pytest.raises(ValueError, match="share_prompts=false"):
        RewardModelModule(model, BradleyTerry(), optimizer=None).objective_output(batch)
