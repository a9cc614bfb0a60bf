"""Analysis shared by the character-LM regime studies: the regime table, model-scope series and the
coupling test of two metric series (cross-correlation against surrogates)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from gradience.config import Section
from gradience.studies.lm_regimes.runs import MATRIX_SUMMARIES
from gradience.telemetry import signals
from gradience.telemetry.recorder import MODEL_SCOPE


def regime_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The run table with the condition named ``regime``, as every analysis here calls it."""
    return runs.rename(columns={"condition": "regime"})


def model_table(telemetry: pd.DataFrame) -> pd.DataFrame:
    """Model-scope telemetry, one row per ``run, step``, plus weight summaries over matrices:
    ``spectral_norm_max``, ``stable_rank_mean``, ``alpha_mean`` (the loop already logs ``kappa`` =
    max and ``effective_rank`` = mean)."""
    model = telemetry[telemetry.scope == MODEL_SCOPE].pivot_table(
        index=["run", "step"], columns="metric", values="value", aggfunc="first")
    per = telemetry[telemetry.scope != MODEL_SCOPE]
    for column, (metric, how) in MATRIX_SUMMARIES.items():
        model[column] = per[per.metric == metric].groupby(["run", "step"])["value"].agg(how)
    return model.reset_index()


def pre_divergence(w: pd.DataFrame, diverged_at: float) -> pd.DataFrame:
    """The rows of one run strictly before its divergence step (all rows if it never diverged)."""
    return w if not np.isfinite(diverged_at) else w[w.step < diverged_at]


class CouplingParams(Section):
    """How two metric series of one run are cross-correlated and tested (:func:`coupling_test`)."""

    max_lag: int = Field(ge=0, description="cadence points")
    detrend: Literal["gaussian", "linear", "none"] = "gaussian"
    bandwidth: float = Field(default=0.2, gt=0, le=1, description="Gaussian detrend kernel σ = bandwidth × series length (signals.detrend; ewstools 2.x bandwidth = 2.7 × this)")
    surrogates: int = Field(ge=19)
    surrogate_kind: Literal["phase", "shuffle"] = "phase"
    alpha: float = Field(default=0.05, gt=0, lt=1)
    min_points: int = Field(default=12, ge=6, description="shorter pre-divergence series are not tested")

    @model_validator(mode="after")
    def _enough_points(self) -> CouplingParams:
        if self.min_points < 2 * self.max_lag + 3:
            raise ValueError(f"min_points={self.min_points} must be ≥ 2·max_lag + 3 = {2 * self.max_lag + 3}")
        return self

    def prepare(self, values: np.ndarray) -> np.ndarray:
        """A series as it is cross-correlated: :func:`signals.log_if_positive`, then detrended."""
        return signals.detrend(signals.log_if_positive(values), self.detrend, self.bandwidth)


def max_abs_cross_correlation(X: np.ndarray, y: np.ndarray, max_lag: int) -> np.ndarray:
    """max_k |corr(x_t, y_{t+k})| over |k| ≤ ``max_lag`` for every row x of ``X`` (``[m, n]``).

    The same overlaps and Pearson correlation as :func:`signals.lead_lag`, vectorised over rows
    so that hundreds of surrogates cost one pass (``lead_lag`` takes one series at a time).
    """
    X = np.atleast_2d(X)
    n = X.shape[1]
    best = np.zeros(X.shape[0])
    for k in range(-max_lag, max_lag + 1):
        a = X[:, max(0, -k): n - max(0, k)]
        b = y[max(0, k): n + min(0, k)]
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (a @ b) / np.sqrt((a * a).sum(axis=1) * (b @ b))
        best = np.fmax(best, np.abs(r))
    return best


def coupling_test(x: np.ndarray, y: np.ndarray, c: CouplingParams, seed: int = 0) -> dict[str, float]:
    """Cross-correlation of the prepared series and its surrogate p-value.

    r(k) = corr(x_t, y_{t+k}) for |k| ≤ ``max_lag`` (k > 0: x leads). Returns ``n``, ``best_lag``
    (largest |r|), ``best_r``, ``r_lag0`` and ``p_value``: the one-sided surrogate p of
    max_k |r(k)| against ``surrogates`` surrogates of x, (1 + #{null ≥ observed}) / (1 + m) as in
    :func:`signals.surrogate_pvalue` (same surrogates for the same seed; vectorised here).
    NaN values when fewer than ``min_points`` finite pairs remain or a series is constant.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = {"n": float(x.size), "best_lag": math.nan, "best_r": math.nan, "r_lag0": math.nan, "p_value": math.nan}
    if x.size < c.min_points or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    xr, yr = c.prepare(x), c.prepare(y)
    res = signals.lead_lag(xr, yr, c.max_lag)
    null = max_abs_cross_correlation(np.stack(list(signals.surrogates(xr, c.surrogates, c.surrogate_kind, seed))),
                                     yr, c.max_lag)
    observed = float(np.nanmax(np.abs(res.correlation)))
    p = float((1 + np.sum(null >= observed)) / (1 + null.size))  # as signals.surrogate_pvalue
    return out | {"best_lag": float(res.best_lag), "best_r": res.best_correlation,
                  "r_lag0": float(res.correlation[c.max_lag]), "p_value": p}


def coupling_table(series: pd.DataFrame, runs: pd.DataFrame, pairs: Sequence[tuple[str, str]],
                   c: CouplingParams, cadence_every: int) -> pd.DataFrame:
    """Every run × pair: :func:`coupling_test` on the pre-divergence series; ``lead_steps`` =
    best_lag × cadence, ``significant`` (p < α), ``significant_bonferroni`` (p < α / #pairs)."""
    rows = []
    for rec in runs.itertuples():
        w = pre_divergence(series[series.run == rec.run], rec.diverged_at)
        for a, b in pairs:
            if a not in w or b not in w:
                continue
            res = coupling_test(w[a].to_numpy(), w[b].to_numpy(), c, seed=int(rec.seed))
            rows.append({"run": rec.run, "regime": rec.regime, "kind": rec.kind, "seed": rec.seed,
                         "x_metric": a, "y_metric": b, **res})
    t = pd.DataFrame(rows, columns=["run", "regime", "kind", "seed", "x_metric", "y_metric", "n", "best_lag",
                                    "best_r", "r_lag0", "p_value"])
    t["lead_steps"] = t["best_lag"] * cadence_every
    t["significant"] = t["p_value"] < c.alpha
    t["significant_bonferroni"] = t["p_value"] < c.alpha / max(1, len(pairs))
    t["direction"] = np.select([t.best_lag > 0, t.best_lag < 0], ["x leads", "y leads"], "synchronous")
    t.loc[t.best_lag.isna(), "direction"] = "untested"
    return t


def cross_correlations(series: pd.DataFrame, runs: pd.DataFrame, x: str, y: str, c: CouplingParams) -> pd.DataFrame:
    """r(k) of one pair for every run long enough (pre-divergence, prepared): ``run, lag, r``."""
    rows = []
    for rec in runs.itertuples():
        w = pre_divergence(series[series.run == rec.run], rec.diverged_at)[[x, y]].dropna()
        if len(w) < c.min_points:
            continue
        res = signals.lead_lag(c.prepare(w[x].to_numpy()), c.prepare(w[y].to_numpy()), c.max_lag)
        rows += [{"run": rec.run, "lag": int(k), "r": float(r)} for k, r in zip(res.lags, res.correlation, strict=True)]
    return pd.DataFrame(rows, columns=["run", "lag", "r"])
