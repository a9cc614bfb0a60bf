import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradience.config import ParamsError
from gradience.models.cnn import DigitsCNN
from gradience.models.mlp import MLP
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS
from gradience.studies import base
from gradience.studies import rank_survey as rs
from gradience.telemetry.recorder import Cadence, Recorder
from gradience.training import TrainConfig, train

C = rs.Criterion(smoothing_window=3, expand_min=0.05, compress_min=0.05, plateau_fraction=0.2, plateau_tol=0.05)
T = np.arange(0, 101, 5)  # 21 cadence points, plateau window t ≥ 80


def _smoke(runs=None, report=None):
    """The smoke profile's validated section, with ``runs`` / ``report`` keys replaced."""
    section = profile_params("smoke")["rank_survey"]
    return base.load_params("rank_survey", section | {"runs": section["runs"] | (runs or {}),
                                                      "report": section.get("report", {}) | (report or {})})


def _piecewise(*knots):
    """Linear interpolation through (step, value) knots on the grid T."""
    steps, values = zip(*knots, strict=True)
    return np.interp(T, steps, values)


@pytest.mark.parametrize(
    ("values", "label"),
    [
        (_piecewise((0, 10), (25, 15), (35, 15), (70, 11), (100, 11)), rs.ECP),
        (_piecewise((0, 10), (30, 15), (100, 9)), "expansion→compression"),  # still falling at the end
        (10 * (0.5 + 0.5 * np.exp(-T / 15)), rs.MONOTONE),
        (_piecewise((0, 10), (30, 7), (100, 9)), "compression→expansion"),
        (_piecewise((0, 10), (100, 13)), "expansion"),
        (_piecewise((0, 10), (20, 8), (35, 9.8), (50, 7.8), (100, 7.6)), "compression"),  # rebounds 13 %
        (_piecewise((0, 10), (30, 10.4), (100, 10.2)), "flat"),  # 4 % rise: below expand_min
    ],
)
def test_trajectory_shapes_on_synthetic_curves(values, label):
    shape = rs.trajectory_shape(T, values, C)
    assert shape["label"] == label
    assert shape["hypothesis4"] == (label == rs.ECP)
    assert shape["monotone"] == (label == rs.MONOTONE)


def test_criterion_numbers_and_outlier_robustness():
    values = _piecewise((0, 10), (25, 15), (35, 15), (70, 11), (100, 11))
    s = rs.trajectory_shape(T, values, C)
    assert s["peak"] == pytest.approx(15) and s["peak_step"] == 25
    assert s["end_level"] == pytest.approx(11)
    assert s["start"] == pytest.approx(10.5)  # the window shrinks at the ends: median of 10 and 11
    flat = np.full(T.size, 10.0)
    flat[10] = 30.0  # one wild point: the rolling median removes it
    assert rs.trajectory_shape(T, flat, C)["label"] == "flat"
    assert rs.trajectory_shape(T, flat, C.model_copy(update={"smoothing_window": 1}))["label"] != "flat"
    late = _piecewise((0, 10), (90, 15), (100, 11))  # peak inside the plateau window: no hypothesis 4
    assert not rs.trajectory_shape(T, late, C)["expanded"]


def test_between_seed_r2_exact_values():
    assert rs.between_seed_r2([[1, 2, 3], [1, 2, 3]]) == pytest.approx(1.0)
    assert rs.between_seed_r2([[1, 2, 3], [3, 2, 1]]) == pytest.approx(0.0)
    # seed means (1, 3), grand mean 2: SS_total = 8, SS_within = 4
    assert rs.between_seed_r2([[0, 2], [2, 4]]) == pytest.approx(0.5)
    assert math.isnan(rs.between_seed_r2([[2, 2], [2, 2]]))


def test_setback_jump_and_auc_exact_values():
    steps = np.array([0, 10, 20, 30, 40])
    loss = np.array([2.0, 1.0, 0.5, 1.25, 0.4])
    assert rs.setback(steps, loss, 0) == pytest.approx((1.25 - 0.5) / (2.0 - 0.5))
    assert rs.setback(steps, loss, 35) == 0.0  # the only rise is before the burn-in
    assert rs.setback(steps, np.array([2.0, 1.0, 0.5, 0.2, 0.1]), 0) == 0.0
    grid = np.array([0, 5, 10, 12, 15, 20])
    values = np.exp([0.0, 0.1, 0.2, 9.0, 0.5, 0.6])  # step 12 is off the even grid (every 5)
    assert rs.max_log_jump(grid, values, 5, 0) == pytest.approx(0.3)
    assert rs.max_log_jump(grid, values, 5, 11) == pytest.approx(0.1)
    assert rs.separation_auc([3, 4], [1, 2]) == 1.0
    assert rs.separation_auc([1, 2], [3, 4]) == 0.0
    assert rs.separation_auc([1, 3], [2, 2]) == 0.5
    assert math.isnan(rs.separation_auc([np.nan], [1.0]))


def test_spike_window_is_on_the_cadence_grid_and_drives_the_learning_rate(data_dir):
    assert rs.spike_window(1000, 20, rs.Spike(start_fraction=0.5, duration_fraction=0.04)) == (500, 540)
    with pytest.raises(ValueError, match="does not end before"):
        rs.spike_window(100, 20, rs.Spike(start_fraction=0.8, duration_fraction=0.15))
    from gradience.tasks.digits import digits_split

    split = digits_split(data_dir, 0.7, 0, flatten=True)
    rec = Recorder("r")
    train(MLP(64, [8], 10), split, TrainConfig(steps=12, lr=1e-3), recorder=rec, cadence=Cadence(1, 12),
          lr_schedule=rs.lr_multiplier((4, 8), 10.0))
    lr = rec.frame().query("metric == 'lr'").set_index("step")["value"]
    assert lr[3] == pytest.approx(1e-3) and lr[4] == pytest.approx(1e-2) and lr[7] == pytest.approx(1e-2)
    assert lr[8] == pytest.approx(1e-3)


def test_models_and_normalisation_switches():
    x = torch.rand(5, 1, 8, 8)
    cnn, bare = DigitsCNN((4, 8), 16), DigitsCNN((4, 8), 16, norm="none")
    assert cnn(x).shape == (5, 10) and bare(x).shape == (5, 10)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in cnn.modules()) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bare.modules())
    mlp = MLP(64, [16, 8], 10, norm=False)
    assert [n for n, p in mlp.named_parameters() if p.ndim == 2] == ["hidden.0.weight", "hidden.1.weight",
                                                                     "readout.weight"]
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from gradience.models.transformer import CausalLM, tiny_llama

    lm = rs.strip_rmsnorm(tiny_llama(11, 8, 2, 2, 16, 6))
    assert not any(isinstance(m, LlamaRMSNorm) for m in lm.modules())
    assert CausalLM(lm)(torch.randint(0, 11, (2, 6))).shape == (2, 6, 11)
    assert rs.short_name("lm.model.layers.0.self_attn.q_proj.weight") == "layers.0.q_proj"


def test_params_reject_impossible_settings():
    arms = [{"name": "a", "role": "healthy"}, {"name": "b", "role": "healthy"}]
    with pytest.raises(ParamsError, match="exactly one arm must have role 'healthy'"):
        _smoke(runs={"arms": arms})
    with pytest.raises(ParamsError, match="start_fraction \\+ duration_fraction must be < 1"):
        _smoke(runs={"spike": {"start_fraction": 0.9, "duration_fraction": 0.2}})
    with pytest.raises(ParamsError, match="rank_survey.runs.families.0 = 'rnn'"):
        _smoke(runs={"families": ["rnn"]})
    transformer = profile_params("smoke")["rank_survey"]["runs"]["transformer"]
    with pytest.raises(ParamsError, match="d_model=10 must be divisible by n_heads=4"):
        _smoke(runs={"transformer": transformer | {"d_model": 10, "n_heads": 4}})
    with pytest.raises(ParamsError, match="rank_survey.report.auc_min"):  # an analysis key, under report
        _smoke(report={"auc_min": 0.4})
    with pytest.raises(ParamsError, match="rank_survey.runs.setback_min = 0.2: unknown key"):
        _smoke(runs={"setback_min": 0.2})


def test_jobs_cover_the_grid_with_unique_readable_ids_slow_families_first():
    p = _smoke(runs={"seeds": [0, 1, 2]}).runs
    jobs = rs.jobs(p, "data")
    assert len(jobs) == len(p.families) * len(p.arms) * 3
    assert len({j.run_id for j in jobs}) == len(jobs)
    assert {j.run_id for j in jobs} == {f"{f}/{a.name}/s{s}" for f in p.families for a in p.arms for s in (0, 1, 2)}
    assert all(j.spec == (j.condition.split("/")[0], next(a for a in p.arms if a.name == j.condition.split("/")[1]))
               for j in jobs)
    families = [j.spec[0] for j in jobs]
    assert families == sorted(families, key=lambda f: -rs.RUN_COST[f])  # transformer, then cnn, then mlp
    assert families[0] == "transformer" and families[-1] == "mlp"


def _analysis(p, h4, monotone, excess, destabilised, jumps=(0.5, 0.1)):
    """A synthetic :class:`Analysis` with one family, two seeds, four layers."""
    shapes = pd.DataFrame([{"run": f"mlp/healthy/s{s}", "family": "mlp", "arm": "healthy", "role": "healthy",
                            "seed": s, "scope": f"l{i}", "hypothesis4": h4, "monotone": monotone,
                            "label": rs.ECP if h4 else "flat"} for s in (0, 1) for i in range(4)])
    runs = pd.DataFrame([{"run": f"mlp/{arm}/s{s}", "family": "mlp", "arm": arm, "seed": s, "outcome": "completed",
                          "destabilised": destabilised and arm == "lr_spike",
                          "rank_jump": jumps[0] if arm == "lr_spike" else jumps[1]}
                         for arm in ("healthy", "lr_spike") for s in (0, 1)])
    agreement = pd.DataFrame({"family": "mlp", "scope": ["l0", "l1", "l2"], "r2": [0.95, 0.9, 0.2],
                              "flat": [False, False, True], "n_seeds": 2})
    signature = pd.DataFrame({"family": "mlp", "arm": "lr_spike", "metric": "effective_rank",
                              "excess_after": [excess] * 8})
    return rs.Analysis(p.runs, pd.DataFrame(), runs, shapes, agreement, signature)


def test_findings_verdicts_follow_the_measurements():
    p = _smoke(runs={"families": ["mlp"], "arms": [{"name": "healthy", "role": "healthy"},
                                                   {"name": "lr_spike", "role": "unstable", "lr_spike": 10.0}]})

    def verdicts(a):
        return [r["verdict"] for r in rs.findings(a, p.report)]

    rows = rs.findings(_analysis(p, True, False, 0.2, True), p.report)
    assert [r["id"] for r in rows] == ["rank_survey.expansion_compression_plateau", "rank_survey.monotone_decrease",
                                       "rank_survey.structured_dynamics", "rank_survey.instability_rank_inflation",
                                       "rank_survey.instability_sudden_change"]
    assert [r["verdict"] for r in rows] == ["reproduced", "not reproduced", "reproduced", "reproduced", "reproduced"]
    assert rows[3]["measured"].startswith("lr_spike (lr × 10 for 4% of the run): ")
    assert "after the spike vs healthy: 20.0 ± 0.0 (n=8) %; inflated (≥ +5%) 100%" in rows[3]["measured"]
    assert "AUC of the largest effective-rank jump, unstable vs healthy: mlp 1.00" in rows[4]["measured"]
    assert rows[2]["seed"] == "falsified if rank dynamics are noisy/random (falsifier 4)"  # from the registry
    rows = rs.findings(_analysis(p, False, True, -0.3, True, jumps=(0.1, 0.5)), p.report)
    assert [r["verdict"] for r in rows] == ["not reproduced", "reproduced", "reproduced", "not reproduced",
                                            "not reproduced"]
    assert "rank collapse" in rows[3]["why"] and "2/2 moving layers" in rows[2]["measured"]
    assert "mlp 0.00" in rows[4]["measured"]
    assert verdicts(_analysis(p, True, False, 0.2, False))[3:] == ["inconclusive", "inconclusive"]
    # a report threshold changes the verdict without retraining: neither moving layer (R² 0.95, 0.9) reaches 0.96
    strict = p.report.model_copy(update={"r2_min": 0.96})
    row = rs.findings(_analysis(p, True, False, 0.2, True), strict)[2]
    assert row["verdict"] == "not reproduced" and "0/2 moving layers ≥ 0.96" in row["measured"]


def test_smoke_stage_end_to_end(data_dir, tmp_path):
    p = _smoke()
    tables = base.train("rank_survey", p, tmp_path, data_dir)
    assert sorted(f.name for f in tables.iterdir()) == ["params.json", "runs.parquet", "telemetry.parquet"]
    t = base.load_tables("rank_survey", tmp_path / "tables")
    assert t.params == p.runs
    n_runs = len(p.runs.families) * len(p.runs.arms) * len(p.runs.seeds)
    assert len(t.runs) == n_runs and set(t.runs["outcome"]) == {"completed"}
    assert {"profile", "device", "git_rev", "versions", "wall_seconds", "family", "arm", "event_start"} <= set(t.runs)
    a = rs.analyse(t, p.report)
    assert {"setback", "destabilised", "rank_jump"} <= set(a.runs)
    assert t.runs["run"].iloc[0].startswith("transformer/")  # trained slow runs first, analysed in grid order:
    assert a.runs["run"].tolist() == [f"{f}/{arm.name}/s{s}" for f in p.runs.families for arm in p.runs.arms
                                      for s in p.runs.seeds]
    assert set(a.shapes["label"]) <= set(rs.SHAPES)
    n_layers = t.telemetry[t.telemetry.scope != "model"].groupby("run")["scope"].nunique().sum()
    assert len(a.shapes) == n_layers  # one shape per (run, layer) trajectory
    # a spike arm is the healthy run until the spike starts (same seed, data and initialisation)
    sig = a.signature[a.signature["arm"] == "lr_spike"]
    assert len(sig)
    tel = t.telemetry.set_index(["run", "scope", "metric", "step"])["value"]
    for row in sig.head(5).itertuples():
        start = t.runs.set_index("run").loc[row.run, "event_start"]
        assert start == rs.family_spike_window(p.runs, row.family)[0]
        healthy = row.run.replace("lr_spike", "healthy")
        assert row.before == tel[(healthy, row.scope, row.metric, start)]
    # the recorded effective rank at step 0 is exp(H(σ/Σσ)) of the freshly initialised, matricised kernel
    _, cnn = rs.build_split_and_model("cnn", p.runs.cnn, True, p.runs.seeds[0], data_dir)
    sigma = np.linalg.svd(cnn.convs[1].weight.detach().double().reshape(p.runs.cnn.channels[1], -1).numpy(),
                          compute_uv=False)
    q = sigma / sigma.sum()
    recorded = tel[(f"cnn/healthy/s{p.runs.seeds[0]}", "convs.1.weight", "effective_rank", 0)]
    assert recorded == pytest.approx(np.exp(-(q * np.log(q)).sum()), rel=1e-10)
    rows = rs.findings(a, p.report)
    assert len(rows) == 3 + 2 * sum(arm.role == "unstable" for arm in p.runs.arms)
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
    metrics = rs.metrics(a, p.report)
    assert set(metrics["runs"]) == set(p.runs.families)
    assert metrics["runs"]["mlp"]["healthy"]["destabilised_runs"] == int(
        a.runs.query("family == 'mlp' and arm == 'healthy'")["destabilised"].sum())
    curves = rs.curves(a, p.report)
    assert list(curves.columns) == ["curve", "step", "value"]
    assert set(curves["curve"]) == {f"{m}_{f}_{arm.name}" for m in ("effective_rank", "train_loss")
                                    for f in p.runs.families for arm in p.runs.arms}
    table = base.write_report("rank_survey", a, p.report, tmp_path)
    assert len(table) == len(rows)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert sum(written["findings"].values()) == len(rows)
    mlp = pd.read_csv(tmp_path / "plots" / "effective_rank_mlp_healthy.csv")
    layers = rs.layer_frame(t.telemetry, t.runs).query("family == 'mlp' and arm == 'healthy'")
    np.testing.assert_allclose(mlp["value"], layers.groupby("step")["value"].mean().to_numpy(), rtol=1e-5)
