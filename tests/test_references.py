"""The hand-written telemetry against peer libraries on small cases (the ``ref`` extra).

curvlinops (Hessian, empirical Fisher), ewstools 2.x (detrending, rolling variance, lag-1
autocorrelation, Kendall τ), emcee (integrated autocorrelation time) and WeightWatcher (power-law
α of the eigenvalue density). Each test skips only when its library is not installed.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import eigsh
from torch import nn

from gradience.telemetry import signals
from gradience.telemetry.curvature import (
    hessian_operator,
    hvp_fn,
    lanczos_top_eigenvalues,
    make_loss_fn,
)
from gradience.telemetry.fisher import fisher_gradients, fisher_spectrum
from gradience.telemetry.spectral import spectral_metrics

pytestmark = [pytest.mark.filterwarnings("ignore::Warning:ewstools"),  # pandas 3 deprecations inside
              pytest.mark.filterwarnings("ignore::Warning:weightwatcher"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")]

# ewstools 2.x TimeSeries.detrend (and R's ksmooth / earlywarnings) puts the Gaussian kernel's
# quartiles at ±0.25·bandwidth·n: σ = (0.25/0.675)·bandwidth·n. signals.detrend takes
# σ = bandwidth·n, so our bandwidth b is ewstools' bandwidth b·0.675/0.25 = 2.7·b.
EWSTOOLS_BANDWIDTH_PER_OURS = 0.675 / 0.25


def mlp_problem(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    x = torch.randn(32, 5, dtype=torch.float64)
    return model, (x, torch.randint(0, 4, (32,)))


# ------------------------------------------------------------------------------ curvlinops


def test_hessian_top_eigenvalues_and_hvp_equal_curvlinops():
    curvlinops = pytest.importorskip("curvlinops")
    model, batch = mlp_problem()
    loss_fn, theta = make_loss_fn(model, batch)
    ours = lanczos_top_eigenvalues(hessian_operator(loss_fn, theta), k=5, tol=0).values
    params = [p for p in model.parameters() if p.requires_grad]
    H = curvlinops.HessianLinearOperator(model, nn.CrossEntropyLoss(), params, [batch])
    v0 = np.random.default_rng(1).standard_normal(H.shape[0])
    ref = np.sort(eigsh(H.to_scipy(), k=5, which="LA", tol=0, v0=v0, return_eigenvectors=False))[::-1]
    np.testing.assert_allclose(ours, ref, rtol=1e-9)  # measured: 3e-15
    v = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(hvp_fn(loss_fn, theta)(v), H @ v, rtol=0, atol=1e-12)


def test_empirical_fisher_gram_spectrum_equals_curvlinops_ef_operator():
    curvlinops = pytest.importorskip("curvlinops")
    model, batch = mlp_problem()
    G = fisher_gradients(model, batch, "empirical")
    ours = fisher_spectrum(G, k=5)
    params = [p for p in model.parameters() if p.requires_grad]
    EF = curvlinops.EFLinearOperator(model, nn.CrossEntropyLoss(reduction="mean"), params, [batch])
    F = EF @ torch.eye(EF.shape[0], dtype=torch.float64)  # the P × P matrix, 124 × 124
    top = torch.linalg.eigvalsh(F).flip(0)[:5].numpy()
    np.testing.assert_allclose([ours[f"fisher_top{i}"] for i in range(1, 6)], top, rtol=1e-10)
    assert ours["fisher_trace"] == pytest.approx(float(F.trace()), rel=1e-12)
    assert ours["fisher_trace_sq"] == pytest.approx(float((F * F).sum()), rel=1e-12)
    v = torch.randn(F.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(G.T @ (G @ v) / G.shape[0], EF @ v, rtol=0, atol=1e-12)


# -------------------------------------------------------------------------------- ewstools


def ews_series(n: int = 400, seed: int = 0) -> np.ndarray:
    """AR(1) noise whose coefficient rises 0.2 → 0.9, on a smooth trend."""
    noise = signals.ar1_series(np.linspace(0.2, 0.9, n), 1, np.random.default_rng(seed))[0]
    return noise + 3 * np.sin(np.linspace(0, 3, n))


@pytest.mark.parametrize("bandwidth", [0.0125, 0.05])
def test_gaussian_detrend_equals_ewstools_with_the_mapped_bandwidth(bandwidth):
    ewstools = pytest.importorskip("ewstools")
    x = ews_series()
    ours = signals.detrend(x, "gaussian", bandwidth)
    ts = ewstools.TimeSeries(x)
    ts.detrend(method="Gaussian", bandwidth=bandwidth * EWSTOOLS_BANDWIDTH_PER_OURS)
    ref = ts.state["residuals"].to_numpy()
    # Both cut the kernel at ±4σ; ewstools reflects the series at its ends where we renormalise
    # the cut kernel, so the two agree where the kernel lies inside the series.
    half = math.ceil(4 * bandwidth * x.size)
    inside = slice(half, x.size - half)
    np.testing.assert_allclose(ours[inside], ref[inside], rtol=0, atol=1e-12)  # measured: 3e-15
    # The same number as ewstools' bandwidth is a 2.7× wider kernel: residuals differ by O(std).
    naive = ewstools.TimeSeries(x)
    naive.detrend(method="Gaussian", bandwidth=bandwidth)
    assert np.abs(ours - naive.state["residuals"].to_numpy())[inside].max() > 0.3 * ours.std()


def test_rolling_variance_lag1_ac_and_kendall_tau_equal_ewstools():
    ewstools = pytest.importorskip("ewstools")
    resid = signals.detrend(ews_series(), "gaussian", 0.05)
    ts = ewstools.TimeSeries(resid)  # not detrended again: ewstools computes on the state
    ts.compute_var(rolling_window=0.5)
    ts.compute_auto(rolling_window=0.5, lag=1)
    ts.compute_ktau()
    variance = signals.rolling_variance(resid, 0.5)
    ac = signals.rolling_lag1_autocorrelation(resid, 0.5)
    for ours, ref in ((variance, ts.ews["variance"]), (ac, ts.ews["ac1"])):
        ref = ref.to_numpy()
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))  # the same causal windows
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)
    assert signals.kendall_tau_trend(variance) == pytest.approx(ts.ktau["variance"], abs=1e-12)
    assert signals.kendall_tau_trend(ac) == pytest.approx(ts.ktau["ac1"], abs=1e-12)
    assert ts.ktau["ac1"] > 0.3  # the rising AR coefficient is visible, so τ is not a trivial 0 = 0


# ----------------------------------------------------------------------------------- emcee


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_autocorrelation_time_equals_emcee(phi):
    autocorr = pytest.importorskip("emcee.autocorr")
    x = signals.ar1_series(np.full(5000, phi), 1, np.random.default_rng(4))[0]
    ref = float(autocorr.integrated_time(x, c=signals.SOKAL_C, tol=0, quiet=True)[0])
    assert signals.autocorrelation_time(x) == pytest.approx(ref, rel=1e-10)
    assert ref == pytest.approx((1 + phi) / (1 - phi), rel=0.35)  # AR(1): τ = (1+φ)/(1−φ)


def test_rolling_autocorrelation_time_equals_emcee_per_window():
    autocorr = pytest.importorskip("emcee.autocorr")
    x = signals.ar1_series(np.full(300, 0.6), 1, np.random.default_rng(5))[0]
    w = 100
    ours = signals.rolling_autocorrelation_time(x, w)
    ref = [autocorr.integrated_time(x[i - w + 1 : i + 1], c=signals.SOKAL_C, tol=0, quiet=True)[0]
           for i in range(w - 1, x.size)]
    assert np.isnan(ours[: w - 1]).all()
    np.testing.assert_allclose(ours[w - 1 :], ref, rtol=1e-10)


# --------------------------------------------------------------------------- WeightWatcher


def matrix_with_singular_values(sigma: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """U diag(σ) Vᵀ with random orthonormal U (rows × k) and V (k × k)."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((rows, sigma.size)))[0]
    V = np.linalg.qr(rng.standard_normal((sigma.size, sigma.size)))[0]
    return (U * sigma) @ V.T


@pytest.mark.parametrize("a", [0.25, 0.5, 1.0, 1.5])
def test_our_alpha_is_the_decay_exponent_and_weightwatchers_is_one_plus_one_over_two_alpha(a):
    """σ_i = i^-a: our alpha is a; the eigenvalues λ_i = σ_i² of WᵀW have N(λ' > λ) = λ^(-1/(2a)),
    a density ∝ λ^-(1 + 1/(2a)), whose tail exponent is WeightWatcher's α."""
    ww = pytest.importorskip("weightwatcher")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    n = 400
    W = matrix_with_singular_values(np.arange(1, n + 1) ** -a, 1000, seed=int(4 * a))
    alpha = spectral_metrics(W)["alpha"]
    assert alpha == pytest.approx(a, rel=1e-9)
    layer = nn.Linear(n, 1000, bias=False)
    layer.weight.data = torch.tensor(W, dtype=torch.float32)
    details = ww.WeightWatcher(model=nn.Sequential(layer)).analyze(min_evals=1)
    alpha_ww, m = float(details["alpha"].iloc[0]), int(details["num_pl_spikes"].iloc[0])
    expected = 1 + 1 / (2 * alpha)
    # Tolerance: the MLE on the top m of the exact λ_j = j^(-2a) is
    # 1 + m / (2a Σ_{j≤m} ln(m/j)) ≈ 1 + (1/2a)(1 + ln(2πm)/(2m)) by Stirling, a finite-tail bias
    # of (α−1)·ln(2πm)/(2m) (0.6–6% of α−1 for the m = 46–400 that WeightWatcher's xmin keeps).
    bias = (expected - 1) * math.log(2 * math.pi * m) / (2 * m)
    assert m >= 30
    assert alpha_ww - expected == pytest.approx(bias, abs=0.25 * bias)
    assert alpha_ww == pytest.approx(expected, rel=0.02)
