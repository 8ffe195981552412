import pytest
import torch
from torch.testing import assert_close

from prefalign.data.chat import IGNORE_INDEX
from prefalign.scoring.logprobs import (
    model_gathered_sequence_logprobs,
    model_sequence_logprobs,
    sequence_logprobs,
    token_logprobs,
)


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


# -- memory-lean path (last hidden states, response positions only) ------------------------------------


def _tiny_batch(tokenizer, seed=0, batch=4, length=24):
    """A right-padded batch with a different prompt length and padding per row."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    input_ids = torch.randint(3, vocab, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    labels = input_ids.clone()
    for row in range(batch):
        prompt, pad = 3 + 2 * row, row
        labels[row, :prompt] = IGNORE_INDEX
        if pad:
            attention_mask[row, -pad:] = 0
            labels[row, -pad:] = IGNORE_INDEX
            input_ids[row, -pad:] = tokenizer.pad_token_id
    return input_ids, attention_mask, labels


def _relative_close(actual, expected, rtol=1e-5):
    assert torch.all((actual - expected).abs() <= rtol * expected.abs()), (actual, expected)


@pytest.mark.parametrize("chunk_rows", [None, 1])
def test_lean_path_equals_the_full_logits_path(tiny_model_and_tokenizer, chunk_rows):
    model, tokenizer = tiny_model_and_tokenizer
    input_ids, attention_mask, labels = _tiny_batch(tokenizer)
    with torch.no_grad():
        full = model_sequence_logprobs(model, input_ids, attention_mask, labels, lean=False)
        lean = model_sequence_logprobs(model, input_ids, attention_mask, labels, chunk_rows=chunk_rows)
    assert lean.sum.dtype == torch.float32
    _relative_close(lean.sum, full.sum)
    assert torch.equal(lean.count, full.count)


def test_lean_path_gradients_equal_the_full_logits_path(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    input_ids, attention_mask, labels = _tiny_batch(tokenizer, seed=1)
    grads = {}
    for lean in (False, True):
        model.zero_grad()
        scores = model_sequence_logprobs(model, input_ids, attention_mask, labels, chunk_rows=1, lean=lean)
        (scores.mean * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
        grads[lean] = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for name, grad in grads[False].items():
        assert_close(grads[True][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_lean_chunks_hold_a_bounded_number_of_positions(tiny_model_and_tokenizer, monkeypatch):
    """No chunk projects more than the budget's positions, in the forward and the backward pass."""
    import prefalign.scoring.logprobs as logprobs

    model, tokenizer = tiny_model_and_tokenizer
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(logprobs, "LOGIT_CHUNK_ELEMENTS", 5 * vocab)
    seen = []
    original = logprobs._chunk_logits

    def spy(hidden, weight):
        seen.append(hidden.shape[0])
        return original(hidden, weight)

    monkeypatch.setattr(logprobs, "_chunk_logits", spy)
    input_ids, attention_mask, labels = _tiny_batch(tokenizer, seed=2)
    lean = model_sequence_logprobs(model, input_ids, attention_mask, labels)
    lean.sum.sum().backward()
    model.zero_grad()
    with torch.no_grad():
        full = model_sequence_logprobs(model, input_ids, attention_mask, labels, lean=False)
    # every position projected once forward and once backward (static shapes: the prompt positions
    # too, zeroed after), at most 5 at a time
    assert max(seen) == 5 and sum(seen) == 2 * input_ids.shape[0] * (input_ids.shape[1] - 1)
    _relative_close(lean.sum.detach(), full.sum)


def test_checkpointed_chunks_for_other_heads_match_the_full_path():
    """A head that is not a plain linear map (here: soft-capped logits) goes through checkpointed chunks."""
    from prefalign.scoring.logprobs import hidden_logprobs

    g = torch.Generator().manual_seed(7)
    head = torch.nn.Linear(8, 11, bias=True)
    hidden = torch.randn(13, 8, generator=g, requires_grad=True)
    tokens = torch.randint(0, 11, (13,), generator=g)
    lean = hidden_logprobs(hidden, tokens, head, chunk_tokens=4, softcap=3.0)
    (lean_grad,) = torch.autograd.grad(lean.sum(), hidden)
    logits = torch.tanh(head(hidden) / 3.0) * 3.0
    full = torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0]
    (full_grad,) = torch.autograd.grad(full.sum(), hidden)
    assert_close(lean, full)
    assert_close(lean_grad, full_grad)


def test_lean_path_through_a_lora_adapter(tiny_model_and_tokenizer):
    from peft import LoraConfig, get_peft_model

    from prefalign.models.loading import TinySpec, build_tiny_model

    model, tokenizer = build_tiny_model(TinySpec(seed=5))
    model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    input_ids, attention_mask, labels = _tiny_batch(tokenizer, seed=3)
    with torch.no_grad():
        full = model_sequence_logprobs(model, input_ids, attention_mask, labels, lean=False)
        lean = model_sequence_logprobs(model, input_ids, attention_mask, labels)
    _relative_close(lean.sum, full.sum)


def test_lean_gathered_path_equals_full_logits_and_separate_rows(tiny_model_and_tokenizer):
    from prefalign.data.packing import collate_shared_prompts, shared_prompt_attention_mask

    model, tokenizer = tiny_model_and_tokenizer
    g = torch.Generator().manual_seed(4)
    vocab = len(tokenizer)
    samples, sequences = [], ["x|a", "x|b", "x|c"]
    for b in range(2):
        prompt = torch.randint(3, vocab, (5 + b,), generator=g).tolist()
        sample = {"id": f"s{b}"}
        for k, name in enumerate(sequences):
            response = torch.randint(3, vocab, (4 + k,), generator=g).tolist()
            sample[f"{name}.input_ids"] = prompt + response
            sample[f"{name}.labels"] = [IGNORE_INDEX] * len(prompt) + response
        samples.append(sample)
    batch = collate_shared_prompts(samples, sequences, tokenizer.pad_token_id)
    mask = shared_prompt_attention_mask(batch["segment_ids"], "sdpa")
    args = (
        model,
        batch["input_ids"],
        mask,
        batch["position_ids"],
        batch["target_row"],
        batch["target_position"],
        batch["target_token"],
        batch["target_slot"],
        batch["num_slots"],
    )
    with torch.no_grad():
        full = model_gathered_sequence_logprobs(*args, lean=False)
        lean = model_gathered_sequence_logprobs(*args, chunk_tokens=3)
        # one row per sequence, sequence-major (slot k * B + b)
        ids = [samples[b][f"{n}.input_ids"] for n in sequences for b in range(2)]
        labs = [samples[b][f"{n}.labels"] for n in sequences for b in range(2)]
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
        labels = torch.full((len(ids), width), IGNORE_INDEX)
        attention = torch.zeros(len(ids), width, dtype=torch.long)
        for r, (i, lab) in enumerate(zip(ids, labs, strict=True)):
            input_ids[r, : len(i)], labels[r, : len(i)], attention[r, : len(i)] = (
                torch.tensor(i),
                torch.tensor(lab),
                1,
            )
        alone = model_sequence_logprobs(model, input_ids, attention, labels)
    _relative_close(lean.sum, full.sum)
    assert torch.equal(lean.count, full.count) and torch.equal(lean.count, alone.count)
    assert_close(lean.sum, alone.sum, rtol=1e-5, atol=1e-4)


def test_shared_prompt_rows_with_flex_attention_equal_separate_rows():
    """FlexAttention block masks keep the shared-prompt saving; torch's CPU build runs them forward-only,
    so this compares scores without gradients (the GPU check trains with them)."""
    import warnings

    from prefalign.data.packing import collate_shared_prompts, shared_prompt_attention_mask
    from prefalign.models.loading import TinySpec, build_tiny_model

    model, tokenizer = build_tiny_model(TinySpec(seed=6))
    g = torch.Generator().manual_seed(8)
    sequences, samples = ["x|a", "x|b", "x|c"], []
    for b in range(2):
        prompt = torch.randint(3, len(tokenizer), (6 + b,), generator=g).tolist()
        sample = {"id": f"s{b}"}
        for k, name in enumerate(sequences):
            response = torch.randint(3, len(tokenizer), (3 + 2 * k,), generator=g).tolist()
            sample[f"{name}.input_ids"] = prompt + response
            sample[f"{name}.labels"] = [IGNORE_INDEX] * len(prompt) + response
        samples.append(sample)
    batch = collate_shared_prompts(samples, sequences, tokenizer.pad_token_id)
    targets = [batch[k] for k in ("target_row", "target_position", "target_token", "target_slot")]
    scores = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex_attention without torch.compile (unfused) on CPU
        for attention in ("sdpa", "flex_attention"):
            model.set_attn_implementation(attention)
            mask = shared_prompt_attention_mask(batch["segment_ids"], attention)
            scores[attention] = model_gathered_sequence_logprobs(
                model, batch["input_ids"], mask, batch["position_ids"], *targets, batch["num_slots"]
            )
    assert type(shared_prompt_attention_mask(batch["segment_ids"], "flex_attention")).__name__ == "BlockMask"
    assert torch.equal(scores["flex_attention"].count, scores["sdpa"].count)
    assert_close(scores["flex_attention"].sum, scores["sdpa"].sum, rtol=1e-5, atol=1e-4)


def test_lean_logprobs_have_no_data_dependent_shape_and_match_the_gathered_values_bit_for_bit():
    """model_sequence_logprobs scores every position and zeroes the prompt ones (no nonzero(): on a
    GPU a host sync per step, found by prefalign-plan); on CPU its sums equal, bit for bit, those of
    the response positions gathered with nonzero() as before."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefalign.scoring.logprobs import _output_head, hidden_logprobs, last_hidden_states

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    input_ids = torch.randint(1, 97, (3, 11))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 8:] = 0
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX
    labels[1, :9] = IGNORE_INDEX
    labels[2, 8:] = IGNORE_INDEX
    got = model_sequence_logprobs(model, input_ids, attention_mask, labels, chunk_rows=1)
    hidden = last_hidden_states(model, input_ids=input_ids, attention_mask=attention_mask)
    head, _ = _output_head(model)
    targets = labels[:, 1:]
    rows, positions = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    logps = hidden_logprobs(hidden[rows, positions], targets[rows, positions], head, 11)
    expected = torch.zeros(3).index_add(0, rows, logps)
    assert torch.equal(got.sum, expected)
    assert got.count.tolist() == [7, 2, 4]
