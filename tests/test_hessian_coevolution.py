import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gradience.config import ParamsError
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS
from gradience.studies import grid, notebook
from gradience.studies.hessian_coevolution import analysis as hc
from gradience.studies.hessian_coevolution import findings as hc_findings
from gradience.studies.hessian_coevolution import runs as hc_runs
from gradience.studies.lm_regimes.runs import DIVERGED_OUTCOMES
from gradience.telemetry.curvature import hvp_fn, lanczos_top_eigenpair, make_loss_fn

STAGE = "hessian_coevolution"


@pytest.fixture
def smoke():
    return notebook.load_params(STAGE, profile_params("smoke")[STAGE])


@pytest.fixture
def default():
    return notebook.load_params(STAGE, profile_params("default")[STAGE])


def test_params_reject_bad_values_with_the_key(smoke):
    section = profile_params("smoke")[STAGE]
    runs, report = section["runs"], section["report"]
    with pytest.raises(ParamsError, match=r"unknown metrics \['hessian_det'\]"):
        notebook.load_params(STAGE, section | {"report": {"lead_lag": report["lead_lag"] | {"primary": "hessian_det"}}})
    dup = section | {"runs": runs | {"regimes": [runs["regimes"][0], runs["regimes"][0]]}}
    with pytest.raises(ParamsError, match="regime names must be unique"):
        notebook.load_params(STAGE, dup)
    with pytest.raises(ParamsError, match=r"hessian_coevolution.runs.regimes.0.lr = -1"):
        notebook.load_params(STAGE, section | {"runs": runs | {"regimes": [runs["regimes"][0] | {"lr": -1}]}})
    with pytest.raises(ParamsError, match=r"min_points=6 must be ≥ 2·max_lag \+ 3 = 9"):
        notebook.load_params(STAGE, section | {"report": {"lead_lag": report["lead_lag"] | {"min_points": 6, "max_lag": 3}}})
    with pytest.raises(ParamsError, match=r"full_every=6 must be a multiple of cadence_every=4"):
        notebook.load_params(STAGE, section | {"runs": runs | {"cadence_every": 4, "hessian": {"full_every": 6}}})
    with pytest.raises(ParamsError, match=r"predicted_lead=\(5, 2\)"):
        notebook.load_params(STAGE, section | {"report": {"lead_lag": report["lead_lag"] | {"predicted_lead": [5, 2]}}})
    with pytest.raises(ParamsError, match="residual view needs a detrending"):
        notebook.load_params(STAGE, section | {"report": {"lead_lag": report["lead_lag"] | {"detrend": "none"}}})


def test_default_profile_measures_every_step_and_its_lags_cover_the_predicted_lead(default):
    r, ll = default.runs, default.report.lead_lag
    assert r.cadence_every == 1 and r.steps % r.hessian.full_every == 0
    assert ll.max_lag * r.cadence_every >= ll.predicted_lead[1] and ll.predicted_lead[0] >= r.cadence_every
    assert all(b.met for b in hc_findings.lag_budgets(ll, r.cadence_every))
    assert hc_findings.surrogate_power(ll, len(ll.pairs())).sufficient  # 1/500 ≤ 0.05/5/2
    assert ll.pairs()[0] == ("kappa", "lambda_max") and len(ll.pairs()) == len(ll.weight_metrics)


def mlp_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    batch = (torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 4, (32,)))
    loss_fn, theta = make_loss_fn(model, batch)
    return loss_fn, theta, torch.func.hessian(loss_fn)(theta)


def test_top_eigenpair_matches_the_exact_hessian_and_warm_starts_cheaply():
    loss_fn, theta, H = mlp_problem()
    evals, evecs = torch.linalg.eigh(H)
    hvp = hvp_fn(loss_fn, theta)
    v0 = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cold = lanczos_top_eigenpair(hvp, v0, tol=1e-8, max_iter=theta.numel())
    assert cold.value == pytest.approx(float(evals[-1]), rel=1e-10)
    assert abs(float(cold.vector @ evecs[:, -1])) == pytest.approx(1.0, abs=1e-8)
    true_residual = float((H @ cold.vector - cold.value * cold.vector).norm())
    assert cold.residual == pytest.approx(true_residual, abs=1e-9) and cold.residual <= 1e-8 * cold.value
    assert 2 < cold.n_hvp < theta.numel()
    # warm start next to the eigenvector: two HVPs (min_iter) meet the tolerance
    warm = lanczos_top_eigenpair(hvp, evecs[:, -1] + 1e-4 * v0 / v0.norm(), tol=1e-3)
    assert warm.n_hvp == 2 and warm.value == pytest.approx(float(evals[-1]), rel=1e-7)
    # the residual bounds the eigenvalue error (Bauer–Fike)
    loose = lanczos_top_eigenpair(hvp, v0, tol=0.05)
    assert abs(loose.value - float(evals[-1])) <= loose.residual + 1e-12 and loose.n_hvp < cold.n_hvp
    with pytest.raises(ValueError, match="min_iter"):
        lanczos_top_eigenpair(hvp, v0, min_iter=5, max_iter=3)


def test_edge_summary_reads_the_first_crossing_and_ignores_steps_after_divergence():
    series = pd.DataFrame({"run": "m", "step": [0, 1, 2, 3, 4], "lr": 0.1, "train_loss": [4, 3, 2.5, 2.4, 99.0],
                           "sharpness_over_edge": [0.2, 0.8, 1.3, 0.9, 50.0], "lambda_max": [4, 16, 26, 18, 1e3],
                           "lambda_max_n_hvp": [17, 2, 3, 2, 9], "lambda_max_cold_gap": [1e-6, np.nan, np.nan, np.nan, -0.5]})
    runs = pd.DataFrame({"run": ["m"], "outcome": ["blew_up"], "diverged_at": [4.0]})
    s = hc.edge_summary(series, runs).iloc[0]
    assert s.edge_step == 2 and s.ratio_max == pytest.approx(1.3) and s.n_points == 4
    assert s.ratio_after_edge == pytest.approx(np.median([1.3, 0.9])) and s.steps_after_edge == 1
    assert s.frac_at_edge == pytest.approx(1 / 4) and s.final_train_loss == 2.4
    assert s.hvp_per_step == 2.5 and s.cold_gap_max == pytest.approx(1e-6)


def _leading_series(lead: int, n: int = 160, seed: int = 0) -> pd.DataFrame:
    """κ a smooth rising random walk; λ_max the same walk ``lead`` steps later, plus noise."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(0.02, 0.1, n + lead))
    walk = np.convolve(walk, np.ones(5) / 5, mode="same")
    kappa = np.exp(walk[lead:])
    lam = np.exp(walk[:n] + rng.normal(0, 0.01, n))
    return pd.DataFrame({"run": "marginal/s0", "step": np.arange(n), "kappa": kappa, "lambda_max": lam})


def test_lead_lag_resolves_a_lead_of_the_predicted_size_in_both_views(default):
    ll = default.report.lead_lag.model_copy(update={"weight_metrics": ["kappa"], "surrogates": 199})
    runs = pd.DataFrame({"run": ["marginal/s0"], "regime": ["marginal"], "kind": ["marginal"], "seed": [0],
                         "diverged_at": [math.nan]})
    t = hc.lead_lag_table(_leading_series(7), runs, ll, cadence_every=1).set_index("view")
    for view in hc.VIEWS:
        assert t.loc[view, "lead_steps"] == 7 and t.loc[view, "direction"] == "weights lead"
        assert t.loc[view, "p_value"] == pytest.approx(1 / 200) and t.loc[view, "n"] == 160
    assert t.loc["levels", "best_r"] > 0.99  # levels: the shared trend
    # a coarser cadence loses the lead's resolution: 7 steps at cadence 4 is not a whole number of points
    coarse = hc.lead_lag_table(_leading_series(7).iloc[::4], runs, ll.model_copy(update={"max_lag": 10, "min_points": 23}),
                               cadence_every=4).set_index("view")
    assert coarse.loc["levels", "lead_steps"] in (4, 8)
    budgets = hc_findings.lag_budgets(ll.model_copy(update={"max_lag": 10, "predicted_lead": (2, 60)}), 4)
    assert [b.met for b in budgets] == [False, False] and [b.reached for b in budgets] == [40, 0.5]


def _table(lags, pvals, kinds, view_p=None):
    rows = []
    for view in hc.VIEWS:
        for i, (lag, p, kind) in enumerate(zip(lags, pvals, kinds, strict=True)):
            p = p if view == "levels" or view_p is None else view_p
            rows.append({"run": f"{kind}/s{i}", "regime": kind, "kind": kind, "seed": i, "weight_metric": "kappa",
                         "hessian_metric": "lambda_max", "primary": True, "n": 200.0, "best_lag": lag,
                         "best_r": 0.7, "r_lag0": 0.3, "p_value": p, "lead_steps": lag, "significant": p < 0.05,
                         "significant_bonferroni": p < 0.05, "view": view})  # one pair: Bonferroni = α
    return pd.DataFrame(rows)


def _summary(kinds):
    return pd.DataFrame({"run": [f"{k}/s{i}" for i, k in enumerate(kinds)], "kind": kinds, "regime": kinds,
                         "outcome": ["blew_up" if k == "unstable" else "completed" for k in kinds],
                         "diverged_at": [150.0 if k == "unstable" else math.nan for k in kinds],
                         "ratio_max": [0.06 if k == "stable" else 3.0 for k in kinds],
                         "edge_step": [math.nan if k == "stable" else 80.0 for k in kinds],
                         "steps_after_edge": [math.nan if k == "stable" else 70.0 for k in kinds],
                         "ratio_after_edge": [math.nan if k == "stable" else 1.2 for k in kinds],
                         "lambda_max_init": 6.0, "lr_at_end": [1.0 if k == "unstable" else 0.05 for k in kinds],
                         "final_train_loss": 3.0})


def _pairing(p_value=0.01, min_p=1 / 72, runs=8, kappa_p=None):
    tests = [("levels", "kappa", "lambda_max"), ("residuals", "kappa", "lambda_max"),
             ("levels", hc.ALL_WEIGHTS, "lambda_max"), *(("levels", "kappa", m) for m in hc.CONDITIONING)]
    return pd.DataFrame([{"view": v, "weight_metric": w, "hessian_metric": m, "matched": 0.8, "mismatched": 0.4,
                          "p_value": kappa_p if kappa_p is not None and w == "kappa" else p_value, "min_p": min_p,
                          "pairings": round(1 / min_p), "runs": runs, "regimes": 3} for v, w, m in tests])


def _analysis(summary, table, runs, pairing=None, conditioning=None):
    pairing = _pairing() if pairing is None else pairing
    pp = pd.DataFrame([{"hessian_metric": m, "matched": True, "n": 10} for m in hc.CONDITIONING])
    return hc.Analysis(runs=runs, telemetry=pd.DataFrame(), series=pd.DataFrame(), summary=summary, lead_lag=table,
                       pairs=hc.pair_summary(table), cross_correlation=pd.DataFrame(), hutchinson={},
                       conditioning=pd.DataFrame() if conditioning is None else conditioning, pairing=pairing,
                       pairing_pairs=pp)


def test_verdicts_follow_the_tests_and_name_their_budgets(default):
    kinds = ["stable", "marginal", "marginal", "marginal", "unstable", "unstable"]
    s = _summary(kinds)

    def rows(lags, pvals, report=default.report, view_p=None):
        out = hc_findings.findings(_analysis(s, _table(lags, pvals, kinds, view_p), default.runs), report)
        return {r["id"].removeprefix("hessian_coevolution."): r for r in out}

    v = rows([0, 5, 3, 8, 2, 4], [0.5, 0.002, 0.002, 0.004, 0.002, 0.01])
    assert {k: r["verdict"] for k, r in v.items()} == {
        "stable_below_edge": "reproduced", "marginal_at_edge": "reproduced", "unstable_diverges": "reproduced",
        "weights_lead_hessian": "reproduced", "weights_lead_hessian_residuals": "reproduced",
        "spectra_coupled": "reproduced", "conditioning_coupled": "reproduced", "weights_lead_all_pairs": "reproduced",
        "hessian_leads_weights": "not reproduced"}  # no conditioning table: that row is absent
    assert "5/5 runs at the edge" in v["weights_lead_hessian"]["measured"]
    assert "lag range ± steps vs the largest predicted lead 40 (needs ≥ 30)" in v["weights_lead_hessian"]["why"]
    assert "stable steps vs the marginal runs' edge step 200 (needs ≥ 80)" in v["stable_below_edge"]["why"]
    assert ("smallest detectable surrogate p (1/(1 + 499 surrogates); claimed: half of α/5) 0.002 vs claimed 0.005"
            in v["spectra_coupled"]["why"])
    v = rows([0, -5, -3, -8, -2, -4], [0.5, 0.002, 0.002, 0.004, 0.002, 0.01])  # coupled, λ_max leads
    assert v["weights_lead_hessian"]["verdict"] == "not reproduced"
    assert v["weights_lead_all_pairs"]["verdict"] == "not reproduced" and v["spectra_coupled"]["verdict"] == "reproduced"
    assert v["hessian_leads_weights"]["verdict"] == "reproduced"  # 5/5 runs at the edge: sign test p 1/32 < α
    assert ("per run: λ_max first in 5, the weights first in 0, tied 0, no significant pair 0, of 5; sign test p 0.0312"
            in v["hessian_leads_weights"]["measured"])
    # levels coupled, residuals not: the two views are judged separately
    v = rows([0, 5, 3, 8, 2, 4], [0.5, 0.002, 0.002, 0.004, 0.002, 0.01], view_p=0.4)
    assert v["weights_lead_hessian"]["verdict"] == "reproduced"
    assert v["weights_lead_hessian_residuals"]["verdict"] == "not reproduced"
    v = rows([0, 5, 3, 8, 2, 4], [0.5, 0.4, 0.3, 0.6, 0.7, 0.2])  # nothing beyond the surrogates: falsifier holds
    # comparisons: a negative with every budget met and 499 surrogates (p down to 1/500) has the power it needs
    assert v["weights_lead_hessian"]["verdict"] == "not reproduced" and v["spectra_coupled"]["verdict"] == "not reproduced"
    assert v["weights_lead_all_pairs"]["verdict"] == "inconclusive"
    # 29 surrogates reach p = 1/30 < α but not half of it: too little power for a negative (was "not comparable":
    # surrogates + 1 30, needs ≥ 40), while a lead they do find is significant and stands (as a surrogates budget it
    # would now block it: a comparison's short budget blocks a positive too)
    few = default.report.model_copy(update={"lead_lag": default.report.lead_lag.model_copy(
        update={"surrogates": 29, "weight_metrics": ["kappa"]})})  # one pair, as in _table
    v = rows([0, 5, 3, 8, 2, 4], [0.5, 0.4, 0.3, 0.6, 0.7, 0.2], report=few)
    assert v["weights_lead_hessian"]["verdict"] == v["spectra_coupled"]["verdict"] == "inconclusive"
    assert v["weights_lead_hessian"]["why"].startswith(
        "surrogate test per run (α = 0.05, 29 phase surrogates), predicted lead 1–30 steps; too little power for a "
        "negative: smallest detectable surrogate p (1/(1 + 29 surrogates); claimed: half of α/1) 0.0333 vs claimed 0.025")
    v = rows([0, 5, 3, 8, 2, 4], [0.5, 1 / 30, 1 / 30, 1 / 30, 1 / 30, 1 / 30], report=few)
    assert v["weights_lead_hessian"]["verdict"] == v["spectra_coupled"]["verdict"] == "reproduced"
    assert v["weights_lead_all_pairs"]["verdict"] == "reproduced"
    # a lag range short of the predicted lead: a negative is not comparable, named so
    short = default.report.model_copy(update={"lead_lag": default.report.lead_lag.model_copy(update={"max_lag": 10})})
    v = rows([0, 5, 3, 8, 2, 4], [0.5, 0.4, 0.3, 0.6, 0.7, 0.2], report=short)
    assert v["weights_lead_hessian"]["verdict"] == "not comparable"
    assert "short of budget: lag range ± steps vs the largest predicted lead 10 (needs ≥ 30)" in v["weights_lead_hessian"]["why"]
    # a comparison: the short lag range blocks a positive too (a truncated range can fake either direction)
    v = rows([0, 5, 3, 8, 2, 4], [0.5, 0.002, 0.002, 0.004, 0.002, 0.01], report=short)
    assert v["weights_lead_hessian"]["verdict"] == v["weights_lead_all_pairs"]["verdict"] == "not comparable"
    assert v["spectra_coupled"]["verdict"] == "reproduced"  # it needs no lag range
    # runs that never reach the edge do not count as approaching instability
    s.loc[s.kind != "stable", "ratio_max"] = 0.5
    v = rows([0, 5, 3, 8, 2, 4], [0.5, 0.4, 0.3, 0.6, 0.7, 0.2])
    assert v["weights_lead_hessian"]["verdict"] == "not comparable"
    assert "approaching runs at the edge, tested 0 (needs ≥ 4)" in v["weights_lead_hessian"]["why"]
    assert v["marginal_at_edge"]["verdict"] == "not reproduced"  # an event not shown, its budgets met


def test_stable_below_edge_is_an_absence(default):
    """Either answer needs the budget (stable runs as long as the marginal runs took to reach the edge); with
    it met, a stable run over the edge is what the claim rules out, shown."""
    kinds = ["stable", "marginal"]

    def verdict(stable_ratio, edge_step):
        s = _summary(kinds).assign(ratio_max=[stable_ratio, 3.0], edge_step=[math.nan, edge_step])
        rows = hc_findings.stable_below_edge(_analysis(s, _table([0, 5], [0.5, 0.002], kinds), default.runs), default.report)
        return rows[0]["verdict"], rows[0]["why"]

    assert verdict(0.06, 80.0)[0] == "reproduced"
    assert verdict(0.06, 300.0)[0] == "not comparable"  # 200 stable steps < the edge step 300: agrees vacuously
    assert verdict(1.5, 300.0)[0] == "not comparable"  # an absence: a short budget blocks a negative too
    v, why = verdict(1.5, 80.0)
    assert v == "not reproduced" and why.startswith("sharpness on the full training set against 2/η of GD, every step; "
                                                    "the runs show what the claim rules out")


def test_pair_summary_counts_coupled_runs_and_their_median_lead():
    t = _table([2, 4, -1, 3], [0.01, 0.02, 0.5, 0.01], ["marginal"] * 4)
    row = hc.pair_summary(t).set_index("view").loc["levels"]
    assert row.significant == 3 and row.tested == 4 and row.lead == 3  # median of 2, 4, 3


def test_smoke_study_end_to_end(smoke, data_dir, tmp_path):
    tables_dir = grid.train(STAGE, smoke, tmp_path, data_dir)
    assert sorted(p.name for p in tables_dir.iterdir()) == ["params.json", "runs.parquet", "spectra.parquet",
                                                             "telemetry.parquet"]
    t = notebook.load_tables(STAGE, tmp_path / "tables")
    assert t.params == smoke.runs
    a = hc.analyse(t, smoke.report)
    assert set(a.summary.regime) == {"stable", "marginal", "unstable"}
    assert a.summary.outcome.isin(["completed", *DIVERGED_OUTCOMES]).all()
    assert {"run", "condition", "seed", "profile", "device", "git_rev", "cpu_seconds"} <= set(t.runs.columns)
    r = a.summary.iloc[0]
    assert r.lr == pytest.approx(r.lr_param * 2 / r.lambda_max_init)
    # λ_max at every step before divergence, and equal to the cold Lanczos where both were measured
    for rec in a.summary.itertuples():
        w = a.series[(a.series.run == rec.run) & a.series.lambda_max.notna()]
        assert list(w.step) == list(range(len(w))) and len(w) == rec.n_points
    cold = a.series.dropna(subset=["hessian_top1", "lambda_max"])
    assert len(cold) >= 8 and set(cold.step % smoke.runs.hessian.full_every) == {0}
    np.testing.assert_allclose(cold.lambda_max, cold.hessian_top1, rtol=1e-3)
    np.testing.assert_allclose(cold.lambda_max_cold_gap, (cold.hessian_top1 - cold.lambda_max) / cold.hessian_top1)
    live = a.series.dropna(subset=["lambda_max"])
    assert np.allclose(live.sharpness_over_edge, live.lambda_max * live.lr / 2)
    assert (live.lambda_max_residual <= smoke.runs.hessian.track_tol * live.lambda_max.abs() + 1e-9).all()
    assert 2 <= a.summary.hvp_per_step.median() < 10  # warm start: a few HVPs per step
    assert a.summary.set_index("regime").loc["marginal", "ratio_max"] > 1 > a.summary.set_index("regime").loc["stable", "ratio_max"]
    assert len(a.lead_lag) == len(hc.VIEWS) * len(a.summary) * len(smoke.report.lead_lag.pairs())
    assert set(a.cross_correlation.view) == set(hc.VIEWS)
    assert 0 < a.hutchinson["relative_stderr_median"] < 10
    rows = hc_findings.findings(a, smoke.report)
    assert [r["id"].removeprefix("hessian_coevolution.") for r in rows] == [
        "stable_below_edge", "marginal_at_edge", "unstable_diverges", "weights_lead_hessian",
        "weights_lead_hessian_residuals", "weights_lead_hessian_conditioning", "spectra_coupled",
        "conditioning_coupled", "weights_lead_all_pairs", "hessian_leads_weights"]
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
    # 19 surrogates cannot reach p < α (p ≥ 1/20 = α): no positive, and too little power for a negative, so the
    # smoke profile's H1 is inconclusive ("not comparable" where a budget is short as well), naming the power
    lead = {r["id"]: r for r in rows}["hessian_coevolution.weights_lead_hessian"]
    assert lead["verdict"] in ("inconclusive", "not comparable")
    assert "smallest detectable surrogate p (1/(1 + 19 surrogates); claimed: half of α/1) 0.05 vs claimed 0.025" in lead["why"]
    assert not any("|" in text for r in rows for text in r.values())  # the table is rendered as markdown
    m = hc.metrics(a, smoke.report)
    assert set(m["regimes"]) == {"stable", "marginal", "unstable"} and m["hutchinson"]["probes"] == 4
    assert {"levels_best_lag_steps_median", "residuals_p_median", "hvp_per_step_median"} <= set(m["regimes"]["marginal"])
    c = hc.curves(a, smoke.report)
    assert list(c.columns) == ["curve", "step", "value"]
    assert set(c.curve) == {f"{k}_{r}" for k in ("sharpness_over_edge", "kappa") for r in ("stable", "marginal", "unstable")}
    table = notebook.write_report(STAGE, a, smoke.report, tmp_path)
    assert len(table) == len(rows)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert set(written) == {"regimes", "hutchinson", "pairing_null", "findings"}
    # one seed per regime in the smoke profile: no pairing, so no coupling verdict can be reached
    assert (a.pairing.runs == 0).all() and set(a.conditioning.hessian_metric) == set(hc.CONDITIONING)
    assert a.series.hessian_condition.notna().sum() >= 8
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(f"{n}.csv" for n in set(c.curve))


def test_smoke_run_is_deterministic(smoke, data_dir):
    p = smoke.runs.model_copy(update={"steps": 10, "regimes": smoke.runs.regimes[1:2], "device": "auto"})  # paper: auto
    job = hc_runs.jobs(p, str(data_dir))[0]
    a, b = hc_runs.run_one(job), hc_runs.run_one(job)
    pd.testing.assert_frame_equal(a.tables["telemetry"], b.tables["telemetry"])
    assert a.record == b.record and a.record["outcome"] == "completed"
    assert not {"run", "seed", "profile", "device", "git_rev", "versions"} & set(a.record)  # grid adds these


def test_paper_profile_keeps_the_seed_scale_measurements():
    paper = notebook.load_params(STAGE, profile_params("paper")[STAGE])
    assert paper.runs.device == "auto" and paper.runs.data.corpus == "tiny_shakespeare"
    assert paper.runs.hessian.top_k == 10 and paper.runs.hessian.hutchinson_probes == 100
    assert paper.runs.cadence_every == 1 and all(b.met for b in hc_findings.lag_budgets(paper.report.lead_lag, 1))


def _regime_series(coupled: bool, regimes=("stable", "marginal", "unstable"), seeds=(0, 1, 2), n=120, seed=0):
    """Every run: κ and λ_max share the regime's trend; ``coupled``: both also carry the run's own
    random walk (λ_max 3 steps later), else each its own independent noise."""
    rng = np.random.default_rng(seed)
    trend = np.linspace(0, 2, n) ** 1.5
    frames, runs = [], []
    for r in regimes:
        for s in seeds:
            own = np.cumsum(rng.normal(0, 0.15, n + 3))
            if coupled:
                k, lam = own[3:], own[:n] + rng.normal(0, 0.02, n)
            else:
                k, lam = rng.normal(0, 0.05, n), rng.normal(0, 0.05, n)
            frames.append(pd.DataFrame({"run": f"{r}/s{s}", "step": np.arange(n), "kappa": np.exp(trend + k),
                                        "lambda_max": np.exp(trend + lam)}))
            runs.append({"run": f"{r}/s{s}", "regime": r, "kind": r, "seed": s, "diverged_at": math.nan})
    return pd.concat(frames, ignore_index=True), pd.DataFrame(runs)


def test_pairing_null_rejects_run_specific_coupling_and_not_a_shared_trend(default):
    ll, pairing = default.report.lead_lag, default.report.pairing
    c = ll.view("levels").model_copy(update={"surrogates": 99})
    series, runs = _regime_series(coupled=False)
    # the shared trend alone beats phase surrogates in every run ...
    t = hc.coupling_table(series, runs, [("kappa", "lambda_max")], c, 1)
    assert (t.p_value <= 0.02).all()
    # ... but not the runs of the same regime: matched pairs are no more coupled than mismatched ones
    s, pairs = hc.pairing_null(series, runs, "kappa", "lambda_max", c, pairing)
    assert s["pairings"] == 216 and s["min_p"] == pytest.approx(1 / 216) and s["runs"] == 9 and s["regimes"] == 3
    assert s["p_value"] > ll.alpha and abs(s["matched"] - s["mismatched"]) < 0.02
    assert len(pairs) == 27 and pairs.matched.sum() == 9 and (pairs.n == 120).all()
    # each run's own walk in both series: matched pairs beat every pairing, p at its smallest value
    series, runs = _regime_series(coupled=True)
    s, _ = hc.pairing_null(series, runs, "kappa", "lambda_max", c, pairing)
    assert s["p_value"] == pytest.approx(1 / 216) and s["matched"] > 0.9 > s["mismatched"]
    # a run that diverged too early is left out, and its regime cut to the steps all its runs have
    runs.loc[runs.run == "unstable/s1", "diverged_at"] = 50.0
    runs.loc[runs.run == "unstable/s2", "diverged_at"] = 110.0
    s, pairs = hc.pairing_null(series, runs, "kappa", "lambda_max", c, pairing)
    assert s["pairings"] == 6 * 6 * 2 and s["runs"] == 8 and s["min_p"] == pytest.approx(1 / 72)
    assert set(pairs[pairs.regime == "unstable"].n) == {110} and set(pairs[pairs.regime == "stable"].n) == {120}
    # one seed per regime: nothing to pair
    s, pairs = hc.pairing_null(series, runs[runs.seed == 0], "kappa", "lambda_max", c, pairing)
    assert s["runs"] == 0 and s["min_p"] == 1.0 and math.isnan(s["p_value"]) and pairs.empty
    # the mean over tests is one test: the average of two identical tables is that table
    _, pairs = hc.pairing_null(series, runs, "kappa", "lambda_max", c, pairing)
    m = hc.mean_pairing(pd.concat([pairs.assign(weight_metric="a"), pairs.assign(weight_metric="b")]), pairing)
    assert m["pairings"] == 72 and m["p_value"] == pytest.approx(1 / 72) and m["runs"] == 8


def test_pairing_p_is_exact_over_within_regime_pairings_or_drawn():
    S = np.array([[1.0, 0.2, 0.1], [0.3, 0.9, 0.2], [0.1, 0.0, 0.8]])  # the identity pairing is the largest
    assert hc._exact_or_drawn([S], 9999, 0) == (pytest.approx(1 / 6), pytest.approx(1 / 6), 6)
    assert hc._exact_or_drawn([S, S], 9999, 0)[:2] == (pytest.approx(1 / 36), pytest.approx(1 / 36))
    flat = np.ones((3, 3))  # every pairing ties with the matched one
    assert hc._exact_or_drawn([flat], 9999, 0)[0] == 1.0
    p, min_p, count = hc._exact_or_drawn([S, S], 19, 0)  # 36 pairings > 19 + 1: drawn
    assert count == 20 and min_p == pytest.approx(1 / 20) and p == pytest.approx(1 / 20, abs=0.16)


def test_hessian_conditioning_is_read_where_it_is_defined():
    series = pd.DataFrame({"run": "m", "step": [0, 20, 40, 41], "hessian_top1": [6.0, 12.0, 30.0, np.nan],
                           "hessian_top3": [3.0, -1.0, 10.0, np.nan], "hessian_trace": [-0.5, 400.0, 900.0, np.nan],
                           "hessian_trace_stderr": [10.0, 10.0, 500.0, np.nan]})
    out = hc.conditioning(series, pd.Series({"m": 1000}), top_k=3)
    np.testing.assert_allclose(out.hessian_condition, [2.0, np.nan, 3.0, np.nan])  # λ_k ≤ 0: undefined
    # λ₁·P/tr H where the trace is above 2 standard errors only
    np.testing.assert_allclose(out.hessian_concentration, [np.nan, 12.0 * 1000 / 400, np.nan, np.nan])
    assert list(hc.cold_series(out).step) == [0, 20, 40]


def test_conditioning_lead_lag_reads_lags_in_cold_points(default):
    ll, pairing = default.report.lead_lag, default.report.pairing
    c = hc.cold_coupling(ll, pairing, full_every=20, cadence_every=1)
    assert c.max_lag == 2 and c.min_points == 7 and c.detrend == "none"  # ±40 steps = ±2 cold points
    assert hc.cold_coupling(ll, pairing, full_every=1, cadence_every=1).max_lag == ll.max_lag
    walk = _leading_series(1, n=60)  # κ leads by one point
    cold = walk.assign(step=walk.step * 20, hessian_top1=1.0, hessian_condition=walk.lambda_max,
                       hessian_concentration=walk.lambda_max ** 2)
    runs = pd.DataFrame({"run": ["marginal/s0"], "regime": ["marginal"], "kind": ["marginal"], "seed": [0],
                         "diverged_at": [math.nan]})
    t = hc.conditioning_lead_lag(cold, runs, ll.model_copy(update={"surrogates": 99}), c.model_copy(
        update={"surrogates": 99}), 20).set_index("hessian_metric")
    assert (t.lead_steps == 20).all() and (t.direction == "weights lead").all() and (t.p_value <= 0.02).all()


def _cond_table(lags, pvals, kinds, n=10.0):
    t = _table(lags, pvals, kinds)
    t = t[t.view == "levels"].drop(columns=["view", "primary"])
    return pd.concat([t.assign(hessian_metric=m, n=n) for m in hc.CONDITIONING], ignore_index=True)


def test_conditioning_and_pairing_verdicts(default):
    kinds = ["stable", "marginal", "marginal", "marginal", "unstable", "unstable"]
    s = _summary(kinds)
    coupled = _table([0, -5, -3, -8, -2, -4], [0.5, 0.002, 0.002, 0.004, 0.002, 0.01], kinds)

    def rows(pairing=None, cond=None, runs=default.runs, report=default.report):
        out = hc_findings.findings(_analysis(s, coupled, runs, pairing, cond), report)
        return {r["id"].removeprefix("hessian_coevolution."): r for r in out}

    cond = _cond_table([0, 20, 20, 40, 20, 20], [0.5, 0.002, 0.002, 0.004, 0.002, 0.01], kinds)
    v = rows(cond=cond)
    # H1 on conditioning: measured every 20 steps, a 1-step lead is below the cadence and 10 points are few
    row = v["weights_lead_hessian_conditioning"]
    assert row["verdict"] == "not comparable" and "weights lead significantly in 5/5 runs" in row["measured"]
    assert "smallest predicted lead in series points 0.05 (needs ≥ 1)" in row["why"]
    assert "points per analysed run (fewest) 10 (needs ≥ 100)" in row["why"]
    assert "lag range ± steps vs the largest predicted lead 40 (needs ≥ 30)" in row["why"]  # ±2 cold points
    # with the conditioning every step and enough points the same leads decide
    every = default.runs.model_copy(update={"hessian": default.runs.hessian.model_copy(update={"full_every": 1})})
    v = rows(cond=_cond_table([0, 20, 20, 40, 20, 20], [0.5, 0.002, 0.002, 0.004, 0.002, 0.01], kinds, n=200.0),
             runs=every)
    assert v["weights_lead_hessian_conditioning"]["verdict"] == "reproduced"
    # the surrogates find coupling, the pairing null does not: trend shared by the regime, not coupling
    v = rows(pairing=_pairing(p_value=0.5))
    assert v["spectra_coupled"]["verdict"] == "not reproduced" and v["conditioning_coupled"]["verdict"] == "not reproduced"
    assert "5/6 runs with ≥ 1 of 5 weight metrics coupled to λ_max beyond phase surrogates" in v["spectra_coupled"]["measured"]
    assert "pairing p 0.5 (8 runs, 3 regimes, 72 pairings)" in v["spectra_coupled"]["measured"]
    assert "smallest detectable pairing-null p (1/pairings; claimed: half of α/1) 0.0139 vs claimed 0.025" in \
        v["conditioning_coupled"]["why"]
    # two regimes of 3 and 2 runs: 12 pairings, p ≥ 1/12 can never reach α: too little power for a negative
    v = rows(pairing=_pairing(p_value=0.5, min_p=1 / 12, runs=5))
    assert v["spectra_coupled"]["verdict"] == v["conditioning_coupled"]["verdict"] == "inconclusive"
    v = rows(pairing=_pairing(p_value=1 / 72))
    assert v["spectra_coupled"]["verdict"] == v["conditioning_coupled"]["verdict"] == "reproduced"
    # falsifier 1 is judged on the mean over the weight metrics (one test), κ alone is shown beside it
    v = rows(pairing=_pairing(p_value=1 / 72, kappa_p=0.5))
    assert v["spectra_coupled"]["verdict"] == "reproduced" and v["conditioning_coupled"]["verdict"] == "not reproduced"
    assert "kappa alone: matched max abs r 0.8 vs mismatched 0.4, pairing p 0.5" in v["spectra_coupled"]["measured"]
    # λ_max first in 3 runs at the edge, weights first in 2: the sign test does not reject, with the power to
    sig = [0.5, 0.002, 0.002, 0.004, 0.002, 0.01]
    out = {r["id"]: r for r in hc_findings.findings(_analysis(s, _table([0, -5, 3, -8, 2, -4], sig, kinds),
                                                                default.runs), default.report)}
    row = out["hessian_coevolution.hessian_leads_weights"]
    assert row["verdict"] == "not reproduced" and "λ_max first in 3, the weights first in 2" in row["measured"]
    # only the runs with a significant pair vote: 3 voters reach p ≥ 1/8 > α, too few for a negative
    out = {r["id"]: r for r in hc_findings.findings(_analysis(s, _table([0, -5, 3, -8, 2, -4], [0.5, 0.002, 0.4, 0.002, 0.3, 0.01], kinds),
                                                                default.runs), default.report)}
    row = out["hessian_coevolution.hessian_leads_weights"]
    assert row["verdict"] == "inconclusive" and "no significant pair 2, of 5" in row["measured"]
    assert "sign-test p with all 3 voting runs agreeing (0.5^n; claimed: α) 0.125 vs claimed 0.05" in row["why"]
    three = _summary(["marginal"] * 3)
    out = hc_findings.hessian_leads_weights(_analysis(three, _table([-5, -3, -8], [0.002] * 3, ["marginal"] * 3),
                                                      default.runs), default.report)
    assert out[0]["verdict"] == "not comparable"  # 3 runs at the edge: below min_runs
