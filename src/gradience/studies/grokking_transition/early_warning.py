"""Protocol B: the early-warning statistics of every analysed series (report side).

- Residual statistics (Dakos et al. 2012, :mod:`gradience.telemetry.signals`): each series in the
  window (log10 when strictly positive) is detrended with a Gaussian kernel; rolling variance,
  lag-1 autocorrelation and integrated autocorrelation time over ``window`` × its length; each
  indicator's trend is Kendall's τ against time, judged against ``n_surrogates`` surrogate residual
  series. Level statistic (the ``level_metrics``, tr Σ by default): Kendall τ of the log level
  against time, judged against surrogates of its linearly detrended series
  (:func:`gradience.telemetry.signals.trend_test`). A series *signals* when τ > 0 and p < ``alpha``.
  Retrospective: detrending uses the whole window, t* is known.
- Lead time and lead–lag (grokking units): the alarm is the first step from which the rolling
  indicator stays above mean + ``alarm_z`` sd of its first ``baseline_fraction``; the lag of
  largest |corr(Δx_t, Δacc_{t+k})| over t* ± ``lead_lag_half_window`` steps (k > 0: series first).
- The level test's power on each grokking run's own fluctuations (:func:`level_power`) is computed
  here, per unit, with the statistics.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from gradience.config import Section
from gradience.parallel import map_runs
from gradience.telemetry import signals
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.telemetry.spectral import SPECTRAL_METRICS

INDICATORS = ("autocorrelation_time", "lag1_ac", "variance")
MODEL_METRICS = ("grad_norm", "grad_cosine", "grad_noise_scale", "grad_noise_trace", "batch_loss", "train_loss",
                 "test_loss", "weight_norm")
Group = Literal["spectral", "gradient", "loss"]
LEVEL = "level"  # the indicator name of the level-trend test


class EarlyWarningParams(Section):
    spectral_metrics: list[str] = Field(
        default_factory=lambda: ["kappa", "stable_rank", "effective_rank", "spectral_norm", "nuclear_norm"],
        min_length=1)
    model_metrics: list[str] = Field(
        default_factory=lambda: ["grad_norm", "grad_cosine", "grad_noise_scale", "grad_noise_trace", "train_loss",
                                 "test_loss"])
    detrend: Literal["gaussian", "linear", "none"] = "gaussian"
    bandwidth: float = Field(default=0.2, gt=0, le=1, description="Gaussian detrend kernel σ = bandwidth × series length (signals.detrend; ewstools 2.x bandwidth = 2.7 × this)")
    window: float = Field(default=0.5, gt=0, le=1, description="rolling window, fraction of the series")
    surrogate: Literal["phase", "shuffle"] = "phase"
    n_surrogates: int = Field(default=99, ge=19)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    min_points: int = Field(default=40, ge=10, description="shortest pre-transition series analysed")
    alarm_z: float = Field(default=2.0, gt=0)
    baseline_fraction: float = Field(default=0.25, gt=0, lt=1)
    min_hit_fraction: float = Field(default=0.5, gt=0, le=1)
    lead_lag_half_window: int = Field(default=500, ge=1, description="steps either side of t*")
    lead_lag_max: int = Field(default=20, ge=1, description="largest lag, in cadence points")
    level_metrics: list[str] = Field(default_factory=lambda: ["grad_noise_trace"],
                                     description="model-scope series whose level trend is tested")

    @field_validator("spectral_metrics")
    @classmethod
    def _spectral(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(SPECTRAL_METRICS))
        if unknown:
            raise ValueError(f"unknown spectral metrics {unknown}; allowed: {SPECTRAL_METRICS}")
        return v

    @field_validator("model_metrics", "level_metrics")
    @classmethod
    def _model(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(MODEL_METRICS))
        if unknown:
            raise ValueError(f"unknown model metrics {unknown}; allowed: {MODEL_METRICS}")
        return v


class PowerParams(Section):
    """What the tests could have detected: critical slowing down or a level rise of known size."""

    target: float = Field(default=0.8, gt=0, lt=1, description="power a negative verdict needs")
    claimed_slowing: float = Field(default=0.5, gt=0, lt=1, description=(
        "the claimed effect: the residuals' AR(1) coefficient covers this fraction of its distance to 1 by t*"))
    slowing_effects: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.5, 0.7, 0.9], min_length=1)
    claimed_rise: float = Field(default=2.0, gt=1, description="the claimed effect: tr Σ rises by this factor by t*")
    rises: list[float] = Field(default_factory=lambda: [1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0], min_length=1)
    n_sims: int = Field(default=400, ge=20, description="simulated series per effect size")

    @field_validator("slowing_effects")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 <= e < 1 for e in v):
            raise ValueError(f"slowing effects are fractions in [0, 1), got {v}")
        return v

    @field_validator("rises")
    @classmethod
    def _factors(cls, v: list[float]) -> list[float]:
        if any(r < 1 for r in v):
            raise ValueError(f"rises are factors ≥ 1, got {v}")
        return v


def series_group(scope: str, metric: str) -> Group:
    if scope != MODEL_SCOPE and metric in SPECTRAL_METRICS:
        return "spectral"
    return "gradient" if metric.startswith("grad_") else "loss"


def select_series(telemetry: pd.DataFrame, ew: EarlyWarningParams) -> pd.DataFrame:
    """The rows of the analysed series: the chosen spectral metrics of every weight matrix, and
    the chosen metrics (residual and level) at scope ``model``."""
    spectral = (telemetry["scope"] != MODEL_SCOPE) & telemetry["metric"].isin(ew.spectral_metrics)
    model = (telemetry["scope"] == MODEL_SCOPE) & telemetry["metric"].isin([*ew.model_metrics, *ew.level_metrics])
    return telemetry[spectral | model]


def alarm_index(indicator: np.ndarray, baseline_fraction: float, z: float) -> int | None:
    """First index from which ``indicator`` stays above mean + z·sd of its first defined values."""
    defined = np.flatnonzero(np.isfinite(indicator))
    n_base = max(2, int(math.ceil(baseline_fraction * defined.size)))
    if defined.size < n_base + 1:
        return None
    base = indicator[defined[:n_base]]
    threshold = base.mean() + z * base.std(ddof=1)
    return signals.detect_transition(np.where(np.isfinite(indicator), indicator, -np.inf), threshold)


def surrogate_seed(*parts: object) -> int:
    """A seed that is stable across processes (Python's ``hash`` is salted)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def early_warning_one(steps: np.ndarray, values: np.ndarray, ew: EarlyWarningParams,
                      seed: int) -> list[dict]:
    """Kendall τ, surrogate p-value, indicator end/start ratio and lead time for each indicator
    of one pre-transition series (``steps`` evenly spaced, window end = ``steps[-1] + Δ``), with
    the residuals' lag-1 autocorrelation (the noise the power analysis simulates)."""
    x = signals.log_if_positive(values)
    summary = signals.early_warning_summary(
        x, None, window=ew.window, bandwidth=ew.bandwidth, method=ew.detrend, indicators=INDICATORS,
        n_surrogates=ew.n_surrogates, kind=ew.surrogate, seed=seed).set_index("indicator")
    resid = signals.detrend(x, ew.detrend, ew.bandwidth)
    resid_lag1 = signals.lag1_autocorrelation(resid)
    end = steps[-1] + (steps[-1] - steps[-2])
    rows = []
    for name in INDICATORS:
        w = int(summary.loc[name, "window"])
        ind = signals.INDICATORS[name](resid, w)
        defined = ind[np.isfinite(ind)]
        alarm = alarm_index(ind, ew.baseline_fraction, ew.alarm_z)
        rows.append({"indicator": name, "kendall_tau": float(summary.loc[name, "kendall_tau"]),
                     "p_value": float(summary.loc[name, "p_value"]),
                     "ratio": float(defined[-1] / defined[0]) if defined.size and defined[0] > 0 else math.nan,
                     "lead_steps": float(end - steps[alarm]) if alarm is not None else math.nan,
                     "n_points": int(x.size), "window_points": w, "resid_lag1": resid_lag1})
    return rows


def level_one(values: np.ndarray, ew: EarlyWarningParams, seed: int) -> dict:
    """The level-trend test of one series (log10 when positive): Kendall τ against time, its
    surrogate p-value (:func:`gradience.telemetry.signals.trend_test`) and the ratio of the mean
    level over the last to the first tenth of the window."""
    x = signals.log_if_positive(values)
    tau, p = signals.trend_test(x, ew.n_surrogates, ew.surrogate, seed)
    k = max(1, values.size // 10)
    first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
    return {"indicator": LEVEL, "kendall_tau": tau, "p_value": p, "ratio": last / first if first > 0 else math.nan,
            "lead_steps": math.nan, "n_points": int(x.size), "window_points": int(x.size),
            "resid_lag1": signals.lag1_autocorrelation(signals.detrend(x, "linear"))}


def level_power(values: np.ndarray, ew: EarlyWarningParams, pw: PowerParams, seed: int) -> pd.DataFrame:
    """Power of the level test on this series' own fluctuations (its linearly detrended log10,
    phase-randomised) against a rise by each factor of ``pw.rises`` over the window."""
    noise = signals.detrend(signals.log_if_positive(values), "linear")
    factors = sorted({*pw.rises, pw.claimed_rise})
    table = signals.trend_power(noise, [math.log10(f) for f in factors], n_sims=pw.n_sims, alpha=ew.alpha,
                                kind=ew.surrogate, seed=seed)
    return table.assign(effect=factors).drop(columns="rise")


def lead_lag_one(steps: np.ndarray, values: np.ndarray, acc: np.ndarray, t_onset: float,
                 ew: EarlyWarningParams) -> dict:
    """Best lag (in steps; > 0: the series moves first) of corr(Δx_t, Δacc_{t+k}) around t*."""
    keep = np.abs(steps - t_onset) <= ew.lead_lag_half_window
    dx, da = np.diff(signals.log_if_positive(values[keep])), np.diff(acc[keep])
    max_lag = min(ew.lead_lag_max, dx.size - 3)
    if max_lag < 1 or np.std(dx) == 0 or np.std(da) == 0:
        return {"xcorr_lag_steps": math.nan, "xcorr_r": math.nan}
    ll = signals.lead_lag(dx, da, max_lag)
    return {"xcorr_lag_steps": float(ll.best_lag * (steps[1] - steps[0])), "xcorr_r": ll.best_correlation}


def indicator_curves(telemetry: pd.DataFrame, units: pd.DataFrame, scope: str, metric: str,
                     ew: EarlyWarningParams) -> pd.DataFrame:
    """For figures: per unit, the prepared series, its residual and the rolling indicators over its
    window, tidy (``run, control, step, quantity, value``)."""
    frames = []
    sel = telemetry[(telemetry["scope"] == scope) & (telemetry["metric"] == metric)]
    for r in units.itertuples():
        g = sel[(sel["run"] == r.run) & (sel["step"] >= r.window_start) & (sel["step"] < r.window_end)]
        g = g.sort_values("step")
        if len(g) < ew.min_points or not np.all(np.isfinite(g["value"])):
            continue
        x = signals.log_if_positive(g["value"].to_numpy())
        resid = signals.detrend(x, ew.detrend, ew.bandwidth)
        w = signals.window_length(ew.window, x.size)
        curves = {"series": x, "residual": resid} | {n: signals.INDICATORS[n](resid, w) for n in INDICATORS}
        frames += [pd.DataFrame({"run": r.run, "control": bool(r.control), "step": g["step"].to_numpy(),
                                 "quantity": name, "value": v}) for name, v in curves.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["run", "control", "step", "quantity", "value"])


@dataclass(frozen=True)
class AnalysisJob:
    run: str
    tested: str
    control: bool
    grokked: bool
    window: tuple[float, float]
    t_onset: float
    series: pd.DataFrame  # this run's selected series: scope, metric, step, value
    acc: pd.Series  # test accuracy by step
    ew: EarlyWarningParams
    pw: PowerParams = PowerParams()


def analyse_run(job: AnalysisJob) -> tuple[list[dict], list[dict]]:
    """Early-warning rows (one per series × indicator, and the level test of the level metrics) of
    one unit, skipped series saying why; and, for a grokking unit, the level test's power rows."""
    start, end = job.window
    rows, power = [], []
    ew = job.ew
    for (scope, metric), g in job.series.groupby(["scope", "metric"], sort=True):
        g = g.sort_values("step")
        key = {"run": job.run, "tested": job.tested, "control": job.control, "grokked": job.grokked,
               "group": series_group(scope, metric), "scope": scope, "metric": metric}
        inside = g[(g["step"] >= start) & (g["step"] < end)]
        steps, values = inside["step"].to_numpy(), inside["value"].to_numpy()
        residual = scope != MODEL_SCOPE or metric in ew.model_metrics
        level = scope == MODEL_SCOPE and metric in ew.level_metrics
        names = [*(INDICATORS if residual else ()), *((LEVEL,) if level else ())]
        reason = ("no window" if not np.isfinite(start) or not np.isfinite(end) else
                  f"{steps.size} points < {ew.min_points}" if steps.size < ew.min_points else
                  "non-finite values" if not np.all(np.isfinite(values)) else
                  "constant" if np.ptp(values) == 0 else
                  "uneven steps" if np.ptp(np.diff(steps)) != 0 else "")
        if reason:
            rows += [key | {"indicator": name, "skipped": reason} for name in names]
            continue
        seed = surrogate_seed(job.run, job.tested, scope, metric)
        if residual:
            extra = {}
            if job.grokked and not job.control:
                allsteps, allvalues = g["step"].to_numpy(), g["value"].to_numpy()
                if np.all(np.isfinite(allvalues)):
                    extra = lead_lag_one(allsteps, allvalues, job.acc.reindex(allsteps).to_numpy(),
                                         job.t_onset, ew)
            rows += [key | r | extra | {"skipped": ""} for r in early_warning_one(steps, values, ew, seed)]
        if level:
            rows.append(key | level_one(values, ew, seed) | {"skipped": ""})
            if not job.control:
                power += (level_power(values, ew, job.pw, seed).assign(run=job.run, tested=job.tested, metric=metric)
                          .to_dict("records"))
    return rows, power


def early_warning_table(telemetry: pd.DataFrame, units: pd.DataFrame, ew: EarlyWarningParams,
                        workers: int = 1, pw: PowerParams | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All units' early-warning rows (see :func:`analyse_run`), over ``workers`` processes, and the
    level tests' power rows of the grokking units."""
    chosen = select_series(telemetry, ew)
    acc = telemetry[(telemetry["scope"] == MODEL_SCOPE) & (telemetry["metric"] == "test_acc")]
    tasks = [AnalysisJob(r.run, r.tested, bool(r.control), bool(r.grokked),
                         (float(r.window_start), float(r.window_end)), float(r.t_onset),
                         chosen.loc[chosen["run"] == r.run, ["scope", "metric", "step", "value"]],
                         acc[acc["run"] == r.run].set_index("step")["value"], ew, pw or PowerParams())
             for r in units.itertuples()]
    outs = map_runs(analyse_run, tasks, workers=workers, desc="early warnings")
    table = pd.DataFrame([row for rows, _ in outs for row in rows])
    table[[c for c in ("kendall_tau", "p_value", "ratio", "lead_steps", "resid_lag1", "n_points")
           if c not in table]] = math.nan  # all skipped
    table["signals"] = (table["kendall_tau"] > 0) & (table["p_value"] < ew.alpha)
    power = pd.DataFrame([row for _, rows in outs for row in rows],
                         columns=["effect", "power", "critical_tau", "median_tau", "run", "tested", "metric"])
    return table, power


def signal_table(ew_table: pd.DataFrame) -> pd.DataFrame:
    """Per tested condition, series and indicator: its grokking runs vs the controls (median τ,
    fraction signalling, median indicator end/start ratio, median lead time and cross-correlation lag)."""
    done = ew_table[(ew_table["skipped"] == "") & (ew_table["control"] | ew_table["grokked"])]
    keys = ["tested", "group", "scope", "metric", "indicator"]

    def agg(g: pd.DataFrame) -> pd.Series:
        grok, ctrl = g[~g["control"]], g[g["control"]]
        out = {"tau_grok": grok["kendall_tau"].median(), "signal_grok": grok["signals"].mean(),
               "ratio_grok": grok["ratio"].median(), "lead_steps_grok": grok["lead_steps"].median(),
               "n_grok": len(grok), "tau_control": ctrl["kendall_tau"].median(),
               "signal_control": ctrl["signals"].mean(), "ratio_control": ctrl["ratio"].median(),
               "n_control": len(ctrl)}
        if "xcorr_lag_steps" in g:
            out |= {"xcorr_lag_steps": grok["xcorr_lag_steps"].median(), "xcorr_r": grok["xcorr_r"].median()}
        return pd.Series(out)

    return done.groupby(keys, sort=True).apply(agg, include_groups=False).reset_index()

