"""True-gradient effective rank and K-basis adaptation (the K series' paper 86 and its follow-up).

Definitions (all singular values in float64):

* ``effective_rank`` is Roy–Vetterli, exp(H(p)), p = σ / ‖σ‖₁: :func:`gradience.telemetry.spectral.effective_rank`,
  the one used by every weight metric.
* True gradient: G = ∂L/∂W of every 2-D ``weight`` of a module (linear and embedding layers) on one
  stated batch, the mean token cross-entropy (:func:`true_gradients`). Its effective rank per
  matrix is ``grad_er``; over matrices it is summarised by mean and max, and per decoder layer
  (``layers.<i>.`` in the name, :func:`layer_of`) by the mean over the layer's matrices.
* K basis of a weight W = U diag(s) Vᵀ (thin SVD): its top-K singular pairs U_K, V_K (K is clamped to
  min(m, n)). K-basis adaptation replaces W by W + U_K diag(a) V_Kᵀ and trains only a ∈ R^K, which
  starts at 0 (:class:`KBasisDelta`, a ``torch.nn.utils.parametrize`` parametrisation, so module
  names are unchanged). The basis is that of the weight the adapter is built on and stays frozen.
* K-constrained gradient: ∂L/∂a = diag(U_Kᵀ G V_K) (G taken at the adapted weights); the matrix the
  adapter can follow is U_K diag(∂L/∂a) V_Kᵀ, whose singular values are |∂L/∂a_i| (U_K, V_K
  orthonormal), so its effective rank ``er_k`` is that of |∂L/∂a|. ``coverage`` = 100 · er_k / ER(G).
* ``cos_diag`` = cos(G, P_K G), P_K the orthogonal (Frobenius) projection onto span{u_i v_iᵀ, i ≤ K},
  i.e. onto what the K-basis adapter can express: P_K G = U_K diag(∂L/∂a) V_Kᵀ and the cosine equals
  ‖∂L/∂a‖ / ‖G‖_F. ``cos_subspace`` = cos(G, U_K U_Kᵀ G V_K V_Kᵀ) = ‖U_Kᵀ G V_K‖_F / ‖G‖_F, the
  two-sided subspace projection (what a rank-K LoRA confined to the same singular subspaces could
  express). The follow-up paper's wording ("the projection of ∂L/∂W onto the K-basis") fits both;
  ``cos_diag`` is the one that matches K-basis adaptation.
* ``k_for_coverage``: the smallest K whose er_k reaches ``target`` % of ER(G) (``nan`` when even
  K = min(m, n) does not), from the prefix effective ranks of diag(Uᵀ G V) in one pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from gradience.telemetry.curvature import cross_entropy
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.telemetry.spectral import effective_rank

Triple = tuple[str, str, float]
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def prefix_effective_ranks(values: np.ndarray) -> np.ndarray:
    """ER(|v_1..v_K|) for K = 1..len(v) in one pass: H_K = log S_K − (Σ_{i≤K} d_i log d_i) / S_K."""
    d = np.abs(np.asarray(values, dtype=np.float64))
    s = np.cumsum(d)
    t = np.cumsum(np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s > 0, np.exp(np.log(s) - t / s), np.nan)


def iid_gaussian_er(k: int, draws: int = 2000, seed: int = 0) -> float:
    """Mean effective rank of K i.i.d. standard normal values (Monte Carlo, ``draws`` vectors): the
    ER a K-constrained gradient has when its K coefficients diag(U_Kᵀ G V_K) look like noise —
    the reference for "the ER of what K can express" (≈ 0.61·K for large K)."""
    if k < 1:
        raise ValueError(f"K must be ≥ 1, got {k}")
    z = np.random.default_rng(seed).standard_normal((draws, k))
    d = np.abs(z)
    p = d / d.sum(1, keepdims=True)
    return float(np.exp(-(p * np.log(p)).sum(1)).mean())


def layer_of(name: str) -> int | None:
    """Decoder-layer index of a parameter name (``…layers.3.…`` → 3); ``None`` outside the layers."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def gradient_effective_ranks(grads: dict[str, Tensor]) -> dict[str, float]:
    """Effective rank of each 2-D gradient."""
    return {n: effective_rank(torch.linalg.svdvals(g.detach().cpu().double())) for n, g in grads.items()}


def summarise(values: dict[str, float]) -> dict[str, float]:
    """``mean`` and ``max`` over matrices (non-finite entries dropped)."""
    v = np.array([x for x in values.values() if math.isfinite(x)])
    return {"mean": float(v.mean()) if v.size else math.nan, "max": float(v.max()) if v.size else math.nan}


def per_layer(values: dict[str, float]) -> dict[int, float]:
    """Mean over each decoder layer's matrices (matrices outside the layers are left out)."""
    groups: dict[int, list[float]] = {}
    for name, v in values.items():
        layer = layer_of(name)
        if layer is not None and math.isfinite(v):
            groups.setdefault(layer, []).append(v)
    return {k: float(np.mean(groups[k])) for k in sorted(groups)}


@dataclass(frozen=True)
class Basis:
    """Thin SVD W = U diag(s) Vᵀ, float64 (U: m × r, V: n × r, r = min(m, n))."""

    U: Tensor
    s: Tensor
    V: Tensor

    def top(self, k: int) -> tuple[Tensor, Tensor]:
        k = min(k, self.s.numel())
        return self.U[:, :k], self.V[:, :k]


def svd_basis(weight: Tensor) -> Basis:
    u, s, vh = torch.linalg.svd(weight.detach().cpu().double(), full_matrices=False)
    return Basis(u, s, vh.T)


def kbasis_gradient(grad: Tensor, U_k: Tensor, V_k: Tensor) -> Tensor:
    """∂L/∂a of W + U_K diag(a) V_Kᵀ given G = ∂L/∂W: diag(U_Kᵀ G V_K) = Σ_rows (U_K ⊙ G V_K)."""
    return (U_k * (grad.to(U_k.dtype) @ V_k)).sum(0)


def constrained_gradient(grad: Tensor, U_k: Tensor, V_k: Tensor) -> Tensor:
    """U_K diag(∂L/∂a) V_Kᵀ: the K-constrained gradient (= P_K G, see the module docstring)."""
    return (U_k * kbasis_gradient(grad, U_k, V_k)) @ V_k.T


@dataclass(frozen=True)
class KCoverage:
    k: int  # after clamping to min(m, n)
    er_k: float
    er_true: float
    coverage: float  # %
    cos_diag: float
    cos_subspace: float


def kbasis_coverage(grad: Tensor, basis: Basis, ks: Sequence[int]) -> list[KCoverage]:
    """:class:`KCoverage` of one gradient matrix for each K in ``ks`` (see the module docstring)."""
    g = grad.detach().cpu().double()
    er_true = effective_rank(torch.linalg.svdvals(g))
    g_norm = float(torch.linalg.matrix_norm(g))
    rotated = basis.U.T @ g @ basis.V  # r × r; its diagonal is ∂L/∂a for K = r
    diag = rotated.diagonal()
    out = []
    for k in ks:
        if k < 1:
            raise ValueError(f"K must be ≥ 1, got {k}")
        k = min(k, diag.numel())
        er_k = effective_rank(diag[:k])
        cos_d = float(torch.linalg.vector_norm(diag[:k])) / g_norm if g_norm > 0 else math.nan
        cos_s = float(torch.linalg.matrix_norm(rotated[:k, :k])) / g_norm if g_norm > 0 else math.nan
        out.append(KCoverage(k, er_k, er_true, 100.0 * er_k / er_true, cos_d, cos_s))
    return out


def k_for_coverage(grad: Tensor, basis: Basis, target: float = 95.0, er_true: float | None = None) -> float:
    """Smallest K with er_k ≥ ``target`` % of ER(G); ``nan`` if no K ≤ min(m, n) reaches it.
    ``er_true``: ER(G) when already known (saves an SVD)."""
    g = grad.detach().cpu().double()
    if er_true is None:
        er_true = effective_rank(torch.linalg.svdvals(g))
    if not math.isfinite(er_true):
        return math.nan
    ers = prefix_effective_ranks(((basis.U.T @ g) * basis.V.T).sum(1).numpy())
    hit = np.nonzero(ers >= target / 100.0 * er_true * (1 - 1e-12))[0]
    return float(hit[0] + 1) if hit.size else math.nan


class KBasisDelta(nn.Module):
    """Parametrisation W ↦ W + U_K diag(a) V_Kᵀ with U_K, V_K the top-K singular vectors of the weight
    it is registered on (frozen buffers) and ``a`` (zeros) the only parameter."""

    def __init__(self, weight: Tensor, k: int) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"K must be ≥ 1, got {k}")
        U, V = svd_basis(weight).top(k)
        self.register_buffer("U", U.to(weight.dtype).to(weight.device))
        self.register_buffer("V", V.to(weight.dtype).to(weight.device))
        self.a = nn.Parameter(torch.zeros(U.shape[1], dtype=weight.dtype, device=weight.device))

    def forward(self, w: Tensor) -> Tensor:
        return w + (self.U * self.a) @ self.V.T


def _weight_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules whose ``weight`` is 2-D (linear, embedding), plain or parametrised."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            w = module.parametrizations.weight.original
        else:
            w = module._parameters.get("weight")
        if isinstance(w, Tensor) and w.ndim == 2:
            yield name, module


def apply_kbasis(model: nn.Module, k: int, include: Callable[[str], bool] | None = None) -> dict[str, nn.Parameter]:
    """Freeze every parameter of ``model`` and add a :class:`KBasisDelta` to each 2-D weight whose
    ``<module>.weight`` name passes ``include`` (default: all). Returns the trainable ``a`` by name."""
    for p in model.parameters():
        p.requires_grad_(False)
    out, seen = {}, set()
    for name, module in list(_weight_modules(model)):
        pname = f"{name}.weight" if name else "weight"
        if include is not None and not include(pname):
            continue
        if id(module.weight) in seen:
            raise ValueError(f"{pname} is tied to another adapted weight; untie it or leave one out with `include`")
        seen.add(id(module.weight))
        delta = KBasisDelta(module.weight.detach(), k)
        parametrize.register_parametrization(module, "weight", delta)
        out[pname] = delta.a
    if not out:
        raise ValueError("apply_kbasis found no 2-D weight to adapt (check `include`)")
    return out


def kbasis_deltas(model: nn.Module) -> dict[str, KBasisDelta]:
    """The :class:`KBasisDelta` of each adapted weight, by ``<module>.weight`` name."""
    out = {}
    for name, module in _weight_modules(model):
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, KBasisDelta):
                    out[f"{name}.weight" if name else "weight"] = p
    return out


def base_weight(module: nn.Module) -> Tensor:
    """The weight an adapter is built on: the parametrisation's original, or the plain weight."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original.detach()
    return module.weight.detach()


def true_gradients(model: nn.Module, batch: tuple[Tensor, Tensor],
                   loss_of_logits: Callable[[Tensor, Tensor], Tensor] = cross_entropy) -> dict[str, Tensor]:
    """G = ∂L/∂W at the model's effective weights for every 2-D weight, frozen or not, on ``batch``.

    Parametrised weights are differentiated through their cached value (``parametrize.cached``);
    frozen plain weights get ``requires_grad`` for the call only. No ``.grad`` is touched.
    """
    x, y = batch
    mods = list(_weight_modules(model))
    thawed = [m.weight for _, m in mods if not parametrize.is_parametrized(m, "weight") and not m.weight.requires_grad]
    for w in thawed:
        w.requires_grad_(True)
    try:
        with parametrize.cached():
            weights = [m.weight for _, m in mods]
            keep = [i for i, w in enumerate(weights) if w.requires_grad]
            loss = loss_of_logits(model(x), y)
            grads = torch.autograd.grad(loss, [weights[i] for i in keep], allow_unused=True)
    finally:
        for w in thawed:
            w.requires_grad_(False)
    out = {}
    for i, g in zip(keep, grads, strict=True):
        name = f"{mods[i][0]}.weight" if mods[i][0] else "weight"
        out[name] = g.detach() if g is not None else torch.zeros_like(weights[i]).detach()
    return out


class GradientRankProbe:
    """Training-loop probe: per 2-D weight ``grad_er`` and, for each K in ``ks``, ``k<K>_er``,
    ``k<K>_coverage``, ``k<K>_cos`` (cos_diag), ``k<K>_cos_subspace``, and ``k<target>`` (the K for
    ``target`` % coverage); at scope ``model`` the mean and max of ``grad_er``, the means (over
    matrices, nan-skipping) of the others, and per decoder layer i (:func:`per_layer`)
    ``grad_er_layer<i>`` and ``k<target>_layer<i>``. The basis is the SVD of each
    :func:`base_weight` (frozen under K-basis adaptation, the current weight otherwise); gradients
    are :func:`true_gradients` on the step's batch."""

    def __init__(self, ks: Iterable[int] = (2, 4, 8, 16, 32, 64), target: float = 95.0) -> None:
        self.ks, self.target = tuple(ks), target

    def __call__(self, ctx) -> list[Triple]:
        grads = true_gradients(ctx.model, ctx.batch)
        modules = dict(ctx.model.named_modules())
        rows: list[Triple] = []
        for name, g in grads.items():
            basis = svd_basis(base_weight(modules[name.removesuffix(".weight")]))
            cov = kbasis_coverage(g, basis, self.ks)
            rows.append((name, "grad_er", cov[0].er_true if cov else effective_rank(torch.linalg.svdvals(g.double()))))
            for k, c in zip(self.ks, cov, strict=True):
                rows += [(name, f"k{k}_er", c.er_k), (name, f"k{k}_coverage", c.coverage),
                         (name, f"k{k}_cos", c.cos_diag), (name, f"k{k}_cos_subspace", c.cos_subspace)]
            er_true = cov[0].er_true if cov else None
            rows.append((name, f"k{self.target:g}", k_for_coverage(g, basis, self.target, er_true)))
        by_metric: dict[str, list[float]] = {}
        for _, metric, value in rows:
            by_metric.setdefault(metric, []).append(value)
        er = summarise({str(i): v for i, v in enumerate(by_metric.get("grad_er", []))})
        rows += [(MODEL_SCOPE, "grad_er_mean", er["mean"]), (MODEL_SCOPE, "grad_er_max", er["max"])]
        rows += [(MODEL_SCOPE, metric, float(np.nanmean(v)) if np.isfinite(v).any() else math.nan)
                 for metric, v in by_metric.items() if metric != "grad_er"]
        for metric, out in (("grad_er", "grad_er_layer"), (f"k{self.target:g}", f"k{self.target:g}_layer")):
            values = {scope: v for scope, m, v in rows if m == metric and scope != MODEL_SCOPE}
            rows += [(MODEL_SCOPE, f"{out}{i}", v) for i, v in per_layer(values).items()]
        return rows
