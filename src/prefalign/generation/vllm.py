"""The vLLM sampling backend (``generation.backend=vllm``; ``pip install -e ".[vllm]"`` on a CUDA machine).

:class:`VLLMGenerator` has the interface and outputs of :class:`prefalign.generation.sampling.HFGenerator`:
the same conversations rendered with the same chat template into the same token ids (passed to
vLLM as token ids, so both backends see identical prompts), the same end-of-turn tokens, and one
:class:`~prefalign.generation.sampling.Generation` per conversation in input order. Seeding: request
``i`` of a call samples with its own seed ``config.seed + i`` (vLLM's per-request generator), so the
outputs depend on the base seed and the prompts only, not on how vLLM batches them. The two
backends' random streams differ, so the same seed gives different (equally distributed) samples.

The engine serves a Hugging Face model folder (for SSO, π_{i−1}'s export ``iteration_<i-1>/policy``)
with the tensor-parallel size, GPU memory fraction and maximum model length of the ``generation``
config (``conf/generation/vllm.yaml``).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prefalign.core.errors import ConfigError, DataError
from prefalign.core.progress import progress_enabled
from prefalign.generation.sampling import Generation, SamplingConfig, prompt_token_ids, row_seed

log = logging.getLogger(__name__)
VLLM_INSTALL = 'pip install -e ".[vllm]"'


def require_vllm(setting: str = "generation.backend") -> None:
    """Fail at start-up, naming the setting and the fix, when vllm is not importable."""
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"{setting}=vllm but vllm is not installed ({error}): {VLLM_INSTALL} on a CUDA machine, "
            f"or set {setting}=hf"
        ) from error


def end_token_ids(tokenizer) -> list[int]:
    """The tokens that end a response: the tokenizer's EOS id and its end-of-turn token's id."""
    return sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(tokenizer.eos_token)})


class VLLMGenerator:
    """Sampling with a vLLM engine; same interface, seeding contract and outputs as ``HFGenerator``.

    Args:
        engine: a ``vllm.LLM`` (or any object with its ``generate(prompts, sampling_params, use_tqdm)``).
        tokenizer: the model's tokenizer with its chat template (renders the prompts).
        sampling_params: the ``vllm.SamplingParams`` class (a stand-in in tests).
        max_model_len: the engine's longest sequence; longer prompts are an error, and
            ``max_new_tokens`` is capped so prompt + response fit (as ``HFGenerator`` does).
    """

    def __init__(
        self,
        engine: Any,
        tokenizer,
        sampling_params: Callable[..., Any] | None = None,
        max_model_len: int | None = None,
    ) -> None:
        if sampling_params is None:
            from vllm import SamplingParams as sampling_params
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling_params = sampling_params
        self.max_model_len = max_model_len
        self.end_ids = end_token_ids(tokenizer)

    @classmethod
    def from_config(
        cls, model_path: str, tokenizer, generation: Mapping[str, Any], seed: int = 0
    ) -> VLLMGenerator:
        """Start a ``vllm.LLM`` serving the Hugging Face folder ``model_path`` (``generation`` config keys:
        ``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ``dtype``, ``enforce_eager``)."""
        require_vllm()
        from vllm import LLM, SamplingParams

        engine = LLM(
            model=str(model_path),
            tokenizer=str(model_path),
            tensor_parallel_size=int(generation.get("tensor_parallel_size", 1)),
            gpu_memory_utilization=float(generation.get("gpu_memory_utilization", 0.85)),
            max_model_len=generation.get("max_model_len"),
            dtype=str(generation.get("dtype", "auto")),
            enforce_eager=bool(generation.get("enforce_eager", False)),
            seed=seed,
        )
        max_len = engine.llm_engine.model_config.max_model_len
        return cls(engine, tokenizer, SamplingParams, max_model_len=max_len)

    def generate(
        self,
        conversations: Sequence[list[dict[str, str]]],
        config: SamplingConfig,
        keys: Sequence[str] | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        """One :class:`Generation` per conversation, in input order.

        With ``keys`` (one per conversation, as for the HF backend), request ``i`` is seeded by
        :func:`~prefalign.generation.sampling.row_seed` (``config.seed``, ``keys[i]``), so its
        response does not depend on the other requests; without, by ``config.seed + i``. vLLM's
        sampler is not HF's, so the two backends draw different samples from the same seeds.
        With ``desc``, vLLM's own tqdm bar is shown where :func:`prefalign.core.progress.progress_enabled`
        allows (rank 0, a terminal or ``PREFALIGN_PROGRESS=1``) and ``desc`` is logged above it;
        without, no bar.
        """
        if keys is not None and len(keys) != len(conversations):
            raise ValueError(f"{len(keys)} keys for {len(conversations)} conversations")
        prompts = [prompt_token_ids(self.tokenizer, c) for c in conversations]
        limit = self.max_model_len
        for i, ids in enumerate(prompts):
            if limit is not None and len(ids) + 1 > limit:
                raise DataError(f"prompt {i} has {len(ids)} tokens; the model allows {limit}")
        greedy = config.temperature <= 0
        params = []
        for i, ids in enumerate(prompts):
            max_new = config.max_new_tokens if limit is None else min(config.max_new_tokens, limit - len(ids))
            params.append(
                self.sampling_params(
                    n=1,
                    temperature=0.0 if greedy else config.temperature,
                    top_p=1.0 if greedy else config.top_p,
                    max_tokens=max_new,
                    seed=config.seed + i if keys is None else row_seed(config.seed, keys[i]),
                    stop_token_ids=self.end_ids,
                    skip_special_tokens=True,
                )
            )
        show = desc is not None and progress_enabled()
        if show:
            log.info("%s: %d prompts", desc, len(prompts))
        outputs = self.engine.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=show)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        results = []
        for output in outputs:
            completion = output.outputs[0]
            tokens = [t for t in completion.token_ids if t not in self.end_ids]
            results.append(
                Generation(
                    text=completion.text.strip(),
                    num_tokens=len(tokens),
                    hit_max_new_tokens=completion.finish_reason == "length",
                )
            )
        return results

    def close(self) -> None:
        """Shut the engine down and free its GPU memory (before training the next policy)."""
        engine, self.engine = self.engine, None
        shutdown = getattr(getattr(engine, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del engine
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
