"""Shared pieces of the curvature and Fisher probes of the LM-regime studies.

The probes themselves are built by the studies (``studies/hessian_coevolution/runs.py``,
``studies/fisher_geometry/runs.py``) around a fixed, stated *measurement batch*; the estimators live in
:mod:`gradience.telemetry.curvature` and :mod:`gradience.telemetry.fisher`. Here:

* :func:`measurement_batch`: the fixed batch every measurement of a run uses.
* :func:`hessian_values`: ``hessian_top1..k`` (ARPACK Lanczos, largest algebraic),
  ``hessian_trace`` and ``hessian_trace_stderr`` (Hutchinson, Rademacher probes),
  ``hessian_lambda_max``, ``edge_2_over_lr`` = 2/η and ``sharpness_over_edge`` = λ_max·η/2 at the
  learning rate of the next update, ``hessian_n_hvp`` (HVPs spent). Lanczos start vector and
  Hutchinson probes use the same ``seed`` at every step, so the estimates are a deterministic
  function of θ; a failed measurement (non-finite HVPs after a blow-up) gives ``nan`` values.
* :func:`fisher_eigensystem`: the non-zero eigenpairs of F = GᵀG/n from the n × n Gram matrix.
* ``FISHER_KIND_PREFIX``: metric-name prefixes ``emp_`` (labels observed) and ``true_`` (labels
  sampled from the model).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError
from torch import Tensor, nn

from gradience.tasks import Split
from gradience.telemetry import curvature, fisher

FISHER_KIND_PREFIX = {"empirical": "emp", "true": "true"}


def measurement_batch(split: Split, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` training rows (all of them when ``n`` is 0 or ≥ the split size)."""
    n = split.x_train.shape[0] if n <= 0 else min(n, split.x_train.shape[0])
    return split.x_train[:n], split.y_train[:n]


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
