import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from gradience.config import ParamsError
from gradience.models.mlp import MLP
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS
from gradience.studies import grid, notebook
from gradience.studies.rank_survey import analysis as rs
from gradience.studies.rank_survey import findings as rs_findings
from gradience.studies.rank_survey import runs as rs_runs
from gradience.studies.rank_survey import trajectories as rs_traj
from gradience.telemetry.recorder import Cadence, Recorder
from gradience.training import TrainConfig, train

C = rs_traj.Criterion(smoothing_window=3, expand_min=0.05, compress_min=0.05, plateau_fraction=0.2, plateau_tol=0.05)
T = np.arange(0, 101, 5)  # 21 cadence points, plateau window t ≥ 80


def _smoke(runs=None, report=None):
    """The smoke profile's validated section, with ``runs`` / ``report`` keys replaced."""
    section = profile_params("smoke")["rank_survey"]
    return notebook.load_params("rank_survey", section | {"runs": section["runs"] | (runs or {}),
                                                      "report": section.get("report", {}) | (report or {})})


def _piecewise(*knots):
    """Linear interpolation through (step, value) knots on the grid T."""
    steps, values = zip(*knots, strict=True)
    return np.interp(T, steps, values)


@pytest.mark.parametrize(
    ("values", "label"),
    [
        (_piecewise((0, 10), (25, 15), (35, 15), (70, 11), (100, 11)), rs_traj.ECP),
        (_piecewise((0, 10), (30, 15), (100, 9)), "expansion→compression"),  # still falling at the end
        (10 * (0.5 + 0.5 * np.exp(-T / 15)), rs_traj.MONOTONE),
        (_piecewise((0, 10), (30, 7), (100, 9)), "compression→expansion"),
        (_piecewise((0, 10), (100, 13)), "expansion"),
        (_piecewise((0, 10), (20, 8), (35, 9.8), (50, 7.8), (100, 7.6)), "compression"),  # rebounds 13 %
        (_piecewise((0, 10), (30, 10.4), (100, 10.2)), "flat"),  # 4 % rise: below expand_min
    ],
)
def test_trajectory_shapes_on_synthetic_curves(values, label):
    shape = rs_traj.trajectory_shape(T, values, C)
    assert shape["label"] == label
    assert shape["hypothesis4"] == (label == rs_traj.ECP)
    assert shape["monotone"] == (label == rs_traj.MONOTONE)


def test_criterion_numbers_and_outlier_robustness():
    values = _piecewise((0, 10), (25, 15), (35, 15), (70, 11), (100, 11))
    s = rs_traj.trajectory_shape(T, values, C)
    assert s["peak"] == pytest.approx(15) and s["peak_step"] == 25
    assert s["end_level"] == pytest.approx(11)
    assert s["start"] == pytest.approx(10.5)  # the window shrinks at the ends: median of 10 and 11
    flat = np.full(T.size, 10.0)
    flat[10] = 30.0  # one wild point: the rolling median removes it
    assert rs_traj.trajectory_shape(T, flat, C)["label"] == "flat"
    assert rs_traj.trajectory_shape(T, flat, C.model_copy(update={"smoothing_window": 1}))["label"] != "flat"
    late = _piecewise((0, 10), (90, 15), (100, 11))  # peak inside the plateau window: no hypothesis 4
    assert not rs_traj.trajectory_shape(T, late, C)["expanded"]


def test_between_seed_r2_exact_values():
    assert rs_traj.between_seed_r2([[1, 2, 3], [1, 2, 3]]) == pytest.approx(1.0)
    assert rs_traj.between_seed_r2([[1, 2, 3], [3, 2, 1]]) == pytest.approx(0.0)
    # seed means (1, 3), grand mean 2: SS_total = 8, SS_within = 4
    assert rs_traj.between_seed_r2([[0, 2], [2, 4]]) == pytest.approx(0.5)
    assert math.isnan(rs_traj.between_seed_r2([[2, 2], [2, 2]]))


def test_time_permuted_r2_null_on_known_cases():
    # each seed holds the values 0..K−1: the permuted R² has mean exactly 1/S (E SS_within = K(S−1)σ²)
    k, s = 40, 3
    m = np.tile(np.arange(k, dtype=float), (s, 1))
    null = rs_traj.permuted_r2_null(m, 2000, seed=1)
    assert rs_traj.between_seed_r2(m) == pytest.approx(1.0)
    assert null.mean() == pytest.approx(1 / s, abs=0.01)
    assert rs_traj.permutation_p(1.0, null) == pytest.approx(1 / 2001)  # no permutation reaches R² = 1
    # seeds that differ only by a constant offset: permuting within a seed changes nothing, R² = 0 = null
    offsets = np.array([[1.0] * 5, [3.0] * 5])
    assert np.allclose(rs_traj.permuted_r2_null(offsets, 50), 0.0)
    assert rs_traj.permutation_p(rs_traj.between_seed_r2(offsets), rs_traj.permuted_r2_null(offsets, 50)) == 1.0
    # pure noise: observed R² is one draw of the null, its p-value not small on average
    rng = np.random.default_rng(0)
    ps = [rs_traj.permutation_p(rs_traj.between_seed_r2(x := rng.normal(size=(3, 30))),
                                rs_traj.permuted_r2_null(x, 99, seed=i)) for i in range(40)]
    assert 0.3 < np.mean(ps) < 0.7
    # the paired log-ratio test: d = 1, 2, 3 → mean 2, sd 1, detectable t_{0.95, 2}/√3
    mean, detectable, n = rs_traj.paired_log_ratio(np.exp([1.0, 2.0, 3.0]), np.ones(3), 0.05)
    assert (mean, n) == (pytest.approx(2.0), 3) and detectable == pytest.approx(2.919986 / math.sqrt(3), rel=1e-5)
    assert rs_traj.paired_log_ratio(np.array([2.0]), np.array([1.0]), 0.05)[1] == math.inf


def test_kick_probe_adds_a_matrix_of_the_given_norm_once():
    torch.manual_seed(0)
    model = MLP(6, [5], 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = rs_runs.KickProbe(4, {"hidden.0.weight": 0.7, "readout.weight": 0.0}, seed=0)
    probe(SimpleNamespace(step=3, model=model))
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # not at its step: nothing
    probe(SimpleNamespace(step=4, model=model))
    after = dict(model.named_parameters())
    assert float((after["hidden.0.weight"].detach() - before["hidden.0.weight"]).norm()) == pytest.approx(0.7, rel=1e-5)
    assert torch.equal(after["readout.weight"], before["readout.weight"])
    assert torch.equal(after["hidden.0.bias"], before["hidden.0.bias"])  # biases are not kicked


def test_spike_update_norms_match_the_spike_run(data_dir):
    p = _smoke().runs
    fp, window = p.mlp, rs_runs.family_spike_window(p, "mlp")
    norms = rs_runs.spike_update_norms("mlp", fp, 0, data_dir, window, 10.0, "cpu")
    # the full spike run, snapshots at t_s and t_e (a probe sees W before that step's update)
    split, model = rs_runs.build_split_and_model("mlp", fp, 0, data_dir)
    at_s, at_e = rs_runs.WeightSnapshot(window[0]), rs_runs.WeightSnapshot(window[1])
    cfg = TrainConfig(steps=fp.steps, lr=fp.lr, weight_decay=fp.weight_decay, batch_size=fp.batch_size,
                      betas=fp.betas, seed=0)
    train(model, split, cfg, recorder=Recorder("r"), cadence=Cadence(1, fp.steps), probes=[at_s, at_e],
          lr_schedule=rs_runs.lr_schedule(fp, window, 10.0))
    assert set(norms) == set(at_e.weights)
    for name, v in norms.items():
        assert v == pytest.approx(float((at_e.weights[name] - at_s.weights[name]).norm()), rel=1e-6)
        assert v > 0


def test_cooldown_multiplies_the_learning_rate():
    cd = rs_runs.Cooldown(start_fraction=0.6, end_fraction=0.8, factor=0.1)
    f = cd.multiplier(100)
    assert [f(0), f(59), f(60), f(70), f(80), f(99)] == pytest.approx([1, 1, 1, 0.55, 0.1, 0.1])
    fp = rs_runs.MLPParams(steps=100, lr=1e-3, widths=[4], cooldown=cd)
    g = rs_runs.lr_schedule(fp, (50, 54), 10.0)
    assert [g(49), g(50), g(53), g(54), g(70)] == pytest.approx([1, 10, 10, 1, 0.55])
    assert rs_runs.lr_schedule(fp.model_copy(update={"cooldown": None}), (50, 54), 1.0) is None


def test_setback_plateau_and_window_changes_exact_values():
    steps = np.array([0, 10, 20, 30, 40])
    loss = np.array([2.0, 1.0, 0.5, 1.25, 0.4])
    assert rs_traj.setback(steps, loss, 0) == pytest.approx((1.25 - 0.5) / (2.0 - 0.5))
    assert rs_traj.setback(steps, loss, 35) == 0.0  # the only rise is before the burn-in
    assert rs_traj.setback(steps, np.array([2.0, 1.0, 0.5, 0.2, 0.1]), 0) == 0.0
    # plateau: the last 20 % of steps (t ≥ 80) move by 0.02 of a total decrease of 1.98 (no smoothing)
    t = np.arange(0, 101, 10)
    ell = np.array([2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.06, 0.04, 0.04, 0.03, 0.02])
    pl = rs_traj.Plateau(window_fraction=0.2, max_progress=0.025)
    assert rs_traj.loss_plateau(t, ell, 10, 1, pl) == pytest.approx(0.02 / 1.98)
    odd = np.insert(t, 5, 45)  # an off-grid (log-cadence) point is ignored
    assert rs_traj.loss_plateau(odd, np.insert(ell, 5, 9.0), 10, 1, pl) == pytest.approx(0.02 / 1.98)
    # rolling median of 3: s = 1.5 (ends shrink the window), 1.0, …, 0.04, 0.03, 0.025
    assert rs_traj.loss_plateau(t, ell, 10, 3, pl) == pytest.approx(0.015 / 1.475)
    assert math.isnan(rs_traj.loss_plateau(t, np.full(t.size, 2.0), 10, 1, pl))  # never decreased
    # a trend, not a range: a tail that oscillates without a trend (0.04, 0.02, 0.04) has not progressed
    wobble = ell.copy()
    wobble[-3:] = [0.04, 0.02, 0.04]
    assert rs_traj.loss_plateau(t, wobble, 10, 1, pl) == pytest.approx(0.0, abs=1e-12)
    wobble[-3:] = [0.04, 0.03, 0.06]  # slope +0.001 / step over 20 steps (min 0.03): a rise counts too
    assert rs_traj.loss_plateau(t, wobble, 10, 1, pl) == pytest.approx(0.02 / 1.97)
    grid = np.array([0, 5, 10, 12, 15, 20])
    values = np.exp([0.0, 0.1, 0.2, 9.0, 0.5, 0.6])  # step 12 is off the even grid (every 5)
    assert rs_traj.window_change(grid, values, 10, 15) == pytest.approx(0.3)
    assert math.isnan(rs_traj.window_change(grid, values, 10, 25))
    assert rs_traj.max_window_change(grid, values, 5, 5, 0) == pytest.approx(0.3)  # 10 → 15
    assert rs_traj.max_window_change(grid, values, 5, 5, 11) == pytest.approx(0.1)  # only 15 → 20 is after step 11
    assert rs_traj.max_window_change(grid, values, 5, 10, 0) == pytest.approx(0.4)  # 5 → 15 and 10 → 20


def test_change_probe_matches_numpy_on_weight_change_and_gradient():
    torch.manual_seed(0)
    model = MLP(6, [5], 3)
    probe = rs_runs.ChangeProbe(model)
    w0 = model.hidden[0].weight.detach().double().numpy().copy()
    with torch.no_grad():
        model.hidden[0].weight.add_(0.1 * torch.randn(5, 6))
    model(torch.randn(4, 6)).square().sum().backward()
    probe(SimpleNamespace(step=0, model=model))  # step 0: only the gradient
    probe(SimpleNamespace(step=3, model=model))
    f = probe.frame("r").set_index(["step", "scope", "matrix", "metric"])["value"]
    assert ("r" == probe.frame("r")["run"]).all()
    assert (0, "hidden.0.weight", "change", "effective_rank") not in f.index

    def eff_rank(m):
        s = np.linalg.svd(m, compute_uv=False)
        q = s / s.sum()
        return np.exp(-(q * np.log(q)).sum())

    delta = model.hidden[0].weight.detach().double().numpy() - w0
    grad = model.hidden[0].weight.grad.double().numpy()
    assert f[(3, "hidden.0.weight", "change", "effective_rank")] == pytest.approx(eff_rank(delta), rel=1e-6)
    assert f[(3, "hidden.0.weight", "change", "frobenius_norm")] == pytest.approx(np.linalg.norm(delta), rel=1e-6)
    assert f[(3, "hidden.0.weight", "gradient", "effective_rank")] == pytest.approx(eff_rank(grad), rel=1e-6)
    assert f[(3, "hidden.0.weight", "gradient", "stable_rank")] == pytest.approx(
        (grad**2).sum() / np.linalg.norm(grad, 2) ** 2, rel=1e-6)
    assert (3, "readout.weight", "change", "effective_rank") not in f.index  # unchanged: W − W₀ = 0
    # a batch of 4 examples: the hidden gradient has rank ≤ 4 < 5, the effective rank below 4
    assert f[(0, "hidden.0.weight", "gradient", "effective_rank")] < 4


def test_spike_window_is_on_the_cadence_grid_and_drives_the_learning_rate(data_dir):
    assert rs_runs.spike_window(1000, 20, rs_runs.Spike(start_fraction=0.5, duration_fraction=0.04, sizes=[3])) == (500, 540)
    with pytest.raises(ValueError, match="does not end before"):
        rs_runs.spike_window(100, 20, rs_runs.Spike(start_fraction=0.8, duration_fraction=0.15, sizes=[3]))
    from gradience.tasks.digits import digits_split

    split = digits_split(data_dir, 0.7, 0, flatten=True)
    rec = Recorder("r")
    train(MLP(64, [8], 10), split, TrainConfig(steps=12, lr=1e-3), recorder=rec, cadence=Cadence(1, 12),
          lr_schedule=rs_runs.lr_multiplier((4, 8), 10.0))
    lr = rec.frame().query("metric == 'lr'").set_index("step")["value"]
    assert lr[3] == pytest.approx(1e-3) and lr[4] == pytest.approx(1e-2) and lr[7] == pytest.approx(1e-2)
    assert lr[8] == pytest.approx(1e-3)


def test_short_names():
    assert rs.short_name("lm.model.layers.0.self_attn.q_proj.weight") == "layers.0.q_proj"
    assert rs.short_name("lm.lm_head.weight") == "lm_head" and rs_runs.arm_name(30.0) == "x30"


def test_params_reject_impossible_settings():
    with pytest.raises(ParamsError, match="every spike size must be > 1"):
        _smoke(runs={"spike": {"start_fraction": 0.5, "duration_fraction": 0.04, "sizes": [1, 10]}})
    with pytest.raises(ParamsError, match="spike sizes must be unique"):
        _smoke(runs={"spike": {"start_fraction": 0.5, "duration_fraction": 0.04, "sizes": [10, 10.0]}})
    with pytest.raises(ParamsError, match="start_fraction \\+ duration_fraction must be < 1"):
        _smoke(runs={"spike": {"start_fraction": 0.9, "duration_fraction": 0.2, "sizes": [3]}})
    with pytest.raises(ParamsError, match="rank_survey.runs.families.0 = 'rnn'"):
        _smoke(runs={"families": ["rnn"]})
    transformer = profile_params("smoke")["rank_survey"]["runs"]["transformer"]
    with pytest.raises(ParamsError, match="d_model=10 must be divisible by n_heads=4"):
        _smoke(runs={"transformer": transformer | {"d_model": 10, "n_heads": 4}})
    with pytest.raises(ParamsError, match="rank_survey.report.plateau.max_progress"):  # an analysis key, under report
        _smoke(report={"plateau": {"max_progress": 1.5}})
    with pytest.raises(ParamsError, match="rank_survey.runs.setback_min = 0.2: unknown key"):
        _smoke(runs={"setback_min": 0.2})
    assert _smoke(runs={"spike": {"start_fraction": 0.5, "duration_fraction": 0.04, "sizes": [30, 3]}}).runs.sizes == [
        1.0, 3.0, 30.0]
    with pytest.raises(ParamsError, match="kick_sizes \\[3.0\\] must be spike sizes"):
        _smoke(runs={"spike": {"start_fraction": 0.5, "duration_fraction": 0.04, "sizes": [10], "kick_sizes": [3]}})
    with pytest.raises(ParamsError, match="the spike window must end before the cooldown starts"):
        _smoke(runs={"spike": {"start_fraction": 0.6, "duration_fraction": 0.04, "sizes": [10]}})


def test_jobs_cover_the_grid_with_unique_readable_ids_slow_families_first():
    p = _smoke(runs={"seeds": [0, 1, 2]}).runs
    jobs = rs_runs.jobs(p, "data")
    assert [a.name for a in p.arms] == ["x1", "x10", "kick_x10"]
    assert [a.role for a in p.arms] == ["healthy", "spike", "kick"]
    assert len(jobs) == len(p.families) * len(p.arms) * 3
    assert {j.run_id for j in jobs} == {f"{f}/{a}/s{s}" for f in p.families for a in ("x1", "x10", "kick_x10")
                                        for s in (0, 1, 2)}
    assert all(j.spec[0] == j.condition.split("/")[0] and j.spec[1].name == j.condition.split("/")[1] for j in jobs)
    assert {(j.spec[1].lr_spike, j.spec[1].kick) for j in jobs} == {(1.0, 0.0), (10.0, 0.0), (1.0, 10.0)}
    families = [j.spec[0] for j in jobs]
    assert families == sorted(families, key=lambda f: -rs_runs.RUN_COST[f])  # transformer, then cnn, then mlp


def _analysis(p, *, h4=True, plateau=True, moved=0.5, setbacks=(0.0, 0.5), response=0.2, jump=0.5, seeds=3,
              kick_jump=0.1, kick_destabilised=False, null_q=0.5):
    """A synthetic :class:`Analysis`: family mlp, ``seeds`` seeds, sizes ×1 and ×10, a matched kick, two layers."""
    sizes = (1.0, 10.0)
    runs = pd.DataFrame([{"run": f"mlp/x{z:g}/s{s}", "family": "mlp", "arm": f"x{z:g}", "lr_spike": z,
                          "role": "healthy" if z == 1 else "spike", "seed": s, "outcome": "completed",
                          "plateau_reached": plateau, "setback": sb, "destabilised": sb >= 0.1,
                          "rank_jump": jump if z > 1 else 0.01, "rank_jump_null": 0.05}
                         for z, sb in zip(sizes, setbacks, strict=True) for s in range(seeds)])
    healthy = runs[runs["role"] == "healthy"]
    layers = pd.DataFrame([{"run": r, "scope": f"l{i}", "r_max": 10.0, "r0": 8.0, "room": True, "moved": moved}
                           for r in healthy["run"] for i in range(2)])
    shapes = pd.DataFrame([{"run": r.run, "family": "mlp", "arm": "x1", "lr_spike": 1.0, "role": "healthy",
                            "seed": r.seed, "scope": f"l{i}", "matrix": m, "hypothesis4": h4 and m == "change",
                            "monotone": m == "weight", "label": rs_traj.ECP if h4 and m == "change" else rs_traj.MONOTONE}
                           for r in healthy.itertuples() for i in range(2) for m in rs.MATRICES])
    agreement = pd.DataFrame([{"family": "mlp", "scope": f"l{i}", "matrix": m, "r2": r2, "flat": False,
                               "n_seeds": seeds, "r2_null_mean": 0.33, "r2_null_q": null_q, "p_null": pv}
                              for i, (r2, pv) in enumerate(((0.95, 0.01), (0.3, 0.6))) for m in rs.MATRICES])
    spiked = runs[runs["role"] == "spike"]
    resp = pd.DataFrame([{"run": r.run, "family": "mlp", "arm": r.arm, "lr_spike": r.lr_spike, "role": "spike",
                          "seed": r.seed, "destabilised": r.destabilised, "scope": f"l{i}", "matrix": m,
                          "response_after": response}
                         for r in spiked.itertuples() for i in range(2) for m in rs.MATRICES])
    spread = (1.0, 1.1, 0.9, 1.05)
    kicks = pd.DataFrame([{"family": "mlp", "seed": s, "kick": 10.0, "kicked": True, "kick_relative": 0.3,
                           "kick_jump": kick_jump * spread[s], "kick_destabilised": kick_destabilised,
                           "kick_setback": 0.0, "lr_spike": 10.0, "spike_jump": jump,
                           "spike_destabilised": setbacks[1] >= 0.1, "spike_setback": setbacks[1],
                           "rank_jump_null": 0.05} for s in range(seeds)])
    return rs.Analysis(p.runs, pd.DataFrame(), runs, pd.DataFrame(), layers, shapes, agreement, resp,
                       rs.dose_response(runs, resp), kicks)


def test_findings_verdicts_follow_the_measurements_and_the_budgets():
    p = _smoke(runs={"families": ["mlp"], "seeds": [0, 1, 2]})

    def verdicts(a, report=p.report):
        return [r["verdict"] for r in rs_findings.findings(a, report)]

    rows = rs_findings.findings(_analysis(p), p.report)
    assert [r["id"] for r in rows] == 3 * ["rank_survey.expansion_compression_plateau"] + 3 * [
        "rank_survey.monotone_decrease"] + 3 * ["rank_survey.structured_dynamics"] + [
        "rank_survey.instability_rank_inflation", "rank_survey.instability_sudden_change"]
    # ECP holds only for W − W₀, monotone only for W; R² 0.95 (beyond its null) / 0.3: 1 of 2 moving layers
    assert [r["verdict"] for r in rows] == ["not reproduced", "reproduced", "not reproduced", "reproduced",
                                            "not reproduced", "not reproduced"] + 3 * ["reproduced"] + 2 * ["reproduced"]
    assert rows[1]["measured"].startswith("W − W₀: 6/6 trajectories (mlp 6/6)")
    assert "healthy runs at the loss plateau (≤ 2.5% of the loss decrease in the last 20% of steps) 3 (needs ≥ 3)" in \
        rows[0]["why"]
    assert rows[9]["measured"].startswith("mlp: ×1: setback 0.000 ± 0.000 (n=3), destabilised 0/3; ×10: setback "
                                          "0.500 ± 0.000 (n=3), destabilised 3/3, r_eff vs ×1 after the spike: "
                                          "W +20.0 ± +0.0 (n=3) %")
    assert "beyond it in 3/3 destabilised and 0/0 non-destabilised spike runs" in rows[10]["measured"]
    assert "beyond the null in 1/2 moving layers" in rows[6]["measured"]
    assert rows[6]["seed"] == "falsified if rank dynamics are noisy/random (falsifier 4)"  # from the registry
    # no plateau: an absent shape is not comparable (a present one would still count)
    no_plateau = verdicts(_analysis(p, plateau=False))
    assert no_plateau[:6] == ["not comparable", "reproduced", "not comparable", "reproduced", "not comparable",
                              "not comparable"]
    # W that did not move: the W rows are not comparable
    still = rs_findings.findings(_analysis(p, moved=0.01), p.report)
    assert still[0]["verdict"] == "not comparable" and "mlp healthy W that moved ‖W_T − W₀‖/‖W₀‖ ≥ 0.1 0 (needs ≥ 3)" in \
        still[0]["why"]
    # a spike that never destabilised: not comparable, whatever the rank does
    calm = verdicts(_analysis(p, setbacks=(0.0, 0.05)))
    assert calm[9:] == ["not comparable", "not comparable"]
    # destabilised, but the rank collapses and does not jump beyond the healthy null: inflation states no
    # power (inconclusive); the sudden change fails before the kick test, whose power it does not borrow
    rows = rs_findings.findings(_analysis(p, response=-0.3, jump=0.01), p.report)
    assert [r["verdict"] for r in rows[9:]] == ["inconclusive", "inconclusive"]
    assert "collapsed (≤ −5%) in 100%" in rows[9]["why"]
    assert "a negative needs power: the smallest effect these runs could detect is not stated" in rows[9]["why"]
    # the jump is no larger than a matched-norm kick's (0.5 vs 0.5·(1, 1.1, 0.9)): specificity fails, and the
    # paired test could have seen far less than the claimed log(0.5 / 0.05): not reproduced
    same = rs_findings.findings(_analysis(p, kick_jump=0.5), p.report)[10]
    assert same["verdict"] == "not reproduced" and "not shown to exceed the jump of a matched-norm random kick that " \
        "did not destabilise" in same["why"]
    d = np.log(0.5 / (0.5 * np.array([1.0, 1.1, 0.9])))
    detectable = 2.919986 * d.std(ddof=1) / math.sqrt(3)
    assert "smallest detectable mean log(spike jump / matched-kick jump)" in same["why"]
    assert f"{detectable:,.3g} vs claimed {np.log(10):,.3g}" in same["why"]
    # a kick that destabilised too and is not exceeded decides nothing (its jump coincides with its own
    # instability); exceeded, it still shows the jump is more than the size of the move
    wild = rs_findings.findings(_analysis(p, kick_jump=0.5, kick_destabilised=True), p.report)[10]
    assert wild["verdict"] == "inconclusive" and "that kick destabilised training too" in wild["why"]
    assert rs_findings.findings(_analysis(p, kick_destabilised=True), p.report)[10]["verdict"] == "reproduced"
    # no paired seed (the kick arm was not run): the specificity budget is short
    none = rs_findings.findings(dataclasses.replace(_analysis(p), kicks=pd.DataFrame()), p.report)[10]
    assert none["verdict"] == "not comparable" and "its matched-norm kick (same seed, a destabilising size) 0" in \
        none["why"]
    # two seeds: the spread over seeds is short of budget
    assert verdicts(_analysis(p, response=-0.3, seeds=2))[9] == "not comparable"
    # a comparison: two seeds (short of min_seeds) block a positive too; the shape claims are events and keep
    # their verdicts, the W − W₀ shape shown still reproduced
    two = verdicts(_analysis(p, seeds=2))
    assert two[:6] == ["not reproduced", "reproduced", "not reproduced", "reproduced", "not reproduced",
                       "not reproduced"]
    assert two[6:] == 5 * ["not comparable"]
    # a report threshold changes the verdict without retraining: R² 0.95 / 0.3 both below 0.96; the null's 95 %
    # quantile (0.5) is below 0.96, so the test could have called such a layer structured: not reproduced
    assert verdicts(_analysis(p), p.report.model_copy(update={"r2_min": 0.96}))[6] == "not reproduced"
    # a null whose 95 % quantile is above r2_min: the runs could not have shown it, inconclusive
    weak = rs_findings.findings(_analysis(p, null_q=0.97), p.report.model_copy(update={"r2_min": 0.96}))[6]
    assert weak["verdict"] == "inconclusive" and "too little power" in weak["why"]


def test_smoke_stage_end_to_end(data_dir, tmp_path):
    p = _smoke()
    tables = grid.train("rank_survey", p, tmp_path, data_dir)
    assert sorted(f.name for f in tables.iterdir()) == ["changes.parquet", "params.json", "runs.parquet",
                                                        "telemetry.parquet"]
    t = notebook.load_tables("rank_survey", tmp_path / "tables")
    assert t.params == p.runs
    n_runs = len(p.runs.families) * len(p.runs.arms) * len(p.runs.seeds)
    assert len(t.runs) == n_runs and set(t.runs["outcome"]) == {"completed"}
    assert {"profile", "device", "git_rev", "versions", "cpu_seconds", "family", "lr_spike", "event_start"} <= set(t.runs)
    assert set(t.changes["matrix"]) == {"change", "gradient"} and set(t.changes["metric"]) == set(rs_runs.CHANGE_METRICS)
    a = rs.analyse(t, p.report)
    assert {"setback", "destabilised", "plateau_progress", "plateau_reached", "rank_jump"} <= set(a.runs)
    assert t.runs["run"].iloc[0].startswith("transformer/")  # trained slow runs first, analysed in grid order:
    assert a.runs["run"].tolist() == [f"{f}/{arm.name}/s{s}" for f in p.runs.families for arm in p.runs.arms
                                      for s in p.runs.seeds]
    # every kick run was kicked, by the norm of its spike run's window update, and is paired with it
    kicks = t.runs[t.runs["role"] == "kick"]
    assert len(kicks) == len(p.runs.families) * len(p.runs.seeds) and kicks["kicked"].all()
    assert (kicks["kick_norm"] > 0).all() and (kicks["lr_spike"] == 1).all()
    assert len(a.kicks) == len(kicks) and a.kicks["spike_jump"].notna().all()
    assert {"r2_null_mean", "r2_null_q", "p_null"} <= set(a.agreement)
    assert set(a.shapes["label"]) <= set(rs_traj.SHAPES) and set(a.shapes["matrix"]) == set(rs.MATRICES)
    n_layers = t.telemetry[t.telemetry.scope != "model"].groupby("run")["scope"].nunique().sum()
    assert len(a.shapes) == 3 * n_layers  # one shape per (run, layer, matrix) trajectory
    # a spike run is the healthy run until the spike starts (same seed, data and initialisation)
    resp = a.response
    spike_runs = t.runs.loc[(t.runs["lr_spike"] == 10) | (t.runs["role"] == "kick"), "run"]
    assert len(resp) == 3 * t.telemetry[(t.telemetry.scope != "model") & t.telemetry.run.isin(spike_runs)][
        ["run", "scope"]].drop_duplicates().shape[0]
    ranks = a.ranks.set_index(["run", "scope", "matrix", "step"])["value"]
    healthy_run = t.runs[t.runs["role"] == "healthy"].set_index(["family", "seed"])["run"]
    for row in resp.head(6).itertuples():
        start = rs_runs.family_spike_window(p.runs, row.family)[0]
        assert row.before == ranks[(healthy_run[(row.family, row.seed)], row.scope, row.matrix, start)]
    # W − W₀ at the end, recomputed: the change's Frobenius norm over ‖W₀‖ is the layer's `moved`
    split, mlp = rs_runs.build_split_and_model("mlp", p.runs.mlp, p.runs.seeds[0], data_dir)
    w0 = mlp.readout.weight.detach().double().numpy().copy()
    cfg = TrainConfig(steps=p.runs.mlp.steps, lr=p.runs.mlp.lr, weight_decay=p.runs.mlp.weight_decay,
                      batch_size=p.runs.mlp.batch_size, betas=p.runs.mlp.betas, seed=p.runs.seeds[0])
    train(mlp, split, cfg)
    moved = a.layers.set_index(["run", "scope"]).loc[(f"mlp/x1/s{p.runs.seeds[0]}", "readout.weight"), "moved"]
    assert moved == pytest.approx(np.linalg.norm(mlp.readout.weight.detach().double().numpy() - w0) /
                                  np.linalg.norm(w0), rel=1e-4)
    rows = rs_findings.findings(a, p.report)
    assert len(rows) == 9 + 2 * len(p.runs.families)
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
    assert all(("needs ≥" in r["why"]) for r in rows)  # every verdict names its budget
    metrics = rs.metrics(a, p.report)
    assert set(metrics["runs"]) == set(p.runs.families)
    assert metrics["runs"]["mlp"]["x1"]["destabilised_runs"] == int(
        a.runs.query("family == 'mlp' and arm == 'x1'")["destabilised"].sum())
    curves = rs.curves(a, p.report)
    assert list(curves.columns) == ["curve", "step", "value"]
    assert set(curves["curve"]) == {f"{m}_{f}_x{z:g}" for m in ("train_loss", "effective_rank_weight",
                                                               "effective_rank_change", "effective_rank_gradient")
                                    for f in p.runs.families for z in p.runs.sizes} | {
        f"{m}_{f}_kick_x{z:g}" for m in ("train_loss", "effective_rank_weight", "effective_rank_change",
                                         "effective_rank_gradient") for f in p.runs.families for z in p.runs.spike.kick_sizes}
    table = notebook.write_report("rank_survey", a, p.report, tmp_path)
    assert len(table) == len(rows)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert sum(written["findings"].values()) == len(rows)
    mlp_curve = pd.read_csv(tmp_path / "plots" / "effective_rank_change_mlp_x1.csv")
    ch = a.ranks.query("family == 'mlp' and arm == 'x1' and matrix == 'change'")
    np.testing.assert_allclose(mlp_curve["value"], ch.groupby("step")["value"].mean().to_numpy(), rtol=1e-5)
