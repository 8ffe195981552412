"""A plan of a configured training run: per-rank memory against a GPU with a margin, the smallest
change that makes it fit when it does not, tokens / FLOPs / GPU-hours at a stated MFU, and the
problems of the step (:mod:`prefalign.planning.checks`). Printed as a table, written as JSON.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from prefalign.core.errors import ConfigError
from prefalign.planning.checks import Finding
from prefalign.planning.models import architecture_config, gpu, parameter_count
from prefalign.planning.rounding import master_weight_rounding
from prefalign.planning.simulate import (
    CATEGORIES,
    GIB,
    Setup,
    StepMemory,
    build_module,
    resolve_setup,
    simulate_step,
)

DATASETS = Path(__file__).with_name("datasets.yaml")


@dataclass
class PlanSettings:
    """The ``plan`` config keys (``conf/plan.yaml`` documents each)."""

    gpu: str = "h100_80gb"
    world_size: int | None = None
    num_layers: int | None = None
    architecture: str | None = None
    steps: int = 2
    mfu: float | None = None
    margin_gib: float = 2.0
    margin_fraction: float = 0.15
    fix: bool = True
    max_fix_attempts: int = 4
    fail_on_sync: bool = False
    dataset_samples: int | None = None
    output: str | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> PlanSettings:
        values = dict(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"config key(s) {['plan.' + k for k in unknown]}: not plan settings")
        settings = cls(**values)
        if settings.mfu is not None and not 0 < settings.mfu <= 1:
            raise ConfigError(f"config key `plan.mfu`: a fraction in (0, 1], got {settings.mfu}")
        if settings.margin_gib < 0 or not 0 <= settings.margin_fraction < 1:
            raise ConfigError("config keys `plan.margin_gib` >= 0 and `plan.margin_fraction` in [0, 1)")
        return settings


@dataclass
class Fix:
    """The smallest change found that fits: what changes, the overrides, and the new peak."""

    change: str
    overrides: list[str]
    peak_gib: float


@dataclass
class Plan:
    """The result of :func:`make_plan` (see the module docstring); :meth:`as_dict` is the JSON."""

    run: dict[str, Any]
    setup: Setup
    memory: StepMemory
    gpu: dict[str, Any]
    capacity: int
    margin: int
    throughput: dict[str, Any]
    fix: Fix | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    master_weights: dict[str, Any] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.memory.peak + self.margin <= self.capacity

    @property
    def keeps_updates(self) -> bool:
        """Rounding to the trainable dtype loses at most the threshold's fraction of the peak-lr
        updates, or the optimizer rounds stochastically (:mod:`prefalign.planning.rounding`)."""
        return bool(self.master_weights.get("ok", True))

    @property
    def headroom(self) -> int:
        return self.capacity - self.margin - self.memory.peak

    @property
    def host_syncs(self) -> list[Finding]:
        return [f for f in self.memory.findings if f.kind == "host_sync"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "setup": asdict(self.setup),
            "per_rank_gib": {
                **{c: round(self.memory.by_category[c] / GIB, 3) for c in CATEGORIES},
                "peak": round(self.memory.peak / GIB, 3),
                "first_step_peak": round(self.memory.first_step_peak / GIB, 3),
            },
            "gpu": {**self.gpu, "capacity_gib": round(self.capacity / GIB, 3)},
            "margin_gib": round(self.margin / GIB, 3),
            "fits": self.fits,
            "headroom_gib": round(self.headroom / GIB, 3),
            "master_weights": self.master_weights,
            "fix": asdict(self.fix) if self.fix else None,
            "decoder_layer_forwards_per_step": self.memory.layer_forwards,
            "findings": [f.as_dict() for f in self.memory.findings],
            "throughput": self.throughput,
            "notes": self.notes,
            "plan_seconds": round(self.seconds, 1),
        }


@functools.cache
def dataset_rows() -> dict[str, int]:
    return yaml.safe_load(DATASETS.read_text(encoding="utf-8"))


def train_samples(cfg: DictConfig) -> int | None:
    """Training samples per epoch from ``datasets.yaml``: the train source's rows, times
    ``data.filter_top_fraction``, plus ``data.noise.num_samples``; ``None`` when unknown."""
    source = OmegaConf.select(cfg, "data.train")
    if source is None or not isinstance(source, DictConfig):
        return None
    rows = dataset_rows().get(f"{source.get('path')}:{source.get('split', 'train')}")
    if rows is None:
        return None
    limit = source.get("limit")
    rows = min(rows, int(limit)) if limit else rows
    fraction = OmegaConf.select(cfg, "data.filter_top_fraction", default=None)
    if fraction is not None:
        rows = int(rows * float(fraction))
    noise = OmegaConf.select(cfg, "data.noise.num_samples", default=None)
    return rows + int(noise or 0)


def throughput(
    cfg: DictConfig,
    numbers: dict,
    setup: Setup,
    settings: PlanSettings,
    sequences: int,
    head_tokens: int | None = None,
) -> dict:
    """Tokens and model FLOPs per optimizer step, and the run's GPU-hours at the MFU.

    Model FLOPs per token: 6 x (parameters doing matmuls: all but the input embedding, unless tied,
    and but the LM head) + 12 x layers x hidden x sequence (attention scores and values, counted for
    the full S x S as in torchtitan, whose MFU figure the default comes from; causal kernels do
    half). The LM head's 6 x vocabulary x hidden FLOPs count once per position it projects,
    ``head_tokens`` per micro-batch (the collate's response targets, which the lean log-prob path
    projects; ``None``: every token): ``head_flops_per_step``. Activation recomputation is not model
    FLOPs (MFU counts useful work). Every sequence at full length.
    """
    card = gpu(settings.gpu)
    counts = parameter_count(numbers)
    tied = bool(numbers.get("tie_word_embeddings", False))
    head_params = numbers["vocab_size"] * numbers["hidden_size"]
    body_params = counts["total"] - (0 if tied else head_params) - head_params
    layers, hidden = numbers["num_hidden_layers"], numbers["hidden_size"]
    flops_per_token = 6 * body_params + 12 * layers * hidden * setup.seq_len
    rows = setup.micro_batch * sequences
    micro_batches = setup.world_size * setup.accumulate
    tokens = micro_batches * rows * setup.seq_len
    projected = micro_batches * (rows * setup.seq_len if head_tokens is None else head_tokens)
    head_flops = 6 * head_params * projected
    flops_per_step = tokens * flops_per_token + head_flops
    mfu = settings.mfu if settings.mfu is not None else float(card["mfu"])
    seconds = flops_per_step / (setup.world_size * mfu * card["bf16_tflops"] * 1e12)
    samples = settings.dataset_samples or train_samples(cfg)
    epochs = int(cfg.trainer.get("max_epochs") or 1)
    result = {
        "tokens_per_step": tokens,
        "head_tokens_per_step": projected,
        "flops_per_token": flops_per_token,
        "head_flops_per_step": head_flops,
        "flops_per_step": flops_per_step,
        "mfu": mfu,
        "mfu_source": "plan.mfu" if settings.mfu is not None else card["mfu_source"],
        "seconds_per_step": round(seconds, 3),
        "gpu_hours_per_1000_steps": round(seconds * 1000 * setup.world_size / 3600, 1),
        "train_samples": samples,
        "epochs": epochs,
    }
    if samples:
        steps = epochs * math.ceil(samples / (setup.world_size * setup.micro_batch * setup.accumulate))
        result["steps"] = steps
        result["gpu_hours"] = round(seconds * steps * setup.world_size / 3600, 1)
        result["wall_hours"] = round(seconds * steps / 3600, 2)
    return result


def _overrides_for(setup: Setup, base: Setup) -> list[str]:
    out = []
    if setup.strategy_checkpointing and not base.strategy_checkpointing:
        out.append("trainer.strategy.activation_checkpointing=true")
    if setup.model_checkpointing and not base.model_checkpointing:
        out.append("model.gradient_checkpointing=true")
    if setup.micro_batch != base.micro_batch:
        out += [f"data.batch_size={setup.micro_batch}", f"trainer.accumulate_grad_batches={setup.accumulate}"]
    if setup.strategy != base.strategy:
        out += [
            "trainer=fsdp2",
            f"trainer.devices={setup.world_size}",
            f"trainer.precision={setup.precision}",
        ]
    return out


def candidate_fixes(setup: Setup) -> list[tuple[str, Setup]]:
    """Changes that lower memory without changing the optimisation, smallest first, each adding to
    the one before: activation checkpointing, then the micro-batch halved with accumulation doubled
    (same global batch); separately, sharding (FSDP2) for DDP / single-device runs."""
    from dataclasses import replace

    candidates = []
    current, changes = setup, []
    if not current.checkpointing:
        current = (
            replace(current, strategy_checkpointing=True)
            if current.strategy == "fsdp"
            else replace(current, model_checkpointing=True)
        )
        changes.append("activation checkpointing per decoder layer")
        candidates.append((changes[0], current))
    micro, accumulate = current.micro_batch, current.accumulate
    while micro > 1 and micro % 2 == 0:
        micro, accumulate = micro // 2, accumulate * 2
        current = replace(current, micro_batch=micro, accumulate=accumulate)
        step = f"micro-batch {micro} x {accumulate} accumulation (same global batch)"
        candidates.append((" + ".join([*changes, step]), current))
    if setup.strategy in ("ddp", "single") and setup.world_size > 1:
        candidates.append(("FSDP2 sharding", replace(setup, strategy="fsdp2", reshard_after_forward=True)))
    return candidates


def precision_notes(cfg: DictConfig, setup: Setup) -> list[str]:
    """What the configured precision does that may not be intended."""
    notes = []
    if setup.strategy_checkpointing and setup.model_checkpointing:
        notes.append(
            "activation checkpointing is on twice (the FSDP strategy's and model.gradient_checkpointing); "
            "the decoder-layer forwards per micro-batch are counted in the plan"
        )
    attn = str(cfg.model.get("attn_implementation", "sdpa"))
    if attn in ("flash_attention_2", "sdpa"):
        notes.append(
            f"attention ({attn}) simulated with SDPA's flash / memory-efficient kernels (O(S) memory)"
        )
    if setup.strategy == "fsdp":
        notes.append(
            "Lightning FSDPStrategy (FSDP1, flat parameters) simulated with FSDP2 per decoder layer: the "
            "same units and sharded state per rank"
        )
    if setup.num_layers is not None:
        notes.append(f"planned at {setup.num_layers} decoder layers (plan.num_layers), not the full depth")
    return notes


def make_plan(cfg: DictConfig, settings: PlanSettings) -> Plan:
    """Plan the training run of a composed ``train`` config (see the module docstring).

    Raises:
        ConfigError: a setting or model the planner cannot simulate, naming the key.
        PlanStepError: the step fails on simulated GPUs (device mismatch, dtype error...), naming
            the project line.
    """
    started = time.perf_counter()
    card = gpu(settings.gpu)
    if settings.architecture:
        from prefalign.planning.models import architectures

        if settings.architecture not in architectures():
            raise ConfigError(
                f"config key `plan.architecture`: {settings.architecture!r} is not one of {sorted(architectures())}"
            )
        key, numbers = settings.architecture, dict(architectures()[settings.architecture]["config"])
    else:
        key, numbers = architecture_config(cfg.model)
    setup = resolve_setup(cfg, settings.world_size, settings.num_layers)
    memory = simulate_step(cfg, numbers, setup, settings.steps)
    capacity = int(card["memory_mib"]) * 2**20
    margin = int(settings.margin_gib * GIB + settings.margin_fraction * memory.peak)
    from hydra.utils import instantiate

    sequences = len(instantiate(cfg.objective).sequences)
    run = {
        "task_name": cfg.get("task_name"),
        "model": cfg.model.get("name_or_path") or "tiny",
        "architecture": key,
        "objective": cfg.objective._target_,
        "data": OmegaConf.select(cfg, "data.train.path", default=None),
        "sequences_per_sample": sequences,
        "gpu": settings.gpu,
    }
    rates = throughput(cfg, numbers, setup, settings, sequences, memory.head_tokens)
    planned = build_module(cfg, numbers, setup, device="meta")[0].model
    trainable = [(n, p.dtype, p.numel()) for n, p in planned.named_parameters() if p.requires_grad]
    plan = Plan(
        run=run,
        setup=setup,
        memory=memory,
        gpu={"name": settings.gpu, **card},
        capacity=capacity,
        margin=margin,
        throughput=rates,
        notes=precision_notes(cfg, setup),
        master_weights=master_weight_rounding(cfg, numbers, trainable, rates.get("steps")),
    )
    if not plan.fits and settings.fix:
        for change, candidate in candidate_fixes(setup)[: settings.max_fix_attempts]:
            trial = simulate_step(cfg, numbers, candidate, settings.steps)
            needed = int(settings.margin_gib * GIB + settings.margin_fraction * trial.peak)
            if trial.peak + needed <= capacity:
                plan.fix = Fix(change, _overrides_for(candidate, setup), round(trial.peak / GIB, 2))
                break
    plan.seconds = time.perf_counter() - started
    return plan


def format_master_weights(report: dict[str, Any]) -> list[str]:
    """The master-weight lines of the printed plan: per trainable dtype, the share of the first
    step's updates that rounding loses at the peak and the last learning rate, and the verdict."""
    if not report:
        return []
    lines = [
        f"master weights ({report['optimizer'].rsplit('.', 1)[-1]}, measured on {report['source']}): "
        f"updates lost to rounding at lr {report['lr_peak']:.3g} (peak) / {report['lr_last']:.3g} "
        f"(last of {report['schedule_steps']:,} steps)"
    ]
    for dtype, entry in report["by_dtype"].items():
        lines.append(
            f"  {dtype:<9} {entry['parameters']:>15,} trainable: {100 * entry['lost_at_peak']:6.2f}% / "
            f"{100 * entry['lost_at_last']:6.2f}%"
        )
    if report["stochastic_rounding"]:
        lines.append(
            "  stochastic rounding: no update is lost in expectation (the figures are round-to-nearest's)"
        )
    elif report["ok"]:
        lines.append(f"  OK: at most {100 * report['threshold']:.0f}% lost at the peak lr")
    else:
        lines.append(
            f"  FAILS: more than {100 * report['threshold']:.0f}% of the peak-lr updates are lost; train fp32 "
            "master weights (model.dtype=float32 trainer.precision=bf16-mixed) or optimizer=adamw_bf16_sr"
        )
    return lines


def format_plan(plan: Plan) -> str:
    """The per-rank table and the verdict, as printed by ``prefalign-plan``."""
    s, m = plan.setup, plan.memory
    checkpointing = (
        "strategy + model"
        if s.strategy_checkpointing and s.model_checkpointing
        else "strategy"
        if s.strategy_checkpointing
        else "model"
        if s.model_checkpointing
        else "off"
    )
    lines = [
        f"prefalign-plan: {plan.run['task_name']} | {plan.run['model']} ({plan.run['architecture']}) | "
        f"{plan.run['objective'].rsplit('.', 1)[-1]}",
        f"{s.world_size} x {plan.run['gpu']} | {s.strategy} | {s.precision} | activation checkpointing "
        f"{checkpointing} | micro-batch {s.micro_batch} x {plan.run['sequences_per_sample']} sequence(s) x "
        f"{s.seq_len} tokens, accumulation {s.accumulate}",
        "",
        f"{'per rank (GiB)':<16}" + "".join(f"{name:>13}" for name in (*CATEGORIES, "peak")),
    ]
    values = [m.by_category[c] / GIB for c in CATEGORIES] + [m.peak / GIB]
    for rank in range(s.world_size):
        lines.append(f"{'rank ' + str(rank):<16}" + "".join(f"{v:>13.2f}" for v in values))
    lines += [
        "(ranks are symmetric: every rank holds the same shards and runs the same step; rank 0 is simulated)",
        "",
        f"GPU {plan.gpu['name']}: {plan.capacity / GIB:.2f} GiB; margin {plan.margin / GIB:.2f} GiB "
        f"(CUDA context, NCCL, allocator fragmentation); peak + margin "
        f"{(m.peak + plan.margin) / GIB:.2f} GiB -> "
        + (
            f"FITS, headroom {plan.headroom / GIB:.2f} GiB"
            if plan.fits
            else f"DOES NOT FIT by {-plan.headroom / GIB:.2f} GiB"
        ),
    ]
    if not plan.fits:
        lines.append(
            f"fix: {plan.fix.change} -> peak {plan.fix.peak_gib:.2f} GiB; overrides: {' '.join(plan.fix.overrides)}"
            if plan.fix
            else "fix: none of the candidate changes fits (more GPUs, LoRA or a shorter max_length)"
        )
    t = plan.throughput
    lines += [
        "",
        f"tokens/step {t['tokens_per_step']:,} | model FLOPs/token {t['flops_per_token']:.3e} "
        f"without the LM head, whose {t['head_flops_per_step']:.3e} FLOPs/step count its "
        f"{t['head_tokens_per_step']:,} projected (response) positions | "
        f"FLOPs/step {t['flops_per_step']:.3e} | at MFU {t['mfu']:.2f} ({t['mfu_source']}): "
        f"{t['seconds_per_step']:.2f} s/step, {t['gpu_hours_per_1000_steps']:,} GPU-hours / 1000 steps",
        "memory: the simulated step's own batch, whose LM head projects only its response targets "
        "(every token but each sequence's first: the worst case)",
    ]
    if "gpu_hours" in t:
        lines.append(
            f"run: {t['train_samples']:,} samples x {t['epochs']} epoch(s) = {t['steps']:,} steps -> "
            f"{t['gpu_hours']:,} GPU-hours ({t['wall_hours']} h wall), every sample at full length (upper bound)"
        )
    lines.append(f"decoder-layer forwards per micro-batch: {m.layer_forwards} (1 + recomputation)")
    lines += format_master_weights(plan.master_weights)
    syncs = plan.host_syncs
    lines.append(f"host syncs in the step: {len(syncs)}" + ("" if syncs else " | device / dtype errors: 0"))
    for finding in m.findings:
        lines.append(f"  {finding}")
    for note in plan.notes:
        lines.append(f"note: {note}")
    lines.append(f"planned in {plan.seconds:.1f} s")
    return "\n".join(lines)
