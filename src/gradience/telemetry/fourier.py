"""Fourier structure of what a sequence model learned: representations over positions, attention
patterns, and a direction's effect grouped by a task coordinate.

* :func:`positional_power`: the share of a representation's power at each frequency of the discrete
  Fourier transform over positions, ``h [B, T, d]`` → ``T//2 + 1`` shares (real FFT; power summed over
  features and sequences; the DC share is power in the position-averaged representation).
* :func:`attention_uniformity`: for causal attention ``[B, H, T, T]``, the mean KL divergence of each
  query's weights from uniform over the keys it may see (0 = uniform backward attention, the
  counting pattern), per head.
* :func:`group_concentration`: a response averaged within each value of a coordinate (e.g. the
  nesting depth 0..G−1), its DFT over the coordinate, and the largest share of the non-DC power
  (``concentration``), its frequency, and ``elevation`` = concentration × (number of non-DC
  frequencies), which is 1 for a flat spectrum and at most that number.

Written here: each is a few lines of ``numpy.fft`` that no maintained library packages this way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def positional_power(h: np.ndarray) -> np.ndarray:
    """Shares (sum 1) of |rfft over positions|² of ``h [B, T, d]`` per frequency 0..T//2."""
    h = np.asarray(h, dtype=np.float64)
    if h.ndim != 3 or h.shape[1] < 2:
        raise ValueError(f"h must be [B, T ≥ 2, d], got shape {h.shape}")
    power = (np.abs(np.fft.rfft(h, axis=1)) ** 2).sum(axis=(0, 2))
    total = power.sum()
    return power / total if total > 0 else power


def attention_uniformity(att: np.ndarray) -> np.ndarray:
    """Per head, the mean over sequences and queries t of KL(att[t, :t+1] ‖ uniform on t+1 keys), in nats."""
    a = np.asarray(att, dtype=np.float64)
    if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"attention must be [B, H, T, T], got shape {a.shape}")
    T = a.shape[-1]
    visible = np.tril(np.ones((T, T), dtype=bool))
    n = visible.sum(1)  # keys visible to query t: t + 1
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(visible & (a > 0), a * np.log(a * n[:, None]), 0.0)
    return terms.sum(-1).mean(axis=(0, 2))


@dataclass(frozen=True)
class Concentration:
    profile: np.ndarray  # the response's mean per coordinate value 0..G−1 (NaN where absent)
    shares: np.ndarray  # non-DC power shares, frequencies 1..G//2
    concentration: float
    peak: int  # frequency of the largest share
    elevation: float


def group_concentration(values: np.ndarray, groups: np.ndarray, n_groups: int) -> Concentration:
    """Fourier concentration of ``values`` grouped by the integer coordinate ``groups`` ∈ 0..n_groups−1.

    Absent coordinate values are filled with the mean of the present ones (no power added)."""
    values, groups = np.asarray(values, dtype=np.float64).ravel(), np.asarray(groups).ravel()
    if n_groups < 3:
        raise ValueError(f"need ≥ 3 coordinate values for a non-DC spectrum, got {n_groups}")
    if values.shape != groups.shape:
        raise ValueError(f"values and groups differ in size: {values.shape} vs {groups.shape}")
    sums = np.bincount(groups, weights=values, minlength=n_groups)[:n_groups]
    counts = np.bincount(groups, minlength=n_groups)[:n_groups]
    profile = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    filled = np.where(counts > 0, profile, np.nanmean(profile))
    power = np.abs(np.fft.rfft(filled - filled.mean())) ** 2
    nondc = power[1:]
    total = nondc.sum()
    shares = nondc / total if total > 0 else np.full_like(nondc, np.nan)
    if not total > 0:
        return Concentration(profile, shares, float("nan"), 0, float("nan"))
    k = int(np.argmax(shares))
    return Concentration(profile, shares, float(shares[k]), k + 1, float(shares[k] * len(shares)))
