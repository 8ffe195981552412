"""Loading causal LMs and their tokenizers: hub names, local folders, GGUF files, tiny models.

``load_model_and_tokenizer(cfg)`` is the one entry point the apps use; ``cfg`` is the ``model``
config group (see ``conf/model/*.yaml`` for every key). A ``tiny`` model is a small randomly
initialised Llama plus the project's offline tokenizer, written once to a folder under
``cache_dir`` and then loaded like any other local model, so it follows the same code path.
A GGUF file is dequantised once into a Hugging Face folder under the cache (:func:`gguf_hf_copy`)
and every later load of the same file (every stage, process and rank) reads that folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from prefalign.core.checksums import verify_checksums
from prefalign.core.ranks import local_rank
from prefalign.models.chat_templates import TEMPLATES

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")
HEADS = ("causal_lm", "reward")


@dataclass(frozen=True)
class TinySpec:
    """A tiny random Llama for tests and the quick start.

    Attributes:
        template: chat template name (``zephyr``, ``llama3``, ``chatml``, ``mistral``).
        bpe_merges: BPE merges of the offline tokenizer (0: byte tokenizer).
        hidden_size / intermediate_size / num_layers / num_heads / num_kv_heads: architecture.
        max_position_embeddings: longest sequence.
        seed: initialisation seed (same spec, same weights).
    """

    template: str = "chatml"
    bpe_merges: int = 0
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 4096
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def build_tiny_model(spec: TinySpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build (in memory) the tiny model and tokenizer described by ``spec``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefalign.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(
        spec.template, bpe_merges=spec.bpe_merges, model_max_length=spec.max_position_embeddings
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def materialize_tiny_model(spec: TinySpec, cache_dir: str | os.PathLike) -> Path:
    """Write the tiny model for ``spec`` to ``cache_dir/tiny-<hash>`` once (atomically) and return the folder."""
    target = Path(cache_dir).expanduser() / f"tiny-{spec.key()}"
    if (target / "config.json").exists():
        return target
    model, tokenizer = build_tiny_model(spec)
    return publish_cached_model(target, model, tokenizer, "tiny_spec.json", asdict(spec))


def publish_cached_model(
    target: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, marker: str, about: dict
) -> Path:
    """Save ``model`` and ``tokenizer`` as the cache folder ``target``, once: written into a
    temporary folder beside it (``marker``, the JSON of ``about``, last) and renamed into place.
    Should another process publish the same folder first, its identical copy is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / marker).write_text(json.dumps(about, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def missing_local_model(name_or_path: str) -> bool:
    """Whether ``name_or_path`` is clearly a local path (absolute, ``./``, ``../``, ``~``, or with
    more parts than a hub id's ``org/name``) that is not an existing folder or file."""
    path = Path(name_or_path).expanduser()
    looks_local = (
        path.is_absolute()
        or name_or_path.startswith((".", "~"))
        or len([part for part in name_or_path.split("/") if part]) > 2
    )
    return looks_local and not path.exists()


def resolve_model_path(cfg: Mapping[str, Any]) -> str:
    """The hub name or local folder of the model described by a ``model`` config."""
    if cfg.get("tiny"):
        return str(
            materialize_tiny_model(
                TinySpec(**dict(cfg["tiny"])), cfg.get("cache_dir") or "~/.cache/prefalign"
            )
        )
    if not cfg.get("name_or_path"):
        raise ValueError("model: set either model.name_or_path or model.tiny")
    name = str(cfg["name_or_path"])
    if missing_local_model(name):  # not a hub id: the hub's error would only confuse
        raise FileNotFoundError(f"model.name_or_path: no such folder {Path(name).expanduser()}")
    return name


def load_tokenizer(
    name_or_path: str,
    revision: str | None = None,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer, apply a chat-template override, and make sure it can pad.

    Args:
        chat_template: a template name from :mod:`prefalign.models.chat_templates` or Jinja text;
            replaces the tokenizer's own template (and its BOS/EOS when given by name).
        gguf_file: file name inside ``name_or_path`` when loading from GGUF (read from its
            Hugging Face copy under ``cache_dir``, :func:`gguf_hf_copy`).
        cache_dir: where GGUF copies live (None: :func:`default_model_cache`).

    Padding uses the tokenizer's pad token, else its EOS. That is safe here: padding is excluded
    by the attention mask and the labels, so the real end-of-turn token is still trained.
    """
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    if gguf_file:  # the dequantised copy holds the tokenizer converted from the file
        name_or_path = str(gguf_hf_copy(name_or_path, gguf_file, cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if chat_template:
        if chat_template in TEMPLATES:
            template = TEMPLATES[chat_template]
            tokenizer.chat_template = template.jinja
            tokenizer.eos_token = template.eos_token
            tokenizer.bos_token = template.bos_token
        else:
            tokenizer.chat_template = chat_template
    if tokenizer.chat_template is None:
        raise ValueError(
            f"tokenizer of {name_or_path!r} has no chat template; set model.chat_template to one of "
            f"{sorted(TEMPLATES)} or to Jinja text"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str,
    revision: str | None = None,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    lora: Mapping[str, Any] | None = None,
    head: str = "causal_lm",
    cache_dir: str | os.PathLike | None = None,
) -> PreTrainedModel:
    """Load a causal LM, or with ``head="reward"`` the same backbone with a scalar reward head.

    A local folder holding ``checksums.sha256.json`` (prefalign's exports) is verified first
    (:func:`prefalign.core.checksums.verify_checksums`: a damaged file is an error naming it).

    Args:
        dtype: ``float32`` | ``bfloat16`` | ``float16`` (weights' dtype; mixed precision is the
            trainer's business); ``auto`` resolves with :func:`resolve_dtype` for the CPU.
        attn_implementation: ``sdpa`` (default), ``eager``, ``flex_attention`` (torch's FlexAttention),
            or ``flash_attention_2`` (gpu extra, CUDA only).
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant).
        gguf_file: load (dequantised) weights from this GGUF file inside ``name_or_path``: from
            its fp32 Hugging Face copy under ``cache_dir`` (made on first use, :func:`gguf_hf_copy`).
        cache_dir: where GGUF copies live (None: :func:`default_model_cache`).
        head: ``causal_lm`` (the language-model head) or ``reward`` (a one-output sequence
            classification head on the last non-pad token, for Bradley-Terry reward models).
        lora: peft ``LoraConfig`` arguments (``r``, ``lora_alpha``, ``lora_dropout``,
            ``target_modules``...); ``None`` trains all weights.
    """
    dtype = resolve_dtype(dtype, torch.device("cpu"))
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"model.attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}"
        )
    check_attention(attn_implementation)
    if lora:
        require_peft()  # before the weights load
    kwargs: dict[str, Any] = {
        "revision": revision,
        "dtype": DTYPES[dtype],
        "attn_implementation": attn_implementation,
        "trust_remote_code": trust_remote_code,
    }
    if gguf_file:  # its dequantised copy: a plain Hugging Face folder
        name_or_path = str(gguf_hf_copy(name_or_path, gguf_file, cache_dir))
    elif Path(name_or_path).is_dir():  # a prefalign export: its files as written, or an error naming one
        verify_checksums(name_or_path)
    if head not in HEADS:
        raise ValueError(f"model.head must be one of {HEADS}, got {head!r}")
    if head == "reward":
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1, **kwargs)
        if model.config.pad_token_id is None:  # the head reads the last non-pad token
            model.config.pad_token_id = model.config.eos_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    return prepare_causal_lm(model, gradient_checkpointing, lora, head)


def prepare_causal_lm(
    model: PreTrainedModel,
    gradient_checkpointing: bool = False,
    lora: Mapping[str, Any] | None = None,
    head: str = "causal_lm",
) -> PreTrainedModel:
    """What :func:`load_causal_lm` does to a built model: activation checkpointing (non-reentrant)
    and LoRA adapters (``lora``: peft ``LoraConfig`` arguments). Also used by the planner on models
    built on the meta device (:mod:`prefalign.planning`)."""
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(task_type="SEQ_CLS" if head == "reward" else "CAUSAL_LM", **_plain(lora))
        )
    return model


LORA_INSTALL = 'pip install -e ".[lora]" (or pip install "peft>=0.12")'


def require_peft() -> None:
    """Refuse LoRA (``model.lora``) when peft is not installed, naming the fix.

    peft is an optional extra (``lora``), as in TRL: transformers imports it at start-up whenever it
    is installed (0.1-0.3 s of CPU and 5-10 MiB of peak RSS per training process on the CPU machine,
    ``benchmarks/results/startup_vs_trl.json``), which runs without LoRA do not need.
    """
    try:
        import peft  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"model.lora is set, but LoRA needs peft, which is not installed: {LORA_INSTALL}"
        ) from err


def _plain(value: Any) -> Any:
    """``value`` with every mapping a dict and every sequence a list (a config's ``DictConfig`` /
    ``ListConfig`` inside peft's ``LoraConfig`` would not serialise into ``adapter_config.json``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def drop_dequantised_gguf_marker(model: PreTrainedModel) -> None:
    """Make a model loaded from GGUF with dequantised weights a plain model, which can be trained
    and saved (``save_pretrained``, the SSO pipeline's and the trainer's Hugging Face export).

    transformers keeps its GGUF quantizer on such a model (``hf_quantizer``, ``is_quantized``,
    ``config.quantization_config``) even when every weight is a plain tensor (without the
    ``kernels`` package it dequantises every layer), and then refuses to save it ("quantized with
    gguf and is not serializable"). When no module holds packed GGUF blocks, the marker is removed;
    a model that still holds packed blocks is left as it is (inference only).
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if (
        quantizer is None
        or "gguf" not in str(getattr(quantizer.quantization_config, "quant_method", "")).lower()
    ):
        return
    if any(type(module).__name__.lower().startswith("gguf") for module in model.modules()):
        return
    quantizer.remove_quantization_config(model)


# -- GGUF files: dequantised once into a Hugging Face folder -----------------------------------------
GGUF_COPY_FORMAT = 1  # bump when the copy's layout changes: older copies are then made again


def default_model_cache() -> Path:
    """``$PREFALIGN_CACHE/models`` (default ``~/.cache/prefalign/models``): ``paths.cache_dir``/models,
    the ``cache_dir`` of the model configs, for callers that are not given one."""
    root = os.environ.get("PREFALIGN_CACHE") or Path(os.environ.get("HOME", ".")) / ".cache" / "prefalign"
    return Path(root) / "models"


def gguf_identity(name_or_path: str, gguf_file: str) -> dict[str, Any]:
    """What identifies a GGUF file's content for the cache: its resolved path, size and
    modification time (a replaced or rewritten file gets a new copy), and the copy's format."""
    path = Path(name_or_path).expanduser() / gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"model.gguf_file: no such file {path}")
    path = path.resolve()
    stat = path.stat()
    return {
        "path": str(path),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "format": GGUF_COPY_FORMAT,
    }


def gguf_hf_copy(name_or_path: str, gguf_file: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face folder (fp32 safetensors weights, config, tokenizer) of a GGUF file, made
    once under ``cache_dir/gguf-<key>`` and reused by every later load.

    transformers dequantises a GGUF file on every ``from_pretrained`` (and converts its tokenizer),
    which costs far more than reading safetensors; the SSO pipeline loads its starting model in
    every stage and process. The key fingerprints :func:`gguf_identity`. The copy is written to a
    temporary folder and renamed into place (a concurrent process's identical copy may win). A file
    whose layers stay packed after loading (not dequantised) cannot be saved: an error says so.
    """
    identity = gguf_identity(name_or_path, gguf_file)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir else default_model_cache()
    target = root / f"gguf-{Path(gguf_file).stem}-{key}"
    if (target / "gguf_source.json").exists():
        return target
    log.info("dequantising %s once into %s", identity["path"], target)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, gguf_file=gguf_file, dtype=torch.float32, attn_implementation="sdpa"
    )
    drop_dequantised_gguf_marker(model)
    if getattr(model, "hf_quantizer", None) is not None:
        raise ValueError(
            f"model.gguf_file={identity['path']}: its layers stay quantised after loading (packed GGUF "
            "blocks), so it cannot be copied to a Hugging Face folder or trained; use a Hugging Face model"
        )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, gguf_file=gguf_file)
    return publish_cached_model(target, model, tokenizer, "gguf_source.json", identity)


def load_model_and_tokenizer(cfg: Mapping[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the model and tokenizer described by a ``model`` config group."""
    path = resolve_model_path(cfg)
    tokenizer = load_tokenizer(
        path,
        revision=cfg.get("revision"),
        chat_template=cfg.get("chat_template"),
        trust_remote_code=bool(cfg.get("trust_remote_code", False)),
        gguf_file=cfg.get("gguf_file"),
        cache_dir=cfg.get("cache_dir"),
    )
    model = load_causal_lm(
        path,
        revision=cfg.get("revision"),
        dtype=cfg.get("dtype", "float32"),
        attn_implementation=cfg.get("attn_implementation", "sdpa"),
        gradient_checkpointing=bool(cfg.get("gradient_checkpointing", False)),
        trust_remote_code=bool(cfg.get("trust_remote_code", False)),
        gguf_file=cfg.get("gguf_file"),
        lora=cfg.get("lora"),
        head=cfg.get("head", "causal_lm"),
        cache_dir=cfg.get("cache_dir"),
    )
    return model, tokenizer


def frozen_model_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A ``model`` config for a frozen copy of that model (the reference, the SSO sampler and judge
    on the ``hf`` backend, a scorer): ``dtype`` replaced by ``frozen_dtype`` when that is set.

    Nothing updates a frozen model, so it needs no fp32 master weights: the paper configs train in
    fp32 (``dtype: float32``) and keep the frozen copies in bf16 (``frozen_dtype: bfloat16``), half
    their memory. Scores are cached under the dtype they were computed in (the score cache's model
    identity), so a change of ``frozen_dtype`` is a new cache entry, never a stale one."""
    out = {k: v for k, v in dict(cfg).items() if k != "frozen_dtype"}
    frozen = cfg.get("frozen_dtype")
    if frozen is not None:
        if str(frozen) not in DTYPES:
            raise ValueError(f"model.frozen_dtype must be one of {sorted(DTYPES)} or null, got {frozen!r}")
        out["dtype"] = str(frozen)
    return out


# -- device, dtype and attention for models run outside the Trainer -----------------------------------

FLASH_ATTN_FIX = (
    'install the gpu extra on a CUDA machine (pip install -e ".[gpu]" --no-build-isolation, see the '
    "README) or set model.attn_implementation=sdpa"
)


def check_attention(attn_implementation: str, device: torch.device | None = None) -> None:
    """Refuse, with the fix, an attention implementation that cannot run here.

    ``flash_attention_2`` needs the flash-attn package and a CUDA device (``device``, when given, is
    where the model will run).
    """
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"model.attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}"
        )
    if attn_implementation != "flash_attention_2":
        return
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        raise ValueError(
            "model.attn_implementation=flash_attention_2 but flash-attn is not installed (or no CUDA "
            f"GPU is visible): {FLASH_ATTN_FIX}"
        )
    if device is not None and device.type != "cuda":
        raise ValueError(
            f"model.attn_implementation=flash_attention_2 runs on CUDA GPUs only, but the model runs on "
            f"{device}: set model.attn_implementation=sdpa or run on a GPU"
        )


def resolve_device(device: str = "auto", setting: str = "device") -> torch.device:
    """The device a model outside the Trainer runs on.

    Args:
        device: ``auto`` (this rank's GPU, ``cuda:$LOCAL_RANK``, when CUDA is available, else the
            CPU), ``cpu``, ``cuda`` (GPU ``$LOCAL_RANK``) or ``cuda:<index>``.
        setting: the config key that holds ``device``, named in errors.
    """
    text = str(device).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text not in ("auto", "cuda") and not text.startswith("cuda:"):
        raise ValueError(f"{setting}={device!r}: use auto, cpu, cuda or cuda:<index>")
    available = torch.cuda.is_available()
    if text == "auto" and not available:
        return torch.device("cpu")
    if not available:
        raise ValueError(
            f"{setting}={device} but no CUDA GPU is visible (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}): set {setting}=auto or {setting}=cpu, or run on "
            "a GPU machine with a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    index = int(text.partition(":")[2]) if ":" in text else local_rank() % count
    if index >= count:
        raise ValueError(f"{setting}={device} but only {count} CUDA device(s) are visible")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """The weights' dtype name: ``auto`` is ``bfloat16`` on a GPU that supports it, else ``float32``."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bfloat16"
        return "float32"
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)} or auto, got {dtype!r}")
    return dtype


@dataclass(frozen=True)
class Placement:
    """Where and how a model runs: device, weight dtype name, attention implementation."""

    device: torch.device
    dtype: str
    attn_implementation: str


def resolve_placement(
    model_cfg: Mapping[str, Any], device: str = "auto", setting: str = "device"
) -> Placement:
    """The one resolution of device, dtype and attention for a ``model`` config (errors at start-up).

    ``model.dtype: auto`` becomes bf16 on GPU and fp32 on CPU; a configured dtype is kept.
    ``flash_attention_2`` is checked against the installed packages and the device.
    """
    where = resolve_device(device, setting)
    attention = str(model_cfg.get("attn_implementation", "sdpa"))
    check_attention(attention, where)
    return Placement(where, resolve_dtype(str(model_cfg.get("dtype", "float32")), where), attention)


def load_for_inference(
    model_cfg: Mapping[str, Any], device: str = "auto", setting: str = "device"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a ``model`` config for generation, judging or scoring outside the Trainer.

    The model comes in eval mode, on the device of :func:`resolve_placement` (this rank's GPU with
    ``device=auto``), in its resolved dtype and attention implementation, without gradient
    checkpointing. Every app that samples or judges loads its models through this function.
    """
    placement = resolve_placement(model_cfg, device, setting)
    resolved = {
        **dict(model_cfg),
        "dtype": placement.dtype,
        "attn_implementation": placement.attn_implementation,
        "gradient_checkpointing": False,
    }
    model, tokenizer = load_model_and_tokenizer(resolved)
    return model.to(placement.device).eval(), tokenizer


def disable_dropout(model: torch.nn.Module) -> int:
    """Turn off every dropout of ``model`` (also in train mode); returns how many were on.

    Zeroes each ``nn.Dropout``'s ``p`` (hidden, embedding and LoRA dropout) and the float
    ``attention_dropout`` that transformers' attention layers pass to the attention kernel.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            module.p = 0.0
            changed += 1
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float) and rate > 0:
            module.attention_dropout = 0.0
            changed += 1
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout", "embd_pdrop", "resid_pdrop", "attn_pdrop"):
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)
    return changed
