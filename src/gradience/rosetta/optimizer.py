"""Rules 1–9 of the Rosetta Stone: step size, Adam ε, momentum replacement, weight decay, clipping,
warm-up, schedule, batch size and stopping. σ_k and the constants: :mod:`gradience.rosetta.precision`.

Readings chosen where the document is not precise:

1. **Step size** η = clamp(min(η_ceiling, η_sps, η_weyl), ε, 1/√ε) (the constants table's LR bounds):
   η_ceiling = 2/λ_max(H), the stability limit of gradient descent on a quadratic with top Hessian
   eigenvalue λ_max (Nesterov 2004; the edge of stability); η_sps = (L − L*)/‖g‖², Polyak's step
   (Polyak 1987; SPS of Loizou et al. 2021 with c = 1), L* = 0 by default (the infimum of
   cross-entropy); η_weyl = min over 2-D weights of σ_k(W)/‖D_W‖₂ with D_W the update per unit step
   (the gradient for SGD): by Weyl's inequality |σ_i(W − ηD) − σ_i(W)| ≤ η‖D‖₂, so this is the
   largest step that cannot move any singular value by more than the spectral budget σ_k.
2. **Adam ε** per weight = max(σ_k², √ε·σ_max²).
3. **β₁, β₂** are replaced (superseded chain): ScaledGD's preconditioned factor gradients
   (Tong, Ma & Chi 2021) and the Cayley retraction onto the Stiefel manifold (Wen & Yin 2013),
   which is what "Cayley–Stiefel retraction" names.
4. **Weight decay** per weight = λ₀ · σ_k/σ_max (the document gives the scale; λ₀ is the base decay).
5. **Gradient clipping** is removed: no clipping, and the budget monitor (:func:`budget_ratio`) halts.
6, 7. **Warm-up** is removed and the schedule is optional: :func:`lr_multiplier` is 1 from step 0, or
   a cosine decay without warm-up.
8. **Batch size**: B_crit = B_simple = tr Σ / ‖G‖² (McCandlish et al. 2018, eq. 2.8), the estimator of
   :mod:`gradience.telemetry.gradients` (the document's Var(g)/‖E[g]‖² is the same quantity).
9. **Stopping**: stop when the loss is below √ε (the summary table), or the loss changed by less than
   √ε since the previous measurement (the derivation's "loss change below √ε"), or the budget ratio
   ‖ΔW‖₂/σ_k(W₀) of any weight exceeds 0.9 (ΔW the total update applied to W₀, s·BA for LoRA).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gradience.rosetta.precision import precision_constants, sigma_k, spectrum
from gradience.telemetry import curvature
from gradience.telemetry.gradients import noise_scale, noise_scale_of_model

BUDGET_THRESHOLD = 0.9


def ceiling_step(lambda_max: float) -> float:
    """2/λ_max (inf when λ_max ≤ 0: no curvature limit)."""
    return 2.0 / lambda_max if lambda_max > 0 else math.inf


def polyak_step(loss: float, grad_sq: float, loss_floor: float = 0.0) -> float:
    """(L − L*)/‖g‖²; inf for a zero gradient, 0 at or below the floor."""
    if grad_sq <= 0:
        return math.inf
    return max(loss - loss_floor, 0.0) / grad_sq


def weyl_step(pairs: Iterable[tuple[Tensor, Tensor]], dtype: torch.dtype = torch.float32) -> float:
    """min over (W, D) of σ_k(W)/‖D‖₂ (inf when every D is 0)."""
    out = math.inf
    for w, d in pairs:
        d2 = float(spectrum(d)[0])
        if d2 > 0:
            out = min(out, sigma_k(spectrum(w), dtype)[1] / d2)
    return out


@dataclass(frozen=True)
class StepSize:
    ceiling: float
    sps: float
    weyl: float
    step: float
    binding: str  # which term (or bound) set the step


def mass_step(ceiling: float, sps: float, weyl: float, dtype: torch.dtype = torch.float32) -> StepSize:
    """min(η_ceiling, η_sps, η_weyl) clamped to the dtype's [ε, 1/√ε]."""
    c = precision_constants(dtype)
    terms = {"ceiling": ceiling, "sps": sps, "weyl": weyl}
    name = min(terms, key=terms.get)
    step = terms[name]
    if step < c.lr_min:
        step, name = c.lr_min, "lr_min"
    elif step > c.lr_max:
        step, name = c.lr_max, "lr_max"
    return StepSize(ceiling, sps, weyl, step, name)


def mass_step_size(model: nn.Module, batch: tuple[Tensor, Tensor],
                   loss_of_logits: Callable[[Tensor, Tensor], Tensor] = curvature.cross_entropy,
                   loss_floor: float = 0.0, lanczos_tol: float = 1e-4, dtype: torch.dtype | None = None) -> StepSize:
    """Rule 1 on ``batch`` for the model's trainable parameters (plain gradient step, D = ∇L)."""
    loss_fn, theta = curvature.make_loss_fn(model, batch, loss_of_logits)
    theta = theta.detach()
    loss, grad = torch.func.grad_and_value(loss_fn)(theta)[::-1]
    lam = curvature.lanczos_top_eigenvalues(curvature.hessian_operator(loss_fn, theta), k=1, tol=lanczos_tol)
    grads = curvature.unflattener(curvature.trainable_params(model))(grad)
    params = dict(model.named_parameters())
    pairs = [(params[n].detach(), g) for n, g in grads.items() if g.ndim == 2]
    dt = dtype or theta.dtype
    return mass_step(ceiling_step(float(lam.values[0])), polyak_step(float(loss), float(grad @ grad), loss_floor),
                     weyl_step(pairs, dt), dt)


def adam_epsilon(weight: Tensor | np.ndarray, dtype: torch.dtype = torch.float32) -> float:
    """Rule 2: max(σ_k², √ε·σ_max²)."""
    s = spectrum(weight)
    return max(sigma_k(s, dtype)[1] ** 2, precision_constants(dtype).sqrt_eps * float(s[0]) ** 2)


def scaled_gd_directions(A: Tensor, B: Tensor, grad_A: Tensor, grad_B: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Rule 3 (historical): ScaledGD for ΔW = B A (A: r × in, B: out × r), preconditioning each
    factor's gradient by the other factor's Gram matrix: ∇_B (AAᵀ + εI)⁻¹ and (BᵀB + εI)⁻¹ ∇_A.

    The document writes ``grad_A @ (B Bᵀ + εI)⁻¹`` in the other factor convention (X = AB); this is
    the same rule for PEFT's B @ A."""
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    dB = torch.linalg.solve(A @ A.T + eps * eye, grad_B.T).T
    dA = torch.linalg.solve(B.T @ B + eps * eye, grad_A)
    return dA, dB


def cayley_retraction(X: Tensor, grad: Tensor, tau: float) -> Tensor:
    """Rule 3 (active): one Cayley step on the Stiefel manifold {X : XᵀX = I} (Wen & Yin 2013):
    Y = (I + τ/2 W)⁻¹ (I − τ/2 W) X with the skew-symmetric W = G Xᵀ − X Gᵀ. Y stays orthonormal."""
    W = grad @ X.T - X @ grad.T
    eye = torch.eye(X.shape[0], dtype=X.dtype, device=X.device)
    return torch.linalg.solve(eye + tau / 2 * W, (eye - tau / 2 * W) @ X)


def decay_scale(weight: Tensor | np.ndarray, dtype: torch.dtype = torch.float32) -> float:
    """Rule 4: σ_k/σ_max ∈ [√ε, 1]."""
    s = spectrum(weight)
    return sigma_k(s, dtype)[1] / float(s[0]) if s[0] > 0 else math.nan


def weight_decays(model: nn.Module, base: float, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Rule 4 per trainable 2-D weight: base · σ_k/σ_max."""
    return {n: base * decay_scale(p, dtype) for n, p in model.named_parameters() if p.requires_grad and p.ndim == 2}


def budget_ratio(base: Tensor, delta: Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Rules 5 and 9: ‖ΔW‖₂ / σ_k(W₀) (inf when σ_k = 0)."""
    sk = sigma_k(spectrum(base), dtype)[1]
    d2 = float(spectrum(delta)[0])
    return d2 / sk if sk > 0 else math.inf


def lr_multiplier(step: int, total_steps: int, cosine: bool = False) -> float:
    """Rules 6 and 7: 1 from step 0 (no warm-up); optional cosine decay to 0 at ``total_steps``."""
    if not cosine:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def critical_batch_size(per_example: Tensor | None = None, *, model: nn.Module | None = None,
                        x: Tensor | None = None, y: Tensor | None = None) -> float:
    """Rule 8: B_simple = tr Σ / ‖G‖², from an ``[n, p]`` per-example gradient matrix or from a model on
    examples ``x, y`` (:mod:`gradience.telemetry.gradients`: unbiased ‖G‖², ``nan`` below the noise)."""
    if per_example is not None:
        return noise_scale(per_example).b_simple
    if model is None or x is None or y is None:
        raise ValueError("critical_batch_size needs per_example, or model, x and y")
    return noise_scale_of_model(model, x, y).b_simple


def should_stop(losses: Sequence[float], budget_ratios: Iterable[float] = (),
                dtype: torch.dtype = torch.float32) -> tuple[bool, str]:
    """Rule 9 on the measured loss history and the current budget ratios: ``(stop, reason)``."""
    root = precision_constants(dtype).sqrt_eps
    ratios = np.asarray(list(budget_ratios), dtype=np.float64)
    if ratios.size and float(ratios.max()) > BUDGET_THRESHOLD:
        return True, "budget_exhausted"
    if losses and losses[-1] < root:
        return True, "loss_below_sqrt_eps"
    if len(losses) >= 2 and abs(losses[-1] - losses[-2]) < root:
        return True, "loss_stable"
    return False, ""
