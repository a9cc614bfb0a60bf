"""Curvature and Fisher probes for :func:`gradience.training.train` (``probes=[...]``).

A probe is built once per run around a fixed, stated *measurement batch* and is called at every
cadence step with a :class:`~gradience.training.StepContext`; it returns ``(scope, metric, value)``
triples. The estimators themselves live in :mod:`gradience.telemetry.curvature` and
:mod:`gradience.telemetry.fisher`; this module only schedules them, adds the derived quantities
below, and turns a failed measurement (non-finite HVPs after a blow-up) into ``nan`` values.

Conventions (all at scope ``model`` unless stated):

* Hessian: ``hessian_top1..k`` (ARPACK Lanczos, largest algebraic), ``hessian_trace`` and
  ``hessian_trace_stderr`` (Hutchinson, Rademacher probes), ``hessian_lambda_max``,
  ``edge_2_over_lr`` = 2/η and ``sharpness_over_edge`` = λ_max·η/2 at the learning rate of the
  next update, ``hessian_n_hvp`` (HVPs spent). Lanczos start vector and Hutchinson probes use the
  same ``seed`` at every step, so the estimates are a deterministic function of θ and their
  changes over time are changes of the model, not of the probe draw.
* Fisher, for each ``kind`` (``emp`` = empirical, labels observed; ``true`` = labels sampled from
  the model, seed ``seed + step``), metric names prefixed ``{kind}_``: ``fisher_top1..k``,
  ``fisher_trace``, ``fisher_trace_sq``, ``ng_alignment@δ`` = cos(∇L, (F+λI)⁻¹∇L) at the
  *relative* damping λ = δ·λ₁(F) (∇L at the observed labels; relative so that the number keeps its
  meaning while the Fisher's scale changes by decades over training), and derived
  ``fisher_eff_dim`` = (tr F)² / tr F² (participation ratio of the spectrum),
  ``fisher_kappa_k`` = λ₁/λ_k (F has rank ≤ n, so its full condition number is infinite),
  ``fisher_alpha``: the power-law exponent of √λ_i ∝ i^-α over the non-zero eigenvalues (the
  singular values of G/√n, fitted like the weights' ``alpha``, so the two exponents compare).
* Top-direction overlap of F's leading eigenvector v (unit, in parameter space) with the weights:
  for a weight matrix W = U Σ Vᵀ and the block B of v that belongs to W,
  ``fisher_overlap`` (scope = the parameter name) = ‖U_rᵀ B V_r‖_F² / ‖B‖_F², the share of v's
  energy in W that lies in the span of W's top-r singular pairs {u_i v_jᵀ}; a random direction
  gives r²/(mn) in expectation. At scope ``model``: ``fisher_overlap`` = Σ_W ‖U_rᵀ B V_r‖² /
  Σ_W ‖B‖², ``fisher_overlap_chance`` = Σ_W (r²/(m_W n_W))‖B‖² / Σ_W ‖B‖², and
  ``fisher_overlap_enrichment`` = their ratio (1 = no alignment beyond chance). Energy of v in
  1-D parameters (norm gains) is left out of both sums.
* Subspace share (all of F, not only its top direction, so it does not jump when near-degenerate
  top eigenvalues swap): ``fisher_share`` (scope = parameter name) = tr(P_W F) / tr(F_W), the part
  of the Fisher's trace within W that lies in span{u_i v_jᵀ : i, j ≤ r}; at scope ``model`` summed
  over matrices, with ``fisher_share_chance`` (r²/(mn) per matrix, trace-weighted) and
  ``fisher_share_enrichment`` = share / chance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError
from torch import Tensor, nn

from gradience.tasks import Split
from gradience.telemetry import curvature, fisher
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.telemetry.spectral import power_law_alpha
from gradience.training import Probe, StepContext

Triple = tuple[str, str, float]
FISHER_KIND_PREFIX = {"empirical": "emp", "true": "true"}


def measurement_batch(split: Split, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` training rows (all of them when ``n`` is 0 or ≥ the split size)."""
    n = split.x_train.shape[0] if n <= 0 else min(n, split.x_train.shape[0])
    return split.x_train[:n], split.y_train[:n]


def _model_triples(values: dict[str, float]) -> list[Triple]:
    return [(MODEL_SCOPE, k, float(v)) for k, v in values.items()]


def hessian_values(model: nn.Module, batch: tuple[Tensor, Tensor], lr: float, k: int = 10,
                   n_probes: int = 100, tol: float = 1e-3, seed: int = 0) -> dict[str, float]:
    """Top-k Lanczos eigenvalues, Hutchinson trace ± stderr and sharpness vs 2/η on ``batch``."""
    loss_fn, theta = curvature.make_loss_fn(model, batch)
    op = curvature.hessian_operator(loss_fn, theta)
    try:
        top = curvature.lanczos_top_eigenvalues(op, k=k, tol=tol, seed=seed).values
        failed = not np.all(np.isfinite(top))
    except ArpackError:  # non-finite HVPs (a blown-up model) break the Arnoldi factorisation
        top, failed = np.full(k, math.nan), True
    trace = curvature.hutchinson_trace(curvature.hvp_fn(loss_fn, theta), theta.numel(), n_probes,
                                       seed, theta.dtype, theta.device)
    return ({f"hessian_top{i + 1}": float(v) for i, v in enumerate(top)}
            | {"hessian_trace": trace.mean, "hessian_trace_stderr": trace.stderr}
            | curvature.sharpness_vs_edge(float(top[0]), lr)
            | {"hessian_n_hvp": float(op.n_matvec + n_probes), "hessian_failed": float(failed)})


def hessian_probe(measure: int = 0, k: int = 10, n_probes: int = 100, tol: float = 1e-3,
                  seed: int = 0) -> Probe:
    """A probe logging :func:`hessian_values` at every cadence step on the fixed batch
    :func:`measurement_batch` ``(split, measure)`` (on the split's device)."""
    def probe(ctx: StepContext) -> Iterable[Triple]:
        batch = measurement_batch(ctx.split, measure)
        return _model_triples(hessian_values(ctx.model, batch, ctx.lr, k, n_probes, tol, seed))

    return probe


def fisher_eigensystem(G: Tensor) -> tuple[np.ndarray, Tensor]:
    """Non-zero eigenvalues (descending) of F = GᵀG/n and their unit eigenvectors, ``[P, r]``.

    From K = GGᵀ/n = U diag(s) Uᵀ: v_i = Gᵀu_i / √(n s_i). Eigenvalues at or below
    ``n·eps·s_max`` count as zero and are dropped.
    """
    K = fisher.gram(G)
    s, U = torch.linalg.eigh(K)
    s, U = s.flip(0), U.flip(1)
    keep = s > s[0].clamp(min=0) * K.shape[0] * torch.finfo(torch.float64).eps
    s, U = s[keep], U[:, keep]
    V = G.double().T @ U / torch.sqrt(G.shape[0] * s)
    return s.cpu().numpy(), V


def direction_overlaps(model: nn.Module, v: Tensor, rank: int = 1) -> list[Triple]:
    """Per-matrix and model-level top-direction overlap of the flat direction ``v`` (see module)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in model.parameters() if p.requires_grad]
    blocks = dict(zip(names, v.split([math.prod(s) for s in shapes]), strict=True))
    out, inside, energy, chance = [], 0.0, 0.0, 0.0
    for name, param in model.named_parameters():
        if not param.requires_grad or param.ndim != 2:
            continue
        B = blocks[name].reshape(param.shape).double()
        U, _, Vh = torch.linalg.svd(param.detach().double(), full_matrices=False)
        r = min(rank, *param.shape)
        e = float((B * B).sum())
        part = float(((U[:, :r].T @ B @ Vh[:r].T) ** 2).sum())
        out.append((name, "fisher_overlap", part / e if e > 0 else math.nan))
        inside, energy = inside + part, energy + e
        chance += r * r / param.numel() * e
    if energy > 0:
        out += _model_triples({"fisher_overlap": inside / energy, "fisher_overlap_chance": chance / energy,
                               "fisher_overlap_enrichment": inside / chance})
    return out


def subspace_shares(model: nn.Module, G: Tensor, rank: int = 1) -> list[Triple]:
    """Share of the Fisher's trace inside each weight matrix's top singular subspace (see module).

    For F = GᵀG/n and the projector P_W onto span{u_i v_jᵀ : i, j ≤ r} of W:
    tr(P_W F) = (1/n) Σ_s ‖U_rᵀ G_s,W V_r‖_F², G_s,W the block of sample s's gradient in W.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in model.parameters() if p.requires_grad]
    blocks = dict(zip(names, G.double().split([math.prod(s) for s in shapes], dim=1), strict=True))
    out, inside, energy, chance = [], 0.0, 0.0, 0.0
    for name, param in model.named_parameters():
        if not param.requires_grad or param.ndim != 2:
            continue
        B = blocks[name].reshape(-1, *param.shape)
        U, _, Vh = torch.linalg.svd(param.detach().double(), full_matrices=False)
        r = min(rank, *param.shape)
        e = float((B * B).sum())
        part = float(((U[:, :r].T @ B @ Vh[:r].T) ** 2).sum())
        out.append((name, "fisher_share", part / e if e > 0 else math.nan))
        inside, energy = inside + part, energy + e
        chance += r * r / param.numel() * e
    if energy > 0:
        out += _model_triples({"fisher_share": inside / energy, "fisher_share_chance": chance / energy,
                               "fisher_share_enrichment": inside / chance})
    return out


def fisher_values(model: nn.Module, batch: tuple[Tensor, Tensor], kind: str, k: int = 10,
                  dampings: Sequence[float] = (1e-3, 1e-2, 1e-1), overlap_rank: int = 1,
                  seed: int = 0) -> list[Triple]:
    """One kind of Fisher on ``batch``: spectrum, NG alignment, derived shape metrics, overlaps."""
    prefix = FISHER_KIND_PREFIX[kind]
    G = fisher.fisher_gradients(model, batch, kind, seed)  # type: ignore[arg-type]
    grad = fisher.batch_grad(model, batch)
    spectrum = fisher.fisher_spectrum(G, k)
    s, V = fisher_eigensystem(G)
    align = fisher.natural_gradient_alignment(G, grad, [d * float(s[0]) for d in dampings])
    kk = min(k, s.size)
    derived = {
        "fisher_eff_dim": spectrum["fisher_trace"] ** 2 / spectrum["fisher_trace_sq"],
        "fisher_kappa_k": float(s[0] / s[kk - 1]),
        "fisher_alpha": power_law_alpha(np.sqrt(s)),
    }
    values = spectrum | derived | {f"ng_alignment@{d:.0e}": a for d, a in zip(dampings, align.values(), strict=True)}
    overlaps = direction_overlaps(model, V[:, 0].float(), overlap_rank) + subspace_shares(model, G, overlap_rank)
    return ([(MODEL_SCOPE, f"{prefix}_{m}", float(x)) for m, x in values.items()]
            + [(scope, f"{prefix}_{m}", x) for scope, m, x in overlaps])


def fisher_probe(measure: int = 0, kinds: Sequence[str] = ("empirical", "true"), k: int = 10,
                 dampings: Sequence[float] = (1e-3, 1e-2, 1e-1), overlap_rank: int = 1,
                 seed: int = 0) -> Probe:
    """A probe logging :func:`fisher_values` for each Fisher ``kind`` on the fixed batch
    :func:`measurement_batch` ``(split, measure)``.

    The sampled ("true") Fisher draws its labels with seed ``seed + step``.
    """
    def probe(ctx: StepContext) -> Iterable[Triple]:
        batch = measurement_batch(ctx.split, measure)
        out: list[Triple] = []
        for kind in kinds:
            out += fisher_values(ctx.model, batch, kind, k, dampings, overlap_rank, seed + ctx.step)
        return out

    return probe
