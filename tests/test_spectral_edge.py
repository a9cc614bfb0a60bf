"""The spectral_edge study: params, jobs, one tiny run, and the verdict logic on synthetic tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from gradience.studies.protocol import Job, Tables
from gradience.studies.spectral_edge import analysis, findings, runs
from gradience.telemetry.signals import first_step_reaching

TINY = dict(seeds=[0], length=12, n_train=32, n_test=32, model={"d_model": 8, "n_layers": 1, "n_heads": 2},
            steps=12, weight_decays=[0.0, 1.0], main_decay=1.0, removal_at=6, every=3, probe_every=6,
            probe_positions=60, eps=[-0.5, 0.5], n_random=2, window=3, scan={"steps": 0})
TINY_SCAN = {"steps": 6, "n_train": 16, "n_test": 8, "batch_size": 4, "every": 3,
             "model": {"d_model": 8, "n_layers": 1, "n_heads": 2}}


@pytest.mark.parametrize("bad", [{"length": 7}, {"length": 8}, {"main_decay": 0.5}, {"weight_decays": [1.0, 1.0]},
                                 {"weight_decays": [-1.0], "main_decay": -1.0}, {"removal_at": 12},
                                 {"removal_at": 5}, {"model": {"d_model": 9, "n_heads": 2}}, {"window": 1},
                                 {"scan": {"main_decay": 0.5}}, {"scan": {"n_train": 20000}},
                                 {"edge_params": "mlp"}, {"grad_clip": -1}])
def test_params_errors(bad):
    with pytest.raises(ValidationError):
        runs.RunParams(**{**TINY, **bad})


def test_jobs_main_on_every_seed_sweep_on_first():
    p = runs.RunParams(**{**TINY, "seeds": [0, 1, 2], "sweep_seeds": 1})
    ids = [j.run_id for j in runs.jobs(p, "data")]
    assert ids == ["wd0/s0", "wd1/s0", "wd1/s1", "wd1/s2", "removal/s0", "removal/s1", "removal/s2"]
    assert runs.jobs(p, "data")[-1].spec == runs.Arm("dyck", 1.0, 6)
    p = runs.RunParams(**{**TINY, "seeds": [0, 1, 2], "scan": TINY_SCAN})
    scan_jobs = [j for j in runs.jobs(p, "data") if j.spec.task == "scan"]
    assert [j.run_id for j in scan_jobs] == ["scan_wd0/s0", "scan_wd1/s0", "scan_wd1/s1", "scan_wd1/s2"]


def test_run_one_tiny_removal():
    torch.set_num_threads(1)
    p = runs.RunParams(**TINY)
    arm = runs.Arm("dyck", 1.0, removal_at=6)
    out = runs.run_one(Job(p, "removal", 0, "data", spec=arm))
    t = out.tables["telemetry"].pivot_table(index="step", columns="metric", values="value")
    assert list(t.index) == [0, 3, 6, 9, 12]
    wd = t["adamw_weight_decay"]
    assert wd.loc[6] == 1.0 and wd.loc[9] == 0.0  # λ = 0 from step removal_at (after the step-6 measurement)
    assert np.isnan(t["edge_grad_energy"].loc[0]) and 0 <= t["edge_grad_energy"].loc[12] <= 1
    assert t["edge_window"].loc[12] == 3 and t["edge_gap"].loc[12] >= 1
    assert t["probe_r2_linear"].notna().sum() == 3 and t["probe_r2_linear"].loc[12] <= 1
    a = out.tables["ablation"]
    assert len(a) == 3 and (a.base_acc >= 0).all()
    pert = out.tables["perturbation"]
    assert len(pert) == 2 * 3 and set(pert.eps) == {-0.5, 0.5}
    four = out.tables["fourier"].set_index("analysis")
    assert four.loc["positional", "value"].sum() == pytest.approx(1.0) and len(four.loc["positional"]) == 12 // 2 + 1
    assert four.loc[["attention_kl"], "value"].between(0, 1).all() and len(four.loc[["attention_kl"]]) == 1
    assert four.loc["depth_share", "value"].sum() == pytest.approx(1.0)
    assert out.record["edge_params"] < out.record["n_params"]  # the edge lives on the attention matrices
    again = runs.run_one(Job(p, "removal", 0, "data", spec=arm)).tables["telemetry"]
    pd.testing.assert_frame_equal(out.tables["telemetry"], again)  # same seed → same telemetry


def test_run_one_tiny_scan():
    torch.set_num_threads(1)
    p = runs.RunParams(**{**TINY, "scan": TINY_SCAN})
    out = runs.run_one(Job(p, "scan_wd1", 0, "data", spec=runs.Arm("scan", 1.0)))
    t = out.tables["telemetry"].pivot_table(index="step", columns="metric", values="value")
    assert list(t.index) == [0, 3, 6]
    assert {"train_acc", "test_seq_acc", "edge_grad_energy"} <= set(t.columns) and "probe_r2_linear" not in t
    assert (t.test_seq_acc <= t.test_acc + 1e-9).all()  # exact match never beats per-token accuracy
    assert out.tables["fourier"].empty and len(out.tables["ablation"]) == 3
    assert out.record["task"] == "scan" and out.record["train_targets"] > 16


def test_fit_step_and_classes():
    g = pd.DataFrame({"step": [0, 10, 20, 30], "train_acc": [0.1, 0.5, 0.995, 1.0]})
    assert first_step_reaching(g.step, g.train_acc, 0.99) == 20 and np.isnan(first_step_reaching(g.step, g.train_acc, 1.5))
    assert [analysis.classify(x, (0.3, 0.7)) for x in (0.1, 0.5, 0.9, np.nan)] == ["compression", "mixed", "functional", "none"]


def _synthetic(two_phase: bool, recover: bool, seeds=(0, 1, 2), flat: bool = True, lr: float = 0.05,
               test_fit: int = 120) -> Tables:
    """Main condition (Dyck-1, λ 1, with the removal arm): fit at step 50 of 200; gradient share 0.99 before, 0.1 (or 0.9) after; the edge's |ΔL| 0.001
    (or 0.1) vs random 0.01, 0.02. At lr 0.05, λ 1 the decay clock is 7.5 after the fit, 2.5 from the fit to the
    removal (step 100)."""
    rows, abl, pert, recs = [], [], [], []
    for cond in ("wd1", "removal"):
        for s in seeds:
            run = f"{cond}/s{s}"
            recs.append({"run": run, "condition": cond, "seed": s, "task": "dyck", "weight_decay": 1.0})
            for step in range(0, 201, 10):
                acc = 0.5 if step < 50 else 1.0
                ge = 0.99 if step < 50 else (0.1 if two_phase else 0.9)
                test_acc = 0.5 if step < test_fit else 1.0  # grokking delay test_fit / 50
                vals = {"train_acc": acc, "test_acc": test_acc, "edge_grad_energy": ge, "edge_gap": 3.0}
                if step % 100 == 0:
                    lin = 0.99 if (cond == "removal" and recover and step == 200) else 0.86
                    vals |= {"probe_r2_linear": lin, "probe_r2_quadratic": 0.9, "probe_r2_mlp": 0.99}
                rows += [(run, cond, s, step, "model", m, v) for m, v in vals.items()]
            abl += [(run, cond, s, "edge", 5.0, 0.1, 0.01, 1.0)] + [(run, cond, s, f"random{i}", 0.01 + 1e-5, 1.0, 0.01, 1.0)
                                                                   for i in range(2)]
            pert += [(run, cond, s, d, e, dl) for e in (-1.0, 1.0)
                     for d, dl in (("edge", 0.001 if flat else 0.1), ("random0", 0.01), ("random1", 0.02))]
    params = runs.RunParams(**{**TINY, "seeds": list(seeds), "steps": 200, "removal_at": 100, "every": 10,
                               "probe_every": 100, "window": 10, "lr": lr})
    tel = pd.DataFrame(rows, columns=["run", "condition", "seed", "step", "scope", "metric", "value"])
    ab = pd.DataFrame(abl, columns=["run", "condition", "seed", "direction", "loss", "acc", "base_loss", "base_acc"])
    pe = pd.DataFrame(pert, columns=["run", "condition", "seed", "direction", "eps", "dloss"])
    return Tables(params, pd.DataFrame(recs), {"telemetry": tel, "ablation": ab, "perturbation": pe})


def _verdicts(tables, **report):
    a = analysis.analyse(tables, analysis.ReportParams(**report))
    return {r["id"].split(".")[1]: r["verdict"] for r in findings.findings(a, analysis.ReportParams(**report))}, a


def test_findings_on_synthetic_tables():
    v, a = _verdicts(_synthetic(two_phase=True, recover=True))
    assert set(v) == {c.__name__ for c in findings.CLAIMS}
    assert v["two_phases"] == "reproduced" and v["edge_dominance"] == "reproduced"
    assert v["perturbation_flat"] == "reproduced"
    assert v["ablation_critical"] == "reproduced"  # ratio (5 − 0.01)/1e-5 ≈ 5e5 > 4000
    assert v["probes_reencoded"] == "reproduced" and v["wd_removal"] == "reproduced"
    assert v["classes"] == "not comparable"  # compression at the main decay, and SCAN not run
    assert (a.per_run.fit_step == 50).all()
    clock = a.per_run.set_index("condition")
    assert np.allclose(clock.loc["wd1", "decay_clock_post"], 0.05 * 150)
    assert np.allclose(clock.loc["removal", "decay_clock_post"], 0.05 * 50)  # λ = 0 after removal_at = 100
    assert np.allclose(clock.loc["removal", "decay_clock_at_removal"], 0.05 * 50)
    assert clock.loc["wd1", "decay_clock_at_removal"].isna().all()
    assert np.allclose(a.per_run.grok_delay, 120 / 50)


def test_no_grokking_delay_or_no_headroom_is_not_comparable():
    v, a = _verdicts(_synthetic(two_phase=False, recover=False, flat=False, test_fit=50))  # test fits with train
    assert np.allclose(a.per_run.grok_delay, 1.0)
    for claim in ("two_phases", "perturbation_flat", "wd_removal", "ablation_critical"):
        assert v[claim] == "not comparable", claim  # one budget set per task: the same missing delay on every row
    why = {r["id"].split(".")[1]: r["why"] for r in findings.findings(a, analysis.ReportParams())}
    short = "grokking delay, test-fit ÷ train-fit step (fewest seeds) 1 (needs ≥ 2)"
    assert f"Dyck-1: short of budget: {short}" in why["two_phases"]
    assert f"Dyck-1: short of budget: {short}" in why["ablation_critical"]
    assert v["edge_dominance"] == "reproduced"  # an event shown needs no budget


def test_findings_negative_and_short_budget():
    v, _ = _verdicts(_synthetic(two_phase=False, recover=False))
    assert v["two_phases"] == "not reproduced"  # an event not shown, every budget met
    # a comparison: a negative needs stated power, and none is computed here
    assert v["wd_removal"] == "inconclusive"
    v, _ = _verdicts(_synthetic(two_phase=True, recover=True), ablation_min=1e6)
    assert v["ablation_critical"] == "inconclusive"  # a comparison's negative without stated power
    v, _ = _verdicts(_synthetic(two_phase=False, recover=False, seeds=(0,)))
    assert v["two_phases"] == "not comparable"  # one seed < min_seeds = 3


def test_decay_clock_on_a_per_run_frame():
    per_run = pd.DataFrame({"weight_decay": [1.0, 0.1, 0.0, 1.0, 1.0], "fit_step": [100, 100, 100, 300, np.nan]})
    clock = analysis.post_fit_decay_clock(per_run, 1e-3, 1100)
    assert np.allclose(clock, [1.0, 0.1, 0.0, 0.8, np.nan], equal_nan=True)
    assert analysis.post_fit_decay_clock(per_run, 1e-3, 50).iloc[0] == 0  # until ≤ fit: no decay after the fit
    until = pd.Series([200, 200, 200, 400, 400])
    assert np.allclose(analysis.post_fit_decay_clock(per_run, 1e-2, until), [1.0, 0.1, 0.0, 1.0, np.nan], equal_nan=True)


def test_short_decay_clock_is_not_comparable_not_not_reproduced():
    v, _ = _verdicts(_synthetic(two_phase=False, recover=False, flat=False))
    # clock 7.5 after the fit, every budget met; a comparison's negative still needs stated power
    assert v["perturbation_flat"] == "inconclusive"
    v, a = _verdicts(_synthetic(two_phase=False, recover=False, flat=False, lr=1e-3))  # clock 0.15 after the fit
    assert v["perturbation_flat"] == "not comparable"
    # a comparison: the short clock blocks a positive too
    assert v["two_phases"] == "not comparable" and v["probes_reencoded"] == "not comparable"
    assert v["wd_removal"] == "not comparable"  # clock 0.05 from the fit to the removal
    rows = {r["id"].split(".")[1]: r["why"] for r in findings.findings(a, analysis.ReportParams())}
    assert "Dyck-1: short of budget: lr·wd·steps after the fit 0.15 (needs ≥ 1)" in rows["perturbation_flat"]
    assert "lr·wd·steps from the fit to the removal 0.05" in rows["wd_removal"]
    v, _ = _verdicts(_synthetic(two_phase=False, recover=False, flat=False, lr=1e-3), min_decay_clock=0.1)
    # budgets met, a comparison's negative without stated power; the removal's clock 0.05 still short
    assert v["perturbation_flat"] == "inconclusive" and v["wd_removal"] == "not comparable"
    assert v["probes_reencoded"] == "reproduced"  # the clock budget met: the positive stands


def test_removal_needs_linear_probe_headroom():
    _, a = _verdicts(_synthetic(two_phase=True, recover=False))
    row = {r["id"]: r for r in findings.findings(a, analysis.ReportParams())}["spectral_edge.wd_removal"]
    assert row["verdict"] == "inconclusive"  # a comparison's negative: no power stated (was "not reproduced")
    assert "a negative needs power" in row["why"]
    a.per_run.loc[a.per_run.condition == "removal", "r2_linear_at_removal"] = 0.99  # nothing left to restore
    row = {r["id"]: r for r in findings.findings(a, analysis.ReportParams())}["spectral_edge.wd_removal"]
    assert row["verdict"] == "not comparable" and "headroom at the removal, 1 − R² (fewest seeds) 0.01" in row["why"]


def test_classes_across_tasks_and_their_prediction():
    _, a = _verdicts(_synthetic(two_phase=True, recover=True))
    dy = a.per_run[a.per_run.condition == "wd1"].assign(params_per_target=50.0, rotation_post=18.0)
    sc = dy.assign(condition="scan_wd1", task="scan", run=dy.run.str.replace("wd1", "scan_wd1"),
                   grad_energy_post=0.02, edge_class="compression", params_per_target=10.0)
    dy = dy.assign(grad_energy_post=0.87, edge_class="functional")
    a.per_run = pd.concat([dy, sc], ignore_index=True)
    rows = {r["id"].split(".")[1]: r for r in findings.findings(a, analysis.ReportParams())}
    assert rows["classes"]["verdict"] == "reproduced"  # SCAN compression, Dyck-1 functional
    assert "scan: late gradient share 0.02 → compression" in rows["classes"]["measured"]
    # the more redundant task (Dyck-1, 50 params per target) has the higher gradient share: prediction fails,
    # but a comparison's negative needs stated power (none computed): inconclusive
    assert rows["classes_predicted"]["verdict"] == "inconclusive"
    a.per_run.loc[a.per_run.task == "scan", "params_per_target"] = 100.0
    rows = {r["id"].split(".")[1]: r for r in findings.findings(a, analysis.ReportParams())}
    assert rows["classes_predicted"]["verdict"] == "reproduced"
    a.per_run.loc[a.per_run.task == "scan", "edge_class"] = "mixed"
    # SCAN mixed, not compression: a comparison's negative without stated power
    assert {r["id"]: r["verdict"] for r in findings.findings(a, analysis.ReportParams())}["spectral_edge.classes"] == "inconclusive"


def test_run_one_variable_length_words_ignore_the_padding():
    torch.set_num_threads(1)
    p = runs.RunParams(**{**TINY, "variable_length": True, "steps": 6, "removal_at": 0, "probe_every": 3})
    out = runs.run_one(Job(p, "wd1", 0, "data", spec=runs.Arm("dyck", 1.0)))
    t = out.tables["telemetry"].pivot_table(index="step", columns="metric", values="value")
    assert t["probe_r2_linear"].notna().all() and np.isfinite(t["test_loss"]).all()
    four = out.tables["fourier"]
    assert four[four.analysis == "depth_share"].value.sum() == pytest.approx(1.0)
    with pytest.raises(ValidationError, match="exceeds"):
        runs.RunParams(**{**TINY, "variable_length": True, "length": 6, "n_train": 8, "n_test": 8})


def test_init_scale_multiplies_weight_matrices_only():
    from gradience.models.gpt import TokenClassifierGPT

    a, b = (TokenClassifierGPT(3, 5, 8, 8, 1, 2, seed=0) for _ in range(2))
    runs.scale_init(b, 10.0)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q, p * 10.0 if p.dim() >= 2 else p, msg=name)
    p = runs.RunParams(**{**TINY, "init_scale": 10.0})
    s1, s10 = runs._setup(runs.RunParams(**TINY), runs.Arm("dyck", 0.0), 0), runs._setup(p, runs.Arm("dyck", 0.0), 0)
    w1, w10 = s1.model.lm.wte.weight, s10.model.lm.wte.weight
    torch.testing.assert_close(w10, 10 * w1)
    with pytest.raises(ValidationError):
        runs.RunParams(**{**TINY, "init_scale": 0.0})


def test_a_claim_for_every_task_is_judged_per_task():
    _, a = _verdicts(_synthetic(two_phase=True, recover=True))
    dy = a.per_run[a.per_run.condition == "wd1"]
    sc = dy.assign(condition="scan_wd1", task="scan", run=dy.run.str.replace("wd1", "scan_wd1"),
                   grad_energy_post=0.9, test_fit_step=dy.fit_step, grok_delay=1.0)  # no delay, no switch
    a.per_run = pd.concat([dy, sc], ignore_index=True)
    a.perturbation = pd.concat([a.perturbation, a.perturbation.assign(run=a.perturbation.run.str.replace("wd1", "scan_wd1"))])
    rows = {r["id"].split(".")[1]: r for r in findings.findings(a, analysis.ReportParams())}
    two = rows["two_phases"]
    assert two["verdict"] == "not comparable"  # Dyck-1 reproduced, SCAN short of its grokking delay
    assert "Dyck-1: gradient share" in two["measured"] and "(reproduced); SCAN:" in two["measured"]
    assert two["measured"].endswith("0/3 seeds switch (not comparable)")
    assert "; SCAN: short of budget: grokking delay" in two["why"] and "Dyck-1: Dyck-1" not in two["why"]
    assert rows["edge_dominance"]["verdict"] == "reproduced"  # σ1/σ2 = 3 in both tasks
    a.per_run.loc[a.per_run.task == "scan", "grok_delay"] = 2.4  # SCAN's budget met: its failure counts
    assert {r["id"]: r["verdict"] for r in findings.findings(a, analysis.ReportParams())}["spectral_edge.two_phases"] == "not reproduced"


def test_per_task_comparison_without_power_beside_a_reproduced_task():
    """A comparison made for both tasks: Dyck-1's edge is flat (reproduced), SCAN's is not with every budget met,
    and no power is stated, so SCAN is inconclusive and so is the row; not "not comparable" (no budget is short),
    not "not reproduced" (a negative needs power)."""
    _, a = _verdicts(_synthetic(two_phase=True, recover=True))
    dy = a.per_run[a.per_run.condition == "wd1"]
    sc = dy.assign(condition="scan_wd1", task="scan", run=dy.run.str.replace("wd1", "scan_wd1"))
    a.per_run = pd.concat([dy, sc], ignore_index=True)
    pert = a.perturbation[a.perturbation.run.str.startswith("wd1/")]
    pert = pert.assign(run=pert.run.str.replace("wd1", "scan_wd1"))
    pert.loc[pert.direction == "edge", "dloss"] = 0.1  # SCAN: the edge's |ΔL| 0.1 > random 0.015
    a.perturbation = pd.concat([a.perturbation, pert], ignore_index=True)
    row = {r["id"]: r for r in findings.findings(a, analysis.ReportParams())}["spectral_edge.perturbation_flat"]
    assert row["verdict"] == "inconclusive"
    assert "(reproduced); SCAN:" in row["measured"] and row["measured"].endswith("(inconclusive)")
    assert "a negative needs power" in row["why"] and "short of budget" not in row["why"]
    # Dyck-1's edge not flat either (inconclusive, no power) and SCAN short of its grokking delay (not
    # comparable): a budget short is what the runs must fix first, so the row is "not comparable"
    a.perturbation.loc[a.perturbation.direction == "edge", "dloss"] = 0.1
    a.per_run.loc[a.per_run.task == "scan", "grok_delay"] = 1.0
    row = {r["id"]: r for r in findings.findings(a, analysis.ReportParams())}["spectral_edge.perturbation_flat"]
    assert "(inconclusive); SCAN:" in row["measured"] and row["measured"].endswith("(not comparable)")
    assert row["verdict"] == "not comparable" and "SCAN: short of budget: grokking delay" in row["why"]
