import math

import numpy as np
import pandas as pd
import pytest

from gradience.config import ParamsError, load_stage_params
from gradience.profiles import profile_params
from gradience.studies import hessian_coevolution as hc
from gradience.studies.lm_regimes import DIVERGED_OUTCOMES


@pytest.fixture
def smoke():
    return load_stage_params("hessian_coevolution", profile_params("smoke")["hessian_coevolution"])


def test_params_reject_unknown_metrics_and_duplicate_regimes(smoke):
    section = profile_params("smoke")["hessian_coevolution"]
    bad = section | {"lead_lag": section["lead_lag"] | {"primary": ["kappa", "hessian_det"]}}
    with pytest.raises(ParamsError, match=r"unknown metrics \['hessian_det'\]"):
        load_stage_params("hessian_coevolution", bad)
    dup = section | {"regimes": [section["regimes"][0], section["regimes"][0]]}
    with pytest.raises(ParamsError, match="regime names must be unique"):
        load_stage_params("hessian_coevolution", dup)
    with pytest.raises(ParamsError, match=r"hessian_coevolution.regimes.0.lr = -1"):
        load_stage_params("hessian_coevolution", section | {"regimes": [section["regimes"][0] | {"lr": -1}]})


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


def test_h1_verdict_follows_the_lead_lag_tests(smoke):
    kinds = ["stable", "marginal", "marginal", "unstable"]
    s = _summary(kinds)

    def verdicts(lags, pvals):
        return {r["claim"].split(":")[0]: r["verdict"] for r in hc.findings(s, _table(lags, pvals, kinds), smoke)}

    v = verdicts([0, 2, 1, 3], [0.5, 0.001, 0.002, 0.001])
    assert v["H1"] == "reproduced" and v["Falsifier 1 is not met"] == "reproduced"
    assert v["Stable regime (conservative η, clipping) stays below the edge λ_max < 2/η"] == "reproduced"
    v = verdicts([0, -2, -1, -3], [0.5, 0.001, 0.002, 0.001])  # coupled, but the Hessian leads
    assert v["H1"] == "not reproduced" and v["Falsifier 1 is not met"] == "reproduced"
    v = verdicts([0, 2, 1, 3], [0.5, 0.4, 0.3, 0.6])  # nothing beyond the surrogates: the falsifier holds
    assert v["H1"] == "not reproduced" and v["Falsifier 1 is not met"] == "not reproduced"
    v = verdicts([0, 2, 1, 3], [0.5, 0.001, 0.3, 0.6])  # one run of four
    assert v["H1"] == "inconclusive" and v["Falsifier 1 is not met"] == "inconclusive"


def test_smoke_study_end_to_end(smoke, data_dir, tmp_path):
    res = hc.run(smoke, tmp_path, data_dir)
    for name in ("telemetry", "spectra", "runs", "lead_lag"):
        assert (tmp_path / f"{name}.parquet").exists()
    assert set(res.summary.regime) == {"stable", "marginal", "unstable"}
    assert res.summary.outcome.isin(["completed", *DIVERGED_OUTCOMES]).all()
    # η in units of the initial edge: the run record holds λ_max(θ₀) and the η used
    r = res.summary.iloc[0]
    assert r.lr == pytest.approx(r.lr_param * 2 / r.lambda_max_init)
    metrics = set(res.telemetry.metric)
    assert {"hessian_top1", "hessian_top3", "hessian_trace", "hessian_trace_stderr", "sharpness_over_edge",
            "kappa", "spectral_norm"} <= metrics
    live = res.series.dropna(subset=["hessian_top1"])
    assert (live.hessian_top1 >= live.hessian_top3).all()
    assert np.allclose(live.sharpness_over_edge, live.hessian_top1 * live.lr / 2)
    assert res.lead_lag.primary.sum() == len(res.summary)
    rows = hc.findings(res.summary, res.lead_lag, smoke)
    assert {r["verdict"] for r in rows} <= {"reproduced", "not reproduced", "not comparable", "inconclusive"}
    assert not any("|" in text for r in rows for text in r.values())  # the table is rendered as markdown
    assert set(hc.regime_metrics(res.summary, res.lead_lag)) == {"stable", "marginal", "unstable"}


def test_smoke_run_is_deterministic(smoke, data_dir):
    p = smoke.model_copy(update={"steps": 8, "regimes": smoke.regimes[1:2], "device": "auto"})  # paper: auto
    job = hc.RegimeRun(p, p.regimes[0], 0, str(data_dir))
    a, b = hc.run_one(job)[0], hc.run_one(job)[0]
    pd.testing.assert_frame_equal(a, b)


def test_paper_profile_keeps_the_seed_scale_measurements():
    paper = load_stage_params("hessian_coevolution", profile_params("paper")["hessian_coevolution"])
    assert paper.device == "auto" and paper.data.corpus == "tiny_shakespeare"
    assert paper.hessian.top_k == 10 and paper.hessian.hutchinson_probes == 100
