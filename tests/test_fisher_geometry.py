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
from gradience.studies.fisher_geometry import analysis as fg
from gradience.studies.fisher_geometry import findings as fg_findings
from gradience.studies.fisher_geometry import runs as fg_runs
from gradience.studies.protocol import Tables
from gradience.tasks import Split
from gradience.telemetry import fisher
from gradience.training import StepContext

STAGE = "fisher_geometry"


@pytest.fixture
def smoke():
    return notebook.load_params(STAGE, profile_params("smoke")[STAGE])


def test_params_reject_unknown_metrics_and_an_empty_window():
    section = profile_params("smoke")[STAGE]
    analysis = section["report"]["analysis"]
    bad = section | {"report": {"analysis": analysis | {"pairs": [["kappa", "fisher_det"]]}}}
    with pytest.raises(ParamsError, match=r"fisher_geometry.report.analysis.pairs = .*unknown metrics \['fisher_det'\]"):
        notebook.load_params(STAGE, bad)
    dup = section | {"runs": section["runs"] | {"regimes": [section["runs"]["regimes"][0]] * 2}}
    with pytest.raises(ParamsError, match="regime names must be unique"):
        notebook.load_params(STAGE, dup)
    window = section | {"report": {"analysis": analysis | {"start_loss": 3.0, "matched_loss": 3.5}}}
    with pytest.raises(ParamsError, match=r"start_loss=3.0 must be > matched_loss=3.5"):
        notebook.load_params(STAGE, window)


def test_analyse_rejects_an_unmeasured_kind_damping_or_calibration_seeds(smoke):
    """Checked in ``analyse`` against the runs params saved with the tables, before any work."""
    tables = Tables(smoke.runs.model_copy(update={"fisher": smoke.runs.fisher.model_copy(update={"kinds": ["empirical"]})}),
                         pd.DataFrame(), {"telemetry": pd.DataFrame(), "spectra": pd.DataFrame()})
    with pytest.raises(ValueError, match=r"analysis.kind='true' is not among the measured .*fisher.kinds=\['empirical'\]"):
        fg.analyse(tables, smoke.report)
    tables.params = smoke.runs

    def analysis(**kw):
        return smoke.report.model_copy(update={"analysis": smoke.report.analysis.model_copy(update=kw)})

    with pytest.raises(ValueError, match=r"analysis.damping=0.5 is neither 0 \(F⁺\) nor among the measured"):
        fg.analyse(tables, analysis(damping=0.5))
    with pytest.raises(ValueError, match=r"calibration_seeds=\[0, 1\] must be a proper subset"):
        fg.analyse(tables, analysis(calibration_seeds=list(smoke.runs.seeds)))


def test_jobs_are_every_regime_times_every_seed_with_unique_run_ids(smoke):
    p = smoke.runs.model_copy(update={"seeds": [3, 4]})
    jobs = fg_runs.jobs(p, "data")
    assert [(j.condition, j.seed) for j in jobs] == [(r.name, s) for r in p.regimes for s in (3, 4)]
    assert len({j.run_id for j in jobs}) == len(jobs) == 2 * len(p.regimes)


def _model_and_split():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    return model, Split(x, y, x, y)


def test_probe_keeps_w0_so_alignment_over_w0_is_one_at_step_0_and_matches_the_definition(smoke):
    model, split = _model_and_split()
    f = smoke.runs.fisher.model_copy(update={"kinds": ["empirical"], "top_k": 3})
    probe = fg_runs.fisher_probe(f)
    ctx = StepContext(step=0, model=model, batch=(split.x_train, split.y_train), loss=0.0, lr=0.1, split=split)
    first = {(s, m): v for s, m, v in probe(ctx)}
    assert first["model", "emp_fisher_share_w0_enrichment"] == pytest.approx(1.0, rel=1e-12)
    assert first["model", "emp_fisher_overlap_w0_enrichment"] == pytest.approx(1.0, rel=1e-12)
    assert first["model", "emp_grad_span_fraction"] == pytest.approx(1.0, rel=1e-9)  # empirical: ∇L in its span
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.ndim == 2}
    with torch.no_grad():  # move the weights: now the null (W₀) and the current subspaces differ
        model[0].weight.add_(torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    later = {(s, m): v for s, m, v in probe(StepContext(5, model, ctx.batch, 0.0, 0.1, split))}
    G = fisher.per_sample_grads(model, ctx.batch)
    layout = [(n, p.shape) for n, p in model.named_parameters()]
    now = {n: p.detach() for n, p in model.named_parameters() if p.ndim == 2}
    cur, ref = fisher.subspace_share(G, layout, now, 1), fisher.subspace_share(G, layout, w0, 1)
    expected = sum(v[0] for v in cur.values()) / sum(v[0] for v in ref.values())
    assert later["model", "emp_fisher_share_w0_enrichment"] == pytest.approx(expected, rel=1e-10)
    assert expected != pytest.approx(1.0, abs=0.05)
    lam1 = float(torch.linalg.eigvalsh(fisher.gram(G)).max())
    span = fisher.span_alignment(G, fisher.batch_grad(model, ctx.batch), (0.0, 0.01 * lam1))
    assert later["model", "emp_ng_span@pinv"] == pytest.approx(span["cos@0"], rel=1e-10)
    assert later["model", "emp_ng_span@1e-02"] == pytest.approx(list(span.values())[2], rel=1e-10)
    assert ("0.weight", "emp_fisher_share_w0") in later


def _series():
    """Two runs; the unstable one blows up at step 40. Losses cross 4.0 and 3.6 at known steps."""
    rows = []
    for run, loss, a in (("s", [4.3, 4.1, 3.9, 3.7, 3.5, 3.4], [1.0, 1.5, 3.0, 4.0, 5.0, 2.0]),
                         ("u", [4.3, 3.8, 3.5, 3.3, 3.2, 9.0], [1.0, 2.0, 1.2, 0.5, 0.4, 0.1])):
        for step, (loss_t, v) in enumerate(zip(loss, a, strict=True)):
            rows.append({"run": run, "step": 10 * step, "train_loss": loss_t, "fisher_top1": 1.0,
                         "fisher_share_w0_enrichment": v, "fisher_overlap_w0_enrichment": 2 * v,
                         "fisher_share_enrichment": 10 * v, "fisher_overlap_enrichment": 20 * v,
                         "ng_alignment": 0.9 - 0.1 * step, "span_fraction": 0.5, "fisher_eff_dim": 40.0 - step,
                         "fisher_alpha": 0.5, "alpha_mean": 0.7})
    runs = pd.DataFrame({"run": ["s", "u"], "kind": ["stable", "unstable"], "seed": [0, 0],
                         "diverged_at": [math.nan, 50.0]})
    return pd.DataFrame(rows), runs


def test_run_summary_matches_loss_and_windows_the_same_loss_range(smoke):
    series, runs = _series()
    a = smoke.report.analysis.model_copy(update={"start_loss": 4.0, "matched_loss": 3.6})
    s = fg.run_summary(series, runs, a).set_index("run")
    assert s.loc["s", "matched_step"] == 40.0 and s.loc["u", "matched_step"] == 20.0
    # window: first step with loss ≤ 4.0 to t*: s = steps 20…40 (A 3, 4, 5), u = steps 10…20 (A 2, 1.2)
    assert s.loc["s", "share_min"] == 3.0 and s.loc["s", "share_median"] == 4.0 and s.loc["s", "n_points"] == 3
    assert s.loc["u", "share_min"] == 1.2 and s.loc["u", "overlap_min"] == 2.4
    assert s.loc["u", "share_min_all"] == 0.4  # every step > 0 before the divergence at 50
    assert s.loc["s", "ng_alignment_at_match"] == pytest.approx(0.5) and s.loc["u", "fisher_eff_dim_at_match"] == 38.0
    assert s.loc["u", "eff_dim_min"] == 36.0
    late = fg.run_summary(series, runs, a, level=3.3).set_index("run")
    assert math.isnan(late.loc["s", "matched_step"]) and late.loc["u", "matched_step"] == 30.0


def test_threshold_is_chosen_on_calibration_seeds_and_scored_on_held_out_ones():
    t, acc = fg.choose_threshold(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    assert t == 2.5 and acc == 1.0
    t, acc = fg.choose_threshold(np.array([1.5, 4.0]), np.array([1.0, 2.0]))  # best: 3 of 4 right, middle of ties
    assert acc == 0.75 and t in (1.25, 1.75, 3.0)
    summary = pd.DataFrame({"seed": [0, 1, 2, 3] * 2, "kind": ["stable"] * 4 + ["unstable"] * 4,
                            "matched_step": 10.0, "share_min": [3.0, 4.0, 2.8, 2.0, 1.0, 2.0, 1.5, 2.6]})
    h = fg.h3_test(summary, "share", [0, 1])
    assert h["threshold"] == 2.5 and h["calibration_accuracy"] == 1.0
    assert (h["heldout_stable"], h["heldout_stable_above"]) == (2.0, 1.0)  # seed 3 (2.0) falls below
    assert (h["heldout_unstable"], h["heldout_unstable_below"]) == (2.0, 1.0)  # seed 3 (2.6) stays above
    assert h["heldout_accuracy"] == 0.5


def _summary(stable_min, unstable_min, stable_ng=0.9, unstable_ng=0.4, n=4, reached=True):
    rows = []
    for kind, a_min, ng in (("stable", stable_min, stable_ng), ("unstable", unstable_min, unstable_ng)):
        for i in range(n):
            rows.append({"run": f"{kind}/s{i}", "kind": kind, "regime": kind, "seed": i,
                         "outcome": "blew_up" if kind == "unstable" else "completed",
                         "diverged_at": 180.0 if kind == "unstable" else math.nan,
                         "matched_step": 50.0 + i if reached else math.nan, "cpu_seconds": 1.0,
                         **{f"{m}_{stat}": a_min * (1 + 0.1 * i) for m in ("share", "overlap")
                            for stat in ("min", "median", "min_all")}, "n_points": 5 if reached else 0,
                         "share_chance_median": 20.0, "ng_alignment_at_match": ng + 0.01 * i,
                         "ng_alignment_full_at_match": math.nan, "span_fraction_at_match": 0.5,
                         "fisher_eff_dim_at_match": (20.0 if kind == "stable" else 2.0) + i,
                         "eff_dim_min": 10.0, "fisher_alpha_median": 0.5, "weight_alpha_median": 0.7})
    out = pd.DataFrame(rows)
    if not reached:  # nothing at L*, no matched window
        out.loc[:, [c for c in out if c.endswith(("_at_match", "_min", "_median")) and c != "eff_dim_min"]] = math.nan
    return out


def _coupling(p_values):
    return pd.DataFrame({"run": "x", "regime": "stable", "kind": "stable", "seed": 0, "weight_metric": "kappa",
                         "fisher_metric": "fisher_kappa_k", "n": 20.0, "best_lag": 0.0, "best_r": 0.6,
                         "p_value": p_values, "significant": [p < 0.05 for p in p_values],
                         "significant_bonferroni": [p < 0.01 for p in p_values]})


def _analysis(summary, smoke):
    report = smoke.report
    a = report.analysis.model_copy(update={"calibration_seeds": [0, 1]})
    h3 = {m: fg.h3_test(summary, m, a.calibration_seeds) for m in fg.ALIGNMENTS}
    runs = smoke.runs.model_copy(update={"steps": 300})
    return fg.Analysis(runs, pd.DataFrame(), pd.DataFrame(), summary, pd.DataFrame(), h3, pd.DataFrame(),
                       pd.DataFrame()), report.model_copy(update={"analysis": a})


def test_verdicts_follow_the_measurements_and_the_budgets(smoke):
    def verdicts(summary, coupling):
        a, report = _analysis(summary, smoke)
        a.coupling = coupling
        rows = fg_findings.findings(a, report)
        assert all(r["why"] for r in rows)
        return {r["id"].removeprefix("fisher_geometry."): (r["verdict"], r["why"]) for r in rows}

    v = verdicts(_summary(stable_min=3.0, unstable_min=0.5), _coupling([0.001, 0.002, 0.5]))
    assert {k: x[0] for k, x in v.items()} == dict.fromkeys(
        ["regimes_differ", "alignment_threshold_share", "alignment_threshold_overlap", "spectra_related",
         "kappa_correlation", "ng_alignment_stability", "anisotropy_instability"], "reproduced")
    assert "held-out seeds per regime at L* 2 (needs ≥ 2)" in v["alignment_threshold_share"][1]
    assert "cadence points in the shortest H3 window 5 (needs ≥ 2)" in v["alignment_threshold_share"][1]
    assert ("smallest detectable one-sided Mann–Whitney p (complete separation of 4 vs 4 runs, 1/C(8, 4); "
            "claimed: half of α) 0.0143 vs claimed 0.025") in v["ng_alignment_stability"][1]
    v = verdicts(_summary(stable_min=3.0, unstable_min=5.0, unstable_ng=0.95), _coupling([0.5, 0.6, 0.7]))
    # comparisons whose test states no power: a negative is inconclusive, not "not reproduced" (was)
    assert v["alignment_threshold_share"][0] == "inconclusive"  # no T separates held-out runs
    assert v["kappa_correlation"][0] == "inconclusive"
    assert "a negative needs power: the smallest effect these runs could detect is not stated" in v["kappa_correlation"][1]
    # 4 vs 4 runs reach p = 1/70 ≤ α/2: the Mann–Whitney negative has its power
    assert v["ng_alignment_stability"][0] == "not reproduced"
    # three runs per regime cannot reach p < 0.05 one-sided (1/20): too little power for a negative, so
    # inconclusive (was "not comparable" on a runs-per-regime budget), naming the power
    v = verdicts(_summary(stable_min=3.0, unstable_min=5.0, unstable_ng=0.95, n=3), _coupling([0.5]))
    assert v["ng_alignment_stability"][0] == "inconclusive"
    assert v["ng_alignment_stability"][1].endswith(
        "too little power for a negative: smallest detectable one-sided Mann–Whitney p (complete separation of 3 vs 3 "
        "runs, 1/C(6, 3); claimed: half of α) 0.05 vs claimed 0.025; runs reaching L* = 4 nats before divergence "
        "6 (needs ≥ 6); unstable runs that diverged 3 (needs ≥ 3)")
    # too little power blocks only a negative: 3 stable vs 4 unstable runs, separated, reach p = 1/35 < α
    # (short of α/2) and the positive stands (a runs-per-regime budget, 3 of 4, would now block it: a comparison)
    s = _summary(stable_min=3.0, unstable_min=0.5, n=4)
    v = verdicts(s.drop(index=s.index[(s.kind == "stable") & (s.seed == 3)]), _coupling([0.001]))
    assert v["ng_alignment_stability"][0] == v["anisotropy_instability"][0] == "reproduced"
    assert "(complete separation of 3 vs 4 runs, 1/C(7, 3); claimed: half of α) 0.0286 vs claimed 0.025" in \
        v["ng_alignment_stability"][1]
    # no run reaches the matched loss: nothing is compared
    v = verdicts(_summary(stable_min=3.0, unstable_min=0.5, reached=False), _coupling([0.5]))
    assert v["alignment_threshold_share"][0] == v["anisotropy_instability"][0] == "not comparable"
    assert "runs reaching L* = " in v["anisotropy_instability"][1]


def test_smoke_study_end_to_end(smoke, data_dir, tmp_path):
    grid.train(STAGE, smoke, tmp_path, data_dir)
    t = notebook.load_tables(STAGE, tmp_path / "tables")
    assert t.params == smoke.runs and set(t.frames) == {"telemetry", "spectra"}
    a = fg.analyse(t, smoke.report)
    assert set(a.summary.regime) == {"stable", "unstable"}
    metrics = set(a.telemetry.metric)
    assert {"emp_fisher_top1", "true_fisher_top1", "true_ng_span@pinv", "true_ng_span@1e-02", "true_ng_alignment@1e-02",
            "true_grad_span_fraction", "true_fisher_share_w0_enrichment", "true_fisher_overlap_w0_enrichment",
            "emp_fisher_share_w0", "true_fisher_eff_dim"} <= metrics
    live = a.series.dropna(subset=["fisher_top1"])
    assert ((live.ng_alignment > 0) & (live.ng_alignment <= 1 + 1e-9)).all()
    assert ((live.span_fraction > 0) & (live.span_fraction <= 1 + 1e-9)).all()
    np.testing.assert_allclose(live[live.step == 0].fisher_share_w0_enrichment, 1.0, rtol=1e-9)
    np.testing.assert_allclose(live.emp_grad_span_fraction, 1.0, rtol=1e-4)  # ∇L is the mean row of the empirical G
    assert len(a.coupling) == len(a.summary) * len(smoke.report.analysis.pairs)
    assert set(a.sensitivity.measure) == set(fg.ALIGNMENTS) and set(a.h3) == set(fg.ALIGNMENTS)
    assert len(a.per_matrix) and (a.per_matrix.step > 0).all() and not a.per_matrix.matrix.str.contains("weight").any()
    rows = fg_findings.findings(a, smoke.report)
    assert not any("|" in text for r in rows for text in r.values())  # the table is rendered as markdown
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
    m = fg.metrics(a, smoke.report)
    assert set(m["regimes"]) == {"stable", "unstable"} and set(m["h3"]) == set(fg.ALIGNMENTS)
    c = fg.curves(a, smoke.report)
    assert set(c.curve) == {f"{k}_{r}" for k in ("train_loss", "ng_alignment") for r in ("stable", "unstable")}
    table = notebook.write_report(STAGE, a, smoke.report, tmp_path)
    assert len(table) == len(rows)
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"regimes", "h3", "matched_loss", "findings"}
