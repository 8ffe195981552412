import pytest
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from prefalign.modules import SingleSequenceModule
from prefalign.training.strategies import decoder_layer_classes, decoder_layers, fsdp_strategy


def test_decoder_layers_are_found_from_no_split_modules(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    assert decoder_layer_classes(model) == {LlamaDecoderLayer}
    assert len(decoder_layers(model)) == model.config.num_hidden_layers


def test_fsdp_strategy_wraps_and_checkpoints_each_decoder_layer(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    strategy = fsdp_strategy(
        model, activation_checkpointing=True, sharding_strategy="FULL_SHARD", state_dict_type="sharded"
    )
    assert isinstance(strategy, FSDPStrategy)
    assert strategy._state_dict_type == "sharded"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert LlamaDecoderLayer in policy._module_classes
    checkpointed = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert checkpointed._module_classes == {LlamaDecoderLayer}
    without = fsdp_strategy(model, activation_checkpointing=False)
    assert not without._activation_checkpointing_kwargs


def test_a_model_without_decoder_layer_metadata_is_a_clear_error():
    with pytest.raises(ValueError, match="decoder-layer classes"):
        decoder_layer_classes(nn.Linear(2, 2))


def test_module_rejects_an_objective_of_another_batch_shape(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    with pytest.raises(TypeError, match="module._target_"):
        SingleSequenceModule(model, objective=nn.Identity(), optimizer=None)
