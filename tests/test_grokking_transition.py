import json
import math

import numpy as np
import pandas as pd
import pytest

from gradience.config import ParamsError
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS
from gradience.studies import base, grokking
from gradience.studies import grokking_transition as gt

STAGE = "grokking_transition"


@pytest.fixture
def smoke_params():
    return base.load_params(STAGE, profile_params("smoke")[STAGE])


def _acc_telemetry(run, steps, train_acc, test_acc):
    rows = [(run, s, "model", "train_acc", a) for s, a in zip(steps, train_acc, strict=True)]
    rows += [(run, s, "model", "test_acc", a) for s, a in zip(steps, test_acc, strict=True)]
    return pd.DataFrame(rows, columns=["run", "step", "scope", "metric", "value"])


def test_transitions_and_matched_control_windows():
    steps = np.arange(0, 100, 10)
    tele = pd.concat([
        _acc_telemetry("g/s0", steps, [0, .5, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, .2, .05, .3, .6, .97, 1, 1]),
        _acc_telemetry("g/s1", steps, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, .2, .6, .96, 1]),
        _acc_telemetry("c/s0", steps, [0, 0, .995, 1, 1, 1, 1, 1, 1, 1], [0] * 10),
        _acc_telemetry("c/s7", steps, [0, 0, 0, 1, 1, 1, 1, 1, 1, 1], [0] * 10),
    ])
    runs = pd.DataFrame({"run": ["g/s0", "g/s1", "c/s0", "c/s7"], "seed": [0, 1, 0, 7]})
    tr = gt.transition_table(tele, runs, gt.TransitionParams()).set_index("run")
    # onset: test acc ≥ 0.1 for good (the dip to 0.05 at step 40 resets it); grok: ≥ 0.95 for good
    assert tr.loc["g/s0", ["t_mem", "t_onset", "t_mid", "grok_step"]].tolist() == [20, 50, 60, 70]
    assert tr.loc["g/s1", ["t_mem", "t_onset", "grok_step"]].tolist() == [10, 60, 80]
    assert tr["grokked"].tolist() == [True, True, False, False]
    # controls: same seed's onset (50), else the median over grokking runs (55)
    assert tr.loc["c/s0", ["window_start", "window_end"]].tolist() == [20, 50]
    assert tr.loc["c/s7", ["window_start", "window_end"]].tolist() == [30, 55]
    assert tr.loc["g/s1", ["window_start", "window_end"]].tolist() == [10, 60]
    # the onset and grok steps are the grokking study's grok step, at two thresholds
    acc = tele[(tele.run == "g/s0") & (tele.metric == "test_acc")]
    assert grokking.grok_step(acc.step.to_numpy(), acc.value.to_numpy(), 0.1) == tr.loc["g/s0", "t_onset"]



def test_alarm_is_the_first_index_from_which_the_indicator_stays_above_baseline():
    ind = np.array([np.nan, np.nan, 1.0, 1.1, 0.9, 1.0, 5.0, 1.0, 4.0, 6.0, 7.0])
    # baseline: first 2 defined values (1.0, 1.1): threshold 1.05 + 2·0.0707 ≈ 1.19
    assert gt.alarm_index(ind, baseline_fraction=0.2, z=2.0) == 8
    assert gt.alarm_index(np.array([1.0, 1.1, 0.9, 1.0, 1.05]), 0.4, 2.0) is None


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
    rows = {r["indicator"]: r for r in gt.early_warning_one(steps, slowing, ew, seed=0)}
    for name in ("lag1_ac", "variance"):
        assert rows[name]["kendall_tau"] > 0.5 and rows[name]["p_value"] < 0.05, (name, rows[name])
    # Sokal's τ_int rises too, but its rolling estimate is noisy: against phase surrogates it is far
    # less powerful than lag-1 autocorrelation (p ≈ 0.01–0.3 over seeds of this very series)
    assert rows["autocorrelation_time"]["kendall_tau"] > 0.3 and rows["autocorrelation_time"]["ratio"] > 1.5
    assert 0 < rows["lag1_ac"]["lead_steps"] <= n * 5
    stationary = _ar1(np.full(n, 0.5), n, rng)
    rows = {r["indicator"]: r for r in gt.early_warning_one(steps, stationary, ew, seed=0)}
    assert sum(r["p_value"] < 0.05 and r["kendall_tau"] > 0 for r in rows.values()) <= 1


def test_lead_lag_finds_a_series_that_moves_first():
    steps = np.arange(0, 605, 5)
    acc = 1 / (1 + np.exp(-(steps - 300) / 15.0))
    metric = 1 / (1 + np.exp(-(steps - 250) / 15.0)) - 0.5  # the same step, 50 steps earlier
    ew = gt.EarlyWarningParams(spectral_metrics=["stable_rank"], lead_lag_half_window=300, lead_lag_max=15)
    out = gt.lead_lag_one(steps, metric, acc, 300.0, ew)
    assert out["xcorr_lag_steps"] == 50 and out["xcorr_r"] > 0.9


def test_analyse_run_skips_short_or_broken_series_and_says_why():
    steps = np.arange(0, 200, 5)
    series = pd.DataFrame({"scope": ["hidden.weight"] * 40 + ["model"] * 40,
                           "metric": ["stable_rank"] * 40 + ["grad_noise_scale"] * 40,
                           "step": np.concatenate([steps, steps]),
                           "value": np.concatenate([np.ones(40), np.r_[np.nan, np.arange(39.0)]])})
    ew = gt.EarlyWarningParams(spectral_metrics=["stable_rank"], model_metrics=["grad_noise_scale"], min_points=10)
    job = gt.AnalysisJob("r", False, (0.0, 100.0), math.nan, series, pd.Series(dtype=float), ew)
    reasons = {(r["metric"], r["skipped"]) for r in gt.analyse_run(job)}
    assert reasons == {("stable_rank", "constant"), ("grad_noise_scale", "non-finite values")}
    short = gt.AnalysisJob("r", False, (0.0, 30.0), math.nan, series, pd.Series(dtype=float), ew)
    assert {r["skipped"] for r in gt.analyse_run(short)} == {"6 points < 10"}


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
    out = gt.hypothesis_verdict(_fractions(grok, ctrl), alpha=0.05, min_hit_fraction=0.5)
    assert out["verdict"] == verdict, out
    assert out["hit_fraction"] == pytest.approx(np.mean(grok))


def test_params_reject_unknown_metrics_and_keep_analysis_keys_under_report():
    section = profile_params("smoke")[STAGE]
    report = section["report"]
    bad = section | {"report": report | {"early_warning": report["early_warning"] | {"spectral_metrics": ["kapa"]}}}
    with pytest.raises(ParamsError, match="kapa"):
        base.load_params(STAGE, bad)
    with pytest.raises(ParamsError, match="grokking_transition.runs.transition = .*unknown key"):
        base.load_params(STAGE, section | {"runs": section["runs"] | {"transition": {}}})
    assert gt.ReportParams().early_warning.spectral_metrics  # every report key has a default


def test_jobs_cover_conditions_times_seeds_with_unique_ids(smoke_params):
    runs = smoke_params.runs.model_copy(update={"seeds": [0, 1, 2]})
    jobs = gt.jobs(runs, "data")
    assert len(jobs) == len(runs.conditions) * 3
    assert len({j.run_id for j in jobs}) == len(jobs)
    assert [j.run_id for j in jobs[:2]] == [f"{runs.conditions[0].name}/s0", f"{runs.conditions[0].name}/s1"]
    assert all(j.spec.name == j.condition for j in jobs)


def test_smoke_stage_end_to_end_and_deterministic(smoke_params, data_dir, tmp_path):
    job = gt.jobs(smoke_params.runs, str(data_dir))[0]
    pd.testing.assert_frame_equal(gt.run_one(job).tables["telemetry"], gt.run_one(job).tables["telemetry"])
    tables = base.train(STAGE, smoke_params, tmp_path, data_dir)
    assert sorted(f.name for f in tables.iterdir()) == ["params.json", "runs.parquet", "telemetry.parquet"]
    t = base.load_tables(STAGE, tmp_path / "tables")
    assert t.params == smoke_params.runs
    assert {"profile", "device", "git_rev", "versions", "wall_seconds", "weight_decay", "outcome"} <= set(t.runs)
    metrics = set(t.telemetry["metric"])
    assert {"grad_cosine", "grad_noise_scale", "grad_noise_trace", "grad_norm", "stable_rank"} <= metrics
    steps = np.sort(t.telemetry["step"].unique())
    assert (np.diff(steps) == smoke_params.runs.cadence_every).all()
    a = gt.analyse(t, smoke_params.report)
    assert len(a.transitions) == len(t.runs) and {"t_mem", "t_onset", "window_end"} <= set(a.transitions)
    assert set(a.tests) == set(gt.TESTS) and set(a.fractions["test"]) <= set(gt.TESTS)
    assert set(a.early_warning["run"]) == set(t.runs["run"])
    # the analysis over 2 processes gives the same table (surrogate seeds are per series, not per process)
    pd.testing.assert_frame_equal(gt.analyse(t, smoke_params.report, workers=2).early_warning, a.early_warning)
    rows = gt.findings(a, smoke_params.report)
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
    assert [r["id"] for r in rows][:4] == [*gt.TEST_CLAIMS.values(), "grokking_transition.diagnostic_not_predictive"]
    m = gt.metrics(a, smoke_params.report)
    assert set(m["conditions"]) == {c.name for c in smoke_params.runs.conditions}
    assert m["conditions"]["add_wd1"]["grokked_fraction"] == float(a.transitions.query("condition == 'add_wd1'")
                                                                   ["grokked"].mean())
    curves = gt.curves(a, smoke_params.report)
    assert set(curves["curve"]) == {f"{m}_{c.name}" for m in ("test_acc", "grad_noise_scale")
                                    for c in smoke_params.runs.conditions}
    table = base.write_report(STAGE, a, smoke_params.report, tmp_path)
    assert sum(json.loads((tmp_path / "metrics.json").read_text())["findings"].values()) == len(table)
    acc = pd.read_csv(tmp_path / "plots" / "test_acc_add_wd1.csv")
    expected = a.model[a.model.condition == "add_wd1"].groupby("step")["test_acc"].mean()
    np.testing.assert_allclose(acc["value"], expected.to_numpy(), rtol=1e-5)


def test_paper_profile_transformer_path_with_gradient_probes(smoke_params, data_dir):
    paper = profile_params("paper")[STAGE]["runs"]
    assert paper["model"]["kind"] == "transformer" and paper["device"] == "auto"
    tiny = {"runs": smoke_params.runs.model_dump() | {
        "device": "auto", "steps": 4, "cadence_every": 1, "gradients": {"noise_examples": 8, "chunk": 4},
        "model": {"kind": "transformer", "d_embed": 16, "d_hidden": 32, "n_layers": 1, "n_heads": 2}}}
    p = base.load_params(STAGE, tiny)
    out = gt.run_one(gt.jobs(p.runs, str(data_dir))[0])
    tele = out.tables["telemetry"]
    assert out.record["outcome"] == "completed"
    noise = tele[tele.metric == "grad_noise_scale"]["value"]
    assert len(noise) == 4 and np.isfinite(noise).all() and (noise > 0).all()
    assert any("q_proj" in s for s in tele.loc[tele.metric == "grad_cosine", "scope"])
