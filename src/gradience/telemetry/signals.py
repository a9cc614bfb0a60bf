"""Early-warning (critical-slowing-down) statistics of one metric's time series.

Protocol B, hypothesis 2 of seed 001: "grokking is preceded by diverging autocorrelation time".
The recipe is Dakos et al. (2012, PLoS ONE 7:e41010): detrend, take rolling variance and lag-1
autocorrelation over a window, measure their trend with Kendall's τ, and judge that τ against
surrogate series. The maintained implementation, ``ewstools`` (2.1.3 runs on numpy 2.4 and
pandas 3.1), is the reference ``tests/test_references.py`` checks detrending, rolling variance,
lag-1 autocorrelation and Kendall τ against (equal to 1e-12). The few formulas are still written
here with numpy/scipy/pandas because ewstools has no integrated autocorrelation time and no
surrogate test of the τ trend (it offers block bootstraps), computes the rolling autocorrelation
with a Python call per window, and would bring 15 more packages (plotly, arch, statsmodels,
EntropyHub…) into the runtime dependencies. The integrated autocorrelation time follows Sokal
(1997, "Monte Carlo methods in statistical mechanics", §3) as ``emcee.autocorr`` does (equal to
``emcee.autocorr.integrated_time``, same test file); the rolling version is vectorised over windows.

Conventions:

* A series is 1-D and evenly spaced in step. Telemetry with a mixed cadence (log-spaced early
  points) should be restricted to its evenly spaced points first. Only :func:`kendall_tau_trend`
  accepts arbitrary times.
* ``window`` is a fraction of the series length (float in (0, 1]) or a number of samples (int).
  Rolling statistics are right-aligned (causal): entry ``i`` uses ``x[i-w+1 .. i]``; the first
  ``w-1`` entries are NaN.
* In :func:`lead_lag`, lag ``k > 0`` means ``x`` leads ``y`` by ``k`` samples:
  ``r(k) = corr(x_t, y_{t+k})``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import signal, stats

DetrendMethod = Literal["gaussian", "linear", "none"]
SurrogateKind = Literal["shuffle", "phase"]
DETREND_METHODS = ("gaussian", "linear", "none")
SURROGATE_KINDS = ("shuffle", "phase")
KERNEL_TRUNCATE = 4.0  # Gaussian kernel cut at ±4σ, as scipy.ndimage's default
SOKAL_C = 5.0
_CHUNK_ELEMENTS = 1 << 22  # rolling τ: at most ~4M window samples per vectorised FFT batch


def _as_series(x: ArrayLike, name: str = "x", min_length: int = 3) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size < min_length:
        raise ValueError(
            f"{name} must be a 1-D series of at least {min_length} values, got shape {arr.shape}"
        )
    return arr


def window_length(window: float | int, n: int) -> int:
    """Samples in a window: ``int(window·n)`` for a float fraction in (0, 1], else ``window``."""
    if isinstance(window, bool) or not isinstance(window, int | float | np.integer | np.floating):
        raise TypeError(f"window must be a float fraction or an int, got {window!r}")
    if isinstance(window, float | np.floating):
        if not 0.0 < window <= 1.0:
            raise ValueError(f"window fraction must be in (0, 1], got {window}")
        window = int(window * n)
    if not 3 <= window <= n:
        raise ValueError(f"window must span 3..{n} samples (series length {n}), got {window}")
    return int(window)


def log_if_positive(values: ArrayLike) -> np.ndarray:
    """log10 of a strictly positive series (spectral metrics span decades: their relative
    fluctuations are what matter), the series itself otherwise."""
    v = np.asarray(values, dtype=np.float64)
    return np.log10(v) if np.all(v > 0) else v


def detrend(x: ArrayLike, method: DetrendMethod = "gaussian", bandwidth: float = 0.2) -> np.ndarray:
    """Residuals ``x - trend``.

    ``gaussian``: Nadaraya–Watson kernel smoother (Dakos et al. 2012),
    ``trend_i = Σ_j K(i-j) x_j / Σ_j K(i-j)``, ``K(d) = exp(-d²/2σ²)`` cut at ±4σ, with
    ``σ = bandwidth·n`` samples. That was ewstools' convention up to 1.0.0; ewstools ≥ 1.0.1 and
    2.x (``TimeSeries.detrend``) and R's ``ksmooth`` (used by ``earlywarnings``) put the kernel's
    quartiles at ±0.25·bandwidth, a kernel about 0.37× as wide: ewstools 2.x has
    ``σ = (0.25/0.675)·bandwidth·n``, so our ``bandwidth`` b is ewstools 2.x's ``2.7·b``
    (earlywarnings' percentage: ``100·b·0.6745/0.25 ≈ 270·b``). ewstools reflects the series at its
    ends where this renormalises the cut kernel; the two agree away from the ends
    (``tests/test_references.py``). It reproduces constants everywhere and straight lines wherever
    the kernel is not cut by an end. ``linear``: least-squares line. ``none``: ``x`` unchanged.
    """
    arr = _as_series(x)
    if method == "none":
        return arr.copy()
    if method == "linear":
        return signal.detrend(arr, type="linear")
    if method != "gaussian":
        raise ValueError(f"detrend method must be one of {DETREND_METHODS}, got {method!r}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be a positive fraction of the length, got {bandwidth}")
    sigma = bandwidth * arr.size
    half = min(arr.size - 1, int(np.ceil(KERNEL_TRUNCATE * sigma)))
    offsets = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    weighted = signal.fftconvolve(arr, kernel, mode="same")
    weights = signal.fftconvolve(np.ones_like(arr), kernel, mode="same")
    return arr - weighted / weights


def rolling_variance(resid: ArrayLike, window: float | int) -> np.ndarray:
    """Rolling sample variance ``Σ(x - x̄)² / (w - 1)`` over right-aligned windows."""
    arr = _as_series(resid)
    return pd.Series(arr).rolling(window_length(window, arr.size)).var().to_numpy()


def rolling_lag1_autocorrelation(resid: ArrayLike, window: float | int) -> np.ndarray:
    """Rolling lag-1 autocorrelation: Pearson ``corr(x_{t-1}, x_t)`` over the ``w-1`` pairs of a
    window (``pandas.Series.autocorr``, as ``ewstools``)."""
    arr = _as_series(resid)
    series = pd.Series(arr)
    pairs = window_length(window, arr.size) - 1
    return series.rolling(pairs).corr(series.shift(1)).to_numpy()


def _integrated_times(rows: np.ndarray, c: float) -> np.ndarray:
    """Sokal's τ for each row of a 2-D array (NaN for a constant row)."""
    n = rows.shape[1]
    centred = rows - rows.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(centred, n=2 * n, axis=1)  # zero padding: non-circular ACF
    acov = np.fft.irfft(spectrum * spectrum.conj(), n=2 * n, axis=1)[:, :n]
    with np.errstate(invalid="ignore", divide="ignore"):
        taus = 2.0 * np.cumsum(acov / acov[:, :1], axis=1) - 1.0  # τ(M) = 1 + 2 Σ_{k≤M} ρ_k
        window = (np.arange(n) >= c * taus).argmax(axis=1)
    return taus[np.arange(len(rows)), window]


def autocorrelation_time(x: ArrayLike, c: float = SOKAL_C) -> float:
    """Integrated autocorrelation time ``τ = 1 + 2 Σ_{k=1}^{M} ρ_k``.

    ``ρ_k`` is the biased ACF estimate ``Σ_t (x_t-x̄)(x_{t+k}-x̄) / Σ_t (x_t-x̄)²`` and ``M`` is
    Sokal's automatic window, the smallest ``M`` with ``M ≥ c·τ(M)`` (``c = 5``). Such an ``M``
    always exists: the biased ACF of a centred series sums to zero over all lags, so
    ``τ(n-1) = 0``. A series shorter than about ``50·τ`` (emcee's rule) therefore still gets a
    number, biased low. NaN for a constant series. AR(1) with coefficient φ: ``τ = (1+φ)/(1-φ)``.
    """
    return float(_integrated_times(_as_series(x)[np.newaxis, :], c)[0])


def rolling_autocorrelation_time(
    resid: ArrayLike, window: float | int, c: float = SOKAL_C
) -> np.ndarray:
    """:func:`autocorrelation_time` over right-aligned windows."""
    arr = _as_series(resid)
    w = window_length(window, arr.size)
    rows = np.lib.stride_tricks.sliding_window_view(arr, w)
    batch = max(1, _CHUNK_ELEMENTS // w)
    taus = [_integrated_times(rows[i : i + batch], c) for i in range(0, len(rows), batch)]
    return np.concatenate([np.full(w - 1, np.nan), *taus])


def kendall_tau_trend(series: ArrayLike, time: ArrayLike | None = None) -> float:
    """Kendall's τ-b between a statistic and time (default: its index); NaN pairs dropped.

    τ = +1 for a strictly increasing statistic, −1 for a decreasing one; NaN with < 3 points.
    """
    values = _as_series(series, "series", min_length=1)
    t = np.arange(values.size, dtype=np.float64) if time is None else _as_series(time, "time", 1)
    if t.shape != values.shape:
        raise ValueError(f"time has shape {t.shape}, series has shape {values.shape}")
    keep = np.isfinite(values) & np.isfinite(t)
    if keep.sum() < 3:
        return float("nan")
    return float(stats.kendalltau(t[keep], values[keep]).statistic)


@dataclass(frozen=True)
class LeadLag:
    """Cross-correlation ``r(k) = corr(x_t, y_{t+k})``; ``k > 0``: x leads y by k samples."""

    lags: np.ndarray
    correlation: np.ndarray
    best_lag: int  # the lag of largest |r|
    best_correlation: float


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return float("nan")
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def lead_lag(x: ArrayLike, y: ArrayLike, max_lag: int) -> LeadLag:
    """Pearson correlation of ``x_t`` with ``y_{t+k}`` over the overlap, ``k = -max_lag..max_lag``.

    Trends dominate cross-correlations: detrend both series first unless the trend is the point.
    """
    xs, ys = _as_series(x, "x"), _as_series(y, "y")
    if xs.shape != ys.shape:
        raise ValueError(f"x and y must have the same length, got {xs.size} and {ys.size}")
    if not 0 <= max_lag <= xs.size - 3:
        raise ValueError(f"max_lag must be in 0..{xs.size - 3}, got {max_lag}")
    n = xs.size
    lags = np.arange(-max_lag, max_lag + 1)
    r = np.array(
        [_pearson(xs[max(0, -k) : n - max(0, k)], ys[max(0, k) : n + min(0, k)]) for k in lags]
    )
    best = int(np.nanargmax(np.abs(r)))
    return LeadLag(lags, r, int(lags[best]), float(r[best]))


def detect_transition(series: ArrayLike, threshold: float, above: bool = True) -> int | None:
    """First index from which the series stays ≥ ``threshold`` to its end (≤ if not ``above``).

    Earlier excursions across the threshold are ignored; NaN counts as not crossed. ``None`` when
    the last value has not crossed.
    """
    values = _as_series(series, "series", min_length=1)
    crossed = values >= threshold if above else values <= threshold
    if not crossed[-1]:
        return None
    misses = np.flatnonzero(~crossed)
    return int(misses[-1] + 1) if misses.size else 0


def first_step_staying(steps: ArrayLike, values: ArrayLike, threshold: float) -> float:
    """The step from which ``values`` stay ≥ ``threshold`` to the end (a grok step); NaN if the last has not."""
    i = detect_transition(values, threshold)
    return math.nan if i is None else float(np.asarray(steps)[i])


def first_step_reaching(steps: ArrayLike, values: ArrayLike, threshold: float) -> float:
    """The first step with ``values ≥ threshold`` (a fit step, however brief); NaN if none."""
    hit = np.flatnonzero(np.asarray(values) >= threshold)
    return float(np.asarray(steps)[hit[0]]) if hit.size else math.nan


def decay_clock(lr: Any, weight_decay: Any, steps: Any) -> Any:
    """lr·wd·steps, the clock weight-decay claims are read on: decoupled decay alone shrinks the
    weights by (1 − lr·wd) per step, ≈ exp(−clock) over ``steps``. Numbers, arrays or Series."""
    return lr * weight_decay * steps


def safe_ratio(a: float, b: float) -> float:
    """a / b for b > 0; inf when only b is 0 (or negative) and a > 0; NaN otherwise."""
    return a / b if b > 0 else math.inf if a > 0 else math.nan


def relative_change(a: float, b: float) -> float:
    """a / b − 1 (how much larger ``a`` is than ``b``); NaN when either is not finite or b is 0."""
    return a / b - 1 if np.isfinite(a) and np.isfinite(b) and b != 0 else math.nan


def _surrogate(x: np.ndarray, kind: SurrogateKind, rng: np.random.Generator) -> np.ndarray:
    if kind == "shuffle":
        return rng.permutation(x)
    spectrum = np.fft.rfft(x)
    phases = rng.uniform(0.0, 2.0 * np.pi, spectrum.size)
    phases[0] = 0.0  # keep the mean
    if x.size % 2 == 0:
        phases[-1] = 0.0  # the Nyquist coefficient of a real series is real
    return np.fft.irfft(spectrum * np.exp(1j * phases), n=x.size)


def surrogates(
    x: ArrayLike, n_surrogates: int, kind: SurrogateKind = "phase", seed: int = 0
) -> Iterator[np.ndarray]:
    """Null series: ``shuffle`` permutes ``x`` (same values, no autocorrelation); ``phase`` draws
    uniform Fourier phases (same periodogram and mean, i.e. a stationary linear Gaussian process
    with the same autocovariance, Theiler et al. 1992)."""
    arr = _as_series(x)
    if kind not in SURROGATE_KINDS:
        raise ValueError(f"surrogate kind must be one of {SURROGATE_KINDS}, got {kind!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("surrogates need a finite series; drop or fill NaN/inf first")
    rng = np.random.default_rng(seed)
    return (_surrogate(arr, kind, rng) for _ in range(n_surrogates))


def surrogate_pvalue(
    x: ArrayLike,
    statistic: Callable[[np.ndarray], float],
    n_surrogates: int = 200,
    kind: SurrogateKind = "phase",
    seed: int = 0,
) -> float:
    """One-sided p-value ``(1 + #{s ≥ observed}) / (1 + n)`` of ``statistic(x)`` against
    :func:`surrogates`; surrogates whose statistic is NaN are left out of ``n``."""
    if n_surrogates < 1:
        raise ValueError(f"n_surrogates must be ≥ 1, got {n_surrogates}")
    arr = _as_series(x)
    observed = statistic(arr)
    null = np.array([statistic(s) for s in surrogates(arr, n_surrogates, kind, seed)])
    null = null[np.isfinite(null)]
    if not np.isfinite(observed):
        return float("nan")
    return float((1 + np.sum(null >= observed)) / (1 + null.size))


INDICATORS: dict[str, Callable[[ArrayLike, float | int], np.ndarray]] = {
    "variance": rolling_variance,
    "lag1_ac": rolling_lag1_autocorrelation,
    "autocorrelation_time": rolling_autocorrelation_time,
}


def _indicator_trend(resid: np.ndarray, indicator: str, window: float | int) -> float:
    return kendall_tau_trend(INDICATORS[indicator](resid, window))


def early_warning_summary(
    x: ArrayLike,
    transition: int | None = None,
    *,
    window: float | int = 0.5,
    bandwidth: float = 0.2,
    method: DetrendMethod = "gaussian",
    indicators: Sequence[str] = ("variance", "lag1_ac"),
    n_surrogates: int = 200,
    kind: SurrogateKind = "phase",
    seed: int = 0,
) -> pd.DataFrame:
    """Kendall τ of each rolling indicator on ``x[:transition]`` and its surrogate p-value.

    The segment before the transition is detrended (:func:`detrend`), each indicator is computed
    over ``window`` (a fraction of the segment) and its trend is Kendall's τ against time. The
    p-value compares τ with the same statistic on surrogates of the residuals (one-sided: rising).
    Returns one row per indicator: ``indicator, kendall_tau, p_value, n_points, window``.
    """
    unknown = sorted(set(indicators) - set(INDICATORS))
    if unknown:
        raise ValueError(f"indicators {unknown} unknown; allowed: {sorted(INDICATORS)}")
    arr = _as_series(x)
    if transition is not None and not 3 <= transition <= arr.size:
        raise ValueError(f"transition must be an index in 3..{arr.size}, got {transition}")
    resid = detrend(arr[:transition], method, bandwidth)
    w = window_length(window, resid.size)
    rows = []
    for name in indicators:
        statistic = partial(_indicator_trend, indicator=name, window=w)
        rows.append(
            {
                "indicator": name,
                "kendall_tau": statistic(resid),
                "p_value": surrogate_pvalue(resid, statistic, n_surrogates, kind, seed),
                "n_points": resid.size,
                "window": w,
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------- power


def lag1_autocorrelation(x: ArrayLike) -> float:
    """Pearson ``corr(x_{t-1}, x_t)`` of a whole series (NaN for a constant one)."""
    arr = _as_series(x)
    a, b = arr[:-1], arr[1:]
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def ar1_series(phi: ArrayLike, n_series: int, rng: np.random.Generator) -> np.ndarray:
    """``n_series`` AR(1) paths ``x_t = φ_t x_{t-1} + ε_t``, ``ε ~ N(0, 1)``, of length ``len(φ)``,
    started from the stationary law of ``φ_0`` (variance ``1 / (1 - φ_0²)``); shape ``(n_series, n)``.

    A coefficient rising towards 1 is the textbook model of critical slowing down: the relaxation
    time ``-1 / log φ`` and the variance ``1 / (1 - φ²)`` both grow (Scheffer et al. 2009).
    """
    phi = _as_series(phi, "phi")
    if np.any(np.abs(phi) >= 1):
        raise ValueError("AR(1) coefficients must lie in (-1, 1)")
    out = np.empty((n_series, phi.size))
    out[:, 0] = rng.normal(size=n_series) / np.sqrt(1 - phi[0] ** 2)
    noise = rng.normal(size=(n_series, phi.size))
    for t in range(1, phi.size):
        out[:, t] = phi[t] * out[:, t - 1] + noise[:, t]
    return out


def detection_rate(null: ArrayLike, alternative: ArrayLike, alpha: float) -> tuple[float, float]:
    """Power of a one-sided test that rejects when a statistic exceeds the ``1 - α`` quantile of its
    null draws: ``(fraction of alternative draws above it, that critical value)``; NaN draws are
    left out of both."""
    null, alt = np.asarray(null, dtype=float), np.asarray(alternative, dtype=float)
    null, alt = null[np.isfinite(null)], alt[np.isfinite(alt)]
    if null.size == 0 or alt.size == 0:
        return float("nan"), float("nan")
    critical = float(np.quantile(null, 1 - alpha, method="higher"))
    return float(np.mean(alt > critical)), critical


def csd_power(
    n: int,
    phi0: float,
    effects: Sequence[float],
    *,
    indicator: str,
    window: float | int = 0.5,
    bandwidth: float = 0.2,
    method: DetrendMethod = "gaussian",
    n_sims: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Power of the early-warning trend test (:func:`early_warning_summary`: Kendall τ of the
    rolling ``indicator`` of the detrended series) against critical slowing down of known size.

    Alternative: AR(1) noise of length ``n`` whose coefficient rises linearly from ``phi0`` to
    ``phi0 + s·(1 - phi0)`` (effect ``s``: the fraction of the distance to 1 covered by the end).
    Null: stationary AR(1) at ``phi0``, which is what phase-randomised surrogates of a stationary
    series with lag-1 autocorrelation ``phi0`` are; the test rejects when τ exceeds the null's
    ``1 - α`` quantile. Returns per effect: ``effect, phi_end, power, critical_tau, median_tau``
    (the median τ of the alternative: the size of trend the test sees at that effect).
    """
    if indicator not in INDICATORS:
        raise ValueError(f"indicator {indicator!r} unknown; allowed: {sorted(INDICATORS)}")
    if not -1 < phi0 < 1:
        raise ValueError(f"phi0 must lie in (-1, 1), got {phi0}")
    w = window_length(window, n)
    rng = np.random.default_rng(seed)

    def taus(paths: np.ndarray) -> np.ndarray:
        return np.array([kendall_tau_trend(INDICATORS[indicator](detrend(x, method, bandwidth), w)) for x in paths])

    null = taus(ar1_series(np.full(n, phi0), n_sims, rng))
    rows = []
    for s in effects:
        phi_end = min(phi0 + s * (1 - phi0), 0.999)
        alt = taus(ar1_series(np.linspace(phi0, phi_end, n), n_sims, rng))
        power, critical = detection_rate(null, alt, alpha)
        rows.append({"effect": float(s), "phi_end": phi_end, "power": power, "critical_tau": critical,
                     "median_tau": float(np.nanmedian(alt))})
    return pd.DataFrame(rows)


def trend_test(x: ArrayLike, n_surrogates: int = 99, kind: SurrogateKind = "phase", seed: int = 0) -> tuple[float, float]:
    """Kendall τ of a series' *level* against time and its one-sided surrogate p-value.

    The null series are surrogates of the linearly detrended series: stationary noise with the
    series' own autocorrelation, so a slowly wandering series is not mistaken for a trend (the
    plain Mann–Kendall p-value assumes independent points).
    """
    arr = _as_series(x)
    tau = kendall_tau_trend(arr)
    null = np.array([kendall_tau_trend(s) for s in surrogates(detrend(arr, "linear"), n_surrogates, kind, seed)])
    return tau, float((1 + np.sum(null >= tau)) / (1 + null.size))


def trend_power(
    noise: ArrayLike,
    rises: Sequence[float],
    *,
    n_sims: int = 200,
    alpha: float = 0.05,
    kind: SurrogateKind = "phase",
    seed: int = 0,
) -> pd.DataFrame:
    """Power of :func:`trend_test` against a linear rise of the level by ``rise`` (in the units of
    ``noise``, e.g. log10 of the level: ``log10(2)`` is a doubling) over the series.

    ``noise``: a detrended series whose surrogates stand for the fluctuations around the level.
    Null: its surrogates; alternative: other surrogates plus the ramp ``rise·t/(n-1)``. The test's own
    null (surrogates of the linearly detrended alternative) is that same null, so the rate is the
    test's power up to the surrogate count. Returns per rise: ``rise, power, critical_tau,
    median_tau``.
    """
    arr = _as_series(noise)
    ramp = np.linspace(0.0, 1.0, arr.size)
    sims = list(surrogates(arr, 2 * n_sims, kind, seed))  # independent draws for the null and the alternative
    null = np.array([kendall_tau_trend(s) for s in sims[:n_sims]])
    rows = []
    for rise in rises:
        alt = np.array([kendall_tau_trend(s + rise * ramp) for s in sims[n_sims:]])
        power, critical = detection_rate(null, alt, alpha)
        rows.append({"rise": float(rise), "power": power, "critical_tau": critical,
                     "median_tau": float(np.nanmedian(alt))})
    return pd.DataFrame(rows)


def minimum_detectable(power_table: pd.DataFrame, effect: str, power: float = 0.8) -> dict[str, float]:
    """The smallest ``effect`` of a power table (:func:`csd_power`, :func:`trend_power`) whose power
    is ≥ ``power``, and the median Kendall τ the test saw there (NaN when none reaches it)."""
    ok = power_table[power_table["power"] >= power].sort_values(effect)
    if ok.empty:
        return {effect: float("nan"), "median_tau": float("nan")}
    first = ok.iloc[0]
    return {effect: float(first[effect]), "median_tau": float(first["median_tau"])}
