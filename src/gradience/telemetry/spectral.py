"""Singular-value metrics of weight matrices (telemetry contract: docs/architecture.md).

All metrics are computed from the singular values in float64. The numerical rank uses numpy's
``matrix_rank`` tolerance, ``tol = σ_max · max(m, n) · eps(float64)``; a matrix whose smallest
singular value is at or below ``tol`` is rank-deficient, its ``kappa`` is ``inf`` and
``kappa_r = σ_max / σ_r`` (σ_r the smallest singular value above ``tol``) is finite.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

SPECTRAL_METRICS = (
    "kappa",
    "kappa_r",
    "numerical_rank",
    "stable_rank",
    "effective_rank",
    "nuclear_norm",
    "spectral_norm",
    "frobenius_norm",
    "alpha",
)


def singular_values(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    """Singular values of a 2-D matrix, descending, float64."""
    w = torch.as_tensor(weight).detach()
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(w.shape)}")
    return torch.linalg.svdvals(w.to("cpu", torch.float64)).numpy()


def rank_tolerance(sigma: np.ndarray, shape: tuple[int, int]) -> float:
    return float(sigma[0]) * max(shape) * np.finfo(np.float64).eps if sigma.size else 0.0


def power_law_alpha(sigma: np.ndarray) -> float:
    """Exponent α of σ_i ∝ i^(-α), least squares on log σ_i vs log i over all σ_i > tol.

    The fit covers ranks 1..r (r = numerical rank); fewer than 3 such values give ``nan``.
    """
    s = sigma[sigma > 0]
    if s.size < 3:
        return math.nan
    i = np.arange(1, s.size + 1, dtype=np.float64)
    slope = np.polyfit(np.log(i), np.log(s), 1)[0]
    return float(-slope)


def effective_rank(sigma: np.ndarray | torch.Tensor) -> float:
    """Roy–Vetterli exp(H(p)), p = |σ| / ‖σ‖₁, of non-negative values (``nan`` when all are 0 or none)."""
    s = np.abs(np.asarray(torch.as_tensor(sigma).detach().cpu().double()))
    total = s.sum()
    if s.size == 0 or total == 0:
        return math.nan
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def spectral_metrics_from_sigma(sigma: np.ndarray, shape: tuple[int, int]) -> dict[str, float]:
    """All :data:`SPECTRAL_METRICS` from a descending singular-value vector of a matrix of ``shape``."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.size == 0 or sigma[0] == 0.0:
        nan = math.nan
        return dict.fromkeys(SPECTRAL_METRICS, nan) | {"numerical_rank": 0.0, "spectral_norm": 0.0}
    tol = rank_tolerance(sigma, shape)
    kept = sigma[sigma > tol]
    rank = kept.size
    full_rank = rank == sigma.size
    return {
        "kappa": float(sigma[0] / sigma[-1]) if full_rank else math.inf,
        "kappa_r": float(sigma[0] / kept[-1]),
        "numerical_rank": float(rank),
        "stable_rank": float((sigma**2).sum() / sigma[0] ** 2),
        "effective_rank": effective_rank(sigma),
        "nuclear_norm": float(sigma.sum()),
        "spectral_norm": float(sigma[0]),
        "frobenius_norm": float(np.sqrt((sigma**2).sum())),
        "alpha": power_law_alpha(kept),
    }


def spectral_metrics(weight: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Spectral metrics of one weight matrix (see module docstring for conventions)."""
    sigma = singular_values(weight)
    return spectral_metrics_from_sigma(sigma, tuple(torch.as_tensor(weight).shape))


def weight_matrices(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every trainable 2-D parameter (linear, embedding, unembedding).

    Convolution kernels (4-D) are reshaped to ``out × (in·kh·kw)``, the usual matricisation.
    """
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim == 2:
            yield name, param
        elif param.ndim > 2:
            yield name, param.reshape(param.shape[0], -1)
