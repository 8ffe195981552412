"""MultiSequenceModule / RewardModelModule: the sequence-major split (core.names) and the objectives they accept."""

from __future__ import annotations

import pytest
import torch

from prefalign.core.names import split_sequence_major, stack_sequence_major
from prefalign.data.preference import PreferenceDataModule
from prefalign.modules import MultiSequenceModule, RewardModelModule
from prefalign.modules.multi_sequence import split_by_sequence
from prefalign.objectives import BradleyTerry, CrossEntropy, PairwisePreference
from prefalign.scoring.logprobs import SequenceLogProbs


def test_split_by_sequence_undoes_the_sequence_major_stack():
    names = ["x|y+", "x|y-", "x+|y+"]
    samples = [{"id": i} for i in range(4)]
    stacked = stack_sequence_major(samples, names)
    scores = SequenceLogProbs(
        sum=torch.tensor([float(10 * names.index(n) + s["id"]) for n, s in stacked]),
        count=torch.tensor([names.index(n) for n, _ in stacked]),
    )
    split = split_by_sequence(scores, names)
    for k, name in enumerate(names):
        assert split[name].sum.tolist() == [10.0 * k + i for i in range(4)]
        assert split[name].count.tolist() == [k] * 4
    assert list(split_sequence_major([n for n, _ in stacked], names)) == names


def test_modules_reject_objectives_of_the_other_batch_shape(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    with pytest.raises(TypeError, match="not a multi-sequence objective"):
        MultiSequenceModule(model, CrossEntropy(), optimizer=None)


def test_objectives_name_the_module_of_their_batch_shape():
    assert CrossEntropy().module == "prefalign.modules.SingleSequenceModule"
    assert PairwisePreference().module == "prefalign.modules.MultiSequenceModule"
    assert BradleyTerry().module == "prefalign.modules.RewardModelModule"
    # and the modules name the data they read
    assert RewardModelModule.data_module is PreferenceDataModule
    assert MultiSequenceModule.data_module is PreferenceDataModule
