"""Curvature / Fisher probes and the shared LM-regime helpers, against exact references."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gradience.studies.lm_regimes import analysis as lm_analysis
from gradience.studies.lm_regimes import runs as lm_runs
from gradience.telemetry.probes import (
    fisher_eigensystem,
    hessian_values,
)
from gradience.telemetry.recorder import Recorder


def _classifier(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(12, 4)
    y = torch.randint(0, 3, (12,))
    return model, (x, y)


def _exact_hessian(model, batch):
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    sizes = [p.numel() for p in params]

    def loss(theta):
        chunks = dict(zip(names, [t.view(p.shape) for t, p in zip(theta.split(sizes), params, strict=True)], strict=True))
        logits = torch.func.functional_call(model, chunks, (batch[0],))
        return nn.functional.cross_entropy(logits, batch[1])

    return torch.func.hessian(loss)(torch.cat([p.reshape(-1) for p in params])).double().numpy()


def test_hessian_values_match_the_exact_hessian():
    model, batch = _classifier()
    H = _exact_hessian(model, batch)
    exact = np.sort(np.linalg.eigvalsh(H))[::-1]
    v = hessian_values(model, batch, lr=0.5, k=4, n_probes=400, tol=1e-8, seed=1)
    got = np.array([v[f"hessian_top{i}"] for i in range(1, 5)])
    np.testing.assert_allclose(got, exact[:4], rtol=1e-4, atol=1e-6)
    assert abs(v["hessian_trace"] - np.trace(H)) < 4 * v["hessian_trace_stderr"]
    assert v["sharpness_over_edge"] == pytest.approx(exact[0] * 0.5 / 2, rel=1e-4)
    assert v["hessian_failed"] == 0.0 and v["hessian_n_hvp"] >= 400


def test_hessian_values_of_a_blown_up_model_are_nan_not_an_error():
    model, batch = _classifier()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    v = hessian_values(model, batch, lr=0.1, k=2, n_probes=2, tol=1e-2)
    assert v["hessian_failed"] == 1.0 and math.isnan(v["hessian_top1"])


def test_fisher_eigensystem_matches_the_explicit_fisher():
    G = torch.randn(6, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s, V = fisher_eigensystem(G)
    F = (G.T @ G / 6).double().numpy()
    w, U = np.linalg.eigh(F)
    np.testing.assert_allclose(s, w[::-1][:6], rtol=1e-10)
    for i in range(6):
        assert abs(float(V[:, i] @ torch.from_numpy(U[:, -1 - i]))) == pytest.approx(1.0, abs=1e-10)
        np.testing.assert_allclose(F @ V[:, i].numpy(), s[i] * V[:, i].numpy(), atol=1e-10)


def test_blowup_stop_fires_above_factor_times_the_initial_loss_or_on_nan():
    stop = lm_runs.blowup_stop(1.5)
    rec = Recorder("r")
    for step, loss in ((0, 4.0), (8, 5.9), (16, 6.1), (24, float("nan"))):
        rec.log(step, "model", "train_loss", loss)
    assert [stop(rec, s) for s in (0, 8, 16, 24)] == [False, False, True, True]


def _ar1(n, phi, rng):
    x = np.zeros(n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + rng.standard_normal()
    return x


def test_coupling_test_finds_a_known_lead_and_rejects_independent_series():
    c = lm_analysis.CouplingParams(max_lag=4, surrogates=199, detrend="none", min_points=12)
    rng = np.random.default_rng(0)
    x = _ar1(80, 0.5, rng)
    y = np.roll(x, 3) + 0.3 * rng.standard_normal(80)  # y_t ≈ x_{t-3}: x leads by 3
    res = lm_analysis.coupling_test(x[3:], y[3:], c)
    assert res["best_lag"] == 3 and res["best_r"] > 0.8 and res["p_value"] < 0.01
    res = lm_analysis.coupling_test(_ar1(80, 0.5, rng), _ar1(80, 0.5, rng), c)
    assert res["p_value"] > 0.05
    assert math.isnan(lm_analysis.coupling_test(x[:10], y[:10], c)["p_value"])  # below min_points


def test_prepared_series_is_the_detrended_log_of_a_positive_series():
    from gradience.telemetry import signals

    x = np.array([1.0, 10.0, 100.0, 1000.0, 10.0, 1.0])
    np.testing.assert_allclose(signals.log_if_positive(x), [0, 1, 2, 3, 1, 0])
    with_zero = np.array([0.0, 1.0, 2.0])
    np.testing.assert_array_equal(signals.log_if_positive(with_zero), with_zero)  # not all positive: as is
    c = lm_analysis.CouplingParams(max_lag=1, surrogates=19, detrend="linear", min_points=6)
    resid = c.prepare(x)
    t = np.arange(6)
    slope, icpt = np.polyfit(t, np.log10(x), 1)
    np.testing.assert_allclose(resid, np.log10(x) - (slope * t + icpt), atol=1e-12)


def test_coupling_params_reject_too_few_points_for_the_lags():
    with pytest.raises(ValueError, match="min_points=8 must be ≥ 2·max_lag \\+ 3 = 11"):
        lm_analysis.CouplingParams(max_lag=4, surrogates=99, min_points=8)


def test_pre_divergence_and_model_table():
    tele = pd.DataFrame({
        "run": "r", "step": [0, 0, 0, 0, 8, 8, 8, 8],
        "scope": ["model", "a", "b", "a", "model", "a", "b", "a"],
        "metric": ["kappa", "spectral_norm", "spectral_norm", "stable_rank"] * 2,
        "value": [10.0, 2.0, 3.0, 1.5, 20.0, 4.0, 1.0, 2.5],
    })
    tele.loc[3, "metric"] = tele.loc[7, "metric"] = "stable_rank"
    w = lm_analysis.model_table(tele)
    assert w.spectral_norm_max.tolist() == [3.0, 4.0] and w.kappa.tolist() == [10.0, 20.0]
    assert w.stable_rank_mean.tolist() == [1.5, 2.5]
    assert lm_analysis.pre_divergence(w, 8.0).step.tolist() == [0]
    assert len(lm_analysis.pre_divergence(w, math.nan)) == 2


def test_vectorised_surrogate_p_value_equals_signals_surrogate_pvalue():
    from gradience.telemetry import signals

    rng = np.random.default_rng(3)
    x, y = _ar1(40, 0.6, rng), _ar1(40, 0.6, rng)
    c = lm_analysis.CouplingParams(max_lag=3, surrogates=99, detrend="none", min_points=12)
    xr, yr = c.prepare(x), c.prepare(y)

    def stat(s):
        return float(np.nanmax(np.abs(signals.lead_lag(s, yr, 3).correlation)))

    expected = signals.surrogate_pvalue(xr, stat, 99, "phase", seed=5)
    assert lm_analysis.coupling_test(x, y, c, seed=5)["p_value"] == pytest.approx(expected, abs=1e-12)
    assert lm_analysis.max_abs_cross_correlation(xr[None], yr, 3)[0] == pytest.approx(stat(xr))


def test_sgd_option_of_the_training_loop_is_plain_gradient_descent():
    from gradience.tasks import Split
    from gradience.training import TrainConfig, train

    model, (x, y) = _classifier()
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    res = train(model, Split(x, y, x, y), TrainConfig(steps=1, lr=0.3, optimizer="sgd"))
    assert res.outcome == "completed"
    for p, p0, g in zip(model.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.3 * g)
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'sgd'"):
        train(model, Split(x, y, x, y), TrainConfig(steps=1, lr=0.3, optimizer="lion"))
