import torch
from torch.testing import assert_close

from prefalign.data.chat import IGNORE_INDEX
from prefalign.scoring.logprobs import sequence_logprobs, token_logprobs


def _random_batch(batch=3, length=9, vocab=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g) * 3
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    # prompt tokens and padding masked, a different response span per row
    labels[0, :4] = IGNORE_INDEX
    labels[1, :2] = IGNORE_INDEX
    labels[1, 7:] = IGNORE_INDEX
    labels[2, :6] = IGNORE_INDEX
    return logits, labels


def _plain_loop(logits, labels):
    """Reference: one token at a time, log of a softmax in float64."""
    sums, counts = [], []
    for row in range(logits.shape[0]):
        total, count = 0.0, 0
        for t in range(1, logits.shape[1]):
            if labels[row, t] == IGNORE_INDEX:
                continue
            probs = torch.softmax(logits[row, t - 1].double(), dim=-1)
            total += torch.log(probs[labels[row, t]]).item()
            count += 1
        sums.append(total)
        counts.append(count)
    return torch.tensor(sums), torch.tensor(counts)


def test_sequence_logprobs_matches_a_per_token_loop():
    logits, labels = _random_batch()
    result = sequence_logprobs(logits, labels)
    expected_sum, expected_count = _plain_loop(logits, labels)
    assert result.sum.dtype == torch.float32
    assert_close(result.sum, expected_sum.float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(result.count, expected_count)
    assert_close(result.mean, expected_sum.float() / expected_count, rtol=1e-5, atol=1e-5)


def test_chunked_computation_equals_whole_batch():
    logits, labels = _random_batch(batch=5, seed=1)
    whole = sequence_logprobs(logits, labels)
    chunked = sequence_logprobs(logits, labels, chunk_rows=2)
    assert_close(chunked.sum, whole.sum)
    assert torch.equal(chunked.count, whole.count)


def test_low_precision_logits_are_scored_in_fp32():
    logits, labels = _random_batch(seed=2)
    bf16 = sequence_logprobs(logits.bfloat16(), labels)
    reference = sequence_logprobs(logits.bfloat16().float(), labels)
    assert bf16.sum.dtype == torch.float32
    assert_close(bf16.sum, reference.sum, rtol=1e-6, atol=1e-6)


def test_masked_positions_contribute_nothing_and_gradients_only_reach_used_logits():
    logits, labels = _random_batch(seed=3)
    logits.requires_grad_(True)
    logps, mask = token_logprobs(logits, labels)
    assert torch.all(logps[~mask] == 0)
    logps.sum().backward()
    # logits at position t predict token t+1: rows whose next label is masked get no gradient
    unused = torch.ones_like(labels, dtype=torch.bool)
    unused[:, :-1] = labels[:, 1:] == IGNORE_INDEX
    assert torch.all(logits.grad[unused] == 0)
    assert torch.all(logits.grad[~unused].abs().sum(-1) > 0)
