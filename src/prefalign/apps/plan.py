"""``prefalign-plan``: pre-flight of a training run on simulated GPUs (:mod:`prefalign.planning`).

Takes the same config and overrides as ``prefalign-train``, plus ``plan.*`` keys (``conf/plan.yaml``);
with ``sso_experiment=<name>`` it plans that SSO experiment's training config (iteration 1's, as
``prefalign-sso`` composes it; the starting model defaults to Llama-3.1-8B when the experiment leaves
it ``???``). Prints the per-rank memory table against the GPU, the fix when it does not fit,
tokens / FLOPs / GPU-hours, and the step's host syncs; writes the same as JSON (``plan.output``).

Examples::

    prefalign-plan experiment=poft_table1                    # 8 x H100, Mistral-7B, FSDP
    prefalign-plan experiment=poft_table1 plan.gpu=a100_40gb data.batch_size=16
    prefalign-plan sso_experiment=sso_table1 plan.fail_on_sync=true
    prefalign-plan model=llama3_8b trainer=fsdp2 trainer.devices=8 trainer.precision=bf16-mixed

Exit status: 0 fits; 1 does not fit (the fix, if any, is printed); 2 the plan could not run (the
error names the key, the project line or what to install); 3 host syncs with ``plan.fail_on_sync``;
4 rounding to the trainable parameters' dtype loses more than 1% of the peak-lr updates
(:mod:`prefalign.planning.rounding`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from prefalign.config import config_dir, register_resolvers

register_resolvers()

SSO_DEFAULT_MODEL = "meta-llama/Llama-3.1-8B"
"""The SSO paper's model, planned when an SSO experiment leaves ``model.name_or_path`` as ``???``."""


def run_plan(train_cfg: DictConfig, plan_cfg, default_output: Path) -> int:
    """Plan ``train_cfg``, print the table, write the JSON; returns the exit status."""
    from prefalign.planning.plan import PlanSettings, format_plan, make_plan

    settings = PlanSettings.from_config(plan_cfg)
    plan = make_plan(train_cfg, settings)
    print(format_plan(plan), flush=True)
    output = Path(settings.output) if settings.output else default_output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(plan.as_dict(), indent=2) + "\n", encoding="utf-8")
    print(f"plan written to {output}")
    if settings.fail_on_sync and plan.host_syncs:
        print(f"plan.fail_on_sync: {len(plan.host_syncs)} host sync(s) in the step", file=sys.stderr)
        return 3
    if not plan.fits:
        return 1
    if not plan.keeps_updates:
        print(
            "prefalign-plan: the optimizer would lose the updates to rounding (see master weights)",
            file=sys.stderr,
        )
        return 4
    return 0


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="plan")
def job(cfg: DictConfig) -> None:
    """Plan the ``train`` config composed with the command line's overrides."""
    from hydra.core.hydra_config import HydraConfig

    plan_cfg = cfg.plan
    with open_dict(cfg):
        del cfg["plan"]
    status = guarded(run_plan, cfg, plan_cfg, Path(HydraConfig.get().runtime.output_dir) / "plan.json")
    if status:
        sys.exit(status)


def guarded(fn, *args) -> int:
    """``fn(*args)``; an error of the config, the simulated step or torch's private APIs printed
    in one line with exit status 2 (``PREFALIGN_PLAN_DEBUG=1``: with its traceback)."""
    import os

    from prefalign.core.errors import ConfigError
    from prefalign.planning.checks import PlanStepError, print_traceback
    from prefalign.planning.torch_private import PrivateAPIError

    try:
        return fn(*args)
    except (ConfigError, PlanStepError, PrivateAPIError) as err:
        if os.environ.get("PREFALIGN_PLAN_DEBUG"):
            print_traceback(err)
        print(f"prefalign-plan: {err}", file=sys.stderr)
        return 2


def sso_train_config(overrides: list[str], extra_train_overrides: list[str] = ()) -> DictConfig:
    """Iteration 1's ``train`` config of the SSO run composed from ``sso`` with ``overrides``, as
    ``prefalign-sso`` builds it; ``model.name_or_path: ???`` becomes :data:`SSO_DEFAULT_MODEL`;
    ``extra_train_overrides`` are appended to the experiment's ``train_overrides``."""
    from hydra import compose, initialize_config_dir

    from prefalign.pipelines.sso import SSOPipeline

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="sso", overrides=overrides)
        if OmegaConf.is_missing(cfg.model, "name_or_path"):
            cfg.model.name_or_path = SSO_DEFAULT_MODEL
        with open_dict(cfg):  # no run folder is made: the planner reads the configs only
            cfg.work_dir = str(Path(cfg.paths.log_dir) / "plan" / str(cfg.task_name))
            cfg.train_overrides = [*cfg.train_overrides, *extra_train_overrides]
        return SSOPipeline(cfg).train_configs[1]


def sso_main(argv: list[str]) -> int:
    """``prefalign-plan sso_experiment=<name> [overrides] [plan.<key>=<value>]``."""
    from omegaconf import OmegaConf as OC

    plan_args = [a.removeprefix("plan.") for a in argv if a.startswith("plan.")]
    overrides = [a for a in argv if not a.startswith("plan.")]
    plan_cfg = OC.merge(OC.load(config_dir() / "plan.yaml").plan, OC.from_dotlist(plan_args))
    train_cfg = sso_train_config(overrides)
    name = next(a.split("=", 1)[1] for a in argv if a.startswith("sso_experiment="))
    return run_plan(train_cfg, plan_cfg, Path("logs") / "plan" / f"{name}.plan.json")


def batch_main(specs_path: str, results_path: str) -> int:
    """``python -m prefalign.apps.plan --batch <specs.json> <results.json>``: plan many configs in one
    process (the tests' sweep of the paper experiments). Each spec: ``{"overrides": [...], "plan":
    {...}, "depths": [k, ...], "train_overrides": [...]}`` (``sso_experiment=`` in the overrides: an SSO
    experiment, ``train_overrides`` appended to its iterations' overrides); one plan
    per depth (``plan.num_layers``; null: full depth). Results: per spec, ``{"plans": [plan JSON per
    depth]}`` or ``{"error": message}``."""
    from hydra import compose, initialize_config_dir

    from prefalign.planning.plan import PlanSettings, make_plan

    results = []
    for spec in json.loads(Path(specs_path).read_text(encoding="utf-8")):
        overrides = list(spec["overrides"])
        try:
            if any(a.startswith("sso_experiment=") for a in overrides):
                train_cfg = sso_train_config(overrides, spec.get("train_overrides", []))
            else:
                with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
                    train_cfg = compose(config_name="plan", overrides=overrides)
                with open_dict(train_cfg):
                    del train_cfg["plan"]
            plans = []
            for depth in spec.get("depths", [None]):
                settings = PlanSettings.from_config({**spec.get("plan", {}), "num_layers": depth})
                plans.append(make_plan(train_cfg, settings).as_dict())
            results.append({"overrides": overrides, "plans": plans})
        except Exception as err:  # noqa: BLE001 - every failure reported with its spec
            results.append({"overrides": overrides, "error": f"{type(err).__name__}: {err}"})
    Path(results_path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def main() -> None:
    """Entry point: load the fake-CUDA shim before torch is imported, then plan."""
    from prefalign.planning.shim import ShimUnavailable, prepare_simulated_cuda

    try:
        prepare_simulated_cuda()
    except ShimUnavailable as err:
        print(f"prefalign-plan: {err}", file=sys.stderr)
        sys.exit(2)
    argv = sys.argv[1:]
    if argv[:1] == ["--batch"]:
        if len(argv) != 3:
            sys.exit("usage: python -m prefalign.apps.plan --batch <specs.json> <results.json>")
        sys.exit(batch_main(argv[1], argv[2]))
    if any(a.startswith("sso_experiment=") for a in argv):
        status = guarded(sso_main, argv)
        if status:
            sys.exit(status)
    else:
        job()


if __name__ == "__main__":
    main()
