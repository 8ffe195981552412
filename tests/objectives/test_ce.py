import pytest
import torch
from torch.testing import assert_close

from prefalign.data.batching import pad_collate
from prefalign.data.chat import encode_conversation
from prefalign.objectives import CrossEntropy
from prefalign.scoring.logprobs import sequence_logprobs

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "2 plus 2 is 4."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Reverse 'stone'."},
        {"role": "assistant", "content": "enots"},
        {"role": "user", "content": "And 'river'?"},
        {"role": "assistant", "content": "The reverse of 'river' is 'revir', a longer answer."},
    ],
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
]


@pytest.fixture
def batch_and_outputs(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    samples = []
    for i, messages in enumerate(CONVERSATIONS):
        enc = encode_conversation(tokenizer, messages, max_length=512, sample_id=str(i))
        samples.append({"id": str(i), "input_ids": enc.input_ids, "labels": enc.labels})
    batch = pad_collate(samples, pad_token_id=tokenizer.pad_token_id)
    return model, batch


def test_token_mean_equals_the_models_own_labels_loss(batch_and_outputs):
    model, batch = batch_and_outputs
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    policy = sequence_logprobs(out.logits, batch["labels"])
    loss = CrossEntropy("token_mean")(policy, batch).loss()
    assert_close(loss, out.loss, rtol=1e-5, atol=1e-6)


def test_sample_mean_matches_a_hand_computation(batch_and_outputs):
    model, batch = batch_and_outputs
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_sample = []
    for row in range(logits.shape[0]):
        logp = torch.log_softmax(logits[row].double(), dim=-1)
        positions = [t for t in range(1, logits.shape[1]) if batch["labels"][row, t] != -100]
        total = sum(logp[t - 1, batch["labels"][row, t]] for t in positions)
        per_sample.append(-total / len(positions))  # eq. 3: -(1/T0) log p(y|x)
    expected = torch.stack(per_sample).mean().float()
    output = CrossEntropy("sample_mean")(sequence_logprobs(logits, batch["labels"]), batch)
    assert_close(output.loss(), expected, rtol=1e-5, atol=1e-6)
    # the two reductions differ when response lengths differ
    token_mean = CrossEntropy("token_mean")(sequence_logprobs(logits, batch["labels"]), batch).loss()
    assert not torch.isclose(token_mean, output.loss(), rtol=1e-4)


def test_metrics_are_detached_and_per_example(batch_and_outputs):
    model, batch = batch_and_outputs
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    output = CrossEntropy()(sequence_logprobs(logits, batch["labels"]), batch)
    assert output.losses.shape == (3,)
    for value in output.metrics.values():
        assert not value.requires_grad
        assert value.shape == (3,)


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match="token_mean"):
        CrossEntropy("sum")
