"""Fisher geometry of a cross-entropy classifier from per-sample gradients (telemetry contract: docs/architecture.md).

Per-sample gradients come from ``torch.func`` (``vmap(grad(·))``); the rest is linear algebra on
the n × n Gram matrix, so no P × P matrix is ever formed. With G the n × P matrix of per-sample
gradients (row i = ∇ℓ_i) and F = GᵀG / n:

- K = GGᵀ / n (float64) has the same non-zero eigenvalues as F; tr F = tr K, tr F² = ‖K‖_F².
- (F + λI)⁻¹∇L is applied with the Woodbury identity from the eigendecomposition of K
  (:func:`natural_gradient_alignment`, in all of parameter space).
- F has rank ≤ n ≪ P, so outside its span (the row space of G) F⁻¹ is only the damping 1/λ and
  the full-space alignment mostly measures how much of ∇L lies outside the span.
  :func:`span_alignment` works *inside* the span: it projects ∇L onto it (∇L_F = P_F ∇L) and gives
  cos(∇L_F, F⁺∇L_F) (pseudo-inverse; optionally damped, (F + λI)⁻¹ restricted to the span) and
  the fraction ‖∇L_F‖² / ‖∇L‖² of the gradient that lies there.
- :func:`subspace_share`: the share of tr F (or of any set of directions) inside the span of
  given weight matrices' top singular pairs, e.g. those of the current weights or of the initial
  weights W₀ (the null for Fisher–weight alignment).

Two Fishers (the ``kind`` argument):

- ``"empirical"``: gradients of the loss at the *true* labels. It is known to mislead as a
  curvature or natural-gradient proxy (Kunstner, Balles & Hennig 2019, "Limitations of the
  empirical Fisher approximation"): its ∇L lies in the row space of G by construction.
- ``"true"``: gradients at labels *sampled* from the model's predictive distribution (one seeded
  sample per target), an unbiased Monte-Carlo estimate of the Fisher information.

Report both. A "sample" is one row of the batch: for sequence models (logits ``[n, T, V]``,
targets ``[n, T]``) its loss is the mean cross-entropy over its targets that are not ``-100``
(a row with none has loss 0), and the batch loss L is the mean of the per-sample losses, so
∇L is the mean row of the empirical G. This differs from a token-mean loss when rows hold
different numbers of targets. Models must be ``vmap``-able (no BatchNorm in train mode); written
here because curvlinops' Fisher operators are P × P operators, not the Gram-trick spectra needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from gradience.telemetry.curvature import Batch, flatten, trainable_params

Kind = Literal["empirical", "true"]
KINDS: tuple[str, ...] = ("empirical", "true")
IGNORE = -100


def per_sample_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of each row over its non-ignored targets, shape ``[n]``."""
    n = targets.shape[0]
    token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                            ignore_index=IGNORE, reduction="none").reshape(n, -1)
    count = (targets.reshape(n, -1) != IGNORE).sum(1).clamp(min=1)
    return token.sum(1) / count


def _logits(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    with sdpa_kernel(SDPBackend.MATH):  # a composite attention that vmap and grad both handle
        return torch.func.functional_call(model, params, (x,))


def per_sample_grads(model: nn.Module, batch: Batch, chunk_size: int | None = None) -> Tensor:
    """G, ``[n, P]``: row i the gradient of sample i's loss w.r.t. the trainable parameters."""
    params = trainable_params(model)

    def sample_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return per_sample_losses(_logits(model, p, x.unsqueeze(0)), y.unsqueeze(0))[0]

    grads = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0),
                            chunk_size=chunk_size)(params, *batch)
    return torch.cat([g.reshape(batch[1].shape[0], -1) for g in grads.values()], dim=1)


def batch_grad(model: nn.Module, batch: Batch) -> Tensor:
    """∇L, flat: the gradient of the mean per-sample loss at the true labels."""
    def loss(p: dict[str, Tensor]) -> Tensor:
        return per_sample_losses(_logits(model, p, batch[0]), batch[1]).mean()

    return flatten(torch.func.grad(loss)(trainable_params(model)))


@torch.no_grad()
def sample_labels(model: nn.Module, batch: Batch, seed: int = 0) -> Tensor:
    """Targets drawn from the model's predictive distribution; ``-100`` positions are kept."""
    x, y = batch
    logits = model(x)
    gen = torch.Generator(device=logits.device).manual_seed(seed)
    probs = torch.softmax(logits.double(), -1).reshape(-1, logits.shape[-1])
    drawn = torch.multinomial(probs, 1, generator=gen).reshape(y.shape)
    return torch.where(y == IGNORE, y, drawn)


def fisher_gradients(
    model: nn.Module, batch: Batch, kind: Kind = "empirical", seed: int = 0,
    chunk_size: int | None = None,
) -> Tensor:
    """G for the ``kind`` of Fisher: per-sample gradients at true or model-sampled labels."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    if kind == "true":
        batch = (batch[0], sample_labels(model, batch, seed))
    return per_sample_grads(model, batch, chunk_size)


def gram(G: Tensor) -> Tensor:
    """K = GGᵀ / n in float64."""
    G = G.double()
    return G @ G.T / G.shape[0]


def fisher_spectrum(G: Tensor, k: int = 10) -> dict[str, float]:
    """Top-``min(k, n)`` eigenvalues of F = GᵀG/n (``fisher_top1``…), tr F and tr F², via K."""
    K = gram(G)
    top = torch.linalg.eigvalsh(K).flip(0)[:k]
    return ({f"fisher_top{i + 1}": float(v) for i, v in enumerate(top)}
            | {"fisher_trace": float(K.trace()), "fisher_trace_sq": float((K * K).sum())})


def _check_dampings(dampings: Sequence[float]) -> None:
    if not dampings or any(not lam > 0 for lam in dampings):
        raise ValueError(f"dampings={tuple(dampings)} must be a non-empty sequence of values > 0")


def natural_gradient_alignment(
    G: Tensor, grad: Tensor, dampings: Sequence[float]
) -> dict[float, float]:
    """cos(∇L, (F + λI)⁻¹∇L) for each damping λ > 0, F = GᵀG/n, without a P × P matrix.

    With A = G/√n, K = AAᵀ = U diag(s) Uᵀ and V = AᵀUS^{-1/2} (orthonormal), split
    ∇L = Vw + r with w = S^{-1/2}UᵀA∇L and r ⊥ rows of A. Woodbury gives
    (F + λI)⁻¹∇L = V diag(1/(s+λ)) w + r/λ, so
    ⟨∇L, x⟩ = Σ w²/(s+λ) + ‖r‖²/λ and ‖x‖² = Σ w²/(s+λ)² + ‖r‖²/λ²: sums of positive
    terms, no cancellation. Eigenvalues below ``n·eps·s_max`` count as 0 (their part goes in r).
    """
    _check_dampings(dampings)
    A = G.double() / math.sqrt(G.shape[0])
    g = grad.double()
    s, U = torch.linalg.eigh(A @ A.T)
    keep = s > s.max().clamp(min=0) * A.shape[0] * torch.finfo(torch.float64).eps
    s, U = s[keep], U[:, keep]
    beta = U.T @ (A @ g)
    w2 = beta**2 / s
    r = g - A.T @ (U @ (beta / s))
    r2, g_norm = float(r @ r), float(g.norm())
    out = {}
    for lam in dampings:
        inner = float((w2 / (s + lam)).sum()) + r2 / lam
        x_norm = math.sqrt(float((w2 / (s + lam) ** 2).sum()) + r2 / lam**2)
        out[lam] = inner / (g_norm * x_norm)
    return out


def span_cutoff(G: Tensor) -> float:
    """Relative eigenvalue cutoff of K = GGᵀ/n for the numerical row space of G: singular values
    of G below ``max(n, P)·eps(G.dtype)·σ_max`` count as zero (the default of ``pinv``), i.e.
    eigenvalues of K below that ratio squared times its largest one."""
    return (max(G.shape) * torch.finfo(G.dtype).eps) ** 2


def span_alignment(G: Tensor, grad: Tensor, dampings: Sequence[float] = (0.0,)) -> dict[str, float]:
    """Natural-gradient alignment inside the span of F = GᵀG/n, without a P × P matrix.

    With K = GGᵀ/n = U diag(s) Uᵀ (s above :func:`span_cutoff`), F = V diag(s) Vᵀ with the
    orthonormal V = GᵀU (n s)^{-1/2}; ∇L_F = V w, w = Vᵀ∇L, is the projection of ∇L onto the span.
    Returns ``span_fraction`` = ‖w‖² / ‖∇L‖² and, for each damping λ ≥ 0 (absolute; 0 is the
    pseudo-inverse F⁺), ``cos@{λ}`` = cos(∇L_F, V diag(1/(s+λ)) w) = Σ w²/(s+λ) /
    (‖w‖ · (Σ w²/(s+λ)²)^{1/2}) — every term positive, so no cancellation.
    """
    if not dampings or any(not lam >= 0 for lam in dampings):
        raise ValueError(f"dampings={tuple(dampings)} must be a non-empty sequence of values ≥ 0")
    n = G.shape[0]
    K = gram(G)
    s, U = torch.linalg.eigh(K)
    keep = s > s.max().clamp(min=0) * span_cutoff(G)
    s, U = s[keep], U[:, keep]
    g = grad.to(G.device).double()
    w = (U.T @ (G.double() @ g)) / torch.sqrt(n * s)
    w2, g2 = w**2, float(g @ g)
    out = {"span_fraction": float(w2.sum()) / g2 if g2 > 0 else math.nan}
    for lam in dampings:
        d = s + lam
        out[f"cos@{lam:g}"] = float((w2 / d).sum()) / math.sqrt(float(w2.sum()) * float((w2 / d**2).sum()))
    return out


def subspace_share(G: Tensor, layout: Sequence[tuple[str, torch.Size]], weights: dict[str, Tensor],
                   rank: int = 1) -> dict[str, tuple[float, float, float]]:
    """For each 2-D matrix W of ``weights``: how much of the rows of G, restricted to W's block,
    lies in span{u_i v_jᵀ : i, j ≤ r} of W's top-r singular pairs.

    ``layout``: (name, shape) of every trainable parameter in the order of G's columns (as
    :func:`per_sample_grads` concatenates them); ``weights``: the matrices whose singular vectors
    define the subspaces (the current weights, or W₀). Returns name → (inside, energy, chance):
    inside = Σ_s ‖U_rᵀ G_s,W V_r‖_F², energy = Σ_s ‖G_s,W‖_F², chance = r²/(mn) · energy (the
    expectation for a random direction). With G the per-sample gradients, inside/n = tr(P_W F);
    with G = vᵀ, the share of the direction v's energy.
    """
    sizes = [math.prod(shape) for _, shape in layout]
    blocks = dict(zip([name for name, _ in layout], G.double().split(sizes, dim=1), strict=True))
    out = {}
    for name, W in weights.items():
        if W.ndim != 2:
            raise ValueError(f"weights[{name!r}] must be a matrix, got shape {tuple(W.shape)}")
        B = blocks[name].reshape(-1, *W.shape)
        U, _, Vh = torch.linalg.svd(W.detach().double(), full_matrices=False)
        r = min(rank, *W.shape)
        e = float((B * B).sum())
        out[name] = (float(((U[:, :r].T @ B @ Vh[:r].T) ** 2).sum()), e, r * r / W.numel() * e)
    return out


def fisher_metrics(
    model: nn.Module,
    batch: Batch,
    kind: Kind = "empirical",
    dampings: Sequence[float] = (1e-3, 1e-2, 1e-1),
    k: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Flat telemetry dict for one ``kind`` of Fisher on ``batch``: :func:`fisher_spectrum` keys
    and ``ng_alignment@{λ:.0e}`` per damping; ∇L is always at the true labels."""
    _check_dampings(dampings)
    G = fisher_gradients(model, batch, kind, seed)
    align = natural_gradient_alignment(G, batch_grad(model, batch), dampings)
    return fisher_spectrum(G, k) | {f"ng_alignment@{lam:.0e}": v for lam, v in align.items()}
