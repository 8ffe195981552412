"""Every SSO paper experiment config composes, with the settings of the paper."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from prefalign.config import config_dir, register_resolvers

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "sso_experiment").glob("sso_*.yaml"))


def _compose_sso(overrides):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="sso", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


@pytest.mark.parametrize(
    ("variant", "objective", "objective_overrides"),
    [
        ("sso", "sso", []),
        ("pbaa", "pbaa", []),
        ("wo_w", "sso", ["objective.use_weight=false"]),
        ("wo_g", "sso", ["objective.use_steering=false"]),
    ],
)
def test_cpu_study_variants_choose_the_table5_objectives(variant, objective, objective_overrides, tmp_path):
    cfg = _compose_sso(
        ["sso_experiment=cpu_world_sso", f"variant={variant}", "seed=2", f"paths.root_dir={tmp_path}"]
    )
    assert (cfg.objective, list(cfg.objective_overrides)) == (objective, objective_overrides)
    assert cfg.run_name == f"{variant}_seed2" and cfg.iterations == 3
    assert cfg.model.name_or_path == f"{tmp_path}/policy/sft"
    assert cfg.principles.path.endswith("principles_correctness.yaml")
    assert cfg.judge.path == cfg.prompts.path == f"{tmp_path}/data/verifiable_principled/prompts.jsonl"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_sso_experiment_composes_with_the_papers_settings(experiment, tmp_path):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="sso",
            overrides=[
                f"sso_experiment={experiment}",
                "model.name_or_path=some/sft-model",
                f"paths.root_dir={tmp_path}",
            ],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    assert cfg.iterations == 3
    assert (cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens) == (0.7, 0.8, 2048)
    assert "optimizer.lr=5.0e-7" in cfg.train_overrides
    assert cfg.prompts.path == "HuggingFaceH4/ultrafeedback_binarized"
    if experiment == "sso_table6":
        assert "objective.base=dpo" in cfg.objective_overrides
    if experiment in ("sso_table1", "sso_table2", "sso_table6"):
        assert cfg.hydra.sweeper.params.objective == "sso,pbaa"


def test_the_ablation_sweep_parses_into_four_runs():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    params = OmegaConf.load(config_dir() / "sso_experiment" / "sso_table5.yaml").hydra.sweeper.params
    (override,) = OverridesParser.create().parse_overrides(
        [f"objective_overrides={params.objective_overrides}"]
    )
    values = [[getattr(item, "text", item) for item in value] for value in override.sweep_iterator()]
    assert values == [
        [],
        ["objective.use_weight=false"],
        ["objective.use_steering=false"],
        ["objective.use_weight=false", "objective.use_steering=false"],
    ]
