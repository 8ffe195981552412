"""The SSO pipeline on the vLLM backend (issue 13), on CPU: a stand-in ``vllm`` module records what
the pipeline asks of vLLM — which model folder each iteration serves, the sampling parameters and
per-prompt seeds of every request — and that each engine is closed before training."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

from prefalign.core.jsonl import read_jsonl, write_jsonl
from prefalign.generation.sampling import row_seed
from prefalign.models.loading import resolve_model_path

EVENTS: list[tuple] = []


class StandInLLM:
    """Stand-in for ``vllm.LLM``: records its settings and requests, answers with fixed tokens."""

    def __init__(self, model, tokenizer, **settings):
        EVENTS.append(("start", model, settings))
        self.llm_engine = SimpleNamespace(
            model_config=SimpleNamespace(max_model_len=settings["max_model_len"] or 2048),
            shutdown=lambda: EVENTS.append(("shutdown", model)),
        )

    def generate(self, prompts, sampling_params, use_tqdm=True):
        EVENTS.append(("generate", [p["prompt_token_ids"] for p in prompts], sampling_params))
        answer = SimpleNamespace(text="Answer: 42", token_ids=[7, 8, 9], finish_reason="stop")
        return [SimpleNamespace(outputs=[answer]) for _ in prompts]


def _stand_in_vllm(monkeypatch) -> None:
    module = ModuleType("vllm")
    module.LLM = StandInLLM
    module.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)


def test_each_iteration_serves_the_previous_policy_with_per_prompt_seeds(
    tmp_path, monkeypatch, session_cache, compose_sso
):
    _stand_in_vllm(monkeypatch)
    EVENTS.clear()
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Add {i} and 3."} for i in range(8)]
    )
    heldout = write_jsonl(
        tmp_path / "heldout.jsonl",
        [{"id": "h0", "messages": [{"role": "user", "content": "Add 39 and 3."}], "answer": "42"}],
    )
    pipeline = compose_sso(
        "iterations=2",
        f"prompts.path={prompts}",
        "sampling.max_new_tokens=16",
        "generation=vllm",
        "generation.tensor_parallel_size=2",
        "generation.max_model_len=8192",
        f"work_dir={tmp_path / 'work'}",
        f"paths.cache_dir={session_cache}",
        "wandb=null",
        f"heldout={{path: {heldout}, metric: prefalign.worlds.verifiable.exact_match_report}}",
    )

    def fit(train_cfg):  # training stand-in: π_i is a copy of π_{i-1}'s Hugging Face folder
        EVENTS.append(("fit",))
        previous = resolve_model_path(as_dict(train_cfg.model))
        shutil.copytree(previous, train_cfg.callbacks.hf_export.dirpath)
        return {"train/loss": 0.5}

    monkeypatch.setattr(pipeline, "_fit", fit)
    monkeypatch.setattr("prefalign.pipelines.sso.policy_change", lambda *args: None)
    pipeline.run()

    starts = [e for e in EVENTS if e[0] == "start"]
    cfg = pipeline.cfg
    pi_0 = resolve_model_path(as_dict(cfg.model))
    work = tmp_path / "work"
    # iteration 1 samples from π_0; its evaluation serves π_0 (initial_heldout) then π_1, which
    # stays up to sample iteration 2; iteration 2's evaluation serves π_2
    served = [Path(s[1]) for s in starts]
    assert served == [Path(pi_0), Path(pi_0), work / "iter_1" / "policy", work / "iter_2" / "policy"]
    assert all(s[2]["tensor_parallel_size"] == 2 and s[2]["max_model_len"] == 8192 for s in starts)
    kinds = [e[0] for e in EVENTS]
    for fit_at in [k for k, kind in enumerate(kinds) if kind == "fit"]:
        assert kinds[fit_at - 1] == "shutdown"  # the engine frees the GPU before training
    # the sampling requests of iteration 1: y+ under the good principle, seeded per prompt and role
    rows = read_jsonl(tmp_path / "work" / "iter_1" / "preferences.jsonl")
    chosen = [e for e in EVENTS if e[0] == "generate"][1]  # after the allocation request
    assert [p.seed for p in chosen[2]] == [row_seed(cfg.sampling.seed, f"1/{r['id']}/chosen") for r in rows]
    assert {(p.temperature, p.top_p, p.max_tokens) for p in chosen[2]} == {(0.7, 0.8, 16)}
    assert {r["chosen"] for r in rows} == {"Answer: 42"}
    # held-out evaluation of π_0 and π_i is answered by the same vLLM engines
    report = pipeline.stats(1, "evaluate")
    assert report["initial_heldout/exact_match"] == report["heldout/exact_match"] == 1.0


def as_dict(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)
