import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter

from gradience.telemetry import signals
from gradience.telemetry.signals import (
    autocorrelation_time,
    detect_transition,
    detrend,
    early_warning_summary,
    kendall_tau_trend,
    lead_lag,
    rolling_autocorrelation_time,
    rolling_lag1_autocorrelation,
    rolling_variance,
    surrogate_pvalue,
    surrogates,
)

SEEDS = (0, 1, 2)


def ar1(phi: float, n: int, seed: int) -> np.ndarray:
    """x_t = φ x_{t-1} + ε_t, ε ~ N(0, 1)."""
    return lfilter([1.0], [1.0, -phi], np.random.default_rng(seed).standard_normal(n))


def ramped_ar1(n: int, seed: int, start: float = 0.1, stop: float = 0.95) -> np.ndarray:
    """AR(1) whose coefficient ramps linearly: the textbook approach to a critical point."""
    phi = np.linspace(start, stop, n)
    noise = np.random.default_rng(seed).standard_normal(n)
    x = np.empty(n)
    x[0] = noise[0]
    for t in range(1, n):
        x[t] = phi[t] * x[t - 1] + noise[t]
    return x


def sokal_reference(x: np.ndarray, c: float = 5.0) -> float:
    """Direct-sum ACF and the automatic window, written as plainly as possible."""
    d = x - x.mean()
    n = d.size
    rho = np.array([d[: n - k] @ d[k:] for k in range(n)]) / (d @ d)
    for m in range(1, n):
        tau = 1.0 + 2.0 * rho[1 : m + 1].sum()
        if m >= c * tau:
            return tau
    return float("nan")


# --- critical slowing down: ramped vs stationary AR(1) -------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_ramped_ar1_shows_critical_slowing_down(seed):
    x = ramped_ar1(2000, seed)
    resid = detrend(x, "gaussian", bandwidth=0.2)
    summary = early_warning_summary(x, n_surrogates=49, seed=seed).set_index("indicator")
    assert summary.loc["lag1_ac", "kendall_tau"] > 0.5
    assert summary.loc["variance", "kendall_tau"] > 0.5
    assert summary.loc["lag1_ac", "p_value"] < 0.05
    assert summary.loc["variance", "p_value"] < 0.05
    tau = rolling_autocorrelation_time(resid, 0.5)
    assert kendall_tau_trend(tau) > 0.5
    # windows of mean φ ≈ 0.31 and ≈ 0.74: τ ≈ 1.9 → 6.7, less what detrending and a short window
    # take off the slow end (ratio 2.1–7.3 over seeds 0–11)
    assert np.nanmean(tau[-100:]) > 1.8 * np.nanmean(tau[999:1099])


def test_stationary_ar1_shows_no_warning():
    summaries = [
        early_warning_summary(ar1(0.5, 2000, seed), n_surrogates=49, seed=seed).set_index(
            "indicator"
        )
        for seed in SEEDS
    ]
    lag1 = pd.DataFrame([s.loc["lag1_ac"] for s in summaries])
    assert (lag1["p_value"] > 0.05).all()
    # A rolling statistic of overlapping windows is smooth, so Kendall's τ of one stationary series
    # is far from 0 (null sd ≈ 0.48 at window 0.5); it is the surrogate p-value that decides.
    taus = [
        kendall_tau_trend(rolling_lag1_autocorrelation(detrend(ar1(0.5, 2000, s)), 0.5))
        for s in range(10, 30)
    ]
    assert abs(np.mean(taus)) < 0.25
    ramp_taus = [
        kendall_tau_trend(rolling_lag1_autocorrelation(detrend(ramped_ar1(2000, s)), 0.5))
        for s in SEEDS
    ]
    assert min(ramp_taus) > np.quantile(taus, 0.9)


# --- estimators against closed forms ------------------------------------------------------------


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.8])
def test_stationary_ar1_lag1_and_integrated_time(phi):
    x = ar1(phi, 200_000, seed=7)
    assert rolling_lag1_autocorrelation(x, x.size)[-1] == pytest.approx(phi, abs=0.03)
    assert autocorrelation_time(x) == pytest.approx((1 + phi) / (1 - phi), rel=0.12)


def test_autocorrelation_time_matches_direct_sum():
    x = ar1(0.6, 300, seed=3)
    assert autocorrelation_time(x) == pytest.approx(sokal_reference(x), rel=1e-10)


def test_autocorrelation_time_of_too_short_a_series_is_finite_but_biased_low():
    short = [autocorrelation_time(ar1(0.95, 100, seed)) for seed in range(10)]  # true τ = 39
    assert np.isfinite(short).all() and max(short) < 20
    assert np.isnan(autocorrelation_time(np.ones(50)))


def test_rolling_statistics_match_per_window_references(monkeypatch):
    x = ar1(0.7, 120, seed=1)
    w = 30
    monkeypatch.setattr(signals, "_CHUNK_ELEMENTS", 100)  # several FFT batches
    var = rolling_variance(x, w)
    ac = rolling_lag1_autocorrelation(x, w)
    tau = rolling_autocorrelation_time(x, w)
    assert np.isnan(var[: w - 1]).all() and np.isnan(ac[: w - 1]).all()
    assert np.isnan(tau[: w - 1]).all()
    for i in range(w - 1, x.size):
        window = x[i - w + 1 : i + 1]
        assert var[i] == pytest.approx(np.var(window, ddof=1), rel=1e-9)
        assert ac[i] == pytest.approx(np.corrcoef(window[:-1], window[1:])[0, 1], abs=1e-9)
        assert tau[i] == pytest.approx(sokal_reference(window), rel=1e-9, nan_ok=True)


def test_window_fraction_and_count():
    x = np.arange(100.0)
    assert np.isnan(rolling_variance(x, 0.25)[:24]).all()
    assert rolling_variance(x, 0.25)[24] == pytest.approx(np.var(np.arange(25.0), ddof=1))
    assert np.array_equal(rolling_variance(x, 25), rolling_variance(x, 0.25), equal_nan=True)
    with pytest.raises(ValueError, match=r"window fraction must be in \(0, 1\], got 1.5"):
        rolling_variance(x, 1.5)
    with pytest.raises(ValueError, match="window must span 3..100 samples"):
        rolling_variance(x, 200)


def test_kendall_tau_trend_drops_nan_and_accepts_times():
    assert kendall_tau_trend([np.nan, 1.0, 2.0, np.nan, 3.0, 4.0]) == pytest.approx(1.0)
    assert kendall_tau_trend([4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # irregular times: the statistic rises with time although not with index
    assert kendall_tau_trend([1.0, 2.0, 0.0, 3.0], time=[1.0, 2.0, 0.5, 9.0]) == pytest.approx(1.0)
    assert np.isnan(kendall_tau_trend([np.nan, 1.0, 2.0]))


# --- lead-lag, detrending, transition ------------------------------------------------------------


def test_lead_lag_recovers_a_known_shift():
    rng = np.random.default_rng(4)
    x = ar1(0.7, 3000, seed=5)
    shift = 7
    y = np.roll(x, shift) + 0.5 * rng.standard_normal(x.size)  # y_t = x_{t-7} + noise
    y[:shift] = rng.standard_normal(shift)
    forward = lead_lag(x, y, max_lag=20)
    assert forward.best_lag == shift
    # r = sd(x) / sd(y) with var(x) = 1 / (1 - φ²) and noise variance 0.25
    var_x = 1 / (1 - 0.7**2)
    assert forward.best_correlation == pytest.approx(np.sqrt(var_x / (var_x + 0.25)), abs=0.02)
    assert np.array_equal(forward.lags, np.arange(-20, 21))
    assert lead_lag(y, x, max_lag=20).best_lag == -shift
    assert lead_lag(x, -y, max_lag=20).best_correlation < -0.9


def test_detrend_removes_known_trends():
    n = 2000
    t = np.arange(n)
    noise = np.random.default_rng(0).standard_normal(n)
    line = 3.0 + 0.01 * t
    assert np.allclose(detrend(noise + line, "linear"), detrend(noise, "linear"), atol=1e-10)
    assert np.allclose(detrend(noise, "linear"), noise - np.polyval(np.polyfit(t, noise, 1), t))
    assert np.allclose(detrend(np.full(n, 4.2), "gaussian", 0.3), 0.0, atol=1e-12)
    # the kernel (σ = 0.05·n = 100, cut at 400) reproduces a line wherever it is not cut by an end
    interior = slice(400, n - 400)
    assert np.allclose(detrend(line, "gaussian", 0.05)[interior], 0.0, atol=1e-9)
    quadratic = 5.0 * (t / n) ** 2
    trend = (noise + quadratic) - detrend(noise + quadratic, "gaussian", 0.05)
    # bias ½f''σ² = 0.0125, smoothed-noise sd = (2√π σ)^(-1/2) ≈ 0.053
    assert np.sqrt(np.mean((trend - quadratic)[interior] ** 2)) < 0.1
    assert np.array_equal(detrend(noise, "none"), noise)
    with pytest.raises(ValueError, match="detrend method must be one of"):
        detrend(noise, "loess")


def test_detect_transition_finds_a_step_and_ignores_excursions():
    rng = np.random.default_rng(0)
    accuracy = np.concatenate([0.1 + 0.05 * rng.random(300), 0.97 + 0.02 * rng.random(200)])
    accuracy[120] = 0.99  # a transient excursion, not the transition
    assert detect_transition(accuracy, 0.9) == 300
    assert detect_transition(-accuracy, -0.9, above=False) == 300
    assert detect_transition(accuracy[:300], 0.9) is None
    assert detect_transition(np.ones(5), 0.5) == 0


# --- surrogates -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [256, 257])
def test_phase_surrogates_keep_the_power_spectrum(n):
    x = ar1(0.8, n, seed=2) + 3.0
    power = np.abs(np.fft.rfft(x)) ** 2
    for s in surrogates(x, 5, kind="phase", seed=0):
        assert np.allclose(np.abs(np.fft.rfft(s)) ** 2, power, rtol=1e-9, atol=1e-9)
        assert s.mean() == pytest.approx(x.mean(), rel=1e-12)
        assert np.abs(s - x).max() > 0.1


def test_shuffle_surrogates_keep_the_marginal_distribution():
    x = ar1(0.8, 500, seed=2)
    shuffled = list(surrogates(x, 5, kind="shuffle", seed=0))
    for s in shuffled:
        assert np.array_equal(np.sort(s), np.sort(x))
        assert abs(np.corrcoef(s[:-1], s[1:])[0, 1]) < 0.15  # the AR(1) memory (0.8) is gone
    again = list(surrogates(x, 5, kind="shuffle", seed=0))
    assert all(np.array_equal(a, b) for a, b in zip(shuffled, again, strict=True))


def test_surrogate_pvalue_counts_as_stated():
    x = np.arange(50.0)  # τ = 1; a shuffle reaches it with probability 1/50!
    assert surrogate_pvalue(x, kendall_tau_trend, 99, "shuffle") == pytest.approx(1 / 100)
    assert surrogate_pvalue(x, lambda s: 0.0, 99, "shuffle") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="surrogate kind must be one of"):
        surrogate_pvalue(x, kendall_tau_trend, 9, "bootstrap")


def test_early_warning_summary_uses_only_the_pre_transition_segment():
    x = np.concatenate([ramped_ar1(1000, seed=3), 50.0 + np.zeros(200)])
    summary = early_warning_summary(x, transition=1000, window=0.5, n_surrogates=19)
    assert list(summary["indicator"]) == ["variance", "lag1_ac"]
    assert (summary["n_points"] == 1000).all() and (summary["window"] == 500).all()
    assert summary.set_index("indicator").loc["lag1_ac", "kendall_tau"] > 0.5
    assert (summary["p_value"] >= 1 / 20).all()
    with pytest.raises(ValueError, match="indicators \\['skewness'\\] unknown"):
        early_warning_summary(x, indicators=("skewness",))
