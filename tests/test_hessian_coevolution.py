import json
import math

import numpy as np
import pandas as pd
import pytest

from gradience.config import ParamsError
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS
from gradience.studies import base
from gradience.studies import hessian_coevolution as hc
from gradience.studies.lm_regimes import DIVERGED_OUTCOMES

STAGE = "hessian_coevolution"


@pytest.fixture
def smoke():
    return base.load_params(STAGE, profile_params("smoke")[STAGE])


def test_params_reject_unknown_metrics_and_duplicate_regimes():
    section = profile_params("smoke")[STAGE]
    runs, report = section["runs"], section["report"]
    bad = section | {"report": {"lead_lag": report["lead_lag"] | {"primary": ["kappa", "hessian_det"]}}}
    with pytest.raises(ParamsError, match=r"unknown metrics \['hessian_det'\]"):
        base.load_params(STAGE, bad)
    dup = section | {"runs": runs | {"regimes": [runs["regimes"][0], runs["regimes"][0]]}}
    with pytest.raises(ParamsError, match="regime names must be unique"):
        base.load_params(STAGE, dup)
    with pytest.raises(ParamsError, match=r"hessian_coevolution.runs.regimes.0.lr = -1"):
        base.load_params(STAGE, section | {"runs": runs | {"regimes": [runs["regimes"][0] | {"lr": -1}]}})
    with pytest.raises(ParamsError, match=r"hessian_coevolution.report.lead_lag = .*min_points=6 must be ≥ 2·max_lag \+ 3 = 9"):
        base.load_params(STAGE, section | {"report": {"lead_lag": report["lead_lag"] | {"min_points": 6, "max_lag": 3}}})


def test_jobs_are_every_regime_times_every_seed_with_unique_run_ids(smoke):
    p = smoke.runs.model_copy(update={"seeds": [0, 1, 7]})
    jobs = hc.jobs(p, "data")
    assert len(jobs) == len(p.regimes) * 3
    assert len({j.run_id for j in jobs}) == len(jobs)
    assert {(j.condition, j.seed) for j in jobs} == {(r.name, s) for r in p.regimes for s in (0, 1, 7)}
    assert all(j.spec.name == j.condition and j.params is p and j.data_dir == "data" for j in jobs)


def test_edge_summary_reads_the_first_crossing_and_ignores_steps_after_divergence():
    series = pd.DataFrame({"run": "m", "step": [0, 8, 16, 24, 32], "lr": 0.1, "train_loss": [4, 3, 2.5, 2.4, 99.0],
                           "sharpness_over_edge": [0.2, 0.8, 1.3, 0.9, 50.0], "hessian_top1": [4, 16, 26, 18, 1e3]})
    runs = pd.DataFrame({"run": ["m"], "outcome": ["blew_up"], "diverged_at": [32.0]})
    s = hc.edge_summary(series, runs).iloc[0]
    assert s.edge_step == 16 and s.ratio_max == pytest.approx(1.3)
    assert s.ratio_after_edge == pytest.approx(np.median([1.3, 0.9]))
    assert s.frac_at_edge == pytest.approx(1 / 4) and s.final_train_loss == 2.4


def _table(lags, pvals, kinds):
    rows = []
    for i, (lag, p, kind) in enumerate(zip(lags, pvals, kinds, strict=True)):
        rows.append({"run": f"{kind}/s{i}", "regime": kind, "kind": kind, "seed": i, "weight_metric": "kappa",
                     "hessian_metric": "hessian_top1", "primary": True, "n": 30.0, "best_lag": lag,
                     "best_r": 0.7, "r_lag0": 0.3, "p_value": p, "lead_steps": lag * 8, "significant": p < 0.05,
                     "significant_bonferroni": p < 0.05})  # one pair: Bonferroni = α
    return pd.DataFrame(rows)


def _summary(kinds):
    return pd.DataFrame({"run": [f"{k}/s{i}" for i, k in enumerate(kinds)], "kind": kinds, "regime": kinds,
                         "outcome": ["blew_up" if k == "unstable" else "completed" for k in kinds],
                         "diverged_at": [200.0 if k == "unstable" else math.nan for k in kinds],
                         "ratio_max": [0.4 if k == "stable" else 3.0 for k in kinds],
                         "edge_step": [math.nan if k == "stable" else 80.0 for k in kinds],
                         "ratio_after_edge": [math.nan if k == "stable" else 1.2 for k in kinds],
                         "lr_at_end": 1.0, "final_train_loss": 3.0})


def _analysis(summary, table):
    return hc.Analysis(runs=None, telemetry=pd.DataFrame(), series=pd.DataFrame(), summary=summary, lead_lag=table,
                       pairs=hc.pair_summary(table), cross_correlation=pd.DataFrame(), hutchinson={})


def test_h1_verdict_follows_the_lead_lag_tests(smoke):
    kinds = ["stable", "marginal", "marginal", "unstable"]
    s = _summary(kinds)

    def verdicts(lags, pvals):
        rows = hc.findings(_analysis(s, _table(lags, pvals, kinds)), smoke.report)
        return {r["id"].removeprefix("hessian_coevolution."): r["verdict"] for r in rows}

    v = verdicts([0, 2, 1, 3], [0.5, 0.001, 0.002, 0.001])
    assert v["weights_lead_hessian"] == "reproduced" and v["spectra_coupled"] == "reproduced"
    assert v["stable_below_edge"] == "reproduced" and v["marginal_at_edge"] == "reproduced"
    assert v["unstable_diverges"] == "reproduced" and v["weights_lead_all_pairs"] == "reproduced"
    v = verdicts([0, -2, -1, -3], [0.5, 0.001, 0.002, 0.001])  # coupled, but the Hessian leads
    assert v["weights_lead_hessian"] == "not reproduced" and v["spectra_coupled"] == "reproduced"
    assert v["weights_lead_all_pairs"] == "not reproduced"
    v = verdicts([0, 2, 1, 3], [0.5, 0.4, 0.3, 0.6])  # nothing beyond the surrogates: the falsifier holds
    assert v["weights_lead_hessian"] == "not reproduced" and v["spectra_coupled"] == "not reproduced"
    assert v["weights_lead_all_pairs"] == "inconclusive"
    v = verdicts([0, 2, 1, 3], [0.5, 0.001, 0.3, 0.6])  # one run of four
    assert v["weights_lead_hessian"] == "inconclusive" and v["spectra_coupled"] == "inconclusive"


def test_pair_summary_counts_coupled_runs_and_their_median_lead():
    t = _table([2, 4, -1, 3], [0.01, 0.02, 0.5, 0.01], ["marginal"] * 4)
    row = hc.pair_summary(t).iloc[0]
    assert row.significant == 3 and row.lead == 8 * 3  # median of 16, 32, 24


def test_smoke_study_end_to_end(smoke, data_dir, tmp_path):
    tables_dir = base.train(STAGE, smoke, tmp_path, data_dir)
    assert sorted(p.name for p in tables_dir.iterdir()) == ["params.json", "runs.parquet", "spectra.parquet",
                                                             "telemetry.parquet"]
    t = base.load_tables(STAGE, tmp_path / "tables")
    assert t.params == smoke.runs
    a = hc.analyse(t, smoke.report)
    assert set(a.summary.regime) == {"stable", "marginal", "unstable"}
    assert a.summary.outcome.isin(["completed", *DIVERGED_OUTCOMES]).all()
    assert {"run", "condition", "seed", "profile", "device", "git_rev", "wall_seconds"} <= set(t.runs.columns)
    # η in units of the initial edge: the run record holds λ_max(θ₀) and the η used
    r = a.summary.iloc[0]
    assert r.lr == pytest.approx(r.lr_param * 2 / r.lambda_max_init)
    metrics = set(a.telemetry.metric)
    assert {"hessian_top1", "hessian_top3", "hessian_trace", "hessian_trace_stderr", "sharpness_over_edge",
            "kappa", "spectral_norm"} <= metrics
    live = a.series.dropna(subset=["hessian_top1"])
    assert (live.hessian_top1 >= live.hessian_top3).all()
    assert np.allclose(live.sharpness_over_edge, live.hessian_top1 * live.lr / 2)
    assert np.allclose(live.hessian_spread, live.hessian_top1 / live.hessian_top3)
    assert a.lead_lag.primary.sum() == len(a.summary)
    assert len(a.lead_lag) == len(a.summary) * len(smoke.report.lead_lag.pairs())
    assert 0 < a.hutchinson["relative_stderr_median"] < 10
    rows = hc.findings(a, smoke.report)
    assert [r["id"] for r in rows] == [
        "hessian_coevolution.stable_below_edge", "hessian_coevolution.marginal_at_edge",
        "hessian_coevolution.unstable_diverges", "hessian_coevolution.weights_lead_hessian",
        "hessian_coevolution.spectra_coupled", "hessian_coevolution.weights_lead_all_pairs"]
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
    assert not any("|" in text for r in rows for text in r.values())  # the table is rendered as markdown
    m = hc.metrics(a, smoke.report)
    assert set(m["regimes"]) == {"stable", "marginal", "unstable"} and m["hutchinson"]["probes"] == 4
    c = hc.curves(a, smoke.report)
    assert list(c.columns) == ["curve", "step", "value"]
    assert set(c.curve) == {f"{k}_{r}" for k in ("sharpness_over_edge", "kappa") for r in ("stable", "marginal", "unstable")}
    stable = a.series[a.series.regime == "stable"].set_index("step").kappa  # one seed: the median is the run
    np.testing.assert_allclose(c[c.curve == "kappa_stable"].set_index("step").value, stable.loc[c[c.curve == "kappa_stable"].step])
    table = base.write_report(STAGE, a, smoke.report, tmp_path)
    assert len(table) == len(rows)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert set(written) == {"regimes", "hutchinson", "findings"}
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(f"{n}.csv" for n in set(c.curve))


def test_smoke_run_is_deterministic(smoke, data_dir):
    p = smoke.runs.model_copy(update={"steps": 8, "regimes": smoke.runs.regimes[1:2], "device": "auto"})  # paper: auto
    job = hc.jobs(p, str(data_dir))[0]
    a, b = hc.run_one(job), hc.run_one(job)
    pd.testing.assert_frame_equal(a.tables["telemetry"], b.tables["telemetry"])
    assert a.record == b.record and a.record["outcome"] == "completed"
    assert not {"run", "seed", "profile", "device", "git_rev", "versions"} & set(a.record)  # base adds these


def test_paper_profile_keeps_the_seed_scale_measurements():
    paper = base.load_params(STAGE, profile_params("paper")[STAGE])
    assert paper.runs.device == "auto" and paper.runs.data.corpus == "tiny_shakespeare"
    assert paper.runs.hessian.top_k == 10 and paper.runs.hessian.hutchinson_probes == 100
