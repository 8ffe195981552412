import pytest
import torch
from torch.testing import assert_close

from prefalign.data.batching import response_targets
from prefalign.data.chat import IGNORE_INDEX
from prefalign.scoring.logprobs import (
    batch_targets,
    gathered_sequence_logprobs,
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


def _targets(labels):
    return batch_targets(response_targets(labels))


@pytest.mark.parametrize("host_targets", [True, False])
@pytest.mark.parametrize("chunk_rows", [None, 1])
def test_lean_path_equals_the_full_logits_path(tiny_model_and_tokenizer, chunk_rows, host_targets):
    model, tokenizer = tiny_model_and_tokenizer
    input_ids, attention_mask, labels = _tiny_batch(tokenizer)
    targets = _targets(labels) if host_targets else None
    with torch.no_grad():
        full = model_sequence_logprobs(model, input_ids, attention_mask, labels, lean=False)
        lean = model_sequence_logprobs(
            model, input_ids, attention_mask, labels, chunk_rows=chunk_rows, targets=targets
        )
    assert lean.sum.dtype == torch.float32
    _relative_close(lean.sum, full.sum)
    assert torch.equal(lean.count, full.count)


@pytest.mark.parametrize("host_targets", [True, False])
def test_lean_path_gradients_equal_the_full_logits_path(tiny_model_and_tokenizer, host_targets):
    model, tokenizer = tiny_model_and_tokenizer
    input_ids, attention_mask, labels = _tiny_batch(tokenizer, seed=1)
    targets = _targets(labels) if host_targets else None
    grads = {}
    for lean in (False, True):
        model.zero_grad()
        scores = model_sequence_logprobs(
            model, input_ids, attention_mask, labels, chunk_rows=1, lean=lean, targets=targets
        )
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
    targets = _targets(labels)
    lean = model_sequence_logprobs(model, input_ids, attention_mask, labels, targets=targets)
    lean.sum.sum().backward()
    with torch.no_grad():
        full = model_sequence_logprobs(model, input_ids, attention_mask, labels, lean=False)

    # the host's response targets (padded to their bucket) projected in the forward and the backward,
    # at most 5 at a time (the last chunk's logits kept from the forward, not recomputed); the
    # prompt positions are never projected
    def projected(n):
        return 2 * n - (n % 5 or 5)

    responses = int((labels[:, 1:] != IGNORE_INDEX).sum())
    positions = input_ids.shape[0] * (input_ids.shape[1] - 1)
    assert max(seen) == 5 and sum(seen) == projected(len(targets[0])) < projected(positions)
    assert responses <= len(targets[0]) < responses + 16
    _relative_close(lean.sum.detach(), full.sum)
    # without targets, every position is projected (static shapes: the prompt ones zeroed after)
    seen.clear()
    model_sequence_logprobs(model, input_ids, attention_mask, labels).sum.sum().backward()
    model.zero_grad()
    assert max(seen) == 5 and sum(seen) == projected(positions)


def test_a_second_backward_recomputes_the_kept_chunk():
    """The last chunk's logits are kept for the first backward and consumed by it; a second
    backward through the same graph (retain_graph) recomputes them and gives the same gradients."""
    from prefalign.scoring.logprobs import hidden_logprobs

    g = torch.Generator().manual_seed(9)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(13, 8, generator=g, requires_grad=True)
    tokens = torch.randint(0, 11, (13,), generator=g)
    lean = hidden_logprobs(hidden, tokens, head, chunk_tokens=4)
    first = torch.autograd.grad(lean.sum(), (hidden, head.weight), retain_graph=True)
    second = torch.autograd.grad(lean.sum(), (hidden, head.weight))
    full = torch.log_softmax(head(hidden), -1).gather(1, tokens[:, None])[:, 0]
    expected = torch.autograd.grad(full.sum(), (hidden, head.weight))
    for a, b, c in zip(first, second, expected, strict=True):
        assert torch.equal(a, b)
        assert_close(a, c)


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
    targets = _targets(labels)
    with torch.no_grad():
        full = model_sequence_logprobs(model, input_ids, attention_mask, labels, lean=False)
        lean = model_sequence_logprobs(model, input_ids, attention_mask, labels)
    _relative_close(lean.sum, full.sum)
    grads = {}
    for path in ("full", "lean"):
        model.zero_grad()
        scores = model_sequence_logprobs(
            model, input_ids, attention_mask, labels, lean=path == "lean", targets=targets
        )
        (scores.mean * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
        grads[path] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert grads["lean"].keys() == grads["full"].keys() and any("lora" in n for n in grads["lean"])
    for name, grad in grads["full"].items():
        assert_close(grads["lean"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


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
    assert len(batch["target_token"]) > int(lean.count.sum())  # bucket padding, dropped from the sums
    grads = {}
    for path in ("full", "lean"):
        model.zero_grad()
        scores = model_gathered_sequence_logprobs(*args, chunk_tokens=3, lean=path == "lean")
        (scores.mean * torch.linspace(-1.0, 2.0, batch["num_slots"])).sum().backward()
        grads[path] = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for name, grad in grads["full"].items():
        assert_close(grads["lean"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


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
    """model_sequence_logprobs reads the response positions from the host's targets (or, without
    them, scores every position and zeroes the prompt ones): no nonzero() on the device, on a GPU a
    host sync per step (found by prefalign-plan); on CPU both give, bit for bit, the sums of the
    response positions gathered on the device with nonzero()."""
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
    targeted = model_sequence_logprobs(
        model, input_ids, attention_mask, labels, chunk_rows=1, targets=_targets(labels)
    )
    hidden = last_hidden_states(model, input_ids=input_ids, attention_mask=attention_mask)
    head, _ = _output_head(model)
    targets = labels[:, 1:]
    rows, positions = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    logps = hidden_logprobs(hidden[rows, positions], targets[rows, positions], head, 11)
    expected = torch.zeros(3).index_add(0, rows, logps)
    assert torch.equal(got.sum, expected) and torch.equal(targeted.sum, expected)
    assert got.count.tolist() == targeted.count.tolist() == [7, 2, 4]


def test_target_buckets_repeat_shapes_and_bound_the_padding():
    from prefalign.data.batching import target_bucket

    sizes = [target_bucket(n) for n in range(1, 5000)]
    assert target_bucket(0) == 0 and target_bucket(1) == 16 and target_bucket(16) == 16
    assert target_bucket(17) == 32 and target_bucket(129) == 144 and target_bucket(1000) == 1024
    for n, size in enumerate(sizes, 1):
        assert n <= size < n + max(16, n / 8 + 1), n
    assert len(set(sizes)) <= 8 * 13  # at most eight shapes per power of two


def test_response_targets_index_the_labels_and_pad_into_a_dropped_slot():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX], [IGNORE_INDEX, 7, 8, 9, 4]])
    targets = response_targets(labels)
    assert targets["target_row"][:6].tolist() == [0, 0, 1, 1, 1, 1]
    assert targets["target_position"][:6].tolist() == [1, 2, 0, 1, 2, 3]
    assert targets["target_token"][:6].tolist() == [5, 6, 7, 8, 9, 4]
    assert targets["target_slot"][:6].tolist() == [0, 0, 1, 1, 1, 1]
    # padded to the bucket (16): row 0, position 0, token 0, slot 2 (one past the sequences)
    assert len(targets["target_row"]) == 16
    assert set(targets["target_slot"][6:].tolist()) == {2} and set(targets["target_row"][6:].tolist()) == {0}
    assert set(targets["target_token"][6:].tolist()) == {0}
    logits = torch.randn(2, 5, 11)
    gathered = gathered_sequence_logprobs(logits, *batch_targets(targets), num_slots=2)
    plain = sequence_logprobs(logits, labels)
    assert_close(gathered.sum, plain.sum) and torch.equal(gathered.count, plain.count)


def _relative_error(actual, expected):
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def test_lean_gradients_under_bf16_autocast_match_the_full_path_on_large_logits():
    """trainer=gpu's bf16-mixed over fp32 weights: the lean backward recomputes its logits under the
    forward's autocast, so its softmax is normalised with the normaliser of the same logits.

    Tolerance: both paths round the logits to bf16 the same way (unit roundoff u = 2**-8); they
    differ in the backward, where the full path's matmuls round their three operands (dlogits, the
    hidden states, the head) to bf16 and the lean one keeps them in fp32, an error of at most
    3u = 1.2% per product (measured: 0.3% on the head, 0.5% overall). A backward that recomputes
    fp32 logits against the forward's bf16 normaliser has softmax errors of about ``|z| u`` with
    logits ``|z|`` above 30 here: 6% on the head, 5% overall, before the fix.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=211,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).train()
    with torch.no_grad():
        model.lm_head.weight.mul_(100.0)  # large logits, as a trained model's
    input_ids = torch.randint(1, 211, (4, 17))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[3, 12:] = 0
    labels = input_ids.clone()
    labels[:, :5] = IGNORE_INDEX
    labels[3, 12:] = IGNORE_INDEX
    targets = _targets(labels)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])
    grads = {}
    for path in ("full", "lean"):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scores = model_sequence_logprobs(
                model, input_ids, attention_mask, labels, chunk_rows=1, lean=path == "lean", targets=targets
            )
        (scores.mean * weights).sum().backward()
        grads[path] = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(input_ids=input_ids).logits
    assert logits.abs().max() > 30  # the regime where the normaliser's precision matters
    tolerance = 3 * 2**-8
    head = _relative_error(grads["lean"]["lm_head.weight"], grads["full"]["lm_head.weight"])
    flat = {p: torch.cat([g.flatten() for g in grads[p].values()]) for p in grads}
    overall = _relative_error(flat["lean"], flat["full"])
    assert head < tolerance and overall < tolerance, (head, overall)
