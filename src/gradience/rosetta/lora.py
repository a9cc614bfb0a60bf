"""Rules 10–14 of the Rosetta Stone: LoRA scale, rank, target modules, dropout and initialisation.

σ_k is :func:`gradience.rosetta.precision.sigma_k`; the effective rank is Roy–Vetterli,
exp(H(σ/‖σ‖₁)) (:func:`gradience.telemetry.spectral.effective_rank`) — the document cites Roy & Vetterli
but writes exp(H(σ²)) in one place; the cited definition (the repository's) is used.

10. **Scale bound**: s ≤ σ_k(W)/‖BA‖₂ (Weyl: a perturbation of spectral norm ≤ σ_k cannot move any
    singular value of W by more than σ_k). The document's refinement (Weyl no-crossing) is
    s ≤ gap/(2‖BA‖₂) with gap = σ_k − σ_{k+1}; both are returned. The *excess* of a scale s is
    s / bound = s‖BA‖₂/σ_k: the document says common scales (α/r = 2) are 22–2700× over.
11. **Rank** = tail_dims = min(m, n) − ⌊erank(W)⌋.
12. **Targets**: linear modules whose weight has tail_dims > 0. Any spectrum that is not perfectly flat
    has erank < min(m, n), so in practice this keeps almost every module; the decay table
    (σ_k, σ_max/σ_k, tail_dims) is what the document reads from.
13. **Dropout** = (1 − erank/full) · (rank/full), full = min(m, n), rank from rule 11 unless given.
14. **Spectrally normalised initialisation**: A = √σ_k · (r orthonormal rows), B = √σ_k · (r orthonormal
    columns), both from seeded Gaussians (QR), so ‖A‖₂ = ‖B‖₂ = √σ_k and every singular value of BA
    is σ_k, hence ‖BA‖₂ = σ_k exactly (a Gaussian pair rescaled to √σ_k each would give ‖BA‖₂ < σ_k).
    Unlike B = 0, the adapted model differs from the base model at step 0.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from gradience.rosetta.precision import eigengap, sigma_k, spectrum
from gradience.telemetry.spectral import effective_rank


def lora_scale_bound(weight: Tensor | np.ndarray, delta_norm: float, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Rule 10: ``weyl`` = σ_k/‖BA‖₂ and ``gap`` = (σ_k − σ_{k+1})/(2‖BA‖₂) for ``delta_norm`` = ‖BA‖₂."""
    s = spectrum(weight)
    _, sk = sigma_k(s, dtype)
    gap, _ = eigengap(s, dtype)
    if delta_norm <= 0:
        return {"weyl": math.inf, "gap": math.inf}
    return {"weyl": sk / delta_norm, "gap": gap / (2 * delta_norm)}


def scale_excess(weight: Tensor | np.ndarray, A: Tensor, B: Tensor, scale: float,
                 dtype: torch.dtype = torch.float32) -> float:
    """s / (σ_k(W)/‖BA‖₂) = s·‖BA‖₂/σ_k(W): how many times a scale exceeds the rule-10 bound."""
    from gradience.lora.geometry import delta_singular_values

    return scale / lora_scale_bound(weight, float(delta_singular_values(A, B, 1.0)[0]), dtype)["weyl"]


def peft_scale_excess(model: nn.Module, dtype: torch.dtype = torch.float32) -> pd.DataFrame:
    """Per PEFT LoRA module: r, scale s, ‖BA‖₂, σ_k(W), the rule-10 bound and the excess s/bound."""
    from gradience.lora.geometry import delta_singular_values, lora_adapters

    rows = []
    for ad in lora_adapters(model):
        if ad.base is None:
            continue
        ba = float(delta_singular_values(ad.A, ad.B, 1.0)[0])
        _, sk = sigma_k(spectrum(ad.base), dtype)
        bound = sk / ba if ba > 0 else math.inf
        rows.append({"module": ad.name, "r": ad.r, "scale": ad.scaling, "ba_norm": ba, "sigma_k": sk,
                     "bound": bound, "excess": ad.scaling / bound})
    return pd.DataFrame(rows, columns=["module", "r", "scale", "ba_norm", "sigma_k", "bound", "excess"])


def tail_dims(weight: Tensor | np.ndarray) -> int:
    """Rule 11: min(m, n) − ⌊erank(W)⌋."""
    s = spectrum(weight)
    return int(s.size - math.floor(effective_rank(s) + 1e-9))


def geometric_dropout(weight: Tensor | np.ndarray, rank: int | None = None) -> float:
    """Rule 13: (1 − erank/full) · (rank/full); ``rank`` defaults to :func:`tail_dims`."""
    s = spectrum(weight)
    full = s.size
    r = tail_dims(weight) if rank is None else rank
    return (1 - effective_rank(s) / full) * (r / full)


def spectral_decay_table(model: nn.Module, dtype: torch.dtype = torch.float32) -> pd.DataFrame:
    """Per linear module: σ_max, σ_k, σ_max/σ_k, erank, tail_dims (rule 11), dropout (rule 13), target (rule 12)."""
    rows = []
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(mod, nn.Linear) or not isinstance(w, Tensor) or w.is_meta:
            continue
        s = spectrum(w)
        _, sk = sigma_k(s, dtype)
        er = effective_rank(s)
        tail = int(s.size - math.floor(er + 1e-9))
        rows.append({"module": name, "sigma_max": float(s[0]), "sigma_k": sk,
                     "decay_ratio": float(s[0]) / sk if sk > 0 else math.inf, "effective_rank": er,
                     "tail_dims": tail, "dropout": (1 - er / s.size) * tail / s.size, "target": tail > 0})
    return pd.DataFrame(rows)


def select_target_modules(model: nn.Module, dtype: torch.dtype = torch.float32) -> list[str]:
    """Rule 12: names of the linear modules with tail_dims > 0."""
    table = spectral_decay_table(model, dtype)
    return table.loc[table.target, "module"].tolist() if len(table) else []


def spectral_init(weight: Tensor, r: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Rule 14: ``(A, B)`` (r × in, out × r) with ‖A‖₂ = ‖B‖₂ = √σ_k(W) and ‖BA‖₂ = σ_k(W)."""
    out_f, in_f = weight.shape
    if not 1 <= r <= min(out_f, in_f):
        raise ValueError(f"r must be in 1..min(out, in) = {min(out_f, in_f)}, got {r}")
    root = math.sqrt(sigma_k(spectrum(weight), dtype)[1])
    g = torch.Generator().manual_seed(seed)
    qa = torch.linalg.qr(torch.randn(in_f, r, generator=g, dtype=torch.float64))[0]
    qb = torch.linalg.qr(torch.randn(out_f, r, generator=g, dtype=torch.float64))[0]
    return (root * qa.T).to(weight.dtype), (root * qb).to(weight.dtype)


def scale_claim_summary(excess: pd.Series | np.ndarray | list[float], lower: float = 22.0) -> dict[str, float]:
    """The document's checkable claim on measured excess factors (rule 10): common scales are 22–2700×
    over the bound. ``fraction_over`` = share of modules over the bound (excess > 1),
    ``fraction_over_lower`` = share at or above ``lower`` (22: the document's smallest factor)."""
    e = np.asarray(excess, dtype=np.float64)
    e = e[np.isfinite(e)]
    if not e.size:
        return {"n": 0.0, "min": math.nan, "median": math.nan, "max": math.nan,
                "fraction_over": math.nan, "fraction_over_lower": math.nan}
    return {"n": float(e.size), "min": float(e.min()), "median": float(np.median(e)), "max": float(e.max()),
            "fraction_over": float((e > 1).mean()), "fraction_over_lower": float((e >= lower).mean())}
