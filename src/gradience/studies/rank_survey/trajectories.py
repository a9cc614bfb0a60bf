"""Rank survey (Protocol D): the criteria read on one trajectory — shape, loss plateau, setback, rank jump.

Report side: every threshold here is a ``report`` key (:class:`Criterion`, :class:`Plateau` and
:class:`~.analysis.ReportParams`), so changing one reruns only the notebook.

**Loss plateau** (``report.plateau``). With ``s`` the train loss on the even cadence grid,
smoothed by the centred rolling median of ``criterion.smoothing_window`` points, a run *reached
the plateau* iff the least-squares trend of ``s`` over its last ``window_fraction`` of steps
changes it by at most ``max_progress · (s_0 − min s)`` across that window: the loss still falls
(or rises) by at most that share of its total decrease.

**Hypothesis-4 criterion** (seed 001: "effective rank follows expansion → compression →
plateau"). Let ``r_0..r_K`` be one trajectory at its cadence steps ``t_0 < … < t_K = T`` (from
step 1 for W − W₀) and ``s`` its centred rolling median over ``smoothing_window`` points (ends
shrink the window). The *plateau window* is ``t ≥ (1 − f)·T`` with ``f = plateau_fraction``;
``L`` is the mean of ``s`` over it. With ``x = expand_min``, ``y = compress_min``, ``w =
plateau_tol``:

- *expansion*: the peak ``s_p = max s`` lies strictly inside the run, ``t_0 < t_p < (1 − f)·T``,
  and ``s_p ≥ (1 + x)·s_0``;
- *compression*: ``L ≤ (1 − y)·s_p``;
- *plateau*: ``max s − min s ≤ w·L`` over the plateau window.

Hypothesis 4 holds for a trajectory iff all three hold. Each trajectory also gets one shape
label, the first that applies: ``expansion→compression→plateau``; ``expansion→compression``;
``monotone compression`` (§4: ``s`` never rises more than ``x`` above its running minimum and
``L ≤ (1 − y)·s_0``); ``compression→expansion``; ``expansion`` (``L ≥ (1 + x)·s_0``);
``compression`` (``L ≤ (1 − y)·s_0``); ``flat``.

**Between-seed agreement** (falsifier 4): ``R² = 1 − Σ_s,t (r_st − r̄_t)² / Σ_s,t (r_st − r̄)²``
of a seeds × steps matrix (``r̄_t`` the seed mean at step t).

Its null (:func:`permuted_r2_null`): the same R² after putting each seed's values in an independent
random step order; a layer is structured when its R² beats that null at level α (permutation p-value)
and reaches ``r2_min``; the null's (1 − α) quantile is the smallest R² the test could call structured.

**Setback** of a run: ``max_i (ℓ_i − m_i) / (ℓ_0 − m_i)`` over cadence steps ``t_i ≥
burn_in_fraction·T`` (ℓ the train loss, ``m_i = min_{j<i} ℓ_j``: the share of the progress so far
that is lost). **Rank jump**: ``|Δ log r_eff|`` across a window; its null is the largest such
change over any window of the same length on the even grid after the burn-in.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import Field

from gradience.config import Section

ECP = "expansion→compression→plateau"
MONOTONE = "monotone compression"
SHAPES = (ECP, "expansion→compression", MONOTONE, "compression→expansion", "expansion", "compression", "flat")


class Criterion(Section):
    smoothing_window: int = Field(default=5, ge=1)
    expand_min: float = Field(default=0.05, gt=0)
    compress_min: float = Field(default=0.05, gt=0, lt=1)
    plateau_fraction: float = Field(default=0.2, gt=0, lt=1)
    plateau_tol: float = Field(default=0.05, gt=0)


class Plateau(Section):
    window_fraction: float = Field(default=0.2, gt=0, lt=1, description="the last share of the run checked")
    max_progress: float = Field(default=0.025, gt=0, lt=1,
                                description="largest loss movement in the window, as a share of the total decrease")


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling median over ``window`` points; the window shrinks at the ends."""
    return pd.Series(values, dtype=float).rolling(window, center=True, min_periods=1).median().to_numpy()


def trajectory_shape(steps: np.ndarray, values: np.ndarray, c: Criterion) -> dict[str, float | bool | str]:
    """The hypothesis-4 criterion and the shape label of one trajectory (this module's docstring)."""
    t = np.asarray(steps, dtype=float)
    s = smooth(np.asarray(values, dtype=float), c.smoothing_window)
    if s.size < 3:
        raise ValueError(f"a trajectory needs at least 3 points, got {s.size}")
    plateau_start = (1 - c.plateau_fraction) * t[-1]
    tail = s[t >= plateau_start]
    level = float(tail.mean())
    s0, ip, im = float(s[0]), int(np.argmax(s)), int(np.argmin(s))
    inside = lambda i: 0 < i and t[i] < plateau_start  # noqa: E731
    expanded = inside(ip) and s[ip] >= (1 + c.expand_min) * s0
    compressed = expanded and level <= (1 - c.compress_min) * s[ip]
    plateau = bool(tail.max() - tail.min() <= c.plateau_tol * level)
    rebound = float(np.max(s / np.minimum.accumulate(s)) - 1)
    monotone = rebound <= c.expand_min and level <= (1 - c.compress_min) * s0
    dip = inside(im) and s[im] <= (1 - c.compress_min) * s0 and level >= (1 + c.expand_min) * s[im]
    labels = [expanded and compressed and plateau, expanded and compressed, monotone, dip,
              level >= (1 + c.expand_min) * s0, level <= (1 - c.compress_min) * s0, True]
    return {"start": s0, "peak": float(s[ip]), "peak_step": float(t[ip]), "trough": float(s[im]),
            "trough_step": float(t[im]), "end_level": level, "rebound": rebound,
            "expanded": bool(expanded), "compressed": bool(compressed), "plateau": plateau,
            "hypothesis4": bool(expanded and compressed and plateau), "monotone": bool(monotone),
            "label": SHAPES[labels.index(True)]}


def between_seed_r2(matrix: np.ndarray) -> float:
    """``1 − SS_within / SS_total`` of a seeds × steps matrix (1: every seed traces the same curve)."""
    m = np.asarray(matrix, dtype=float)
    total = ((m - m.mean()) ** 2).sum()
    return float(1 - ((m - m.mean(axis=0)) ** 2).sum() / total) if total > 0 else math.nan


def permuted_r2_null(matrix: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Between-seed R² of ``n`` time-permuted copies of a seeds × steps matrix: each seed's values put in
    an independent random step order (its level and spread kept, its time course and its alignment
    with the other seeds destroyed): what "noisy, unstructured" dynamics of the same values give."""
    m = np.asarray(matrix, dtype=float)
    rng = np.random.default_rng(seed)
    return np.array([between_seed_r2(rng.permuted(m, axis=1)) for _ in range(n)])


def permutation_p(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value ``(1 + #{null ≥ observed}) / (1 + n)``."""
    null = np.asarray(null, dtype=float)
    return float((1 + np.sum(null >= observed)) / (1 + null.size)) if math.isfinite(observed) else math.nan


def paired_log_ratio(a: np.ndarray, b: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """``(mean d, detectable, n)`` of the paired log-ratios ``d = log(a / b)``: ``detectable`` is the
    smallest mean the one-sided t-test at ``alpha`` calls > 0 (``t_{1−α, n−1}·sd/√n``; ``inf`` if n < 2)."""
    from scipy import stats

    d = np.log(np.asarray(a, dtype=float) / np.asarray(b, dtype=float))
    d = d[np.isfinite(d)]
    if d.size < 2:
        return (float(d.mean()) if d.size else math.nan), math.inf, int(d.size)
    detectable = float(stats.t.ppf(1 - alpha, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return float(d.mean()), detectable, int(d.size)


def loss_plateau(steps: np.ndarray, loss: np.ndarray, every: int, window: int, p: Plateau) -> float:
    """``|b|·(t_K − t_j) / (s_0 − min s)``, ``b`` the least-squares slope of ``s`` over the last
    ``window_fraction`` of the run (steps ``t_j … t_K``): how much the smoothed train loss still changes
    over that window, as a share of its total decrease (``nan`` if it never decreased). A trend, not
    the window's range, so step-to-step noise of a mini-batch run does not read as progress. ``s``: the
    loss on the even grid (multiples of ``every``, and the last step), rolling median of ``window``."""
    steps, loss = np.asarray(steps), np.asarray(loss, dtype=float)
    grid = (steps % every == 0) | (steps == steps[-1])
    t, s = steps[grid], smooth(loss[grid], window)
    drop = s[0] - s.min()
    if not drop > 0:
        return math.nan
    keep = t >= (1 - p.window_fraction) * steps[-1]
    tt, tail = t[keep], s[keep]
    if tt.size < 2:
        return math.nan
    slope = np.polyfit(tt.astype(float), tail, 1)[0]
    return float(abs(slope) * (tt[-1] - tt[0]) / drop)


def setback(steps: np.ndarray, loss: np.ndarray, burn_in_step: float) -> float:
    """``max_i (ℓ_i − m_i)/(ℓ_0 − m_i)`` over ``t_i ≥ burn_in_step``, ``m_i = min_{j<i} ℓ_j`` (0 if none)."""
    steps, loss = np.asarray(steps), np.asarray(loss, dtype=float)
    best = np.minimum.accumulate(loss)[:-1]  # m_i for i = 1..K
    gain = loss[0] - best
    keep = (steps[1:] >= burn_in_step) & (gain > 0)
    if not keep.any():
        return 0.0
    return float(max(0.0, np.max((loss[1:] - best)[keep] / gain[keep])))


def window_change(steps: np.ndarray, values: np.ndarray, start: int, end: int) -> float:
    """``|log v(end) − log v(start)|``: how much a trajectory moved across ``[start, end]``."""
    v = pd.Series(np.asarray(values, dtype=float), index=np.asarray(steps))
    return float(abs(np.log(v[end]) - np.log(v[start]))) if start in v.index and end in v.index else math.nan


def max_window_change(steps: np.ndarray, values: np.ndarray, every: int, length: int, burn_in_step: float) -> float:
    """The largest ``|log v(t + length) − log v(t)|`` over even-grid ``t ≥ burn_in_step`` (the null of a rank jump)."""
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    v = pd.Series(values[steps % every == 0], index=steps[steps % every == 0])
    t = v.index[(v.index >= burn_in_step) & np.isin(v.index + length, v.index)]
    if not len(t):
        return math.nan
    return float(np.max(np.abs(np.log(v[t + length].to_numpy()) - np.log(v[t].to_numpy()))))
