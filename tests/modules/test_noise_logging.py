"""Per-subset logging of noise-mixed batches (``<stage>/<metric>_clean`` / ``_noise``) reads the
noise count from the host and takes masked means: no host sync in the step (prefalign-plan), and
the values of the boolean-indexed means it replaced."""

import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from prefalign.core.names import NOISE
from prefalign.modules.base import NOISE_COUNT
from prefalign.modules.multi_sequence import MultiSequenceModule
from prefalign.objectives.base import ObjectiveOutput
from prefalign.objectives.pairwise import PairwisePreference


def _module():
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return MultiSequenceModule(LlamaForCausalLM(config), PairwisePreference(), optimizer=torch.optim.AdamW)


def test_noise_subset_means_match_boolean_indexing_and_count_on_the_host():
    module = _module()
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, (value, kwargs.get("batch_size")))
    noise = torch.tensor([True, False, False, True, False])
    batch = module.on_before_batch_transfer({"id": list("abcde"), NOISE: noise.clone()}, 0)
    assert batch[NOISE_COUNT] == 2 and isinstance(batch[NOISE_COUNT], int)
    margins = torch.tensor([0.3, -1.25, 2.0, 0.7, 0.01])
    output = ObjectiveOutput(losses=torch.zeros(5), metrics={"rewards/margins": margins})
    module._log_output("train", output, torch.tensor(0.0), batch)
    assert_close(logged["train/rewards/margins_noise"][0], margins[noise].mean())
    assert_close(logged["train/rewards/margins_clean"][0], margins[~noise].mean())
    assert logged["train/rewards/margins_noise"][1] == 2
    assert logged["train/rewards/margins_clean"][1] == 3


def test_an_empty_subset_is_not_logged():
    module = _module()
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    batch = module.on_before_batch_transfer({"id": list("ab"), NOISE: torch.tensor([False, False])}, 0)
    output = ObjectiveOutput(losses=torch.zeros(2), metrics={"rewards/margins": torch.tensor([1.0, 3.0])})
    module._log_output("train", output, torch.tensor(0.0), batch)
    assert "train/rewards/margins_noise" not in logged
    assert logged["train/rewards/margins_clean"] == 2.0
