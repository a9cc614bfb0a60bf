import json
import math

import numpy as np
import pandas as pd
import pytest

from gradience.config import ParamsError
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS
from gradience.studies import base
from gradience.studies import fisher_geometry as fg

STAGE = "fisher_geometry"


@pytest.fixture
def smoke():
    return base.load_params(STAGE, profile_params("smoke")[STAGE])


def test_params_reject_unknown_metrics():
    section = profile_params("smoke")[STAGE]
    bad = section | {"report": {"analysis": section["report"]["analysis"] | {"pairs": [["kappa", "fisher_det"]]}}}
    with pytest.raises(ParamsError, match=r"fisher_geometry.report.analysis.pairs = .*unknown metrics \['fisher_det'\]"):
        base.load_params(STAGE, bad)
    dup = section | {"runs": section["runs"] | {"regimes": [section["runs"]["regimes"][0]] * 2}}
    with pytest.raises(ParamsError, match="regime names must be unique"):
        base.load_params(STAGE, dup)


def test_analyse_rejects_an_unmeasured_analysis_kind_or_damping(smoke):
    """The report's Fisher kind and damping must be among those the training stage measured
    (the runs params saved with the tables); the check runs in ``analyse``, before any work."""
    tables = base.Tables(smoke.runs.model_copy(update={"fisher": smoke.runs.fisher.model_copy(update={"kinds": ["empirical"]})}),
                         pd.DataFrame(), {"telemetry": pd.DataFrame(), "spectra": pd.DataFrame()})
    with pytest.raises(ValueError, match=r"analysis.kind='true' is not among the measured .*fisher.kinds=\['empirical'\]"):
        fg.analyse(tables, smoke.report)
    tables.params = smoke.runs
    report = smoke.report.model_copy(update={"analysis": smoke.report.analysis.model_copy(update={"damping": 0.5})})
    with pytest.raises(ValueError, match=r"analysis.damping=0.5 is not among the measured .*fisher.dampings"):
        fg.analyse(tables, report)


def test_jobs_are_every_regime_times_every_seed_with_unique_run_ids(smoke):
    p = smoke.runs.model_copy(update={"seeds": [3, 4]})
    jobs = fg.jobs(p, "data")
    assert [(j.condition, j.seed) for j in jobs] == [(r.name, s) for r in p.regimes for s in (3, 4)]
    assert len({j.run_id for j in jobs}) == len(jobs) == 2 * len(p.regimes)
    assert all(j.spec.name == j.condition for j in jobs)


def test_run_summary_uses_points_from_from_step_to_divergence():
    series = pd.DataFrame({"run": "u", "step": [0, 8, 16, 24], "train_loss": [4.0, 3.0, 2.9, 50.0],
                           "fisher_top1": 1.0, "fisher_overlap_enrichment": [0.1, 5.0, 2.0, 0.01],
                           "fisher_share_enrichment": [1.0, 0.5, 3.0, 9.0],
                           "ng_alignment": [0.9, 0.5, 0.4, 0.0], "fisher_eff_dim": [40.0, 10.0, 3.0, 1.0],
                           "fisher_alpha": 0.5, "alpha_mean": 0.7})
    runs = pd.DataFrame({"run": ["u"], "diverged_at": [24.0]})
    s = fg.run_summary(series, runs, from_step=1).iloc[0]
    assert s.n_points == 2 and s.overlap_min == 2.0 and s.overlap_above_chance == 1.0
    assert s.share_min == 0.5 and s.share_above_chance == 0.5 and s.share_median == 1.75
    assert s.ng_alignment_last == 0.4 and s.eff_dim_min == 3.0


def test_h3_sensitivity_moves_the_window_start():
    rows = []
    for kind, values in (("stable", [0.5, 4.0, 5.0, 6.0]), ("unstable", [3.0, 3.0, 2.0, 1.5])):
        for step, v in zip([0, 8, 16, 24], values, strict=True):
            rows.append({"run": kind, "step": step, "train_loss": 3.0, "fisher_top1": 1.0, "fisher_share_enrichment": v,
                         "fisher_overlap_enrichment": v, "ng_alignment": 0.9, "fisher_eff_dim": 5.0,
                         "fisher_alpha": 0.5, "alpha_mean": 0.7})
    runs = pd.DataFrame({"run": ["stable", "unstable"], "kind": ["stable", "unstable"], "diverged_at": [math.nan, 30.0]})
    t = fg.h3_sensitivity(pd.DataFrame(rows), runs, from_step=0, steps=80).set_index(["from_step", "measure"])
    assert sorted({s for s, _ in t.index}) == [0, 4, 8, 16, 24]
    assert t.loc[(0, "share")].stable_always_above_chance == 0.0  # the 0.5 at step 0
    assert t.loc[(8, "share")].threshold == 4.0 and t.loc[(8, "share")].unstable_below_threshold == 1.0
    assert t.loc[(24, "share")].threshold == 6.0


def _summary(stable_min, unstable_min, stable_ng=0.9, unstable_ng=0.4):
    rows = []
    for i, (kind, a_min, ng) in enumerate([("stable", stable_min, stable_ng), ("stable", stable_min * 1.2, stable_ng),
                                           ("unstable", unstable_min, unstable_ng), ("unstable", unstable_min, unstable_ng)]):
        rows.append({"run": f"{kind}/s{i}", "kind": kind, "regime": kind, "seed": i,
                     "outcome": "blew_up" if kind == "unstable" else "completed",
                     "diverged_at": 180.0 if kind == "unstable" else math.nan,
                     **{f"{m}_{stat}": v for m in ("share", "overlap") for stat, v in
                        (("min", a_min), ("median", 10 * a_min), ("above_chance", 1.0 if a_min > 1 else 0.5))},
                     "ng_alignment_median": ng, "ng_alignment_last": ng, "eff_dim_min": 20.0 if kind == "stable" else 2.0})
    return pd.DataFrame(rows)


def _coupling(p_values):
    return pd.DataFrame({"run": "x", "regime": "stable", "kind": "stable", "seed": 0, "weight_metric": "kappa",
                         "fisher_metric": "fisher_kappa_k", "n": 20.0, "best_lag": 0.0, "best_r": 0.6,
                         "p_value": p_values, "significant": [p < 0.05 for p in p_values],
                         "significant_bonferroni": [p < 0.01 for p in p_values]})


def _analysis(summary, coupling, sensitivity=None):
    return fg.Analysis(runs=None, telemetry=pd.DataFrame(), series=pd.DataFrame(), summary=summary, coupling=coupling,
                       sensitivity=sensitivity, thresholds={}, per_matrix=pd.DataFrame())


def test_h3_and_protocol_c_verdicts_follow_the_measurements(smoke):
    def verdicts(summary, coupling):
        rows = fg.findings(_analysis(summary, coupling), smoke.report)
        v = {r["id"].removeprefix("fisher_geometry."): r["verdict"] for r in rows}
        assert v["alignment_threshold_share"] == v["alignment_threshold_overlap"]  # same synthetic numbers
        return v

    v = verdicts(_summary(stable_min=3.0, unstable_min=0.5), _coupling([0.001, 0.002, 0.5]))
    assert v["alignment_threshold_share"] == "reproduced"
    assert v["regimes_differ"] == "reproduced"
    assert v["spectra_related"] == "reproduced"
    assert v["ng_alignment_stability"] == "reproduced"
    assert v["anisotropy_instability"] == "reproduced"
    assert v["kappa_correlation"] == "reproduced"
    v = verdicts(_summary(stable_min=3.0, unstable_min=5.0, unstable_ng=0.95), _coupling([0.5, 0.6, 0.7]))
    assert v["alignment_threshold_share"] == "not reproduced"  # unstable runs stay as aligned as stable ones
    assert v["ng_alignment_stability"] == "not reproduced"
    assert v["kappa_correlation"] == "not reproduced"
    v = verdicts(_summary(stable_min=0.5, unstable_min=0.1), _coupling([0.5]))
    assert v["alignment_threshold_share"] == "not reproduced"  # a stable run drops to chance
    assert fg.alignment_threshold(_summary(3.0, 0.5), "share")["threshold"] == 3.0


def test_smoke_study_end_to_end(smoke, data_dir, tmp_path):
    base.train(STAGE, smoke, tmp_path, data_dir)
    t = base.load_tables(STAGE, tmp_path / "tables")
    assert t.params == smoke.runs and set(t.frames) == {"telemetry", "spectra"}
    a = fg.analyse(t, smoke.report)
    assert set(a.summary.regime) == {"stable", "unstable"}
    metrics = set(a.telemetry.metric)
    assert {"emp_fisher_top1", "true_fisher_top1", "true_ng_alignment@1e-02", "true_fisher_overlap_enrichment",
            "true_fisher_share_enrichment", "emp_fisher_share",
            "emp_fisher_eff_dim", "true_fisher_alpha"} <= metrics
    live = a.series.dropna(subset=["fisher_top1"])
    assert ((live.ng_alignment > 0) & (live.ng_alignment <= 1 + 1e-9)).all()
    assert ((live.fisher_eff_dim >= 1 - 1e-9) & (live.fisher_eff_dim <= smoke.runs.data.n_train + 1e-9)).all()
    np.testing.assert_array_equal(live.fisher_top1, live.true_fisher_top1)  # the analysis kind, unprefixed
    assert len(a.coupling) == len(a.summary) * len(smoke.report.analysis.pairs)
    assert set(a.sensitivity.measure) == set(fg.ALIGNMENTS) and set(a.thresholds) == set(fg.ALIGNMENTS)
    assert len(a.per_matrix) and (a.per_matrix.step >= smoke.report.analysis.from_step).all()
    assert not a.per_matrix.matrix.str.contains("weight").any()
    rows = fg.findings(a, smoke.report)
    assert any("window starting at steps" in r["measured"] for r in rows)
    assert not any("|" in text for r in rows for text in r.values())  # the table is rendered as markdown
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
    m = fg.metrics(a, smoke.report)
    assert set(m["regimes"]) == {"stable", "unstable"} and set(m["alignment_threshold"]) == set(fg.ALIGNMENTS)
    c = fg.curves(a, smoke.report)
    assert set(c.curve) == {f"{k}_{r}" for k in ("train_loss", "ng_alignment") for r in ("stable", "unstable")}
    assert c.value.notna().all()
    table = base.write_report(STAGE, a, smoke.report, tmp_path)
    assert len(table) == len(rows)
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"regimes", "alignment_threshold", "findings"}
    assert len(list((tmp_path / "plots").glob("*.csv"))) == 4
