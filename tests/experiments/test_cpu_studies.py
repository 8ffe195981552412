"""The CPU studies (experiments/cpu_studies/run.py) end to end.

Default suite, ``--size smoke`` (under a minute on 2 idle cores): every stage, app and reader the
studies use, wired together — the world's data with noise mixed in, the aligned pair scoring it,
the PoFT grid logging τ on clean and noise samples, the starting policy, the SSO pipelines with
their judge and held-out evaluation, the tables, plots and W&B offline runs.

Slow suite, ``--size ci`` (about five minutes on 2 idle cores), asserting what the full studies
establish (experiments/cpu_studies/results/), so that a broken objective fails:

- PoFT: the aligned pair scores hand-crafted noise far below clean data (the long tail of
  Figure 3d), PoFT's τ is much smaller on noise than on clean samples, PoFT ends no worse than CE
  in held-out exact match, and bi-PoFT collapses on this world (its reversed preference on noise
  pushes down the answer template that noise shares with clean data).
- SSO: the principle-conditioned policy gives a signal (y+ correct and y− wrong more often than
  the reverse), W is a weight in (0, 1) for SSO and exactly 1 for PBAA, every iteration is
  evaluated. At this size the policy is weak (about 20% exact match without a principle), so the
  iteration-over-iteration comparison of SSO and PBAA is left to the full study.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from shared import load_script


def _study(size: str, out: Path):
    module = load_script("experiments/cpu_studies/run.py", f"cpu_studies_run_{size}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        return module, out, module.main(["--size", size, "--out", str(out)])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return _study("smoke", tmp_path_factory.mktemp("cpu_studies_smoke"))


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    return _study("ci", tmp_path_factory.mktemp("cpu_studies"))


def _runs(results, objective):
    return [r for r in results["poft"]["runs"] if r["objective"] == objective]


@pytest.mark.subprocesses
def test_every_stage_app_and_reader_runs_at_the_smoke_size(smoke):
    module, out, results = smoke
    size = module.SIZES["smoke"]
    assert set(results["timings_s"]) == {"data", "aligned", "poft", "policy", "sso"}
    runs = results["poft"]["runs"]
    assert sorted(r["objective"] for r in runs) == sorted(size.objectives)
    assert all(len(r["exact_match"]) == size.epochs for r in runs)  # one held-out evaluation per epoch
    assert {r["noise"] for r in runs} == set(size.noise)
    tau = next(r["tau"] for r in module.poft_results(out)["runs"] if r["objective"] == "poft")
    assert set(tau) == {"clean", "noise"} and all(tau[s]["tau"] for s in tau)  # noise flags reach τ
    assert all(0.0 < t < 1.0 for s in tau for t in tau[s]["tau"])
    assert [g["noise_samples"] for g in results["poft"]["gaps"]] == list(size.noise)

    rows = results["sso"]["rows"]
    by = {(r["variant"], r["iteration"]): r for r in rows}
    iterations = range(1, size.sso_iterations + 1)
    assert set(by) == {(v, i) for v in size.sso_variants for i in (0, *iterations)}
    for variant in size.sso_variants:
        assert all(0.0 <= by[(variant, i)]["exact_match"] <= 1.0 for i in (0, *iterations))
        assert all(0.0 <= by[(variant, i)]["signal_accuracy"] <= 1.0 for i in iterations)  # the judge ran
    assert all(0.0 < by[("sso", i)]["weight"] < 1.0 for i in iterations)  # SSO's W, not PBAA's 1
    assert set(results["sso"]["policy"]) == {"no principle", "good principle", "bad principle"}
    assert all(Path(p).stat().st_size > 10_000 for p in results["plots"]) and len(results["plots"]) == 4
    assert results["wandb_offline_runs"] and (out / "results.md").read_text().count("|") > 50


@pytest.mark.slow
def test_poft_study_outcome(studies):
    module, out, results = studies
    (ce,), (poft,), (bi_poft,) = (_runs(results, o) for o in ("ce", "poft", "bi_poft"))
    assert len(ce["exact_match"]) == 6  # one held-out evaluation per epoch
    assert poft["last"] >= ce["last"] - 0.10
    assert bi_poft["last"] < ce["last"] - 0.20
    # the mechanism: noise is scored far below clean data, and PoFT down-weights it
    tau = module.poft_results(out)["runs"]
    poft_tau = next(r["tau"] for r in tau if r["objective"] == "poft")
    assert statistics.fmean(poft_tau["noise"]["tau"]) < 0.5 * statistics.fmean(poft_tau["clean"]["tau"])
    assert all(Path(p).stat().st_size > 10_000 for p in results["plots"])


@pytest.mark.slow
def test_sso_study_outcome(studies):
    _, out, results = studies
    rows = results["sso"]["rows"]
    by = {(r["variant"], r["iteration"]): r for r in rows}
    assert sorted({r["iteration"] for r in rows}) == [0, 1, 2, 3]
    for variant in ("sso", "pbaa"):
        first = by[(variant, 1)]
        assert first["signal_accuracy"] > first["signal_inverted"]  # the principles steer
        assert all(0.0 <= by[(variant, i)]["exact_match"] <= 1.0 for i in range(4))
    assert all(0.0 < by[("sso", i)]["weight"] < 1.0 for i in (1, 2, 3))
    assert all(by[("pbaa", i)]["weight"] == pytest.approx(1.0) for i in (1, 2, 3))
    assert results["wandb_offline_runs"] and (out / "results.md").read_text().count("|") > 50
