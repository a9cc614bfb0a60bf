import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gradience.config import ParamsError
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS
from gradience.studies import grid, notebook
from gradience.studies.grokking_transition import analysis as gt
from gradience.studies.grokking_transition import early_warning as ews
from gradience.studies.grokking_transition import ensemble as ens
from gradience.studies.grokking_transition import findings as gt_findings
from gradience.studies.grokking_transition import hypothesis_tests as ht
from gradience.studies.grokking_transition import runs as gt_runs
from gradience.telemetry.signals import first_step_staying

STAGE = "grokking_transition"


@pytest.fixture
def smoke_params():
    return notebook.load_params(STAGE, profile_params("smoke")[STAGE])


def _acc_telemetry(run, steps, train_acc, test_acc):
    rows = [(run, s, "model", "train_acc", a) for s, a in zip(steps, train_acc, strict=True)]
    rows += [(run, s, "model", "test_acc", a) for s, a in zip(steps, test_acc, strict=True)]
    return pd.DataFrame(rows, columns=["run", "step", "scope", "metric", "value"])


def test_transitions_and_analysis_units_with_matched_control_windows():
    steps = np.arange(0, 100, 10)
    tele = pd.concat([
        _acc_telemetry("g/s0", steps, [0, .5, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, .2, .05, .3, .6, .97, 1, 1]),
        _acc_telemetry("g/s1", steps, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, .2, .6, .96, 1]),
        _acc_telemetry("h/s0", steps, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1], [0] * 10),
        _acc_telemetry("c/s0", steps, [0, 0, .995, 1, 1, 1, 1, 1, 1, 1], [0] * 10),
        _acc_telemetry("c/s7", steps, [0, 0, 0, 0, 0, 0, 0, 1, 1, 1], [0] * 10),
    ])
    runs = pd.DataFrame({"run": ["g/s0", "g/s1", "h/s0", "c/s0", "c/s7"], "condition": ["g", "g", "h", "c", "c"],
                         "seed": [0, 1, 0, 0, 7], "reference": [False, False, False, True, True]})
    tr = gt.transition_table(tele, runs, gt.TransitionParams()).set_index("run")
    # onset: test acc ≥ 0.1 for good (the dip to 0.05 at step 40 resets it); grok: ≥ 0.95 for good
    assert tr.loc["g/s0", ["t_mem", "t_onset", "t_mid", "grok_step"]].tolist() == [20, 50, 60, 70]
    assert tr.loc["g/s1", ["t_mem", "t_onset", "grok_step"]].tolist() == [10, 60, 80]
    assert tr["grokked"].tolist() == [True, True, False, False, False]
    acc = tele[(tele.run == "g/s0") & (tele.metric == "test_acc")]
    assert first_step_staying(acc.step.to_numpy(), acc.value.to_numpy(), 0.1) == tr.loc["g/s0", "t_onset"]
    u = gt.analysis_units(tr.reset_index()).set_index(["run", "tested"])
    # tested runs: their own window; a run that did not grok has none
    assert u.loc[("g/s0", "g"), ["window_start", "window_end"]].tolist() == [20, 50]
    assert np.isnan(u.loc[("h/s0", "h"), "window_end"])
    # a control, per tested condition: that condition's same-seed window, from its own memorisation on
    assert u.loc[("c/s0", "g"), ["window_start", "window_end"]].tolist() == [20, 50]
    # seed 7 has no grokking run of g: the medians over g's runs (t_mem 15, t* 55), but c/s7 memorises at 70
    assert u.loc[("c/s7", "g"), ["window_start", "window_end"]].tolist() == [70, 55]
    assert np.isnan(u.loc[("c/s0", "h"), "window_end"])  # h never grokked: nothing to match
    assert u["control"].sum() == 4 and len(u) == 7


def test_controls_needed_is_the_smallest_mann_whitney_design_that_can_reach_alpha():
    assert ht.controls_needed(3, 0.05) == 4  # 3 vs 3: smallest p = 1/20 = 0.05, not < 0.05
    assert ht.controls_needed(2, 0.05) == 5  # 1/C(7, 5) = 1/21
    assert ht.controls_needed(9, 0.05) == 2  # 1/C(11, 2) = 1/55


def test_alarm_is_the_first_index_from_which_the_indicator_stays_above_baseline():
    ind = np.array([np.nan, np.nan, 1.0, 1.1, 0.9, 1.0, 5.0, 1.0, 4.0, 6.0, 7.0])
    # baseline: first 2 defined values (1.0, 1.1): threshold 1.05 + 2·0.0707 ≈ 1.19
    assert ews.alarm_index(ind, baseline_fraction=0.2, z=2.0) == 8
    assert ews.alarm_index(np.array([1.0, 1.1, 0.9, 1.0, 1.05]), 0.4, 2.0) is None


def _ar1(phi, n, rng):
    x = np.zeros(n)
    for t in range(1, n):
        x[t] = phi[t] * x[t - 1] + rng.normal()
    return x


def test_early_warning_detects_critical_slowing_down_and_not_a_stationary_series(smoke_params):
    ew = smoke_params.report.early_warning.model_copy(update={"n_surrogates": 99, "detrend": "linear"})
    rng = np.random.default_rng(3)
    n, steps = 600, np.arange(600) * 5
    slowing = _ar1(np.linspace(0.0, 0.95, n), n, rng)  # AR(1) coefficient → 1: critical slowing down
    rows = {r["indicator"]: r for r in ews.early_warning_one(steps, slowing, ew, seed=0)}
    for name in ("lag1_ac", "variance"):
        assert rows[name]["kendall_tau"] > 0.5 and rows[name]["p_value"] < 0.05, (name, rows[name])
    # Sokal's τ_int rises too, but its rolling estimate is noisy: against phase surrogates it is far
    # less powerful than lag-1 autocorrelation (p ≈ 0.01–0.3 over seeds of this very series)
    assert rows["autocorrelation_time"]["kendall_tau"] > 0.3 and rows["autocorrelation_time"]["ratio"] > 1.5
    assert 0 < rows["lag1_ac"]["lead_steps"] <= n * 5
    stationary = _ar1(np.full(n, 0.5), n, rng)
    rows = {r["indicator"]: r for r in ews.early_warning_one(steps, stationary, ew, seed=0)}
    assert sum(r["p_value"] < 0.05 and r["kendall_tau"] > 0 for r in rows.values()) <= 1


def test_lead_lag_finds_a_series_that_moves_first():
    steps = np.arange(0, 605, 5)
    acc = 1 / (1 + np.exp(-(steps - 300) / 15.0))
    metric = 1 / (1 + np.exp(-(steps - 250) / 15.0)) - 0.5  # the same step, 50 steps earlier
    ew = ews.EarlyWarningParams(spectral_metrics=["stable_rank"], lead_lag_half_window=300, lead_lag_max=15)
    out = ews.lead_lag_one(steps, metric, acc, 300.0, ew)
    assert out["xcorr_lag_steps"] == 50 and out["xcorr_r"] > 0.9


def test_analyse_run_skips_short_or_broken_series_and_says_why():
    steps = np.arange(0, 200, 5)
    series = pd.DataFrame({"scope": ["hidden.weight"] * 40 + ["model"] * 40,
                           "metric": ["stable_rank"] * 40 + ["grad_noise_trace"] * 40,
                           "step": np.concatenate([steps, steps]),
                           "value": np.concatenate([np.ones(40), np.r_[np.nan, np.arange(1.0, 40.0)]])})
    ew = ews.EarlyWarningParams(spectral_metrics=["stable_rank"], model_metrics=["grad_noise_trace"], min_points=10)
    job = ews.AnalysisJob("r", "g", False, False, (0.0, 100.0), math.nan, series, pd.Series(dtype=float), ew)
    rows, power = ews.analyse_run(job)
    reasons = {(r["metric"], r["indicator"], r["skipped"]) for r in rows}
    assert reasons == {("stable_rank", i, "constant") for i in ews.INDICATORS} | {
        ("grad_noise_trace", i, "non-finite values") for i in (*ews.INDICATORS, ews.LEVEL)}
    assert power == []
    short = ews.AnalysisJob("r", "g", False, False, (0.0, 30.0), math.nan, series, pd.Series(dtype=float), ew)
    assert {r["skipped"] for r in ews.analyse_run(short)[0]} == {"6 points < 10"}
    # a rising tr Σ level in a grokking unit: the level test signals and its power rows come back
    pw = ews.PowerParams(n_sims=40, rises=[1.5, 10.0])
    rising = series.assign(value=np.r_[np.linspace(1, 2, 40), np.exp(np.linspace(0, 2, 40))])
    job = ews.AnalysisJob("r", "g", False, True, (5.0, 200.0), 150.0, rising, pd.Series(0.0, index=steps), ew, pw)
    rows, power = ews.analyse_run(job)
    level = next(r for r in rows if r["indicator"] == ews.LEVEL)
    assert level["kendall_tau"] == pytest.approx(1.0) and level["ratio"] == pytest.approx(np.exp(1.8), rel=0.1)
    assert sorted(r["effect"] for r in power) == [1.5, 2.0, 10.0]


def _fractions(grok, ctrl):
    return pd.DataFrame({"fraction": [*grok, *ctrl], "grokked": [True] * len(grok) + [False] * len(ctrl)})


@pytest.mark.parametrize(("grok", "ctrl", "verdict"), [
    ([0.8, 0.7, 0.9], [0.0, 0.1, 0.0, 0.05, 0.1, 0.0], "supported"),
    ([0.0, 0.1, 0.05], [0.0, 0.1, 0.0, 0.05, 0.1, 0.0], "not supported"),  # rare and not specific
    ([0.8, 0.7, 0.9], [0.9, 0.8, 0.9, 0.85, 0.9, 0.95], "not supported"),  # common everywhere
    ([0.8, 0.7, 0.9], [0.6, 0.1], "inconclusive"),  # common, but too few controls to separate
    ([0.3, 0.35, 0.4], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "inconclusive"),  # specific, but not common
    ([0.9], [0.0, 0.0], "inconclusive"),  # one grokking run
])
def test_hypothesis_verdict_rule(grok, ctrl, verdict):
    out = ht.hypothesis_verdict(_fractions(grok, ctrl), alpha=0.05, min_hit_fraction=0.5)
    assert out["verdict"] == verdict, out
    assert out["hit_fraction"] == pytest.approx(np.mean(grok))


def test_params_reject_unknown_metrics_full_batch_and_a_grid_without_reference():
    section = profile_params("smoke")[STAGE]
    report = section["report"]
    with pytest.raises(ParamsError, match="batch_size"):
        notebook.load_params(STAGE, section | {"runs": section["runs"] | {"batch_size": 0}})
    no_ref = [c | {"reference": False} for c in section["runs"]["conditions"]]
    with pytest.raises(ParamsError, match="reference"):
        notebook.load_params(STAGE, section | {"runs": section["runs"] | {"conditions": no_ref}})
    bad = section | {"report": report | {"early_warning": report["early_warning"] | {"spectral_metrics": ["kapa"]}}}
    with pytest.raises(ParamsError, match="kapa"):
        notebook.load_params(STAGE, bad)
    with pytest.raises(ParamsError, match="grokking_transition.runs.transition = .*unknown key"):
        notebook.load_params(STAGE, section | {"runs": section["runs"] | {"transition": {}}})
    assert gt.ReportParams().early_warning.spectral_metrics  # every report key has a default


def test_jobs_cover_conditions_times_seeds_with_unique_ids(smoke_params):
    runs = smoke_params.runs.model_copy(update={"seeds": [0, 1, 2]})
    jobs = gt_runs.jobs(runs, "data")
    assert len(jobs) == len(runs.conditions) * 3
    assert len({j.run_id for j in jobs}) == len(jobs)
    assert [j.run_id for j in jobs[:2]] == [f"{runs.conditions[0].name}/s0", f"{runs.conditions[0].name}/s1"]
    assert all(j.spec.name == j.condition for j in jobs)


def test_smoke_stage_end_to_end_and_deterministic(smoke_params, data_dir, tmp_path):
    job = gt_runs.jobs(smoke_params.runs, str(data_dir))[0]
    pd.testing.assert_frame_equal(gt_runs.run_one(job).tables["telemetry"], gt_runs.run_one(job).tables["telemetry"])
    tables = grid.train(STAGE, smoke_params, tmp_path, data_dir)
    assert sorted(f.name for f in tables.iterdir()) == ["params.json", "runs.parquet", "telemetry.parquet"]
    t = notebook.load_tables(STAGE, tmp_path / "tables")
    assert t.params == smoke_params.runs
    assert {"profile", "device", "git_rev", "versions", "cpu_seconds", "steps_run", "clock", "reference"} <= set(t.runs)
    metrics = set(t.telemetry["metric"])
    assert {"grad_cosine", "grad_noise_scale", "grad_noise_trace", "grad_norm", "batch_loss", "stable_rank"} <= metrics
    steps = np.sort(t.telemetry["step"].unique())
    assert (np.diff(steps) == smoke_params.runs.cadence_every).all()
    a = gt.analyse(t, smoke_params.report)
    # the smoke grid: add_wd1/s0 groks (t_mem 64, t* 112 at cadence 2), add_wd0 does not and is its control
    tr = a.transitions.set_index("run")
    assert bool(tr.loc["add_wd1/s0", "grokked"]) and not tr.loc[tr.condition == "add_wd0", "grokked"].any()
    assert a.units["control"].tolist() == [False, True]  # per-run analyses: the runs of runs.seeds only
    # the ensemble: every seed with an onset paired with the reference of its seed
    assert a.ensemble_pairs["kept"].sum() == 3
    assert set(a.ensemble_tests["test"]) == set(ens.CLAIM_SERIES) and (a.ensemble_tests["n_pairs"] == 3).all()
    assert a.ensemble_power["power"].between(0, 1).all() and len(a.ensemble_level) == 1
    assert a.units["window_end"].nunique() == 1  # the control is read over the grokking run's window
    assert set(a.tests["test"]) == set(ht.TESTS) and set(a.tests["tested"]) == {"add_wd1"}
    assert set(a.early_warning["run"]) == {"add_wd1/s0", "add_wd0/s0"}
    assert set(a.power["test"]) == set(ht.TESTS) and a.power["power"].between(0, 1).all()
    # the analysis over 2 processes gives the same table (surrogate seeds are per series, not per process)
    pd.testing.assert_frame_equal(gt.analyse(t, smoke_params.report, workers=2).early_warning, a.early_warning)
    rows = gt_findings.findings(a, smoke_params.report)
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
    assert [r["id"] for r in rows] == [*gt_findings.TEST_CLAIMS.values(), "grokking_transition.gradient_noise_level",
                                       "grokking_transition.diagnostic_not_predictive"]
    assert all("smallest detectable" in r["why"] for r in rows)  # the power, stated on every row
    m = gt.metrics(a, smoke_params.report)
    assert set(m["conditions"]) == {c.name for c in smoke_params.runs.conditions}
    assert set(m["ensemble"]) == set(ens.CLAIM_SERIES) and "power_at_claim" in m["ensemble"]["lag1_autocorrelation"]["add_wd1"]
    assert set(m["tests"]) == set(ht.TESTS) and "power_at_claim" in m["tests"]["gradient_noise_level"]["add_wd1"]
    curves = gt.curves(a, smoke_params.report)
    assert set(curves["curve"]) == {f"{m}_{c.name}" for m in ("test_acc", "grad_noise_trace")
                                    for c in smoke_params.runs.conditions}
    table = notebook.write_report(STAGE, a, smoke_params.report, tmp_path)
    assert sum(json.loads((tmp_path / "metrics.json").read_text())["findings"].values()) == len(table)
    acc = pd.read_csv(tmp_path / "plots" / "test_acc_add_wd1.csv")
    expected = a.model[a.model.condition == "add_wd1"].groupby("step")["test_acc"].mean()
    np.testing.assert_allclose(acc["value"], expected.to_numpy(), rtol=1e-5)


def _ens_row(test: str, p_value: float, tau: float, tested="add_wd0.3", n_pairs=30) -> dict:
    group, ind = ens.CLAIM_SERIES[test]
    return {"test": test, "tested": tested, "group": group, "indicator": ind, "tau_tested": tau,
            "tau_reference": 0.0, "delta_tau": tau, "delta_lo": tau - 0.1, "delta_hi": tau + 0.1, "p_value": p_value,
            "n_series": 3, "n_pairs": n_pairs, "resid_lag1": 0.6}


def _ens_power(test: str, at_claim: float, mde: float, tested="add_wd0.3") -> list[dict]:
    # power at each slowing: ≥ 0.8 from ``mde`` on (inf: never), ``at_claim`` at the claimed 0.5
    out = []
    for e in (0.3, 0.5, 0.7, 0.9):
        pw = at_claim if e == 0.5 else (0.9 if e >= mde else 0.1)
        out.append({"effect": e, "power": pw, "median_tau": e / 2, "test": test, "tested": tested, "claimed": e == 0.5})
    return out


def _ens_analysis(p_value=0.5, tau=0.1, at_claim=0.9, mde=0.5, n_pairs=30, level=None):
    tests = [_ens_row(t, p_value, tau, n_pairs=n_pairs) for t in ens.CLAIM_SERIES]
    power = [r for t in ens.CLAIM_SERIES for r in _ens_power(t, at_claim, mde)]
    level = level or {"tested": "add_wd0.3", "metric": "grad_noise_trace", "n_pairs": n_pairs, "level": -0.5,
                      "p_level_higher": 0.999, "p_level_lower": 0.001, "change": -0.3, "p_rise": 0.99, "p_fall": 0.01,
                      "own_change": -0.4, "own_change_sd": 0.2, "p_own_rise": 0.999, "p_own_fall": 0.001,
                      "detectable": math.log10(1.5)}
    pairs = pd.DataFrame({"condition": "add_wd0.3", "kept": [True] * n_pairs})
    return gt.Analysis(*[None] * 11, ensemble_tests=pd.DataFrame(tests), ensemble_power=pd.DataFrame(power),
                       ensemble_level=pd.DataFrame([level]), ensemble_pairs=pairs, ensemble_curves=None)


@pytest.mark.parametrize(("p_value", "tau", "at_claim", "mde", "n_pairs", "expected"), [
    (0.5, 0.05, 0.9, 0.5, 30, "not reproduced"),  # the ensemble could see the claimed slowing 0.5
    (0.5, 0.05, 0.3, 0.7, 30, "inconclusive"),  # could only see a slowing of 0.7 > 0.5 claimed
    (0.5, 0.05, 0.3, math.inf, 30, "inconclusive"),  # no slowing tried reached power 0.8
    (0.5, 0.05, 0.9, 0.5, 10, "not comparable"),  # 10 pairs < 24
    (0.01, 0.3, 0.3, 0.7, 30, "reproduced"),  # a precursor seen is seen, whatever the power
    (0.01, -0.1, 0.9, 0.5, 30, "not reproduced"),  # beats the references but the indicator does not rise
])
def test_findings_give_a_negative_only_with_power_and_pairs(p_value, tau, at_claim, mde, n_pairs, expected):
    p = gt.ReportParams()
    rows = gt_findings.findings(_ens_analysis(p_value, tau, at_claim, mde, n_pairs), p)
    assert [r["id"] for r in rows] == [*gt_findings.TEST_CLAIMS.values(), "grokking_transition.gradient_noise_level",
                                       "grokking_transition.diagnostic_not_predictive"]
    for r in rows[:3]:
        assert r["verdict"] == expected, r
        detectable = f"{mde:,.3g}" if np.isfinite(mde) else "inf"
        assert f"lower bound for the mean over series) {detectable} vs claimed 0.5" in r["why"], r["why"]
        assert f"power at the claimed slowing {at_claim:.2f}" in r["measured"]
        assert f"pairs aligned on t* (tested seed + its reference at the same steps) {n_pairs} (needs ≥ 24)" \
            in r["why"] or n_pairs >= 24
    # 'not predictive' is an absence: a spectral precursor refutes it; none found needs the power and the pairs
    supported = p_value < 0.05 and tau > 0
    assert rows[-1]["verdict"] == ("not reproduced" if supported else "not comparable" if n_pairs < 24 else
                                   "reproduced" if mde <= 0.5 else "inconclusive"), rows[-1]


@pytest.mark.parametrize(("p_rise", "upper", "expected"), [
    (0.99, 0.9, "not reproduced"),  # it falls, and the runs exclude any rise above ×0.9 (< the claimed 2)
    (0.6, 3.0, "inconclusive"),  # no rise seen, but too noisy to exclude a doubling
    (0.01, 3.0, "reproduced"),
])
def test_noise_level_row_states_direction_and_power(p_rise, upper, expected):
    level = {"tested": "add_wd0.3", "metric": "grad_noise_trace", "n_pairs": 30, "level": 0.5, "p_level_higher": 0.001,
             "p_level_lower": 0.999, "change": 0.3, "p_rise": 0.01, "p_fall": 0.99, "own_change": -0.4,
             "own_change_sd": 0.2, "p_own_rise": p_rise, "p_own_fall": 1 - p_rise, "detectable": math.log10(1.5),
             "own_upper": math.log10(upper)}
    row = gt_findings.gradient_noise_level(_ens_analysis(level=level), gt.ReportParams())[0]
    assert row["verdict"] == expected, row
    assert "grokking runs falls ×0.398" in row["measured"] and "×3.16 the references'" in row["measured"]
    assert f"the test sees ×1.5 at power ≥ 0.8) {upper:,.3g} vs claimed 2" in row["why"], row["why"]


def test_findings_without_ensemble_pairs_say_so():
    a = _ens_analysis()
    a.ensemble_tests, a.ensemble_level = pd.DataFrame(), pd.DataFrame()
    rows = gt_findings.findings(a, gt.ReportParams())
    assert len(rows) == 5 and {r["verdict"] for r in rows} == {"inconclusive"}
    assert all("no ensemble pairs" in r["measured"] for r in rows)


# ------------------------------------------------------------------ ensemble indicators (synthetic)


def test_ensemble_indicators_recover_a_known_ar1():
    """Known answer: across many stationary AR(1) runs, the variance at each time is 1 / (1 − φ²),
    the lag-1 autocorrelation φ and the AR(1) autocorrelation time (1 + φ)/(1 − φ)."""
    from gradience.telemetry import signals

    X = signals.ar1_series(np.full(30, 0.6), 5000, np.random.default_rng(0))
    ind = ens.indicators(ens.residuals(X, ens.smoother(30, "none", 0.2)))
    assert np.nanmean(ind["variance"]) == pytest.approx(1 / (1 - 0.36), rel=0.02)
    assert np.nanmean(ind["lag1_ac"]) == pytest.approx(0.6, abs=0.01)
    assert np.nanmean(ind["autocorrelation_time"]) == pytest.approx(1.6 / 0.4, rel=0.05)
    assert np.isnan(ind["lag1_ac"][0])
    # the ensemble mean is removed at each time: a trend shared by every run leaves the residuals unchanged
    shifted = ens.residuals(X + np.linspace(0, 50, 30), np.eye(30))
    np.testing.assert_allclose(shifted, ens.residuals(X, np.eye(30)), atol=1e-9)
    # detrending is the linear map of signals.detrend
    x = np.random.default_rng(1).normal(size=30)
    np.testing.assert_allclose(ens.smoother(30, "gaussian", 0.2) @ x, signals.detrend(x, "gaussian", 0.2))
    v = np.random.default_rng(2).normal(size=(4, 25))
    v[0, 5] = np.nan
    expected = [stats.kendalltau(np.arange(25)[np.isfinite(r)], r[np.isfinite(r)])[0] for r in v]
    np.testing.assert_allclose(ens.kendall_tau(v), expected)


def test_trend_contrast_detects_injected_slowing_and_not_its_swap():
    rng = np.random.default_rng(0)
    M = ens.smoother(36, "none", 0.2)
    X, Y = ens.simulated_pairs(40, 36, 0.5, 0.9, rng)
    for ind in ("variance", "lag1_ac"):
        hit = ens.trend_contrast([X], [Y], ind, M, 299, rng)
        assert hit["p_value"] < 0.05 and hit["tau_tested"] > 0.2 and hit["delta_lo"] > 0, hit
        swap = ens.trend_contrast([Y], [X], ind, M, 299, rng)
        assert swap["p_value"] > 0.5 and swap["delta_tau"] == pytest.approx(-hit["delta_tau"]), swap


def test_ensemble_power_has_size_alpha_without_slowing_and_grows_with_it():
    M = ens.smoother(36, "none", 0.2)
    table = ens.ensemble_power(36, 36, 0.5, [0.0, 0.9], "lag1_ac", M, n_sims=80, n_boot=199, alpha=0.05,
                               seed=0).set_index("effect")
    assert table.loc[0.0, "power"] <= 0.12  # the test's size: α (one-sided, and τ > 0 also required)
    assert table.loc[0.9, "power"] >= 0.8


def test_detectable_shift_is_the_t_tests_power_on_a_known_normal_case():
    """Known answer: n draws of N(δ, 1) with δ = detectable_shift(1, n): a one-sided t test at 0.05
    rejects in 80% of samples."""

    n, rng = 24, np.random.default_rng(0)
    d = ens.detectable_shift(1.0, n, 0.05, 0.8)
    assert d == pytest.approx((1.6449 + 0.8416) / math.sqrt(n), rel=0.06)  # the normal approximation
    draws = rng.normal(d, 1.0, size=(4000, n))
    power = np.mean(stats.ttest_1samp(draws, 0.0, axis=1, alternative="greater").pvalue < 0.05)
    assert power == pytest.approx(0.8, abs=0.02)


def test_level_contrast_on_a_known_fall():
    """tr Σ of the tested runs falls by 0.3 decades over the window against flat references at a level
    0.5 decades higher: level −0.55 on average, change −0.3 (less the end averages), direction: falls."""
    rng = np.random.default_rng(0)
    k = np.linspace(0, 1, 40)
    Y = 1.0 + 0.02 * rng.normal(size=(30, 40))
    X = 0.6 - 0.3 * k + 0.02 * rng.normal(size=(30, 40))
    out = ens.level_contrast(X, Y, 0.25, 0.05, 0.8)
    assert out["level"] == pytest.approx(-0.4 - 0.15, abs=0.01)
    q = 10
    assert out["change"] == pytest.approx(-0.3 * (k[-q:].mean() - k[:q].mean()), abs=0.01)
    assert out["own_change"] == pytest.approx(out["change"], abs=0.01)
    assert out["p_fall"] < 1e-6 and out["p_rise"] > 0.99 and out["p_own_fall"] < 1e-6 and out["p_own_rise"] > 0.99
    assert out["p_level_lower"] < 1e-6
    sd = np.std(X[:, -q:].mean(axis=1) - X[:, :q].mean(axis=1), ddof=1)
    assert out["detectable"] == pytest.approx(ens.detectable_shift(sd, 30, 0.05, 0.8))
    own = X[:, -q:].mean(axis=1) - X[:, :q].mean(axis=1)
    assert out["own_upper"] == pytest.approx(own.mean() + stats.t.ppf(0.95, 29) * sd / np.sqrt(30))
    assert out["own_upper"] < 0  # the fall excludes any rise at all


def test_pairs_align_on_each_transition_at_the_same_steps():
    steps = np.arange(0, 200, 10)
    rows = []
    for run, shift in (("g/s0", 0), ("g/s1", 5), ("r/s0", 100), ("r/s1", 200)):
        rows += [(run, s, "model", "grad_norm", float(shift + s)) for s in steps]
    tele = pd.DataFrame(rows, columns=["run", "step", "scope", "metric", "value"])
    transitions = pd.DataFrame({
        "run": ["g/s0", "g/s1", "r/s0", "r/s1"], "condition": ["g", "g", "r", "r"], "seed": [0, 1, 0, 1],
        "op": "add", "reference": [False, False, True, True], "ensemble": True, "t_onset": [150.0, 60.0, np.nan, np.nan],
        "t_mem": [20.0, 20.0, 30.0, 40.0], "steps_run": 190})
    pairs = ens.pairs_table(transitions)
    assert pairs[["run", "ref", "t_onset", "start"]].values.tolist() == [["g/s0", "r/s0", 150.0, 30.0],
                                                                         ["g/s1", "r/s1", 60.0, 40.0]]
    X, Y, info = ens.aligned(tele, pairs, "model", "grad_norm", 5, 10)
    assert info["dropped"].tolist() == ["", "window before memorisation"]  # seed 1: t* − 50 < 40
    np.testing.assert_allclose(10 ** X, [[100, 110, 120, 130, 140]])  # steps 100..140: before t*
    np.testing.assert_allclose(10 ** Y, [[200, 210, 220, 230, 240]])  # the reference at the same steps


def test_paper_profile_transformer_path_with_gradient_probes(smoke_params, data_dir):
    paper = profile_params("paper")[STAGE]["runs"]
    assert paper["model"]["kind"] == "transformer" and paper["device"] == "auto"
    tiny = {"runs": smoke_params.runs.model_dump() | {
        "device": "auto", "steps": 4, "cadence_every": 1, "batch_size": 16, "gradients": {"noise_examples": 8, "chunk": 4},
        "model": {"kind": "transformer", "d_embed": 16, "d_hidden": 32, "n_layers": 1, "n_heads": 2}}}
    p = notebook.load_params(STAGE, tiny)
    out = gt_runs.run_one(gt_runs.jobs(p.runs, str(data_dir))[0])
    tele = out.tables["telemetry"]
    assert out.record["outcome"] == "completed"
    noise = tele[tele.metric == "grad_noise_trace"]["value"]
    assert len(noise) == 4 and np.isfinite(noise).all() and (noise > 0).all()
    assert len(tele[tele.metric == "grad_noise_scale"]) == 4  # NaN where ‖G‖²'s mini-batch estimate is ≤ 0
    assert any("q_proj" in s for s in tele.loc[tele.metric == "grad_cosine", "scope"])


# ------------------------------------------------------------------ power (telemetry.signals)


def test_trend_power_matches_the_analytic_mann_kendall_power_on_white_noise():
    """Known answer: a linear trend b·t in iid N(0, 1) noise. Kendall's S has mean
    Σ_{i<j} (2Φ(b(j−i)/√2) − 1) and null variance n(n−1)(2n+5)/18, so a one-sided test at α has
    power ≈ 1 − Φ(z_{1−α} − E[S]/sd(S)); shuffles of white noise are exact null draws."""
    from scipy import stats

    from gradience.telemetry import signals

    n, rng = 50, np.random.default_rng(0)
    i, j = np.triu_indices(n, 1)
    sd = math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    for b, tol in [(0.02, 0.1), (0.0, 0.02), (0.01, 0.04)]:  # the normal approximation is for small effects
        table = signals.trend_power(rng.normal(size=n), [b * (n - 1)], n_sims=2000, kind="shuffle", seed=1)
        expected = 1 - stats.norm.cdf(1.6449 - np.sum(2 * stats.norm.cdf(b * (j - i) / math.sqrt(2)) - 1) / sd)
        assert table["power"].iloc[0] == pytest.approx(expected, abs=tol), (b, table)
    assert table["critical_tau"].iloc[0] == pytest.approx(1.6449 * sd / (n * (n - 1) / 2), abs=0.01)


def test_detection_rate_and_minimum_detectable_on_exact_cases():
    from gradience.telemetry import signals

    power, critical = signals.detection_rate(np.arange(100.0), [94.5, 95.5, 99.5, np.nan], alpha=0.05)
    assert critical == 95.0 and power == pytest.approx(2 / 3)
    table = pd.DataFrame({"effect": [0.1, 0.3, 0.5, 0.7], "power": [0.1, 0.5, 0.85, 0.99],
                          "median_tau": [0.0, 0.2, 0.4, 0.6]})
    assert signals.minimum_detectable(table, "effect", 0.8) == {"effect": 0.5, "median_tau": 0.4}
    assert math.isnan(signals.minimum_detectable(table, "effect", 0.999)["effect"])


def test_ar1_series_is_stationary_at_a_constant_coefficient():
    from gradience.telemetry import signals

    x = signals.ar1_series(np.full(400, 0.6), 500, np.random.default_rng(0))
    assert x.var() == pytest.approx(1 / (1 - 0.36), rel=0.05)  # 1 / (1 − φ²)
    assert np.mean([signals.lag1_autocorrelation(r) for r in x]) == pytest.approx(0.6, abs=0.02)
    with pytest.raises(ValueError, match="AR"):
        signals.ar1_series([0.5, 0.5, 1.0], 1, np.random.default_rng(0))


def test_csd_power_has_size_alpha_without_slowing_and_grows_with_it():
    from gradience.telemetry import signals

    table = signals.csd_power(300, 0.2, [0.0, 0.9], indicator="lag1_ac", n_sims=600, seed=0).set_index("effect")
    # no effect: the test's size (the null's 95th percentile of a wide τ distribution needs many draws)
    assert table.loc[0.0, "power"] == pytest.approx(0.05, abs=0.035)
    assert table.loc[0.9, "power"] > 0.75 and table.loc[0.9, "median_tau"] > table.loc[0.0, "median_tau"] + 0.3
    assert table.loc[0.9, "phi_end"] == pytest.approx(0.2 + 0.9 * 0.8)
