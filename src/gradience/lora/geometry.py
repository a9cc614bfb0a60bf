"""Geometry of PEFT LoRA adapters: ΔW = s·B·A from its r × r core, never materialised.

A LoRA module adds ``ΔW = s · B A`` to a frozen base weight ``W`` (``out × in``), with
``A`` = ``lora_A.weight`` (``r × in``), ``B`` = ``lora_B.weight`` (``out × r``) and ``s`` = PEFT's
``scaling`` (α/r, or α/√r with rsLoRA). With the thin QR factorisations ``B = Q_B R_B`` and
``Aᵀ = Q_A R_A``, ``ΔW = Q_B (s R_B R_Aᵀ) Q_Aᵀ`` and ``Q_B``, ``Q_A`` have orthonormal columns, so the
non-zero singular values of ΔW are those of the r × r core ``s R_B R_Aᵀ``: cost O((out + in)·r²)
instead of O(out·in·min(out, in)). Everything is computed in float64.

Metrics of one adapter (scope = the adapted module's name without PEFT's ``base_model.model.``):

* ``lora_stable_rank`` = ‖ΔW‖_F² / ‖ΔW‖_2²; ``utilization`` = ``lora_stable_rank`` / r.
* ``lora_kappa`` = σ_1 / σ_r over the r singular values of the core (ΔW itself has rank ≤ r < min(out,
  in), so its full κ is always infinite); ``inf`` when the core is numerically rank-deficient
  (numpy's tolerance, see :mod:`gradience.telemetry.spectral`), ``lora_kappa_r`` on the numerical rank.
* ``lora_effective_rank`` (Roy–Vetterli), ``lora_spectral_norm``, ``lora_frobenius_norm``,
  ``lora_numerical_rank`` of ΔW — the functions of :mod:`gradience.telemetry.spectral`.
* ``dominance`` = ‖ΔW‖_2 / ‖W‖_2. Why this definition: it is scale-free (comparable across layers
  and models) and it is the worst case, over all inputs x, of how much the adapter can move the
  layer's output relative to the base map's largest gain, ‖ΔW x‖ ≤ dominance · ‖W‖_2 ‖x‖; a value
  near or above 1 means the adapter can overwrite what the base weight does. Beside it,
  ``dominance_fro`` = ‖ΔW‖_F / ‖W‖_F, the average case: for isotropic inputs x,
  E‖ΔW x‖² / E‖W x‖² = ‖ΔW‖_F² / ‖W‖_F². ‖W‖_2 and ‖W‖_F are computed once per module (W is frozen).

At initialisation B = 0, so ΔW = 0: its norms, dominance and utilization are 0 and the ratios
(κ, stable and effective rank) are ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradience.telemetry.recorder import MODEL_SCOPE, TELEMETRY_COLUMNS
from gradience.telemetry.spectral import spectral_metrics_from_sigma

PEFT_PREFIX = "base_model.model."
ADAPTER_METRICS = (
    "lora_stable_rank", "utilization", "lora_kappa", "lora_kappa_r", "lora_effective_rank",
    "lora_spectral_norm", "lora_frobenius_norm", "lora_numerical_rank", "dominance", "dominance_fro",
)


@dataclass(frozen=True)
class Adapter:
    """One LoRA-adapted linear module: its name, rank, scaling and the factor tensors (live views)."""

    name: str
    r: int
    scaling: float
    A: torch.Tensor  # r × in
    B: torch.Tensor  # out × r
    base: torch.Tensor | None  # out × in (None when the base weight is not a plain float tensor)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.B.shape[0]), int(self.A.shape[1]))

    def delta(self) -> torch.Tensor:
        """The dense ΔW = s·B·A (float64) — for tests and small modules only."""
        return self.scaling * (self.B.detach().double() @ self.A.detach().double())


def delta_singular_values(A: torch.Tensor, B: torch.Tensor, scaling: float) -> np.ndarray:
    """The r largest singular values of ``scaling · B @ A`` (descending, float64) from the r × r core."""
    a = A.detach().to("cpu", torch.float64)
    b = B.detach().to("cpu", torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise ValueError(f"expected A (r × in) and B (out × r), got {tuple(a.shape)} and {tuple(b.shape)}")
    _, r_b = torch.linalg.qr(b)  # out × r → r × r
    _, r_a = torch.linalg.qr(a.T)  # in × r → r × r
    return abs(scaling) * torch.linalg.svdvals(r_b @ r_a.T).numpy()


def lora_adapters(model: nn.Module, adapter_name: str = "default") -> Iterator[Adapter]:
    """Every linear LoRA module of a PEFT model (PEFT's ``LoraLayer`` with ``lora_A[adapter_name]``)."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in getattr(module, "lora_A", {}):
            continue
        a, b = module.lora_A[adapter_name], module.lora_B[adapter_name]
        if not (isinstance(a, nn.Linear) and isinstance(b, nn.Linear)):
            continue  # embedding / convolution adapters are out of scope
        base = getattr(module.get_base_layer(), "weight", None)
        base = base if isinstance(base, torch.Tensor) and base.is_floating_point() and base.ndim == 2 else None
        yield Adapter(name.removeprefix(PEFT_PREFIX), int(module.r[adapter_name]),
                      float(module.scaling[adapter_name]), a.weight, b.weight, base)


def _base_norms(w: torch.Tensor | None) -> tuple[float, float]:
    if w is None or w.is_meta:
        return math.nan, math.nan
    w = w.detach().to("cpu", torch.float64)
    return float(torch.linalg.matrix_norm(w, ord=2)), float(torch.linalg.matrix_norm(w))


def adapter_metrics(adapter: Adapter, base_norms: tuple[float, float] | None = None) -> dict[str, float]:
    """:data:`ADAPTER_METRICS` of one adapter (see the module docstring); ``base_norms`` = (‖W‖_2, ‖W‖_F)."""
    sigma = delta_singular_values(adapter.A, adapter.B, adapter.scaling)
    spec = spectral_metrics_from_sigma(sigma, adapter.shape)
    w2, wf = base_norms if base_norms is not None else _base_norms(adapter.base)
    s2 = float(sigma[0]) if sigma.size else 0.0
    sf = float(np.sqrt((sigma**2).sum()))
    zero = s2 == 0.0
    return {
        "lora_stable_rank": spec["stable_rank"],
        "utilization": 0.0 if zero else spec["stable_rank"] / adapter.r,
        "lora_kappa": spec["kappa"],
        "lora_kappa_r": spec["kappa_r"],
        "lora_effective_rank": spec["effective_rank"],
        "lora_spectral_norm": s2,
        "lora_frobenius_norm": sf,
        "lora_numerical_rank": spec["numerical_rank"],
        "dominance": s2 / w2 if w2 > 0 else math.nan,
        "dominance_fro": sf / wf if wf > 0 else math.nan,
    }


class AdapterGeometry:
    """Measures every adapter of a PEFT model as tidy rows; caches the frozen base weights' norms."""

    def __init__(self, adapter_name: str = "default") -> None:
        self.adapter_name = adapter_name
        self._base: dict[str, tuple[float, float]] = {}

    def measure(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """``{scope: metrics}`` for every adapter, plus the ``model`` scope aggregates."""
        out: dict[str, dict[str, float]] = {}
        for ad in lora_adapters(model, self.adapter_name):
            if ad.name not in self._base:
                self._base[ad.name] = _base_norms(ad.base)
            out[ad.name] = adapter_metrics(ad, self._base[ad.name])
        if out:
            frame = pd.DataFrame(out.values())
            out[MODEL_SCOPE] = {
                "lora_stable_rank": float(frame["lora_stable_rank"].mean()),
                "utilization": float(frame["utilization"].mean()),
                "lora_effective_rank": float(frame["lora_effective_rank"].mean()),
                "dominance": float(frame["dominance"].max()),
                "dominance_fro": float(frame["dominance_fro"].max()),
            }
        return out

    def rows(self, model: nn.Module, run: str, step: int) -> pd.DataFrame:
        return adapter_rows(self.measure(model), run, step)


def adapter_rows(measured: dict[str, dict[str, float]], run: str, step: int) -> pd.DataFrame:
    """Tidy telemetry rows ``run, step, scope, metric, value`` from :meth:`AdapterGeometry.measure`."""
    rows = [(run, int(step), scope, metric, float(value))
            for scope, metrics in measured.items() for metric, value in metrics.items()]
    df = pd.DataFrame(rows, columns=list(TELEMETRY_COLUMNS))
    return df.astype({"run": "string", "step": "int64", "scope": "string", "metric": "string", "value": "float64"})


def geometry_frame(model: nn.Module, run: str, step: int, adapter_name: str = "default") -> pd.DataFrame:
    """One-shot :class:`AdapterGeometry` rows for every LoRA module of ``model``."""
    return AdapterGeometry(adapter_name).rows(model, run, step)
