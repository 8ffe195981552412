"""Bradley-Terry reward model: the loss, the reward head, and a short training run."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from prefalign.objectives import BradleyTerry
from prefalign.training.run import run_task, train


def test_bradley_terry_loss_and_accuracy():
    rewards = {"x|y+": torch.tensor([1.0, -0.5, 2.0]), "x|y-": torch.tensor([0.0, 0.5, 2.5])}
    output = BradleyTerry()(rewards, None, {})
    expected = [-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in [(1.0, 0.0), (-0.5, 0.5), (2.0, 2.5)]]
    assert_close(output.losses, torch.tensor(expected))
    assert output.metrics["rewards/accuracies"].tolist() == [1.0, 0.0, 0.0]
    penalised = BradleyTerry(margin_l2=0.1)(rewards, None, {})
    assert_close(penalised.losses - output.losses, 0.1 * (rewards["x|y+"] ** 2 + rewards["x|y-"] ** 2))


def test_reward_model_trains_from_the_config_and_ranks_held_out_pairs(compose_train):
    cfg = compose_train(
        [
            "objective=reward_model",
            "data=tiny_preference",
            "data.train.limit=64",
            "data.val.limit=16",
            "trainer.max_epochs=1",
            "optimizer.lr=1e-3",
            "logger=csv",
        ]
    )
    metrics = run_task(train, cfg)
    assert metrics["val/rewards/accuracies"] > 0.6  # a correct answer is ranked above a wrong one
    from transformers import AutoModelForSequenceClassification

    exported = AutoModelForSequenceClassification.from_pretrained(str(cfg.paths.output_dir) + "/hf")
    assert exported.config.num_labels == 1


def test_unknown_model_head_is_rejected(tmp_path):
    from prefalign.models.loading import load_model_and_tokenizer

    with pytest.raises(ValueError, match="model.head"):
        load_model_and_tokenizer(
            {"tiny": {"template": "chatml"}, "cache_dir": str(tmp_path), "head": "value"}
        )
