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
from gradience.telemetry.recorder import MODEL_SCOPE
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
    with pytest.raises(ValueError, match=r"reference='unstable' must name a stable regime"):
        fg.analyse(tables, analysis(reference="unstable"))
    with pytest.raises(ValueError, match=r"cross-seed null needs vectors of the 'true' Fisher at L\* = 3.9"):
        fg.analyse(tables, analysis(matched_loss=3.9, start_loss=4.1))


def test_regime_seeds_select_jobs_and_must_be_run_seeds(smoke):
    regimes = [smoke.runs.regimes[0].model_copy(update={"seeds": [1]}), smoke.runs.regimes[1]]
    p = smoke.runs.model_copy(update={"regimes": regimes})
    assert [(j.condition, j.seed) for j in fg_runs.jobs(p, "data")] == [(regimes[0].name, 1)] + [
        (regimes[1].name, s) for s in smoke.runs.seeds]
    with pytest.raises(ValueError, match=r"must be subsets of seeds"):
        fg_runs.RunParams.model_validate(smoke.runs.model_dump() | {
            "regimes": [r.model_dump() | {"seeds": [9]} for r in smoke.runs.regimes]})


def test_sharpness_tracker_caps_eta_below_the_edge():
    """The schedule multiplies the base η so that η ≤ cap·2/λ_max, and leaves it alone below the cap."""
    t = fg_runs.SharpnessTracker(lambda0=10.0, base_lr=lambda step: 0.01 * (step + 1), edge_cap=0.8, tol=1e-3)
    assert t.schedule(0) == 1.0  # η = 0.01 < 0.8·2/10 = 0.16
    assert 0.01 * 100 * t.schedule(99) == pytest.approx(0.16)  # base 1.0 capped to 0.16
    model, split = _model_and_split()
    ctx = StepContext(step=0, model=model, batch=(split.x_train, split.y_train), loss=1.0, lr=0.5, split=split)
    got = dict(((m, v) for _, m, v in t.probe(ctx)))
    from gradience.telemetry import curvature
    loss_fn, theta = curvature.make_loss_fn(model, (split.x_train, split.y_train))
    H = torch.autograd.functional.hessian(loss_fn, theta.detach())
    lam = float(torch.linalg.eigvalsh(H).max())
    assert got["lambda_max"] == pytest.approx(lam, rel=1e-3) and got["sharpness_over_edge"] == pytest.approx(0.5 * lam / 2, rel=1e-3)
    assert t.lam == got["lambda_max"] and t.schedule(999) == pytest.approx(0.8 * 2 / lam / 10.0)  # base η 10
    assert fg_runs.SharpnessTracker(10.0, lambda s: 1.0, edge_cap=0.0, tol=1e-3).schedule(5) == 1.0  # no cap


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


def test_loss_grid_reads_first_passage_interpolated_in_loss():
    w = pd.DataFrame({"step": [0, 10, 20, 30], "train_loss": [4.0, 3.0, 3.5, 2.0], "x": [0.0, 10.0, 50.0, 80.0]})
    g = fg.loss_grid(w, ["x"], np.array([4.5, 3.5, 3.0, 2.5, 1.0]))
    # 4.5: already below at step 0; 3.5: halfway 4.0→3.0; 3.0: at step 10 exactly; 2.5: first passage below 2.5
    # is 3.5 (step 20) → 2.0 (step 30), two thirds of the way; 1.0: never reached
    np.testing.assert_allclose(g.x.to_numpy()[:4], [0.0, 5.0, 10.0, 50.0 + 30.0 * 2 / 3])
    np.testing.assert_allclose(g.step.to_numpy()[:4], [0.0, 5.0, 10.0, 20.0 + 10.0 * 2 / 3])
    assert math.isnan(g.x.iloc[4]) and list(g.level) == [4.5, 3.5, 3.0, 2.5, 1.0]


def test_run_summary_matches_loss_and_reads_every_run_on_the_same_loss_grid(smoke):
    series, runs = _series()
    a = smoke.report.analysis.model_copy(update={"start_loss": 4.0, "matched_loss": 3.6, "grid_points": 3})
    s = fg.run_summary(series, runs, a).set_index("run")
    assert s.loc["s", "matched_step"] == 40.0 and s.loc["u", "matched_step"] == 20.0
    # grid 4.0, 3.8, 3.6, each halfway between cadence points for s: A 2.25, 3.5, 4.5 (raw window: 3 points)
    assert s.loc["s", "share_min"] == pytest.approx(2.25) and s.loc["s", "share_median"] == pytest.approx(3.5)
    assert s.loc["s", "n_points"] == 3 and s.loc["s", "grid_points"] == s.loc["u", "grid_points"] == 3
    # u: 4.0 at 0.6 of 4.3→3.8 (A 1.6), 3.8 at step 10 (2.0), 3.6 at 2/3 of 3.8→3.5 (2 − 0.8·2/3)
    assert s.loc["u", "share_min"] == pytest.approx(2 - 0.8 * 2 / 3) and s.loc["u", "overlap_min"] == pytest.approx(
        2 * (2 - 0.8 * 2 / 3))
    assert s.loc["u", "share_min_all"] == 0.4  # every step > 0 before the divergence at 50
    assert s.loc["s", "ng_alignment_at_match"] == pytest.approx(0.55)
    assert s.loc["u", "fisher_eff_dim_at_match"] == pytest.approx(39 - 2 / 3)
    assert s.loc["u", "eff_dim_min"] == 36.0
    late = fg.run_summary(series, runs, a, level=3.3).set_index("run")
    assert math.isnan(late.loc["s", "matched_step"]) and late.loc["u", "matched_step"] == 30.0


def test_threshold_is_chosen_on_calibration_seeds_and_scored_on_held_out_ones():
    t, acc = fg.choose_threshold(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    assert t == 2.5 and acc == 1.0
    t, acc = fg.choose_threshold(np.array([1.5, 4.0]), np.array([1.0, 2.0]))  # best: 3 of 4 right, middle of ties
    assert acc == 0.75 and t in (1.25, 1.75, 3.0)
    summary = pd.DataFrame({"seed": [0, 1, 2, 3] * 3, "kind": ["stable"] * 8 + ["unstable"] * 4,
                            "regime": ["fast"] * 4 + ["slow"] * 4 + ["unstable"] * 4, "matched_step": 10.0,
                            "share_min": [3.0, 4.0, 2.8, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 1.5, 2.6]})
    h = fg.h3_test(summary, "share", [0, 1], "fast")  # the slow arm (all 0) is not compared
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


def _cross(p_value, runs=8.0, min_p=1e-6):
    return {"runs": runs, "mean_rank": 0.9, "p_value": p_value, "min_p": min_p, "ratio_median": 3.0, "own_on_top": 5.0}


def _analysis(summary, smoke, cross=None):
    report = smoke.report
    a = report.analysis.model_copy(update={"calibration_seeds": [0, 1], "reference": "stable"})
    h3 = {m: fg.h3_test(summary, m, a.calibration_seeds, a.reference) for m in fg.ALIGNMENTS}
    runs = smoke.runs.model_copy(update={"steps": 300})
    return fg.Analysis(runs, pd.DataFrame(), pd.DataFrame(), summary, pd.DataFrame(), h3, pd.DataFrame(),
                       pd.DataFrame(), pd.DataFrame(), cross or _cross(1e-4)), report.model_copy(update={"analysis": a})


def test_verdicts_follow_the_measurements_and_the_budgets(smoke):
    def verdicts(summary, coupling, cross=None):
        a, report = _analysis(summary, smoke, cross)
        a.coupling = coupling
        rows = fg_findings.findings(a, report)
        assert all(r["why"] for r in rows)
        return {r["id"].removeprefix("fisher_geometry."): (r["verdict"], r["why"]) for r in rows}

    v = verdicts(_summary(stable_min=3.0, unstable_min=0.5), _coupling([0.001, 0.002, 0.5]))
    assert {k: x[0] for k, x in v.items()} == dict.fromkeys(
        ["regimes_differ", "alignment_threshold_share", "alignment_threshold_overlap", "spectra_related",
         "kappa_correlation", "ng_alignment_stability", "anisotropy_instability"], "reproduced")
    assert "held-out seeds per regime at L* 2 (needs ≥ 2)" in v["alignment_threshold_share"][1]
    assert "raw cadence points in the shortest H3 window 5 (needs ≥ 2)" in v["alignment_threshold_share"][1]
    assert ("smallest detectable one-sided Mann–Whitney p (complete separation of 4 vs 4 runs, 1/C(8, 4); "
            "claimed: half of α) 0.0143 vs claimed 0.025") in v["ng_alignment_stability"][1]
    v = verdicts(_summary(stable_min=3.0, unstable_min=5.0, unstable_ng=0.95), _coupling([0.5, 0.6, 0.7]), _cross(0.4))
    # the cross-seed null could reach p ≤ α/2: its negative stands; with too few runs it is inconclusive
    assert v["spectra_related"][0] == "not reproduced"
    assert verdicts(_summary(3.0, 0.5), _coupling([0.5]), _cross(0.4, min_p=0.04))["spectra_related"][0] == "inconclusive"
    assert verdicts(_summary(3.0, 0.5), _coupling([0.5]), _cross(0.001, runs=2.0))["spectra_related"][0] == "not comparable"
    # comparisons whose test states no power: a negative is inconclusive, not "not reproduced" (was)
    assert v["alignment_threshold_share"][0] == "inconclusive"  # no T separates held-out runs
    assert "(2 vs 2 held-out runs, 1/C(4, 2); claimed: half of α) 0.167 vs claimed 0.025" in v["alignment_threshold_share"][1]
    # 4 vs 4 held-out runs could have separated at p = 1/70 ≤ α/2: the H3 negative now stands
    v6 = verdicts(_summary(stable_min=3.0, unstable_min=5.0, unstable_ng=0.95, n=6), _coupling([0.5]), _cross(0.4))
    assert v6["alignment_threshold_share"][0] == "not reproduced"
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
        "runs, 1/C(6, 3); claimed: half of α) 0.05 vs claimed 0.025; compared runs reaching L* = 4 nats before divergence "
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
    assert t.params == smoke.runs and set(t.frames) == {"telemetry", "spectra", "vectors"}
    a = fg.analyse(t, smoke.report)
    assert set(a.summary.regime) == {"fast_stable", "unstable"}
    assert {"lambda_max", "sharpness_over_edge"} <= set(a.series.columns)
    for _, r in a.series[a.series.regime == "fast_stable"].dropna(subset=["lambda_max", "lr"]).groupby("run"):
        # η of each measured update ≤ cap · 2/λ_max of the previous measurement (the cap lags one cadence step)
        cap = smoke.runs.regimes[0].edge_cap * 2 / r.lambda_max.to_numpy()[:-1]
        assert len(cap) and (r.lr.to_numpy()[1:] <= cap * (1 + 1e-9)).all()
    assert len(a.cross_seed) == 0 or set(a.cross_seed.own) <= {True, False}
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
    assert set(m["regimes"]) == {"fast_stable", "unstable"} and set(m["h3"]) == set(fg.ALIGNMENTS)
    c = fg.curves(a, smoke.report)
    assert set(c.curve) == {f"{k}_{r}" for k in ("train_loss", "ng_alignment") for r in ("fast_stable", "unstable")}
    table = notebook.write_report(STAGE, a, smoke.report, tmp_path)
    assert len(table) == len(rows)
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"regimes", "h3", "matched_loss", "cross_seed",
                                                                        "findings"}


def test_stored_vectors_reproduce_the_probe_share_and_the_cross_seed_table_reads_them(smoke):
    """With every eigenvector stored, the share of F in the weights' top subspaces computed from the
    ``vectors`` rows equals the probe's telemetry value; stored only at the first step below the level."""
    model, split = _model_and_split()
    f = smoke.runs.fisher.model_copy(update={"kinds": ["empirical"], "vector_kind": "empirical", "vector_k": 10,
                                             "vector_losses": [1.0]})
    vectors = []
    probe = fg_runs.fisher_probe(f, "r/s0", vectors)
    batch = (split.x_train, split.y_train)
    probe(StepContext(0, model, batch, 2.0, 0.1, split))  # loss above the level: nothing stored
    assert vectors == []
    with torch.no_grad():
        model[0].weight.add_(torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    got = {m: v for scope, m, v in probe(StepContext(5, model, batch, 0.5, 0.1, split)) if scope == MODEL_SCOPE}
    probe(StepContext(10, model, batch, 0.4, 0.1, split))  # the level is passed once
    v = pd.DataFrame(vectors, columns=fg_runs.VECTOR_COLUMNS)
    assert set(v.step) == {5} and set(v.item) == {"fisher", "weight"} and set(v.scope) == {"0.weight", "2.weight"}
    sub = fg._top_subspaces(v[v.item == "weight"], 1)
    assert fg.fisher_share(v[v.item == "fisher"], sub) == pytest.approx(got["emp_fisher_share"], rel=1e-5)
    runs = pd.DataFrame({"run": ["r/s0"], "regime": ["r"]})
    t = fg.cross_seed_table(v, runs, 1.0, 1)
    assert len(t) == 1 and t.own.all() and t.share.iloc[0] == pytest.approx(got["emp_fisher_share"], rel=1e-5)


def _vector_frame(run, W, B):
    rows = [{"run": run, "level": 3.6, "step": 10, "item": "weight", "index": 0, "scope": "m", "rows": W.shape[0],
             "cols": W.shape[1], "value": math.nan, "values": W.reshape(-1)}]
    rows += [{"run": run, "level": 3.6, "step": 10, "item": "fisher", "index": i, "scope": "m", "rows": W.shape[0],
              "cols": W.shape[1], "value": 1.0, "values": b.reshape(-1)} for i, b in enumerate(B)]
    return rows


def test_cross_seed_null_detects_own_alignment_and_not_a_shared_one():
    rng = np.random.default_rng(0)
    own_rows, shared_rows = [], []
    common = rng.standard_normal((2, 8, 6))
    for i in range(5):
        W = rng.standard_normal((8, 6))
        U, S, Vh = np.linalg.svd(W)
        own_rows += _vector_frame(f"a/s{i}", W, [np.outer(U[:, 0], Vh[0]) + 0.1 * rng.standard_normal((8, 6))])
        shared_rows += _vector_frame(f"a/s{i}", W, common)  # the same Fisher in every run: unrelated to its W
    runs = pd.DataFrame({"run": [f"a/s{i}" for i in range(5)], "regime": "a"})
    t = fg.cross_seed_table(pd.DataFrame(own_rows), runs, 3.6, 1)
    assert len(t) == 25 and t.own.sum() == 5
    res = fg.cross_seed_test(t)
    assert res["own_on_top"] == 5 and res["mean_rank"] == 1.0 and res["ratio_median"] > 10
    assert res["min_p"] == pytest.approx(5.0 ** -5) and res["p_value"] < 0.002
    null = fg.cross_seed_test(fg.cross_seed_table(pd.DataFrame(shared_rows), runs, 3.6, 1))
    assert null["p_value"] > 0.05 and null["runs"] == 5
    # the null distribution: ranks uniform, so p of the mean rank ≥ 0.5 is about a half
    ties = pd.DataFrame({"run": ["x"] * 3 + ["y"] * 3, "own": [True, False, False] * 2, "share": 0.2})
    assert fg.cross_seed_test(ties)["mean_rank"] == 0.5 and 0.4 < fg.cross_seed_test(ties)["p_value"] < 0.8
