import json
import math

import numpy as np
import pandas as pd
import pytest

from gradience.config import ParamsError
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS
from gradience.studies import grid, notebook
from gradience.studies.grokking_transition import analysis as gt
from gradience.studies.grokking_transition import early_warning as ews
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
    # the smoke grid: add_wd1 groks (t_mem 64, t* 112 at cadence 2), add_wd0 does not and is its control
    tr = a.transitions.set_index("condition")
    assert bool(tr.loc["add_wd1", "grokked"]) and not bool(tr.loc["add_wd0", "grokked"])
    assert a.units["control"].tolist() == [False, True]
    assert a.units["window_end"].nunique() == 1  # the control is read over the grokking run's window
    assert set(a.tests["test"]) == set(ht.TESTS) and set(a.tests["tested"]) == {"add_wd1"}
    assert set(a.early_warning["run"]) == set(t.runs["run"])
    assert set(a.power["test"]) == set(ht.TESTS) and a.power["power"].between(0, 1).all()
    # the analysis over 2 processes gives the same table (surrogate seeds are per series, not per process)
    pd.testing.assert_frame_equal(gt.analyse(t, smoke_params.report, workers=2).early_warning, a.early_warning)
    rows = gt_findings.findings(a, smoke_params.report)
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
    assert [r["id"] for r in rows] == [*gt_findings.TEST_CLAIMS.values(), "grokking_transition.diagnostic_not_predictive"]
    assert all("smallest detectable" in r["why"] for r in rows[:4])  # the power, now a Power, not a budget
    m = gt.metrics(a, smoke_params.report)
    assert set(m["conditions"]) == {c.name for c in smoke_params.runs.conditions}
    assert m["conditions"]["add_wd1"]["grokked_fraction"] == 1.0
    assert set(m["tests"]) == set(ht.TESTS) and "power_at_claim" in m["tests"]["gradient_noise_level"]["add_wd1"]
    curves = gt.curves(a, smoke_params.report)
    assert set(curves["curve"]) == {f"{m}_{c.name}" for m in ("test_acc", "grad_noise_trace")
                                    for c in smoke_params.runs.conditions}
    table = notebook.write_report(STAGE, a, smoke_params.report, tmp_path)
    assert sum(json.loads((tmp_path / "metrics.json").read_text())["findings"].values()) == len(table)
    acc = pd.read_csv(tmp_path / "plots" / "test_acc_add_wd1.csv")
    expected = a.model[a.model.condition == "add_wd1"].groupby("step")["test_acc"].mean()
    np.testing.assert_allclose(acc["value"], expected.to_numpy(), rtol=1e-5)


def _test_row(verdict: str, tested="mul_wd0.1", n_grok=3, n_ctrl=6) -> dict:
    return {"test": "lag1_autocorrelation", "tested": tested, "group": "spectral", "indicator": "lag1_ac",
            "hit_fraction": 0.1, "control_fraction": 0.1, "n_grok_runs": n_grok, "n_control_runs": n_ctrl,
            "p_mannwhitney": 0.6, "verdict": verdict, "why": "w", "n_points": 150.0, "resid_lag1": 0.5,
            "tau_grok": 0.0, "tau_control": 0.0, "ratio_grok": 1.0, "ratio_control": 1.0}


def _power_row(power: float, mde: float, tested="mul_wd0.1") -> dict:
    # power at the claimed slowing 0.5 and the smallest slowing detected with power ≥ 0.8 (power_summary)
    return {"test": "lag1_autocorrelation", "tested": tested, "power_at_claim": power, "tau_at_claim": 0.5,
            "mde_effect": mde, "mde_tau": 0.5 if np.isfinite(mde) else math.nan}


def _analysis(tests: list[dict], powers: list[dict]):
    return gt.Analysis(None, None, None, None, None, None, None, None, pd.DataFrame(tests), None,
                       pd.DataFrame(powers))


def _analysis_with(verdict: str, power: float, mde: float, n_grok=3, n_ctrl=6):
    return _analysis([_test_row(verdict, n_grok=n_grok, n_ctrl=n_ctrl)], [_power_row(power, mde)])


@pytest.mark.parametrize(("verdict", "power", "mde", "n_ctrl", "expected"), [
    ("not supported", 0.9, 0.5, 6, "not reproduced"),  # the test could see the claimed slowing 0.5
    # a comparison: low power now makes a negative inconclusive (was "not comparable" when power was a budget)
    ("not supported", 0.3, 0.7, 6, "inconclusive"),  # could only see a slowing of 0.7 > 0.5 claimed
    ("not supported", 0.3, math.nan, 6, "inconclusive"),  # no slowing tried reached power 0.8
    ("not supported", 0.9, 0.5, 3, "not comparable"),  # 3 vs 3 runs: Mann–Whitney cannot reach p < 0.05
    # a precursor seen is seen, whatever the power: power is no budget, and the other budgets are met
    ("supported", 0.3, 0.7, 6, "reproduced"),
    ("inconclusive", 0.9, 0.5, 6, "inconclusive"),
])
def test_findings_give_a_negative_only_with_power_and_controls(verdict, power, mde, n_ctrl, expected):
    rows = gt_findings.findings(_analysis_with(verdict, power, mde, n_ctrl=n_ctrl), gt.ReportParams())
    assert rows[0]["verdict"] == expected, rows[0]
    detectable = f"{mde:,.3g}" if np.isfinite(mde) else "inf"
    assert (f"smallest detectable slowing by t* (share of the AR(1) coefficient's distance to 1, at power ≥ 0.8) "
            f"{detectable} vs claimed 0.5") in rows[0]["why"], rows[0]["why"]
    assert f"power at the claim {power:.2f}" in rows[0]["measured"]
    # 'not predictive' is an absence: a precursor found refutes it whatever the budget; agreeing needs
    # ≥ 2 tested conditions (one here: short of budget) and the power to see a precursor
    assert rows[-1]["id"] == "grokking_transition.diagnostic_not_predictive"
    assert rows[-1]["verdict"] == ("not reproduced" if verdict == "supported" else
                                   "inconclusive" if verdict == "inconclusive" else "not comparable")


@pytest.mark.parametrize(("mde", "expected"), [
    ((0.5, 0.3), "reproduced"),  # both conditions could see the claimed slowing 0.5
    # an absence given a Power: agreeing with too little power is inconclusive, not a negative's
    # "reproduced" (was "not comparable" when power was a budget)
    ((0.5, 0.7), "inconclusive"),
    ((0.5, math.nan), "inconclusive"),  # one condition: no slowing tried reached power 0.8
])
def test_not_predictive_needs_every_spectral_test_to_have_power(mde, expected):
    conds = ("mul_wd0.1", "add_wd0.3")
    a = _analysis([_test_row("not supported", tested=c) for c in conds],
                  [_power_row(0.9 if m <= 0.5 else 0.3, m, tested=c) for c, m in zip(conds, mde, strict=True)])
    row = gt_findings.findings(a, gt.ReportParams())[-1]
    assert row["verdict"] == expected, row
    weakest = max(m if np.isfinite(m) else math.inf for m in mde)
    assert f"of the weakest spectral test {weakest:,.3g} vs claimed 0.5" in row["why"], row["why"]
    # a precursor in one condition refutes 'not predictive' whatever the power
    a.tests.loc[0, "verdict"] = "supported"
    assert gt_findings.findings(a, gt.ReportParams())[-1]["verdict"] == "not reproduced"


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
