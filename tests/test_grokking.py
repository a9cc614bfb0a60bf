import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradience.profiles import profile_params
from gradience.studies import grid, notebook
from gradience.studies.grokking import analysis as grokking
from gradience.studies.grokking import findings as grokking_findings
from gradience.studies.grokking import runs as grokking_runs
from gradience.telemetry.signals import first_step_staying


@pytest.fixture
def smoke_params():
    return notebook.load_params("grokking", profile_params("smoke")["grokking"])


def test_grok_step_is_first_step_from_which_accuracy_stays_high():
    steps = np.array([0, 10, 20, 30, 40, 50])
    assert first_step_staying(steps, np.array([0, 0.96, 0.5, 0.97, 0.99, 1.0]), 0.95) == 30
    assert first_step_staying(steps, np.array([1.0] * 6), 0.95) == 0
    assert math.isnan(first_step_staying(steps, np.array([0, 0.99, 0.99, 0.99, 0.99, 0.9]), 0.95))


def test_kappa_summary_uses_the_smoothed_curve():
    p = grokking.ReportParams(smoothing_window=3, peak_end_fraction=0.1)
    steps = np.arange(0, 101, 10)
    kappa = np.array([10, 20, 40, 80, 1e6, 80, 40, 20, 10, 8, 8], dtype=float)  # one spike
    s = grokking.kappa_summary(steps, kappa, p, probe_step=25, growth_step=10)
    # rolling median (window 3): 10, 15, 20, 40, 80, 80, 80, 40, 20, 10, 8 — the spike is gone
    assert s["kappa_peak"] == 80 and s["kappa_peak_step"] == 40 and s["kappa_final"] == 8
    assert not s["peak_near_end"] and s["kappa_recovery"] == pytest.approx(10.0)
    assert s["kappa_probe"] == 20  # last cadence step ≤ 25 is 20
    assert s["kappa_growth"] == pytest.approx(15 / 10)  # step 10
    assert math.isnan(grokking.kappa_summary(steps, kappa, p, math.nan, math.nan)["kappa_probe"])


def test_kappa_recovery_is_undefined_when_the_peak_is_near_the_end():
    p = grokking.ReportParams(smoothing_window=1, peak_end_fraction=0.1)
    steps = np.arange(0, 101, 10)
    rising = np.linspace(10, 100, 11)
    s = grokking.kappa_summary(steps, rising, p, 50, 10)
    assert s["peak_near_end"] and math.isnan(s["kappa_recovery"])  # not 1.0
    late = np.r_[np.linspace(10, 100, 10), 90.0]  # peak at step 90: the last 10 % starts at 90
    assert grokking.kappa_summary(steps, late, p, 50, 10)["peak_near_end"]
    early = np.r_[np.linspace(10, 100, 9), 60.0, 50.0]  # peak at step 80
    assert grokking.kappa_summary(steps, early, p, 50, 10)["kappa_recovery"] == pytest.approx(2.0)


def test_relative_clock_uses_each_seeds_grok_step_or_the_median():
    clock = grokking.seed_clock(pd.Series([3000.0, math.nan, 5000.0, 6000.0]), pd.Series([0, 1, 2, 3]))
    assert clock.to_dict() == {0: 3000.0, 1: 5000.0, 2: 5000.0, 3: 6000.0}
    assert grokking.SEED_PROBE_STEP / grokking.SEED_GROK_STEP * 3350 == pytest.approx(1000.0)


def test_auc_matches_sklearn_and_calibration_maximises_youden():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    score, positive = rng.normal(size=40), rng.random(40) < 0.4
    score[:5] = 0.0  # ties
    assert grokking.auc(score, positive) == pytest.approx(roc_auc_score(positive, score), abs=1e-12)
    assert math.isnan(grokking.auc(score, np.zeros(40, bool)))
    failed = np.array([True, True, True, False, False, False])
    score = np.array([60.0, 55.0, 3.0, 2.0, 1.5, 1.0])
    assert grokking.calibrate(score, failed, 1.0) == pytest.approx(2.5)  # J = 1: every failure above, none grokked
    assert grokking.calibrate(1 / score, failed, -1.0) == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert math.isnan(grokking.calibrate(score, np.ones(6, bool), 1.0))


def _outcome(seeds, grokked, **cols):
    n = len(seeds)
    base = {"run": [f"add_wd1/s{x}" for x in seeds], "seed": list(seeds), "lr": 0.01, "weight_decay": 1.0,
            "steps": 1440, "clock": 14.4, "clock_steps": 720.0, "grokked_by_C": list(grokked),
            "grokked_by_2C": True, "grok_step": [700.0 if g else 900.0 for g in grokked],
            "probe_step": 210.0, "growth_step": 105.0, "kappa_probe": np.ones(n), "kappa_growth": np.ones(n),
            "kappa_recovery": np.full(n, 3.0), "recovery_score": np.full(n, 3.0), "peak_near_end": False,
            "effective_rank_at_clock": np.ones(n)}
    out = pd.DataFrame(base | cols)
    out["held_out"] = ~out["seed"].isin([0, 1, 2, 3])
    return out


def test_predictors_are_calibrated_on_some_seeds_and_scored_on_the_others():
    p = grokking.ReportParams(calibration_seeds=[0, 1, 2, 3], kappa_growth_alert=50.0, kappa_recovery_alert=2.0)
    grokked = [True, True, False, False, True, True, False, False]
    out = _outcome(range(8), grokked,
                   kappa_growth=[1.0, 2.0, 8.0, 9.0, 1.5, 10.0, 7.0, 60.0],
                   recovery_score=[5.0, 4.0, 1.0, 1.2, 3.0, 1.1, 1.0, 6.0])
    a = grokking.score_predictors(out, p)
    g = a.loc["kappa_growth"]
    assert g["calibrated_threshold"] == pytest.approx(5.0)  # midpoint of 2 and 8 on seeds 0–3
    assert (g["held_out_hits"], g["held_out_false_alarms"], g["held_out_misses"]) == (2, 1, 0)
    assert g["held_out_auc"] == pytest.approx(0.75)  # pairs (7, 60) × (1.5, 10): 3 of 4 ordered
    assert (g["seed_hits"], g["seed_false_alarms"]) == (1, 0)  # the seed's 50×: only 60 fires
    s = a.loc["kappa_recovery"]
    assert s["calibrated_threshold"] == pytest.approx(2.6)  # midpoint of 1.2 and 4
    assert (s["held_out_hits"], s["held_out_false_alarms"]) == (1, 1)
    assert s["held_out_auc"] == pytest.approx(0.5)
    assert (s["seed_hits"], s["seed_false_alarms"]) == (1, 1)  # < 2 on held out: 1.0 (failed), 1.1 (grokked)
    assert a.loc["kappa_probe"]["held_out_auc"] == 0.5  # all tied
    assert a.loc["kappa_probe"]["detectable_auc"] == math.inf  # 2 vs 2 held out: no AUC ≤ 1 is detectable


def test_detectable_auc_has_the_stated_power_and_the_p_value_is_one_sided():
    from scipy.stats import norm

    assert grokking.detectable_auc(2, 2) == math.inf
    d8 = grokking.detectable_auc(8, 8)
    assert 0.8 < d8 < 0.87 and grokking.detectable_auc(12, 12) < d8  # more runs, smaller detectable AUC
    rng = np.random.default_rng(1)
    shift = math.sqrt(2) * norm.ppf(d8)  # binormal: AUC = Φ(shift/√2)
    hits = [grokking.auc_p_value(np.r_[rng.normal(shift, 1, 8), rng.normal(0, 1, 8)], np.r_[[True] * 8, [False] * 8]) < 0.05
            for _ in range(1000)]
    assert np.mean(hits) == pytest.approx(0.8, abs=0.06)  # power at the detectable AUC
    null = [grokking.auc_p_value(rng.normal(size=16), np.r_[[True] * 8, [False] * 8]) < 0.05 for _ in range(1000)]
    assert np.mean(null) == pytest.approx(0.05, abs=0.025)
    score, pos = np.array([5.0, 6.0, 1.0, 2.0]), np.array([True, True, False, False])
    assert grokking.auc_p_value(score, pos) == pytest.approx(1 / 6)  # exact: 1 of C(4, 2) orderings
    assert grokking.auc_p_value(-score, pos) == pytest.approx(1.0)


def test_log_ratio_test_is_one_sided_with_the_stated_power():
    from scipy.stats import ttest_1samp

    r = np.array([2.0, 2.5, 1.6, 3.0])
    p_value, detectable = grokking.log_ratio_test(r)
    assert p_value == pytest.approx(ttest_1samp(np.log(r), 0, alternative="greater").pvalue)
    assert grokking.log_ratio_test(1 / r)[0] == pytest.approx(1 - p_value)
    assert 1 < detectable < 2.5
    assert grokking.log_ratio_test(np.array([3.0]))[1] == math.inf  # one pair: nothing detectable
    rng = np.random.default_rng(2)
    d = grokking.log_ratio_test(np.exp(np.array([-1, 1, -1, 1]) * 0.25 * math.sqrt(3 / 4)))[1]  # sd 0.25
    hits = [grokking.log_ratio_test(np.exp(rng.normal(math.log(d), 0.25, 4)))[0] < 0.05 for _ in range(2000)]
    assert np.mean(hits) == pytest.approx(0.8, abs=0.06)  # power at the detectable ratio, 4 pairs of sd 0.25


def _tele(run, steps, acc, kappa, erank):
    rows = [(run, int(t), "model", m, float(v)) for t, a_, k, e in zip(steps, acc, kappa, erank, strict=True)
            for m, v in (("test_acc", a_), ("kappa", k), ("effective_rank", e))]
    return pd.DataFrame(rows, columns=["run", "step", "scope", "metric", "value"])


def test_outcome_runs_read_the_outcome_at_C_and_the_predictors_on_the_window():
    p = grokking.ReportParams(calibration_seeds=[0], outcome_condition="add_wd1", outcome_clock=1.0,
                              smoothing_window=1, peak_end_fraction=0.1)
    steps = np.arange(0, 201, 10)  # lr·wd 0.01: C = 100 steps, 2C = 200
    early = np.where(steps >= 60, 1.0, 0.0)  # grokked by C
    late = np.where(steps >= 150, 1.0, 0.0)  # grokked by 2C only
    never = np.zeros(len(steps))
    kappa = np.r_[np.linspace(10, 100, 6), np.linspace(90, 50, 5), np.full(10, 1e6)]  # peak at 50; huge after C
    erank = np.r_[np.full(11, 5.0), np.full(10, 99.0)]
    tele = pd.concat([_tele(f"add_wd1/s{s}", steps, acc, kappa * (s + 1), erank) for s, acc in enumerate([early, late, never])])
    runs = pd.DataFrame({"run": [f"add_wd1/s{s}" for s in range(3)], "condition": "add_wd1", "seed": range(3),
                         "lr": 0.01, "weight_decay": 1.0, "steps": 200, "clock": 2.0})
    o = grokking.outcome_runs(tele, runs, p).set_index("seed")
    assert o["grok_step"].tolist()[:2] == [60.0, 150.0] and math.isnan(o.loc[2, "grok_step"])
    assert o["grokked_by_C"].tolist() == [True, False, False] and o["grokked_by_2C"].tolist() == [True, True, False]
    assert o["held_out"].tolist() == [False, True, True]
    assert o["probe_step"].iloc[0] == pytest.approx(60 * 10 / 33.5)  # seed 0's grok step sets every run's probe
    assert o.loc[1, "kappa_recovery"] == pytest.approx(100 / 50)  # the window [0, 100]: the 1e6 after C is unseen
    assert o.loc[1, "effective_rank_at_clock"] == 5.0
    assert o.loc[1, "kappa_probe"] == pytest.approx(2 * (10 + 18 * 1))  # step 10 (≤ 17.9): 10 + 18, × 2 for seed 1


def test_shuffled_labels_permute_the_answers(data_dir):
    from gradience.tasks.modular import modular_split

    true = modular_split(data_dir, 23, "add", 0.5, 0)
    rand = modular_split(data_dir, 23, "add", 0.5, 0, shuffle_labels=True)
    assert torch.equal(true.x_train, rand.x_train)
    labels = torch.cat([rand.y_train, rand.y_test])
    assert torch.equal(labels.sort().values, torch.cat([true.y_train, true.y_test]).sort().values)
    assert (rand.y_test == true.y_test).float().mean() < 0.15  # ≈ 1/23 by chance


def test_jobs_cover_conditions_times_seeds_with_unique_ids(smoke_params):
    runs = smoke_params.runs.model_copy(update={"seeds": [0, 1, 2]})
    jobs = grokking_runs.jobs(runs, "data")
    assert len(jobs) == len(runs.conditions) * 3
    assert len({j.run_id for j in jobs}) == len(jobs)
    assert jobs[0].run_id == f"{runs.conditions[0].name}/s0" and jobs[0].spec == runs.conditions[0]


def test_smoke_study_writes_tables_and_is_deterministic(smoke_params, data_dir, tmp_path):
    runs = smoke_params.runs.model_dump()
    runs["conditions"][0] |= {"steps": 30}  # a condition's own run length
    smoke_params = smoke_params.model_copy(update={"runs": grokking_runs.RunParams.model_validate(runs)})
    tables_a = grid.train("grokking", smoke_params, tmp_path / "a", data_dir)
    tables_b = grid.train("grokking", smoke_params.model_copy(update={"workers": 2}), tmp_path / "b", data_dir)
    assert sorted(f.name for f in tables_a.iterdir()) == ["params.json", "runs.parquet", "spectra.parquet",
                                                          "telemetry.parquet"]
    a, b = notebook.load_tables("grokking", tables_a), notebook.load_tables("grokking", tables_b)
    pd.testing.assert_frame_equal(a.telemetry, b.telemetry)  # workers cannot change a result
    pd.testing.assert_frame_equal(a.spectra, b.spectra)
    assert a.params == smoke_params.runs
    assert {"profile", "device", "git_rev", "versions", "wall_seconds", "op", "lr"} <= set(a.runs.columns)
    analysis = grokking.analyse(a, smoke_params.report)
    assert set(analysis.summary["condition"]) == {"add_wd1", "mul_wd0.1"}
    rec = analysis.summary["kappa_recovery"]
    assert (rec.isna() | (rec >= 1.0)).all()  # peak of the smoothed curve ≥ its last value, or undefined
    assert (rec.isna() == analysis.summary["peak_near_end"]).all()
    assert a.runs.groupby("condition")["steps"].max().to_dict() == {"add_wd1": 30, "mul_wd0.1": smoke_params.runs.steps}
    assert sorted(a.runs.loc[a.runs.condition == "add_wd1", "seed"]) == [0, 1, 2]  # the condition's own seeds
    assert sorted(analysis.outcome["seed"]) == [0, 1, 2] and analysis.outcome["held_out"].sum() == 2
    np.testing.assert_allclose(a.runs.loc[a.runs.condition == "add_wd1", "clock"], smoke_params.runs.lr * 30)
    assert set(analysis.kappa["scope"]) == {"model", "embed.weight", "hidden.weight", "readout.weight"}
    table = notebook.write_report("grokking", analysis, smoke_params.report, tmp_path / "a")
    assert set(table["verdict"]) <= {"reproduced", "not reproduced", "not comparable", "inconclusive"}
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert set(metrics["conditions"]) == {"add_wd1", "mul_wd0.1"}
    assert metrics["outcome"]["runs"] == 3 and set(metrics["outcome"]["predictors"]) == set(grokking.PREDICTORS)
    assert sum(metrics["findings"].values()) == len(table)
    curve = pd.read_csv(tmp_path / "a" / "plots" / "test_acc_add_wd1.csv")
    assert list(curve.columns) == ["step", "value"] and curve["step"].is_monotonic_increasing
    model = analysis.model[analysis.model.condition == "add_wd1"].groupby("step")["test_acc"].mean()
    np.testing.assert_allclose(curve["value"], model.to_numpy(), rtol=1e-5)


def test_missing_tables_say_which_stage_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dvc repro grokking_runs"):
        notebook.load_tables("grokking", tmp_path)


def _run(cond, seed, grokked, wd, steps=10_000, kprobe=100.0, krec=10.0, growth=2.0, rand=False):
    grok = 5000.0 if grokked else math.nan
    return {"run": f"{cond}/s{seed}", "condition": cond, "seed": seed, "grokked": grokked, "grok_step": grok,
            "weight_decay": wd, "lr": 0.01, "steps": steps, "clock": 0.01 * wd * steps, "clock_at_grok": 0.01 * wd * grok,
            "post_grok": (steps - grok) / grok, "shuffle_labels": rand, "final_test_acc": 1.0 if grokked else 0.01,
            "probe_step": 1500.0, "growth_step": 750.0, "kappa_probe": kprobe, "kappa_recovery": krec,
            "peak_near_end": math.isnan(krec), "recovery_score": 1.0 if math.isnan(krec) else krec,
            "kappa_growth": growth, "effective_rank_start": 10.0, "effective_rank_final": 5.0}


def _analysis(smoke_params, rows, outcome):
    p = smoke_params.report.model_copy(update={"calibration_seeds": [0, 1, 2, 3], "outcome_condition": "add_wd1",
                                               "outcome_clock": 7.2, "outcome_seeds_needed": 24,
                                               "held_out_class_needed": 4, "condition_seeds_needed": 2})
    summary = pd.DataFrame(rows)
    kappa = summary[["run", "condition", "seed", "grokked", "kappa_probe", "kappa_recovery", "peak_near_end"]].assign(
        scope="model")
    return grokking.Analysis(smoke_params.runs, pd.DataFrame(), pd.DataFrame(), summary, kappa, outcome,
                             grokking.score_predictors(outcome, p)), p


def _separated(n=24, separation=True):
    """An outcome condition of n seeds, alternately grokked by C; the predictors separate the outcome or not."""
    grokked = np.arange(n) % 2 == 0
    rng = np.random.default_rng(0)
    noise = rng.normal(size=n)
    sep = np.where(grokked, 0.0, 10.0) if separation else noise
    return _outcome(range(n), grokked, kappa_probe=100 + sep, kappa_growth=2 + sep,
                    recovery_score=20 - sep, kappa_recovery=20 - sep, effective_rank_at_clock=30 + sep)


def test_findings_verdicts_follow_the_measurements_and_the_budgets(smoke_params):
    seeds = range(2)
    rows = ([_run("mul_wd0.1", s, True, 0.1) for s in seeds]
            + [_run("add_wd0.01", s, False, 0.01, kprobe=1000.0, krec=math.nan, growth=80.0) for s in seeds]
            + [_run("add_wd0.1", s, False, 0.1, krec=1.2, growth=60.0) for s in seeds]
            + [_run("add_wd1", s, True, 1.0, steps=20_000) for s in range(4)]
            + [_run("add_wd0", s, False, 0.0, krec=1.5, growth=90.0) for s in range(3)]
            + [_run("rand_wd1", s, False, 1.0, steps=2000, krec=1.1, growth=70.0, rand=True) for s in seeds])
    rows[2]["kappa_probe"] = 1200.0
    a, p = _analysis(smoke_params, rows, _separated())
    got = {r["id"]: r for r in grokking_findings.findings(a, p)}
    verdicts = {k: r["verdict"] for k, r in got.items()}
    assert verdicts == {
        "grokking.mul_wd0.1_groks": "reproduced",  # clock 10 ≥ 10
        "grokking.add_wd0.01_memorises": "not comparable",  # clock 1: a vacuous "does not grok"
        "grokking.add_wd0.1_memorises": "reproduced",
        "grokking.kappa_10k_ordering": "reproduced",  # κ_add/κ_mul 10 and 12 in both paired seeds
        "grokking.kappa_divergence_predicts": "reproduced",  # held-out AUC 1.0 over 10 vs 10
        "grokking.low_recovery_no_grok": "reproduced",
        "grokking.recovery_necessary": "reproduced",
        "grokking.weight_decay_causal": "reproduced",
        "grokking.kappa_growth_alert": "reproduced",
        "grokking.compression": "reproduced",
    }, verdicts
    assert "lr·wd·steps 1 (needs ≥ 10)" in got["grokking.add_wd0.01_memorises"]["why"]
    assert "AUC 1.00" in got["grokking.kappa_growth_alert"]["measured"]
    assert got["grokking.kappa_10k_ordering"]["seed"] == "19,794 vs 1,607 (12.3×)"  # from the claim registry
    # one budget set for every row judged inside the outcome condition
    budget = "; ".join(str(b) for b in grokking_findings.outcome_budgets(a, p))
    for cid in ("kappa_divergence_predicts", "low_recovery_no_grok", "kappa_growth_alert", "compression"):
        assert budget in got[f"grokking.{cid}"]["why"]
        assert "smallest detectable held-out AUC" in got[f"grokking.{cid}"]["why"]

    # no separation at 10 vs 10 held out: the test could have seen AUC 0.9 → a negative
    a, p = _analysis(smoke_params, rows, _separated(separation=False))
    got = {r["id"]: r["verdict"] for r in grokking_findings.findings(a, p)}
    assert got["grokking.kappa_divergence_predicts"] == "not reproduced"
    # the same at 8 seeds (2 vs 2 held out): too little power for a negative, and short of seeds
    a, p = _analysis(smoke_params, rows, _separated(n=8, separation=False))
    got = {r["id"]: r["verdict"] for r in grokking_findings.findings(a, p)}
    assert got["grokking.kappa_divergence_predicts"] == "not comparable"
    a, p = _analysis(smoke_params, rows, _separated(n=8, separation=False))
    p = p.model_copy(update={"outcome_seeds_needed": 8, "held_out_class_needed": 2})
    got = {r["id"]: r for r in grokking_findings.findings(a, p)}
    assert got["grokking.compression"]["verdict"] == "inconclusive"
    assert "too little power" in got["grokking.compression"]["why"]
    # the outcome condition absent: no budget to state
    a, p = _analysis(smoke_params, rows, pd.DataFrame())
    assert {r["id"]: r["verdict"] for r in grokking_findings.findings(a, p)}["grokking.low_recovery_no_grok"] == "not comparable"

    rows[2]["kappa_probe"], rows[3]["kappa_probe"] = 80.0, 90.0  # κ_add/κ_mul 0.8, 0.9: the ordering reversed
    a, p = _analysis(smoke_params, rows, _separated())
    got = {r["id"]: r for r in grokking_findings.findings(a, p)}
    assert got["grokking.kappa_10k_ordering"]["verdict"] == "not reproduced"  # 2 pairs detect a ratio ≪ 12.3
    assert "smallest detectable κ ratio" in got["grokking.kappa_10k_ordering"]["why"]
    late = [dict(r) for r in rows]
    late[0] |= {"kappa_recovery": math.nan, "peak_near_end": True, "recovery_score": 1.0}  # grokked, κ still at its peak
    a, p = _analysis(smoke_params, late, _separated())
    assert {r["id"]: r["verdict"] for r in grokking_findings.findings(a, p)}["grokking.recovery_necessary"] == "not reproduced"
    rows[4]["grokked"] = True  # add_wd0.1 seed 0 groks at full clock: a real negative
    rows[4]["grok_step"] = 5000.0
    a, p = _analysis(smoke_params, rows, _separated())
    got = {r["id"]: r["verdict"] for r in grokking_findings.findings(a, p)}
    assert got["grokking.add_wd0.1_memorises"] == "not reproduced"
    short = [dict(r, steps=3000, clock=r["clock"] * 0.3) for r in rows]  # the old 3k-step budget
    a, p = _analysis(smoke_params, short, _separated())
    # an absence needs every budget for either answer: on a short clock even a grok is "not comparable"
    assert {r["id"]: r["verdict"] for r in grokking_findings.findings(a, p)}["grokking.add_wd0.1_memorises"] == "not comparable"
    short[4] |= {"grokked": False, "grok_step": math.nan}  # no grok: on a short clock that agrees vacuously
    a, p = _analysis(smoke_params, short, _separated())
    assert {r["id"]: r["verdict"] for r in grokking_findings.findings(a, p)}["grokking.add_wd0.1_memorises"] == "not comparable"


def test_paper_profile_transformer_path_trains_on_cpu(smoke_params, data_dir, tmp_path):
    """The paper profile's model class (a Llama-architecture decoder from transformers), tiny."""
    paper = profile_params("paper")["grokking"]["runs"]
    assert paper["model"]["kind"] == "transformer" and paper["device"] == "auto"
    runs = smoke_params.runs.model_dump()
    tiny = {"runs": runs | {
        "device": "auto", "steps": 8, "conditions": [runs["conditions"][0] | {"seeds": [0]}],
        "model": {"kind": "transformer", "d_embed": 16, "d_hidden": 32, "n_layers": 1, "n_heads": 2},
    }}
    p = notebook.load_params("grokking", tiny)
    t = notebook.load_tables("grokking", grid.train("grokking", p, tmp_path, data_dir))
    scopes = set(t.telemetry["scope"])
    assert any("q_proj" in s for s in scopes) and any("down_proj" in s for s in scopes)
    assert t.runs["outcome"].tolist() == ["completed"]
