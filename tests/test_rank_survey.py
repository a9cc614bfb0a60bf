import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradience.config import ParamsError, load_stage_params
from gradience.models.cnn import DigitsCNN
from gradience.models.mlp import MLP
from gradience.profiles import profile_params
from gradience.studies import rank_survey as rs
from gradience.telemetry.recorder import Cadence, Recorder
from gradience.training import TrainConfig, train

C = rs.Criterion(smoothing_window=3, expand_min=0.05, compress_min=0.05, plateau_fraction=0.2, plateau_tol=0.05)
T = np.arange(0, 101, 5)  # 21 cadence points, plateau window t ≥ 80


def _smoke(**changes):
    return load_stage_params("rank_survey", profile_params("smoke")["rank_survey"] | changes)


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
        _smoke(arms=arms)
    with pytest.raises(ParamsError, match="start_fraction \\+ duration_fraction must be < 1"):
        _smoke(spike={"start_fraction": 0.9, "duration_fraction": 0.2})
    with pytest.raises(ParamsError, match="rank_survey.families.0 = 'rnn'"):
        _smoke(families=["rnn"])
    with pytest.raises(ParamsError, match="d_model=10 must be divisible by n_heads=4"):
        _smoke(transformer=profile_params("smoke")["rank_survey"]["transformer"] | {"d_model": 10, "n_heads": 4})


def _results(h4, monotone, excess, destabilised, jumps=(0.5, 0.1)):
    """A synthetic :class:`Results` with one family, two seeds, four layers."""
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
    return rs.Results(pd.DataFrame(), runs, shapes, agreement, signature)


def test_findings_verdicts_follow_the_measurements():
    p = _smoke(families=["mlp"], arms=[{"name": "healthy", "role": "healthy"},
                                      {"name": "lr_spike", "role": "unstable", "lr_spike": 10.0}])

    def verdicts(res):
        return [r["verdict"] for r in rs.findings(res, p)]

    # H4, monotone, structure, inflation, sudden change
    assert verdicts(_results(True, False, 0.2, True)) == ["reproduced", "not reproduced", "reproduced",
                                                          "reproduced", "reproduced"]
    rows = rs.findings(_results(False, True, -0.3, True, jumps=(0.1, 0.5)), p)
    assert [r["verdict"] for r in rows] == ["not reproduced", "reproduced", "reproduced", "not reproduced",
                                            "not reproduced"]
    assert "rank collapse" in rows[3]["why"] and "2/2 moving layers" in rows[2]["measured"]
    assert verdicts(_results(True, False, 0.2, False))[3:] == ["inconclusive", "inconclusive"]


def test_smoke_stage_end_to_end(data_dir, tmp_path):
    p = _smoke()
    res = rs.run(p, tmp_path, data_dir)
    for name in ("telemetry", "runs", "shapes"):
        assert (tmp_path / f"{name}.parquet").exists()
    n_runs = len(p.families) * len(p.arms) * len(p.seeds)
    assert len(res.runs) == n_runs and set(res.runs["outcome"]) == {"completed"}
    assert set(res.shapes["label"]) <= set(rs.SHAPES)
    # a spike arm is the healthy run until the spike starts (same seed, data and initialisation)
    sig = res.signature[res.signature["arm"] == "lr_spike"]
    tel = res.telemetry.set_index(["run", "scope", "metric", "step"])["value"]
    for row in sig.head(5).itertuples():
        start = res.runs.set_index("run").loc[row.run, "event_start"]
        healthy = row.run.replace("lr_spike", "healthy")
        assert row.before == tel[(healthy, row.scope, row.metric, start)]
    # the recorded effective rank at step 0 is exp(H(σ/Σσ)) of the freshly initialised, matricised kernel
    _, cnn = rs.build_split_and_model("cnn", p.cnn, True, p.seeds[0], data_dir)
    sigma = np.linalg.svd(cnn.convs[1].weight.detach().double().reshape(p.cnn.channels[1], -1).numpy(),
                          compute_uv=False)
    q = sigma / sigma.sum()
    recorded = tel[(f"cnn/healthy/s{p.seeds[0]}", "convs.1.weight", "effective_rank", 0)]
    assert recorded == pytest.approx(np.exp(-(q * np.log(q)).sum()), rel=1e-10)
    rows = rs.findings(res, p)
    assert len(rows) == 3 + 2 * sum(a.role == "unstable" for a in p.arms)
    assert {r["verdict"] for r in rows} <= {"reproduced", "not reproduced", "not comparable", "inconclusive"}
    metrics = rs.summary_metrics(res, p)
    assert set(metrics["runs"]) == set(p.families)
