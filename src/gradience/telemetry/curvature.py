"""Hessian of the loss on a fixed batch: HVPs, top eigenvalues, trace, sharpness (telemetry contract: docs/architecture.md).

Everything is a function of the flat vector θ of the model's *trainable* parameters on one stated
batch ``(x, y)``; buffers and frozen parameters are taken from the model as they are. Call the
model in ``eval()`` mode if it has dropout, otherwise the "Hessian" is of a random function.

What comes from libraries and what is written here:

- HVPs are ``torch.func`` transforms of ``grad(f)``: :func:`hvp` is forward-over-reverse, the
  operators use the faster cached reverse-over-reverse (:func:`hvp_fn`). Top eigenvalues are
  scipy's ARPACK Lanczos (``eigsh``) on a scipy ``LinearOperator``. The operator wrapper is a few lines
  written here (rather than curvlinops' ``HessianLinearOperator``, which needs a loss *module* with a
  ``reduction`` attribute) so that any loss function of the logits works on the fixed batch,
  and so that it counts HVPs for the benchmark. curvlinops is the reference it is tested against:
  ``tests/test_references.py`` checks HVPs and the top-5 eigenvalues against
  ``HessianLinearOperator`` + ``eigsh`` on a small MLP (agreement to 1e-9, measured 3e-15).
- :func:`hutchinson_trace` is written here because the telemetry needs the per-probe samples and
  the standard error, which library trace estimators do not return.
- :func:`power_iteration_deflation` re-implements PyHessian's ``eigenvalues`` (power iteration,
  deflation against found eigenvectors, relative-change stopping) as the benchmark baseline; it is
  not meant for telemetry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

Batch = tuple[Tensor, Tensor]
LossOfLogits = Callable[[Tensor, Tensor], Tensor]
FlatLoss = Callable[[Tensor], Tensor]
HVP = Callable[[Tensor], Tensor]
HVPMethod = Literal["reverse", "forward"]
HVP_METHODS: tuple[str, ...] = ("reverse", "forward")


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy, classes on the last dim; targets ``-100`` are ignored (token mean)."""
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-100)


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the parameters with ``requires_grad``, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def flatten(params: dict[str, Tensor]) -> Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflattener(params: dict[str, Tensor]) -> Callable[[Tensor], dict[str, Tensor]]:
    """The inverse of :func:`flatten` for parameters shaped like ``params`` (differentiable)."""
    names = list(params)
    shapes = [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]

    def unflatten(theta: Tensor) -> dict[str, Tensor]:
        return {n: t.view(s) for n, t, s in zip(names, theta.split(sizes), shapes, strict=True)}

    return unflatten


def make_loss_fn(
    model: nn.Module, batch: Batch, loss_of_logits: LossOfLogits = cross_entropy
) -> tuple[FlatLoss, Tensor]:
    """``(f, θ₀)``: ``f(θ) = loss_of_logits(model_θ(x), y)`` on the fixed ``batch``, θ₀ the current θ."""
    params = trainable_params(model)
    unflatten = unflattener(params)
    x, y = batch

    def loss_fn(theta: Tensor) -> Tensor:
        with sdpa_kernel(SDPBackend.MATH):  # fused CPU attention: no forward AD, no 2nd backward
            logits = torch.func.functional_call(model, unflatten(theta), (x,))
        return loss_of_logits(logits, y)

    return loss_fn, flatten(params)


def hvp(loss_fn: FlatLoss, theta: Tensor, v: Tensor) -> Tensor:
    """H(θ) v by forward-over-reverse: the directional derivative of ∇f along ``v``."""
    return torch.func.jvp(torch.func.grad(loss_fn), (theta,), (v,))[1]


def hvp_fn(loss_fn: FlatLoss, theta: Tensor, method: HVPMethod = "reverse") -> HVP:
    """``v ↦ H(θ) v`` at fixed θ.

    ``"reverse"`` (default): reverse-over-reverse, the pullback of ∇f (``torch.func.vjp`` of
    ``grad``) built once at θ and reused per call (H is symmetric, so vᵀH = (Hv)ᵀ); the graph of
    ∇f stays in memory while the returned function lives. ``"forward"``: eager
    forward-over-reverse :func:`hvp`, recomputing ∇f per call. On CPU (torch 2.13, a 17k-parameter
    LayerNorm MLP) the reverse form costs 2.2–3.4 training gradients per HVP and the forward form
    8–14: PyTorch's forward-mode rules for backward ops run through decompositions. Tracing the
    forward form once (``torch.func.linearize``) is no faster per HVP than ``"reverse"`` and costs
    200–2000 gradients to set up (``benchmarks/curvature.py``).
    """
    if method == "forward":
        return partial(hvp, loss_fn, theta)
    if method != "reverse":
        raise ValueError(f"method={method!r} is not one of {HVP_METHODS}")
    pullback = torch.func.vjp(torch.func.grad(loss_fn), theta)[1]
    return lambda v: pullback(v)[0]


class CountingOperator(LinearOperator):
    """A symmetric float64 scipy ``LinearOperator`` from a torch matvec; ``n_matvec`` counts calls.

    Vectors are cast to the torch ``dtype``/``device`` of the matvec and the result back to float64.
    """

    def __init__(self, matvec: HVP, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(np.float64, (dim, dim))
        self.torch_matvec, self.torch_dtype, self.device = matvec, dtype, device
        self.n_matvec = 0

    def _matvec(self, v: np.ndarray) -> np.ndarray:
        self.n_matvec += 1
        t = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), device=self.device)
        out = self.torch_matvec(t.to(self.torch_dtype))
        return out.detach().to("cpu", torch.float64).numpy()

    def _adjoint(self) -> CountingOperator:
        return self


def hessian_operator(
    loss_fn: FlatLoss, theta: Tensor, method: HVPMethod = "reverse"
) -> CountingOperator:
    """The Hessian of ``loss_fn`` at ``theta`` as a scipy ``LinearOperator`` counting its HVPs."""
    matvec = hvp_fn(loss_fn, theta, method)
    return CountingOperator(matvec, theta.numel(), theta.dtype, theta.device)


@dataclass(frozen=True)
class Eigenvalues:
    """Eigenvalues, descending, and the number of HVPs spent finding them."""

    values: np.ndarray
    n_hvp: int


def lanczos_top_eigenvalues(
    op: CountingOperator, k: int = 10, tol: float = 1e-6, ncv: int | None = None, seed: int = 0
) -> Eigenvalues:
    """Top-``k`` algebraic eigenvalues by ARPACK implicitly restarted Lanczos (``eigsh``, ``LA``).

    ``tol`` is ARPACK's: each Ritz value is accepted when its residual bound is below
    ``tol · |λ|`` (0 means machine precision). The start vector is Gaussian from ``seed``.
    """
    if not 0 < k < op.shape[0]:
        raise ValueError(f"k={k} must satisfy 0 < k < dim={op.shape[0]}")
    v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
    start = op.n_matvec
    values = eigsh(op, k=k, which="LA", tol=tol, ncv=ncv, v0=v0, return_eigenvectors=False)
    return Eigenvalues(np.sort(values)[::-1].copy(), op.n_matvec - start)


def _orthonormalise(v: Tensor, basis: list[Tensor]) -> Tensor:
    for e in basis:
        v = v - (v @ e) * e
    return v / v.norm()


def power_iteration_deflation(
    hvp: HVP, theta: Tensor, k: int = 10, tol: float = 1e-3, max_iter: int = 100, seed: int = 0
) -> Eigenvalues:
    """PyHessian's top-``k`` eigenvalues (Yao et al. 2020), written here as the benchmark baseline.

    For each eigenvalue: a random start, then power iteration ``v ← H v / ‖H v‖`` with ``v``
    re-orthogonalised against the eigenvectors already found, stopped when the Rayleigh quotient
    changes by less than ``tol`` relative (or after ``max_iter`` HVPs). It finds the largest
    eigenvalues *in magnitude*, which are the top algebraic ones only when no negative eigenvalue
    is larger in magnitude. Values are returned in the order found, which is descending.
    """
    gen = torch.Generator(device=theta.device).manual_seed(seed)
    found: list[Tensor] = []
    values: list[float] = []
    n_hvp = 0
    for _ in range(k):
        v = torch.randn(theta.shape, generator=gen, dtype=theta.dtype, device=theta.device)
        v, value = v / v.norm(), math.nan
        for _ in range(max_iter):
            v = _orthonormalise(v, found)
            hv = hvp(v)
            n_hvp += 1
            new = float(hv @ v)
            converged = abs(value - new) / (abs(value) + 1e-6) < tol
            value, v = new, hv / hv.norm()
            if converged:
                break
        values.append(value)
        found.append(v)
    return Eigenvalues(np.array(values), n_hvp)


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of tr H: the mean of ``samples`` and its standard error."""

    mean: float
    stderr: float
    samples: np.ndarray


def hutchinson_trace(
    hvp: HVP,
    dim: int,
    n_samples: int = 100,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> TraceEstimate:
    """tr H ≈ mean of zᵀHz over Rademacher probes z (Hutchinson 1989), one HVP per probe.

    The standard error is ``std(samples, ddof=1) / √n``; the exact per-probe variance is
    ``2 Σ_{i≠j} H_ij²``.
    """
    if n_samples < 2:
        raise ValueError(f"n_samples={n_samples} must be at least 2 for a standard error")
    gen = torch.Generator(device=device).manual_seed(seed)
    samples = np.empty(n_samples)
    for i in range(n_samples):
        z = torch.randint(0, 2, (dim,), generator=gen, device=device).to(dtype) * 2 - 1
        samples[i] = float(z @ hvp(z))
    return TraceEstimate(float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(n_samples)),
                         samples)


def sharpness_vs_edge(lambda_max: float, lr: float) -> dict[str, float]:
    """λ_max against the edge of stability 2/η, and their ratio λ_max·η/2.

    This is the criterion for full-batch gradient descent (Cohen et al. 2021): GD on a quadratic
    diverges along a direction whose curvature exceeds 2/η. For SGD it is an approximate upper
    reference; for Adam the relevant quantity is the preconditioned sharpness, not this one.
    """
    if not lr > 0:
        raise ValueError(f"lr={lr} must be > 0")
    return {"hessian_lambda_max": lambda_max, "edge_2_over_lr": 2.0 / lr,
            "sharpness_over_edge": lambda_max * lr / 2.0}


def hessian_metrics(
    model: nn.Module,
    batch: Batch,
    lr: float,
    k: int = 10,
    n_probes: int = 100,
    seed: int = 0,
    loss_of_logits: LossOfLogits = cross_entropy,
) -> dict[str, float]:
    """Flat telemetry dict: ``hessian_top1..k`` (Lanczos), ``hessian_trace`` (± ``_stderr``),
    and :func:`sharpness_vs_edge` at learning rate ``lr``, all on the fixed ``batch``."""
    loss_fn, theta = make_loss_fn(model, batch, loss_of_logits)
    op = hessian_operator(loss_fn, theta)
    top = lanczos_top_eigenvalues(op, k=k, seed=seed).values
    trace = hutchinson_trace(op.torch_matvec, theta.numel(), n_probes, seed, theta.dtype,
                             theta.device)
    return ({f"hessian_top{i + 1}": float(v) for i, v in enumerate(top)}
            | {"hessian_trace": trace.mean, "hessian_trace_stderr": trace.stderr}
            | sharpness_vs_edge(float(top[0]), lr))


@dataclass(frozen=True)
class Eigenpair:
    """The top eigenpair found by :func:`lanczos_top_eigenpair`: λ, its unit vector, the residual
    ‖Hv − λv‖ and the HVPs spent."""

    value: float
    vector: Tensor
    residual: float
    n_hvp: int


def lanczos_top_eigenpair(
    hvp: HVP, v0: Tensor, tol: float = 1e-3, min_iter: int = 2, max_iter: int = 40
) -> Eigenpair:
    """Largest algebraic eigenpair by Lanczos from the start vector ``v0``, one HVP per iteration,
    stopped as soon as the top Ritz pair's residual ‖Hy − θy‖ ≤ ``tol``·|θ|.

    Written here (ARPACK fills a whole Krylov basis of ``ncv`` ≥ 2 vectors before it checks
    convergence) to *track* λ_max along training: warm-started from the previous step's top
    eigenvector, the first one or two HVPs usually meet the tolerance. Full reorthogonalisation
    (twice), so the residual estimate β_j·|s_j| (the last component of the Ritz vector) is the
    true residual up to rounding. By Bauer–Fike, θ lies within the residual of an eigenvalue of H;
    a warm start can follow the old branch when two eigenvalues cross, so callers check it against
    a cold :func:`lanczos_top_eigenvalues` now and then. ``min_iter`` ≥ 2 always lets the Krylov
    space leave ``v0``'s line.
    """
    if not 1 <= min_iter <= max_iter:
        raise ValueError(f"need 1 ≤ min_iter={min_iter} ≤ max_iter={max_iter}")
    q = v0 / v0.norm()
    basis, alphas, betas = [q], [], []
    value, s, n = math.nan, None, 0
    for j in range(min(max_iter, v0.numel())):
        w = hvp(basis[j])
        n += 1
        alphas.append(float(w @ basis[j]))
        Q = torch.stack(basis, 1)
        for _ in range(2):
            w = w - Q @ (Q.T @ w)
        beta = float(w.norm())
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, S = np.linalg.eigh(T)
        value, s = float(theta[-1]), S[:, -1]
        residual = beta * abs(s[-1])
        if (j + 1 >= min_iter and residual <= tol * abs(value)) or beta <= 1e-12 * max(abs(value), 1e-30):
            break
        betas.append(beta)
        basis.append(w / beta)
    y = torch.stack(basis[: s.size], 1) @ torch.as_tensor(s, dtype=v0.dtype, device=v0.device)
    return Eigenpair(value, y / y.norm(), float(residual), n)
