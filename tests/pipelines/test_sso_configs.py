"""Every SSO experiment config, and every run of its sweeps, composes into the training configs of
its iterations, with the settings of the paper (checked on the composed ``train`` configs)."""

from __future__ import annotations

import itertools

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from prefalign.config import compose_config, config_dir
from prefalign.core.errors import ConfigError
from prefalign.pipelines.sso import SSOPipeline

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "sso_experiment").glob("sso_*.yaml"))


def _sweep_runs(experiment: str) -> list[list[str]]:
    """The overrides of every run of an experiment's sweep (``hydra.sweeper.params``), as Hydra's
    basic sweeper expands them (the cartesian product)."""
    params = OmegaConf.load(config_dir() / "sso_experiment" / f"{experiment}.yaml")
    params = OmegaConf.select(params, "hydra.sweeper.params") or {}
    parser = OverridesParser.create()
    axes = []
    for key, value in params.items():
        (override,) = parser.parse_overrides([f"{key}={value}"])
        values = [override.value()] if not override.is_sweep_override() else list(override.sweep_iterator())
        axes.append([f"{key}={_text(v)}" for v in values])
    return [list(run) for run in itertools.product(*axes)]


def _text(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(f"'{getattr(v, 'text', v)}'" for v in value) + "]"
    return str(value)


def _pipeline(overrides, tmp_path):
    """The SSO config with ``overrides`` and the pipeline built from it (which composes and
    validates every iteration's training config, loading no model)."""
    GlobalHydra.instance().clear()
    pipeline = SSOPipeline(
        compose_config(
            "sso",
            [*overrides, f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache"],
            return_hydra_config=True,  # the experiments' sweeps are checked
        )
    )
    return pipeline.cfg, pipeline


@pytest.mark.parametrize(
    ("variant", "objective", "flags"),
    [
        ("sso", "sso", (True, True)),
        ("pbaa", "pbaa", (False, False)),
        ("wo_w", "sso", (False, True)),
        ("wo_g", "sso", (True, False)),
    ],
)
def test_cpu_study_variants_choose_the_table5_objectives(variant, objective, flags, tmp_path):
    (tmp_path / "policy" / "sft").mkdir(parents=True)  # the study's SFT policy (π_0) must exist
    cfg, pipeline = _pipeline(["sso_experiment=cpu_world_sso", f"variant={variant}", "seed=2"], tmp_path)
    assert cfg.train_objective == objective
    assert cfg.run_name == f"{variant}_seed2" and cfg.iterations == 3
    assert cfg.model.name_or_path == f"{tmp_path}/policy/sft"
    assert cfg.principles.path.endswith("principles_correctness.yaml")
    assert cfg.judge.path == cfg.prompts.path == f"{tmp_path}/data/verifiable_principled/prompts.jsonl"
    assert sorted(pipeline.train_configs) == [1, 2, 3]
    for i, train in pipeline.train_configs.items():
        assert train.objective._target_.endswith("SSO")
        assert (train.objective.use_weight, train.objective.use_steering) == flags
        assert (train.optimizer.lr, train.trainer.max_epochs, train.data.batch_size) == (3.0e-4, 2, 16)
        assert train.seed == 2 + i
        assert train.data.train.path == str(pipeline.iteration_dir(i) / "preferences.jsonl")
        # the previous policy is the model and the reference: pi_0 the SFT policy, then pi_{i-1}
        previous = f"{tmp_path}/policy/sft" if i == 1 else str(pipeline.iteration_dir(i - 1) / "policy")
        assert train.model.name_or_path == train.reference.model.name_or_path == previous


def _expected_flags(objective: str, objective_overrides: str) -> tuple[bool, bool]:
    if objective == "pbaa":
        return False, False
    return "use_weight=false" not in objective_overrides, "use_steering=false" not in objective_overrides


@pytest.mark.parametrize(
    ("experiment", "run"),
    [(e, run) for e in EXPERIMENTS for run in _sweep_runs(e)],
    ids=lambda v: v if isinstance(v, str) else ";".join(v) or "no-sweep",
)
def test_every_sso_experiment_run_composes_the_papers_training_config(experiment, run, tmp_path):
    cfg, pipeline = _pipeline(
        [f"sso_experiment={experiment}", "model.name_or_path=some/sft-model", *run], tmp_path
    )
    assert cfg.iterations == 3
    assert (cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens) == (0.7, 0.8, 2048)
    assert cfg.prompts.path == "HuggingFaceH4/ultrafeedback_binarized"
    if experiment in ("sso_table1", "sso_table2", "sso_table6"):
        assert cfg.hydra.sweeper.params.train_objective == "sso,pbaa"
    flags = _expected_flags(cfg.train_objective, str(list(cfg.objective_overrides)))
    for train in pipeline.train_configs.values():
        objective = train.objective
        assert objective._target_.endswith("SSO")
        assert (objective.use_weight, objective.use_steering) == flags
        assert objective.base == ("dpo" if experiment == "sso_table6" else "ipo")
        assert objective.beta == (0.1 if experiment == "sso_table6" else 0.2)
        assert (objective.alpha, objective.gamma) == (0.66, 0.1)
        assert train.optimizer.lr == 5.0e-7 and train.scheduler.warmup_ratio == 0.1
        assert train.data.max_length == 4096 and train.data.batch_size == 2
        # 8 x 2 x 8 = 128: micro-batch 2 fits an 80 GB GPU with fp32 master weights (prefalign-plan)
        assert train.trainer.devices == 8 and train.trainer.accumulate_grad_batches == 8
        assert train.trainer.max_epochs == 1


def test_the_sweeps_expand_to_the_papers_runs():
    assert _sweep_runs("sso_table1") == [["train_objective=sso"], ["train_objective=pbaa"]]
    assert len(_sweep_runs("sso_table2")) == 4
    assert _sweep_runs("sso_table5") == [
        ["objective_overrides=[]"],
        ["objective_overrides=['objective.use_weight=false']"],
        ["objective_overrides=['objective.use_steering=false']"],
        ["objective_overrides=['objective.use_weight=false','objective.use_steering=false']"],
    ]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("objective_overrides=['objective.use_wieght=false']", "use_wieght"),
        ("train_overrides=['data=tiny_preference','optimizer.lrr=1e-4']", "optimizer.lrr"),
        ("train_objective=ssso", "ssso"),
        ("train_overrides=['data=tiny_preference','optimizer.lr=-1']", "optimizer.lr"),
        ("objective_overrides=['objective.beta=abc']", "beta"),
    ],
)
def test_a_typo_in_the_iteration_overrides_fails_at_start_up_naming_the_key(override, named, tmp_path):
    with pytest.raises(ConfigError, match=r"iteration 1's training config") as err:
        _pipeline(["sso_experiment=sso_table1", "model.name_or_path=some/sft-model", override], tmp_path)
    assert named in str(err.value)


def test_the_training_group_objective_typed_on_the_sso_command_line_names_the_key_to_use(tmp_path):
    with pytest.raises(ConfigError, match=r"`train_objective=<name>` \(e.g. train_objective=pbaa\)"):
        _pipeline(["objective=pbaa"], tmp_path)
