"""DPO / IPO / SSO training: one concatenated forward, precomputed vs live reference, end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.testing import assert_close

from prefalign.config import bundled
from prefalign.core.errors import ConfigError
from prefalign.core.names import reference_columns
from prefalign.data.preference import PreferenceDataModule
from prefalign.generation.principles import load_principles, principle_system_message
from prefalign.modules import MultiSequenceModule
from prefalign.objectives import SSO, PairwisePreference
from prefalign.scoring.frozen import attach_frozen_columns
from prefalign.scoring.logprobs import sequence_logprobs
from prefalign.training.run import run_task, train

SSO_SEQUENCES = SSO().sequences


@pytest.fixture
def sso_data(tmp_path):
    """SSO-shaped records built from the bundled pairs: y_o, and the Accuracy principles as x+ / x-."""
    accuracy = load_principles()["Accuracy"]
    rows = []
    with open(bundled("tiny_pref_train.jsonl")) as f:
        for line in list(f)[:48]:
            r = json.loads(line)
            rows.append(
                {
                    **r,
                    "original": r["chosen"].split(" is ")[-1],
                    "system_good": principle_system_message(accuracy, True),
                    "system_bad": principle_system_message(accuracy, False),
                }
            )
    path = tmp_path / "sso.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _batch(tokenizer, path, sequences, reference=None, share_prompts=True):
    dm = PreferenceDataModule(
        tokenizer,
        train={"path": str(path), "limit": 8},
        sequences=sequences,
        required_columns=[c for name in sequences for c in reference_columns(name)] if reference else [],
        max_length=1024,
        batch_size=4,
        share_prompts=share_prompts,
    )
    attach_frozen_columns(dm, reference=reference)  # what the training app does before the fit
    dm.setup()
    return next(iter(dm.train_dataloader()))


class _Capture(SSO):
    """SSO that keeps the log-probs it was given, for inspection."""

    def forward(self, policy, reference, batch):
        self.policy, self.reference = policy, reference
        return super().forward(policy, reference, batch)


@pytest.mark.parametrize("share_prompts", [False, True], ids=["padded_rows", "shared_prompt_rows"])
def test_one_concatenated_forward_equals_separate_forwards(tiny_model_and_tokenizer, sso_data, share_prompts):
    model, tokenizer = tiny_model_and_tokenizer
    module = MultiSequenceModule(model, _Capture(), optimizer=None, reference_model=copy.deepcopy(model))
    module.objective_output(_batch(tokenizer, sso_data, SSO_SEQUENCES, share_prompts=share_prompts))
    policy = module.objective.policy
    batch = _batch(tokenizer, sso_data, SSO_SEQUENCES, share_prompts=False)  # one row per sequence
    size = len(batch["id"])
    for k, name in enumerate(SSO_SEQUENCES):
        rows = slice(k * size, (k + 1) * size)
        n = int(batch["attention_mask"][rows].sum(1).max())
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"][rows, :n], attention_mask=batch["attention_mask"][rows, :n]
            ).logits
        alone = sequence_logprobs(logits, batch["labels"][rows, :n])
        assert_close(policy[name].sum.detach(), alone.sum, rtol=1e-4, atol=1e-4)
        assert torch.equal(policy[name].count, alone.count)


def test_precomputed_reference_equals_the_live_reference(
    tiny_model_and_tokenizer, sso_data, session_cache, tmp_path
):
    model, tokenizer = tiny_model_and_tokenizer
    reference = {
        "model": {"tiny": {"template": "chatml"}, "cache_dir": f"{session_cache}/models"},
        "cache_dir": str(tmp_path / "ref"),
        "score_missing": True,
    }
    batch = _batch(tokenizer, sso_data, SSO_SEQUENCES, reference)
    precomputed = MultiSequenceModule(model, _Capture(), optimizer=None)
    precomputed.objective_output(batch)
    live = MultiSequenceModule(model, _Capture(), optimizer=None, reference_model=copy.deepcopy(model))
    live.objective_output(batch)
    for name in SSO_SEQUENCES:
        assert_close(
            precomputed.objective.reference[name].sum,
            live.objective.reference[name].sum,
            rtol=1e-4,
            atol=1e-3,
        )
        assert torch.equal(precomputed.objective.reference[name].count, live.objective.reference[name].count)
    # the tiny reference is the same model: every log-ratio is zero, so IPO's loss is (1/(2*0.2))^2
    assert_close(
        precomputed.objective_output(batch).metrics["base_loss"], torch.full((4,), 6.25), rtol=1e-3, atol=1e-3
    )


@pytest.mark.parametrize("objective", ["dpo", "ipo"])
def test_dpo_and_ipo_train_from_the_config(compose_train, objective):
    cfg = compose_train(
        [
            f"objective={objective}",
            "data=tiny_preference",
            "data.train.limit=32",
            "data.val.limit=8",
            "trainer.max_epochs=1",
            "logger=csv",
        ]
    )
    metrics = run_task(train, cfg)
    assert {"train/loss", "train/rewards/margins", "val/rewards/accuracies"} <= set(metrics)


@pytest.mark.parametrize("objective", ["sso", "pbaa"])
def test_sso_and_pbaa_train_on_sso_data(compose_train, objective, sso_data):
    cfg = compose_train(
        [
            f"objective={objective}",
            "data=tiny_preference",
            f"data.train.path={sso_data}",
            "data.val=null",
            "data.batch_size=4",
            "data.max_length=1024",
            "trainer.max_steps=3",
            "logger=csv",
        ]
    )
    metrics = run_task(train, cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert ("train/g" in metrics) == (objective == "sso")
    assert (
        metrics["train/weight"] == pytest.approx(1.0)
        if objective == "pbaa"
        else metrics["train/weight"] < 1.0
    )


def test_live_reference_mode_trains(compose_train):
    cfg = compose_train(
        [
            "objective=dpo",
            "data=tiny_preference",
            "data.train.limit=16",
            "data.val=null",
            "reference.mode=live",
            "trainer.max_steps=2",
            "logger=csv",
        ]
    )
    assert "train/loss" in run_task(train, cfg)


def test_mismatched_objective_and_data_are_a_config_error(compose_train):
    with pytest.raises(ConfigError, match="preference data"):
        train(compose_train(["objective=dpo", "data=tiny_chat"]))
    with pytest.raises(ConfigError, match="chat data"):
        train(compose_train(["objective=ce", "data=tiny_preference"]))


def test_settings_of_another_data_module_are_a_config_error_naming_the_key(compose_train):
    for key in ("+data.noise={num_samples: 4}", "+data.filter_top_fraction=0.5", "+data.aligned={}"):
        with pytest.raises(
            ConfigError, match=rf"`data\.{key[6:].split('=')[0]}`: not a setting of PreferenceDataModule"
        ):
            train(compose_train(["objective=dpo", "data=tiny_preference", key]))
    with pytest.raises(ConfigError, match=r"`data\.share_prompts`: not a setting of ChatDataModule"):
        train(compose_train(["objective=ce", "+data.share_prompts=false"]))


def test_a_module_target_other_than_the_objectives_module_is_a_config_error(compose_train):
    with pytest.raises(ConfigError, match=r"module._target_.*PairwisePreference.module"):
        train(
            compose_train(
                [
                    "objective=dpo",
                    "data=tiny_preference",
                    "module._target_=prefalign.modules.SingleSequenceModule",
                ]
            )
        )
    cfg = compose_train(
        [
            "objective=dpo",
            "data=tiny_preference",
            "data.train.limit=8",
            "data.val=null",
            "module._target_=prefalign.modules.MultiSequenceModule",  # the objective's own: accepted
            "module.logprob_chunk_rows=2",
            "trainer.max_steps=1",
            "logger=csv",
        ]
    )
    assert "train/loss" in run_task(train, cfg)


def test_shared_prompt_rows_with_flash_attention_are_a_config_error(compose_train):
    cfg = compose_train(
        ["objective=dpo", "data=tiny_preference", "model.attn_implementation=flash_attention_2"]
    )
    with pytest.raises(ConfigError, match="data.share_prompts=false"):
        train(cfg)


def test_pairwise_objective_needs_its_sequences(tiny_model_and_tokenizer, sso_data):
    model, tokenizer = tiny_model_and_tokenizer
    batch = _batch(tokenizer, sso_data, ("x|y+", "x|y-"))
    module = MultiSequenceModule(model, SSO(), optimizer=None, reference_model=copy.deepcopy(model))
    with pytest.raises(KeyError, match="lacks sequence"):
        module.objective_output(batch)
    assert torch.isfinite(
        MultiSequenceModule(model, PairwisePreference(), optimizer=None, reference_model=copy.deepcopy(model))
        .objective_output(batch)
        .loss()
    )


def test_two_stage_recipe_dpo_from_the_first_stage_export(compose_train, tmp_path):
    """PoFT paper Table 3 at tiny scale: a first-stage SFT run, then DPO from its Hugging Face export."""
    first = compose_train(["trainer.max_steps=2", "logger=csv"], output="stage1")
    run_task(train, first)
    export = tmp_path / "stage1" / "hf"
    second = compose_train(
        [
            "objective=dpo",
            "data=tiny_preference",
            "data.train.limit=16",
            "data.val=null",
            "model=hf",
            f"model.name_or_path={export}",
            "model.dtype=float32",
            "trainer.max_steps=2",
            "logger=csv",
        ],
        output="stage2",
    )
    assert "train/rewards/margins" in run_task(train, second)
    assert second.reference.model.name_or_path == str(export)  # the first stage is DPO's reference
