"""Gradient statistics: per-matrix norms, cosine between measured gradients, gradient noise scale.

Probes for :func:`gradience.training.train` (``probes=[...]``): each gets a
:class:`~gradience.training.StepContext` at a cadence step, with the gradients of the batch that
produces the next update populated, and returns ``(scope, metric, value)`` triples. The global
gradient norm (``model``/``grad_norm``) is logged by the training loop itself and not repeated here.

Conventions:

* ``grad_cosine`` = ⟨g_t, g_s⟩ / (‖g_t‖ ‖g_s‖) between the gradient at this measured step ``t`` and
  at the previous *measured* step ``s`` (so ``s = t − cadence.every`` on an evenly spaced cadence;
  successive steps when the cadence is every step). Nothing is logged at the first measured step.
  Per weight matrix (scope = parameter name) and for all trainable parameters (scope ``model``).
* ``grad_noise_scale`` = B_simple = tr(Σ) / ‖G‖² (McCandlish et al. 2018, "An empirical model of
  large-batch training", eq. 2.8), Σ the covariance of per-example gradients and G their mean (the
  true gradient), both over the training split. ``tr Σ̂ = Σ_i ‖g_i − ḡ‖² / (n − 1)`` from the
  per-example gradients of a fixed random subsample of ``n`` training examples (drawn once per run).
  ‖G‖²: when the step's batch is the whole training split (full-batch training), the squared norm
  of the gradient the loop has just computed, which *is* G; otherwise the unbiased subsample
  estimate ``‖ḡ‖² − tr Σ̂ / n`` (McCandlish et al. App. A with B_small = 1, B_big = n), and B is
  ``nan`` when that estimate is ≤ 0 (the mean gradient is below the subsample's noise floor).
  The loss is the mean cross-entropy without the (decoupled) weight decay. Per-example gradients
  come from ``torch.func.vmap(torch.func.grad(...))`` in chunks, so memory is ``chunk × #params``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from gradience.telemetry.fisher import per_sample_losses
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.telemetry.spectral import weight_matrices

Triple = tuple[str, str, float]


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float(torch.dot(a, b)) / den if den > 0 else math.nan


class GradientProbe:
    """Per weight matrix: ``grad_norm`` (‖∂L/∂W‖_F) and ``grad_cosine``; at scope ``model``:
    ``grad_cosine`` over all trainable parameters (see the module docstring)."""

    def __init__(self) -> None:
        self._previous: dict[str, torch.Tensor] | None = None

    def __call__(self, ctx) -> list[Triple]:
        params = _trainable(ctx.model)
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().clone()
                 for n, p in params.items()}
        matrices = [name for name, _ in weight_matrices(ctx.model)]
        out = [(name, "grad_norm", float(torch.linalg.vector_norm(grads[name]))) for name in matrices]
        prev = self._previous
        if prev is not None:
            out += [(name, "grad_cosine", _cosine(grads[name], prev[name])) for name in matrices]
            out.append((MODEL_SCOPE, "grad_cosine",
                        _cosine(torch.cat(list(grads.values())), torch.cat(list(prev.values())))))
        self._previous = grads
        return out


@dataclass(frozen=True)
class NoiseScale:
    n: int
    trace_cov: float  # tr Σ̂ (unbiased)
    grad_sq: float  # unbiased estimate of ‖G‖²
    mean_grad_sq: float  # ‖ḡ‖² (biased upward by tr Σ / n)

    @property
    def b_simple(self) -> float:
        return self.trace_cov / self.grad_sq if self.grad_sq > 0 else math.nan


def noise_scale_from_moments(n: int, sum_sq_norms: float, mean_grad_sq: float) -> NoiseScale:
    """B_simple from ``n``, ``Σ_i ‖g_i‖²`` and ``‖ḡ‖²`` (ḡ = mean of the g_i); see the module docstring."""
    if n < 2:
        raise ValueError(f"the noise scale needs at least 2 per-example gradients, got {n}")
    trace_cov = (sum_sq_norms - n * mean_grad_sq) / (n - 1)
    return NoiseScale(n, trace_cov, mean_grad_sq - trace_cov / n, mean_grad_sq)


def noise_scale(per_example: torch.Tensor) -> NoiseScale:
    """B_simple of an explicit ``[n, p]`` matrix of per-example gradients."""
    g = per_example.to(torch.float64)
    return noise_scale_from_moments(g.shape[0], float((g**2).sum()), float((g.mean(0) ** 2).sum()))


def per_example_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          chunk: int = 256) -> Iterator[dict[str, torch.Tensor]]:
    """Per-example gradients ``{name: [b, *shape]}`` of the trainable parameters, ``chunk``
    examples at a time: ``vmap(grad(·))`` of :func:`gradience.telemetry.fisher.per_sample_losses`.

    Unlike :func:`gradience.telemetry.fisher.per_sample_grads` the blocks are not concatenated
    into one ``[n, P]`` matrix: the moments below need only per-block reductions, and skipping the
    (memory-bound) copy about halves the noise-scale probe's cost on the grokking MLP.
    """
    params = {n: p.detach() for n, p in _trainable(model).items()}
    frozen = {n: t.detach() for n, t in model.named_buffers()}
    frozen |= {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, p | frozen, (xi.unsqueeze(0),))
        return per_sample_losses(logits, yi.unsqueeze(0))[0]

    batched = vmap(grad(loss), in_dims=(None, 0, 0))
    for i in range(0, x.shape[0], chunk):
        with sdpa_kernel(SDPBackend.MATH):  # a composite attention that vmap and grad both handle
            out = batched(params, x[i : i + chunk], y[i : i + chunk])
        yield out


def noise_scale_of_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> NoiseScale:
    """B_simple over the examples ``x, y``: ``Σ_i ‖g_i‖²`` and ``Σ_i g_i`` accumulated block by
    block. The float32 rounding of ``tr Σ̂ = (Σ‖g_i‖² − n‖ḡ‖²)/(n−1)`` is relatively
    ~1e-7·(1 + n / B_simple)."""
    sum_sq, sums = 0.0, {}
    for grads in per_example_gradients(model, x, y, chunk):
        for name, g in grads.items():
            sum_sq += float(torch.linalg.vector_norm(g) ** 2)
            part = g.sum(0).to(torch.float64)
            sums[name] = sums[name] + part if name in sums else part
    n = x.shape[0]
    return noise_scale_from_moments(n, sum_sq, sum(float((t / n).pow(2).sum()) for t in sums.values()))


class NoiseScaleProbe:
    """``grad_noise_scale`` (B_simple) and ``grad_noise_trace`` (tr Σ̂) at scope ``model``, on a fixed
    subsample of ``n_examples`` training examples drawn with ``seed`` (all of them if fewer)."""

    def __init__(self, n_examples: int, seed: int, chunk: int = 256) -> None:
        if n_examples < 2:
            raise ValueError(f"n_examples must be ≥ 2, got {n_examples}")
        self.n_examples, self.seed, self.chunk = n_examples, seed, chunk
        self._index: torch.Tensor | None = None

    def __call__(self, ctx) -> list[Triple]:
        x, y = ctx.split.x_train, ctx.split.y_train
        if self._index is None:
            perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed))
            self._index = perm[: self.n_examples].sort().values.to(x.device)
        ns = noise_scale_of_model(ctx.model, x[self._index], y[self._index], self.chunk)
        b = ns.b_simple
        if ctx.batch[0].shape[0] == x.shape[0]:  # full batch: the loop's gradient is G itself
            grad_sq = sum(float(p.grad.pow(2).sum()) for p in _trainable(ctx.model).values() if p.grad is not None)
            b = ns.trace_cov / grad_sq if grad_sq > 0 else math.nan
        return [(MODEL_SCOPE, "grad_noise_scale", b), (MODEL_SCOPE, "grad_noise_trace", ns.trace_cov)]
