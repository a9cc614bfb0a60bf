"""The dtype constants and the spectral budget σ_k every rule refers to.

Constants (IEEE 754, from ``torch.finfo``; for float32): ε = 2⁻²³ ≈ 1.19e-7, √ε ≈ 3.45e-4, learning-rate
bounds [ε, 1/√ε ≈ 2896], eigengap threshold σ_k/σ_{k+1} > 2, residual-scale clamp [√ε, 1/√ε].

σ_k (the document's "noise floor of the weight's eigenspectrum", used by the Adam ε, decay, LoRA scale,
budget and initialisation rules) is never defined there by an index. Reading chosen here: **σ_k is the
smallest singular value at or above the significance threshold √ε · σ_max** ("significance threshold
√ε — SVD noise floor — used by: noise floor, σ_k" in the constants table), k their number. This reading
is supported by the document's own decay table: its largest ratios σ_max/σ_k (2,810 and 2,508) sit just
under 1/√ε = 2,896, the most this reading allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gradience.telemetry.spectral import singular_values

EIGENGAP_THRESHOLD = 2.0


@dataclass(frozen=True)
class PrecisionConstants:
    eps: float
    sqrt_eps: float
    lr_min: float
    lr_max: float
    residual_min: float
    residual_max: float
    eigengap_threshold: float = EIGENGAP_THRESHOLD


def precision_constants(dtype: torch.dtype = torch.float32) -> PrecisionConstants:
    """The document's constants for a floating dtype (see the module docstring)."""
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    eps = float(torch.finfo(dtype).eps)
    root = math.sqrt(eps)
    return PrecisionConstants(eps, root, eps, 1 / root, root, 1 / root)


def spectrum(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    """Singular values, descending, float64."""
    return singular_values(weight)


def sigma_k(sigma: np.ndarray, dtype: torch.dtype = torch.float32) -> tuple[int, float]:
    """``(k, σ_k)``: the number of singular values ≥ √ε·σ_max and the smallest of them; (0, 0) for 0."""
    s = np.asarray(sigma, dtype=np.float64)
    if s.size == 0 or s[0] <= 0:
        return 0, 0.0
    kept = s[s >= precision_constants(dtype).sqrt_eps * s[0]]
    return int(kept.size), float(kept[-1])


def eigengap(sigma: np.ndarray, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """``(σ_k − σ_{k+1}, σ_k / σ_{k+1})`` at the σ_k boundary (σ_{k+1} = 0 past the last value: ratio inf)."""
    s = np.asarray(sigma, dtype=np.float64)
    k, sk = sigma_k(s, dtype)
    nxt = float(s[k]) if k < s.size else 0.0
    return sk - nxt, (sk / nxt if nxt > 0 else math.inf)
