"""The project's training step on simulated GPUs: model built on meta from its architecture,
sharded like the configured strategy, materialised as fake CUDA tensors, and stepped twice through
the LightningModule with the configured objective, optimizer, precision and micro-batch, under
torch's memory tracker and :class:`~prefalign.planning.checks.StepWatch`.

Needs the fake-CUDA shim loaded before torch (:func:`prefalign.planning.shim.load_fake_cuda`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prefalign.core.errors import ConfigError
from prefalign.core.names import ID, NOISE
from prefalign.data.batching import pad_collate
from prefalign.data.chat import IGNORE_INDEX
from prefalign.data.preference import PreferenceDataModule, collate_sequences
from prefalign.models.layers import decoder_layers
from prefalign.models.loading import DTYPES, prepare_causal_lm
from prefalign.models.precision import sharded_mixed_precision
from prefalign.planning import fake_gpu, torch_private
from prefalign.planning.checks import Finding, PlanStepError, StepWatch, located_error
from prefalign.planning.models import build_config
from prefalign.training.run import build_module as build_training_module
from prefalign.training.run import objective_wiring

GIB = 2**30
CATEGORIES = ("params", "grads", "optimizer", "activations", "temporaries")
# tracker category -> table column (FSDPMemTracker's _FSDPRefType and MemTracker's _MemRefType names)
_COLUMN = {
    "SHARDED_PARAM": "params",
    "UNSHARDED_PARAM": "params",
    "PARAM": "params",
    "BUFFER": "params",
    "SHARDED_GRAD": "grads",
    "UNSHARDED_GRAD": "grads",
    "GRAD": "grads",
    "OPT": "optimizer",
    "ACT": "activations",
    "INP": "activations",
    "TEMP": "temporaries",
    "ALL_GATHER": "temporaries",
    "REDUCE_SCATTER": "temporaries",
    "OTH": "temporaries",  # MemTracker's "other": allocations outside any tracked category
}
FSDP_SHARDING = {"FULL_SHARD": True, "SHARD_GRAD_OP": False}


@dataclass(frozen=True)
class Setup:
    """What is simulated, resolved from a ``train`` config (:func:`resolve_setup`).

    Attributes:
        world_size: ranks (``trainer.devices x trainer.num_nodes``).
        strategy: ``fsdp`` (Lightning FSDPStrategy), ``fsdp2`` (ModelParallelStrategy), ``ddp`` or ``single``.
        reshard_after_forward: FSDP's FULL_SHARD (True) or SHARD_GRAD_OP (False).
        precision: ``trainer.precision``.
        strategy_checkpointing: the FSDP strategy's per-layer activation checkpointing.
        model_checkpointing: ``model.gradient_checkpointing`` (transformers' own).
        micro_batch: samples per rank per forward (``data.batch_size``).
        seq_len: tokens per sequence: ``data.max_length`` (every sample at full length).
        accumulate: ``trainer.accumulate_grad_batches``.
        num_layers: decoder layers built (``None``: the architecture's).
    """

    world_size: int
    strategy: str
    reshard_after_forward: bool
    precision: str
    strategy_checkpointing: bool
    model_checkpointing: bool
    micro_batch: int
    seq_len: int
    accumulate: int
    num_layers: int | None = None

    @property
    def checkpointing(self) -> bool:
        return self.strategy_checkpointing or self.model_checkpointing


@dataclass
class StepMemory:
    """Peak memory of one rank in the steady-state step, bytes by category (at the moment of the
    peak; they sum to ``peak``), plus ``buckets`` for DDP's gradient buckets (not a tensor the
    tracker sees: one flat copy of the gradients)."""

    by_category: dict[str, int]
    peak: int
    first_step_peak: int
    layer_forwards: int = 0
    findings: list[Finding] = field(default_factory=list)
    head_tokens: int | None = None
    """Positions the LM head projects per micro-batch: the collate's response targets, bucket
    padding included (the lean log-prob path projects only those); ``None``: every token."""


def _strategy(trainer_cfg: Mapping[str, Any], world_size: int) -> tuple[str, bool, bool]:
    """``(kind, reshard_after_forward, strategy_checkpointing)`` of the trainer's strategy."""
    strategy = trainer_cfg.get("strategy", "auto")
    if isinstance(strategy, Mapping):
        target = str(strategy.get("_target_", ""))
        if target.endswith("fsdp_strategy") or target.endswith("FSDPStrategy"):
            sharding = str(strategy.get("sharding_strategy", "FULL_SHARD"))
            if sharding == "NO_SHARD":
                return "ddp", False, bool(strategy.get("activation_checkpointing", False))
            if sharding not in FSDP_SHARDING:
                raise ConfigError(
                    f"config key `trainer.strategy.sharding_strategy`: {sharding} is not simulated "
                    f"(simulated: {sorted(FSDP_SHARDING)}, NO_SHARD)"
                )
            return "fsdp", FSDP_SHARDING[sharding], bool(strategy.get("activation_checkpointing", False))
        if target.endswith("ModelParallelStrategy"):
            if int(strategy.get("tensor_parallel_size", 1)) != 1:
                raise ConfigError(
                    "config key `trainer.strategy.tensor_parallel_size`: tensor parallelism is not simulated"
                )
            return "fsdp2", True, False
        if target.endswith("DDPStrategy"):
            return "ddp", False, False
        raise ConfigError(f"config key `trainer.strategy._target_`: {target} is not simulated")
    name = str(strategy)
    if name.startswith("ddp") or (name == "auto" and world_size > 1):
        return "ddp", False, False
    if name in ("auto", "single_device"):
        return "single", False, False
    raise ConfigError(f"config key `trainer.strategy`: {name!r} is not simulated")


def resolve_setup(cfg: DictConfig, world_size: int | None = None, num_layers: int | None = None) -> Setup:
    """The :class:`Setup` of a composed ``train`` config.

    Args:
        world_size: overrides ``trainer.devices x trainer.num_nodes`` (needed when devices is ``auto``).
        num_layers: build this many decoder layers instead of the architecture's.
    """
    trainer = cfg.trainer
    if world_size is None:
        devices = trainer.get("devices", 1)
        if not isinstance(devices, int):
            raise ConfigError(
                f"config key `trainer.devices`: {devices!r} is not a number of GPUs; set it, or plan.world_size"
            )
        world_size = devices * int(trainer.get("num_nodes", 1) or 1)
    if world_size < 1:
        raise ConfigError(f"the world size must be >= 1, got {world_size}")
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, DictConfig):
        strategy = OmegaConf.to_container(strategy, resolve=True)
    kind, reshard, strategy_ac = _strategy({"strategy": strategy}, world_size)
    if kind == "single" and world_size > 1:
        raise ConfigError(f"{world_size} ranks with a single-device strategy")
    precision = str(trainer.get("precision", "32-true"))
    if precision not in ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true"):
        raise ConfigError(f"config key `trainer.precision`: {precision!r} is not simulated")
    return Setup(
        world_size=world_size,
        strategy=kind,
        reshard_after_forward=reshard,
        precision=precision,
        strategy_checkpointing=strategy_ac,
        model_checkpointing=bool(cfg.model.get("gradient_checkpointing", False)),
        micro_batch=int(cfg.data.batch_size),
        seq_len=int(cfg.data.max_length),
        accumulate=int(trainer.get("accumulate_grad_batches", 1) or 1),
        num_layers=num_layers,
    )


# -- the batch ------------------------------------------------------------------------------------


def _row(seq_len: int, vocab: int, seed: int) -> tuple[list[int], list[int]]:
    """A full-length sequence: a one-token prompt (the same for every sequence), every other token
    a scored response token: the worst case of the log-prob path, and of shared-prompt rows (almost
    nothing shared: each row holds its sequences nearly whole)."""
    ids = [1, *((seed * 7919 + 13 * t) % (vocab - 2) + 2 for t in range(1, seq_len))]
    return ids, [IGNORE_INDEX, *ids[1:]]


def synthetic_batch(
    objective, data_cls: type, setup: Setup, vocab: int, pad_id: int, share_prompts: bool = False
) -> dict[str, Any]:
    """The collate output of ``setup.micro_batch`` full-length samples with every column the
    objective reads (scores, noise flags, precomputed reference log-probs) at neutral values,
    through the data module's own collate function (``share_prompts``: preference data's
    shared-prompt rows)."""
    columns = [c for c in objective.required_columns(precomputed_reference=True)]
    samples = []
    for i in range(setup.micro_batch):
        sample: dict[str, Any] = {ID: f"plan-{i}"}
        if issubclass(data_cls, PreferenceDataModule):
            for k, name in enumerate(objective.sequences):
                sample[f"{name}.input_ids"], sample[f"{name}.labels"] = _row(setup.seq_len, vocab, i * 10 + k)
        else:
            sample["input_ids"], sample["labels"] = _row(setup.seq_len, vocab, i)
        for column in columns:
            if column == NOISE:
                sample[column] = bool(i % 2)
            elif column.endswith(".count"):
                sample[column] = setup.seq_len - 1
            else:
                sample[column] = -1.0
        samples.append(sample)
    if issubclass(data_cls, PreferenceDataModule):
        return collate_sequences(samples, list(objective.sequences), pad_id, share_prompts=share_prompts)
    return pad_collate(samples, pad_id)


def _to_device(batch: Mapping[str, Any], device: torch.device, fake_mode) -> dict[str, Any]:
    """The batch's tensors as fake tensors on ``device`` (real CPU tensors would be constant-folded
    by the fake mode, i.e. really copied to CUDA)."""
    return {
        k: fake_mode.from_tensor(v).to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


# -- the model ------------------------------------------------------------------------------------


def build_module(cfg: DictConfig, numbers: Mapping[str, Any], setup: Setup, device: str = "meta"):
    """``(module, objective, data class)``: the objective's LightningModule around the model built
    from ``numbers`` on ``device`` (``meta``: no memory), prepared as :func:`load_causal_lm` would
    (activation checkpointing, LoRA)."""
    from transformers import AutoModelForCausalLM

    objective = instantiate(cfg.objective)
    if objective.needs_reference and OmegaConf.select(cfg, "reference.mode") == "live":
        raise ConfigError(
            "config key `reference.mode`: live reference models are not planned yet (use precomputed)"
        )
    module_cls, data_kwargs, module_kwargs = objective_wiring(cfg, objective)
    attn = str(cfg.model.get("attn_implementation", "sdpa"))
    if attn == "flex_attention":
        raise ConfigError("config key `model.attn_implementation`: flex_attention is not simulated")
    config = build_config(numbers, setup.num_layers)
    dtype = DTYPES[str(cfg.model.get("dtype", "float32"))]
    # flash_attention_2 runs as SDPA routed to the flash kernel: the same O(S) memory
    implementation = "eager" if attn == "eager" else "sdpa"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=implementation)
    model = prepare_causal_lm(model, setup.model_checkpointing, cfg.model.get("lora"))
    module = build_training_module(cfg, module_cls, model, objective, **module_kwargs)
    from hydra.utils import get_class

    return module, objective, get_class(cfg.data._target_)


def _mixed_dtype(precision: str) -> torch.dtype | None:
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


def _shard(module, setup: Setup, mesh, cfg: DictConfig) -> None:
    """FSDP2 as ``AlignmentModule.configure_model`` applies it (fsdp2), or per decoder layer with
    Lightning FSDPStrategy's mixed precision and activation checkpointing (fsdp)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if setup.strategy == "fsdp2":
        module._device_mesh = mesh
        module.configure_model()
        return
    model = module.model
    if setup.strategy_checkpointing:
        checkpoint_impl = torch_private.get("CheckpointImpl")
        apply_activation_checkpointing = torch_private.get("apply_activation_checkpointing")
        checkpoint_wrapper = torch_private.get("checkpoint_wrapper")

        classes = tuple({type(layer) for layer in decoder_layers(model)})
        apply_activation_checkpointing(
            model,
            checkpoint_wrapper_fn=functools.partial(
                checkpoint_wrapper, checkpoint_impl=checkpoint_impl.NO_REENTRANT
            ),
            check_fn=lambda m: isinstance(m, classes),
        )
    # the project's FSDP strategy (training.strategies.fsdp_strategy): shards in the loaded dtype,
    # cast to the low dtype for compute, gradients reduced in trainer.strategy.reduce_dtype
    strategy_cfg = cfg.trainer.get("strategy")
    reduce_dtype = (
        str(strategy_cfg.get("reduce_dtype", "float32")) if isinstance(strategy_cfg, Mapping) else "float32"
    )
    mixed = sharded_mixed_precision(setup.precision, reduce_dtype)
    policy = (
        MixedPrecisionPolicy(param_dtype=mixed[0], reduce_dtype=mixed[1]) if mixed else MixedPrecisionPolicy()
    )
    dp_mesh = mesh["data_parallel"]
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=setup.reshard_after_forward)
    # the root keeps its parameters after forward (FSDP1 and FSDP2 both: they are used at once in
    # backward), so the LM head's weight is unsharded when the lean log-prob path reads it
    fully_shard(
        model,
        mesh=dp_mesh,
        mp_policy=policy,
        reshard_after_forward=None if setup.reshard_after_forward else False,
    )


def _snapshot(tracker, device: torch.device) -> tuple[dict[str, int], int]:
    snap = tracker.get_tracker_snapshot("peak")
    per_device = snap.get(device)
    if per_device is None:
        raise RuntimeError(f"the memory tracker saw nothing on {device} (devices: {list(snap)})")
    columns = dict.fromkeys(CATEGORIES, 0)
    total = 0
    for key, value in per_device.items():
        name = getattr(key, "name", str(key))
        if name == "Total":
            total = value
            continue
        columns[_COLUMN[name]] += value
    return columns, total


def _count_forwards(model) -> tuple[list[int], list]:
    counter = [0]
    layers = decoder_layers(model)
    handle = layers[0].register_forward_pre_hook(lambda m, a: counter.__setitem__(0, counter[0] + 1))
    return counter, [handle]


def simulate_step(
    cfg: DictConfig,
    numbers: Mapping[str, Any],
    setup: Setup,
    steps: int = 2,
    real_cpu: bool = False,
    fake_device: str = "cuda",
    wrap_layer: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> StepMemory:
    """Run the configured training step ``steps`` times on rank 0 of ``setup.world_size`` simulated
    GPUs; the last step's peak is the steady state (optimizer state exists, gradients freed by
    ``zero_grad(set_to_none=True)`` as Lightning does).

    ``real_cpu``: the same step for real on the CPU (one process, ``setup.strategy`` single, real
    weights), under the same tracker; ``fake_device="cpu"``: simulated on fake CPU tensors. Both are
    the simulator's own checks (``benchmarks/plan_validation.py``), which also wraps each decoder
    layer with ``wrap_layer`` (a peer's activation-checkpointing policy) before sharding.

    Raises:
        PlanStepError: the step failed, naming the project line (device mismatch, dtype error...).
    """
    if steps < 2:
        raise ConfigError(
            f"config key `plan.steps`: at least 2 (the second is the steady state), got {steps}"
        )
    if real_cpu and setup.strategy != "single":
        raise ConfigError("a real CPU step runs one process: plan it with a single-device strategy")
    from torch.distributed.device_mesh import init_device_mesh

    fake_mode = torch_private.get("FakeTensorMode")(allow_non_fake_inputs=True)
    device = torch.device("cpu") if real_cpu or fake_device == "cpu" else torch.device("cuda", 0)
    module, objective, data_cls = build_module(cfg, numbers, setup, device="cpu" if real_cpu else "meta")
    module.log = lambda *args, **kwargs: None  # Lightning's logging is not part of the step
    vocab = int(numbers["vocab_size"])
    pad_id = int(numbers.get("pad_token_id") or numbers.get("eos_token_id") or 0)
    share_prompts = issubclass(data_cls, PreferenceDataModule) and bool(
        OmegaConf.select(
            cfg,
            "data.share_prompts",
            default=inspect.signature(data_cls).parameters["share_prompts"].default,
        )
    )
    batch_cpu = synthetic_batch(objective, data_cls, setup, vocab, pad_id, share_prompts)
    low = _mixed_dtype(setup.precision)
    autocast = (
        functools.partial(torch.autocast, device.type, dtype=low)
        if low is not None and setup.precision.endswith("mixed")
        else contextlib.nullcontext
    )
    sharded = setup.strategy in ("fsdp", "fsdp2")
    with contextlib.ExitStack() as stack:
        if not real_cpu:
            stack.enter_context(fake_gpu.cuda_stubs(setup.world_size))
            stack.enter_context(fake_gpu.fake_process_group(setup.world_size))
            stack.enter_context(fake_gpu.private_sharding_propagation())
            stack.enter_context(fake_gpu.route_sdpa())
            if sharded:
                mesh = init_device_mesh("cuda", (setup.world_size,), mesh_dim_names=("data_parallel",))
            stack.enter_context(fake_mode)
        if setup.precision.endswith("true") and low is not None:
            module.model.to(low)
        counter, handles = _count_forwards(module.model)  # before sharding renames the classes
        if wrap_layer is not None:
            layers = set(decoder_layers(module.model))
            for parent in list(module.model.modules()):
                for name, child in list(parent.named_children()):
                    if child in layers:
                        setattr(parent, name, wrap_layer(child))
        module._trainer = SimpleNamespace(  # what configure_model / configure_optimizers read
            precision=setup.precision, model=module.model, estimated_stepping_batches=1000
        )
        if sharded:
            _shard(module, setup, mesh, cfg)
        if not real_cpu:
            module.model.to_empty(device=device)
        optimizer = module.configure_optimizers()["optimizer"]
        if sharded:
            tracker = torch_private.get("FSDPMemTracker")(module.model, optimizer)
        else:
            tracker = torch_private.get("MemTracker")()
            tracker.track_external(module.model, optimizer)
        watch = StepWatch()
        peaks = []
        for step in range(steps):
            counter[0] = 0
            tracker.reset_mod_stats()  # per-module stats of one step at a time (the tracker's rule)
            try:
                with tracker, watch:
                    # Lightning's order: the host-side hook, the transfer, the device-side hook
                    batch = module.on_before_batch_transfer(dict(batch_cpu), 0)
                    if real_cpu:  # copies, so the batch is allocated under the tracker as on a GPU
                        batch = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    else:
                        batch = _to_device(batch, device, fake_mode)
                    batch = module.on_after_batch_transfer(batch, 0)
                    # with gradient accumulation, a second micro-batch runs while the first one's
                    # gradients are held: its peak is the steady state's (later ones repeat it)
                    for micro in range(min(setup.accumulate, 2)):
                        if micro:  # the tracker takes one forward per module at a time; its peak stays
                            tracker.reset_mod_stats()
                        with autocast():
                            loss = module.training_step(batch, 0)["loss"]
                        (loss / setup.accumulate).backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            except PlanStepError:
                raise
            except Exception as err:  # noqa: BLE001 - every failure of the step, located
                raise located_error(err, f"step {step + 1} of the simulated training step") from err
            peaks.append(_snapshot(tracker, device))
        for handle in handles:
            handle.remove()
    columns, total = peaks[-1]
    if setup.strategy == "ddp":  # DDP's flat gradient buckets: one copy of every gradient
        grad_bytes = sum(p.numel() * p.element_size() for p in module.model.parameters() if p.requires_grad)
        columns["temporaries"] += grad_bytes
        total += grad_bytes
    return StepMemory(
        by_category=columns,
        peak=total,
        first_step_peak=peaks[0][1],
        layer_forwards=counter[0] // min(setup.accumulate, 2),  # per micro-batch
        findings=watch.findings,
        head_tokens=_head_tokens(objective, batch_cpu),
    )


def _head_tokens(objective, batch: Mapping[str, Any]) -> int | None:
    """The positions the step's lean log-prob path projects: the batch's response targets, unless
    the objective scores every token (PoFT's ``scored_tokens=all``) or the batch has none."""
    if getattr(objective, "scored_tokens", "response") == "all" or "target_token" not in batch:
        return None
    return len(batch["target_token"])
