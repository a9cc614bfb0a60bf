"""The spectral edge: the dominant direction of the Gram matrix of recent parameter updates.

For the last ``W`` optimiser updates Δθ_t (flattened trainable parameters, rows of X ∈ ℝ^{W×P}),
the *update Gram matrix* is G = X Xᵀ (W × W, uncentred); its eigenvalues σ_1² ≥ σ_2² ≥ … are the
squared singular values of X and equal the non-zero eigenvalues of the P × P second-moment matrix
XᵀX, which is never formed. The *edge direction* is XᵀX's top eigenvector, v_1 = Xᵀu_1 / σ_1 (u_1
the top eigenvector of G), signed so that the window's net motion along it is ≥ 0 (Σ_t ⟨Δθ_t, v_1⟩
= σ_1 Σ_t u_1[t] ≥ 0).

Every AdamW update splits exactly into a gradient part and a weight-decay part (PyTorch's AdamW
applies θ ← θ(1 − η·λ) before the Adam step):

    Δθ_t = g_t + d_t,   d_t = −η_t λ θ_{t−1} (decay),   g_t = −η_t m̂_t / (√v̂_t + ε) (gradient).

:class:`EdgeTracker` records g_t and d_t at every update through global optimiser step hooks
(so :func:`gradience.training.train` needs no change): d_t from the optimiser's η and λ and the
pre-step weights, g_t = Δθ_t − d_t. The split is exact for AdamW and for Adam / SGD whose decay is
zero; SGD without momentum (d_t = −η λ θ too) is also exact; coupled decay (Adam's L2, SGD with
momentum) mixes the two and is refused. ``include=`` tracks a subset of the parameters
(:func:`attention_weights`: the attention matrices, the seed's choice); :meth:`EdgeTracker.embed` and
:meth:`EdgeTracker.restrict` carry vectors and evaluators between that subset and all parameters.

Metrics at a cadence step (scope ``model``; defined in telemetry/glossary.py), with a_t = ⟨g_t, v_1⟩ and
b_t = ⟨d_t, v_1⟩ over the window:

* ``edge_sigma{1,2,3}_sq``: σ_i²; ``edge_gap`` = σ_1/σ_2 and ``edge_gap23`` = σ_2/σ_3 (ratios of
  singular values, the spectral-edge literature's gap); ``edge_share`` = σ_1² / tr G;
* ``edge_grad_energy`` = Σa² / (Σa² + Σb²), the gradient's share of the energy along the edge
  (the decay's is one minus it); ``edge_grad_decay_cos`` = Σab / (‖a‖‖b‖), +1 when gradient and
  decay push the same way along the edge at every step in proportion; ``edge_grad_decay_agree``,
  the fraction of steps with a_t b_t > 0;
* ``grad_decay_cos``: the window mean of the full-space cos(g_t, d_t); ``update_grad_norm`` and
  ``update_decay_norm``: window means of ‖g_t‖ and ‖d_t‖;
* ``edge_rotation``: the angle in degrees between v_1 and the previous call's v_1 (sign-free).

Causal tests of a direction (:func:`perturbation_curve`, :func:`ablation_impact`) take a function of
the flat θ (:func:`flat_evaluator` builds one for a model on a fixed batch), and the probes of a scalar
coordinate (:func:`probe_r2`) are scikit-learn pipelines: ridge regression (closed form, Cholesky)
on standardised features, on their degree-2 polynomial expansion after PCA, and a small MLP.
Written here: the window, the split and its metrics (no maintained library records them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.training import Probe, StepContext, loss_and_accuracy


# --------------------------------------------------------------------------- spectrum of a window
@dataclass(frozen=True)
class EdgeSpectrum:
    eigenvalues: np.ndarray  # σ_i² of G = X Xᵀ, descending, length W
    directions: Tensor  # [P, k] unit top eigenvectors of XᵀX (float64), column 0 = the edge v_1
    coefficients: np.ndarray  # [W, k] the matching eigenvectors u_i of G


def update_gram(X: Tensor) -> Tensor:
    """G = X Xᵀ in float64 for the ``[W, P]`` window X."""
    X = X.double()
    return X @ X.T


def edge_spectrum(X: Tensor, k: int = 3) -> EdgeSpectrum:
    """Eigenvalues of the Gram matrix of the window ``X`` and the top-``k`` directions in parameter space.

    v_i = Xᵀu_i / σ_i (unit when σ_i > 0), signed so that Σ_t u_i[t] ≥ 0 (net motion along v_i ≥ 0);
    directions with σ_i = 0 are returned as zeros.
    """
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"update window must be [W ≥ 1, P], got shape {tuple(X.shape)}")
    s, U = torch.linalg.eigh(update_gram(X))
    s, U = s.flip(0).clamp(min=0.0), U.flip(1)
    k = min(k, s.numel())
    U = U[:, :k] * torch.where(U[:, :k].sum(0) < 0, -1.0, 1.0)
    sigma = s[:k].sqrt()
    V = X.double().T @ U / torch.where(sigma > 0, sigma, 1.0)
    return EdgeSpectrum(s.cpu().numpy(), V, U.cpu().numpy())


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf if a > 0 else math.nan


def split_metrics(grad: Tensor, decay: Tensor, v: Tensor) -> dict[str, float]:
    """Gradient / decay split along the unit direction ``v`` for windows ``grad``, ``decay`` ``[W, P]``."""
    a, b = grad.double() @ v.double(), decay.double() @ v.double()
    ea, eb = float(a @ a), float(b @ b)
    return {
        "edge_grad_energy": ea / (ea + eb) if ea + eb > 0 else math.nan,
        "edge_grad_decay_cos": _cos(a, b),
        "edge_grad_decay_agree": float((a * b > 0).double().mean()),
    }


def spectrum_metrics(eigenvalues: np.ndarray) -> dict[str, float]:
    s = np.concatenate([eigenvalues, np.zeros(max(0, 3 - eigenvalues.size))])
    sv = np.sqrt(s)
    return {"edge_sigma1_sq": float(s[0]), "edge_sigma2_sq": float(s[1]), "edge_sigma3_sq": float(s[2]),
            "edge_gap": _ratio(sv[0], sv[1]), "edge_gap23": _ratio(sv[1], sv[2]),
            "edge_share": float(s[0] / s.sum()) if s.sum() > 0 else math.nan}


def window_metrics(grad: Tensor, decay: Tensor, k: int = 3) -> tuple[dict[str, float], Tensor]:
    """All window metrics of the module docstring (but ``edge_rotation``) and the edge direction v_1."""
    spec = edge_spectrum(grad.double() + decay.double(), k)
    v = spec.directions[:, 0]
    g64, d64 = grad.double(), decay.double()
    gn, dn = torch.linalg.vector_norm(g64, dim=1), torch.linalg.vector_norm(d64, dim=1)
    both = (gn > 0) & (dn > 0)
    cos = ((g64 * d64).sum(1)[both] / (gn * dn)[both]).mean() if bool(both.any()) else torch.tensor(math.nan)
    out = spectrum_metrics(spec.eigenvalues) | split_metrics(grad, decay, v) | {
        "grad_decay_cos": float(cos), "update_grad_norm": float(gn.mean()),
        "update_decay_norm": float(dn.mean()), "edge_window": float(grad.shape[0]),
    }
    return out, v


# --------------------------------------------------------------------------- AdamW update split
def decay_part(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> Tensor:
    """d = −η λ θ for ``params`` (flattened) under ``optimizer``'s groups, before its step.

    Raises for coupled decay (Adam's L2 penalty, SGD with momentum), which the split cannot separate.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts = []
    for p in params:
        g = group_of[id(p)]
        wd = float(g.get("weight_decay", 0.0))
        if wd and not _decoupled(optimizer, g):
            raise ValueError(f"{type(optimizer).__name__} with weight_decay={wd} couples decay into the "
                             "gradient statistics; the gradient/decay split needs AdamW (or SGD without momentum)")
        parts.append(-float(g["lr"]) * wd * p.detach().reshape(-1))
    return torch.cat(parts)


def _decoupled(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    if isinstance(optimizer, torch.optim.Adam):  # AdamW subclasses Adam in torch ≥ 2.6
        return bool(group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW)))
    if isinstance(optimizer, torch.optim.AdamW):
        return True
    if isinstance(optimizer, torch.optim.SGD):
        return float(group.get("momentum", 0.0)) == 0.0
    return False


# --------------------------------------------------------------------------- the tracker
FlatEval = Callable[[Tensor], tuple[float, float]]


def attention_weights(name: str, p: Tensor) -> bool:
    """``include=`` for :class:`EdgeTracker`: the attention projection matrices (query, key, value, output;
    ``transformers`` GPT-2's ``attn.c_attn``/``attn.c_proj`` and ``torch.nn`` attention's ``in_proj``/
    ``out_proj``, self- and cross-attention), the parameters the seed builds its edge from."""
    return "attn" in name and p.ndim == 2


@dataclass
class EdgeTracker:
    """Rolling window of the last ``window`` updates of ``model``'s trainable parameters, split into
    gradient and decay parts (see the module docstring).

    Use ``with tracker.attach(): train(..., probes=[tracker.probe()])``: the hooks fire for any
    optimiser that holds the model's parameters; the probe logs :meth:`metrics` at cadence steps
    (before update t + 1, so the window holds updates t − W + 1 … t). ``history`` keeps, for every
    update n (1-based), ‖g_n‖, ‖d_n‖ and cos(g_n, d_n).
    """

    model: nn.Module
    window: int = 10
    k: int = 3
    include: Callable[[str, Tensor], bool] | None = None  # (name, parameter) → tracked; None: all trainable
    history: dict[str, list[float]] = field(default_factory=lambda: {"update": [], "grad_norm": [],
                                                                     "decay_norm": [], "grad_decay_cos": []})

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"edge window must be ≥ 2 updates, got {self.window}")
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        chosen = [self.include is None or self.include(n, p) for n, p in trainable]
        if not any(chosen):
            raise ValueError("include= selects none of the model's trainable parameters")
        self.params = [p for (_, p), c in zip(trainable, chosen, strict=True) if c]
        self.n_params = sum(p.numel() for p in self.params)
        self._mask = torch.cat([torch.full((p.numel(),), c) for (_, p), c in zip(trainable, chosen, strict=True)])
        self._grad = torch.zeros(self.window, self.n_params)
        self._decay = torch.zeros(self.window, self.n_params)
        self._count = 0
        self._before: Tensor | None = None
        self._pending_decay: Tensor | None = None
        self._previous_v: Tensor | None = None

    # -- recording
    @property
    def updates(self) -> int:
        return self._count

    def push(self, grad: Tensor, decay: Tensor) -> None:
        """Add one update's gradient and decay parts (flat, length P)."""
        grad, decay = grad.detach().reshape(-1).float().cpu(), decay.detach().reshape(-1).float().cpu()
        if grad.numel() != self.n_params or decay.numel() != self.n_params:
            raise ValueError(f"update parts must have {self.n_params} entries, got {grad.numel()}, {decay.numel()}")
        i = self._count % self.window
        self._grad[i], self._decay[i] = grad, decay
        self._count += 1
        self.history["update"].append(float(self._count))
        self.history["grad_norm"].append(float(torch.linalg.vector_norm(grad)))
        self.history["decay_norm"].append(float(torch.linalg.vector_norm(decay)))
        self.history["grad_decay_cos"].append(_cos(grad.double(), decay.double()))

    def _owns(self, optimizer: torch.optim.Optimizer) -> bool:
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        mine = [id(p) in ids for p in self.params]
        if any(mine) and not all(mine):
            raise ValueError("an optimiser holds only some of the tracked parameters; track one optimiser per model")
        return all(mine)

    def _pre(self, optimizer, args, kwargs) -> None:
        if self._owns(optimizer):
            with torch.no_grad():
                self._before = torch.cat([p.detach().reshape(-1) for p in self.params]).clone()
                self._pending_decay = decay_part(optimizer, self.params)

    def _post(self, optimizer, args, kwargs) -> None:
        if self._before is not None and self._owns(optimizer):
            with torch.no_grad():
                after = torch.cat([p.detach().reshape(-1) for p in self.params])
                delta = after - self._before
                self.push(delta - self._pending_decay, self._pending_decay)
            self._before = self._pending_decay = None

    @contextmanager
    def attach(self) -> Iterator[EdgeTracker]:
        """Record every optimiser step on the model's parameters while the context is open."""
        handles = [register_optimizer_step_pre_hook(self._pre), register_optimizer_step_post_hook(self._post)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    # -- reading
    def parts(self) -> tuple[Tensor, Tensor]:
        """The window's gradient and decay parts ``[n, P]``, oldest update first (n = min(W, updates))."""
        n = min(self._count, self.window)
        order = [(self._count - n + j) % self.window for j in range(n)]
        return self._grad[order], self._decay[order]

    def metrics(self) -> dict[str, float]:
        """Window metrics (module docstring); empty until two updates are recorded."""
        if self._count < 2:
            return {}
        grad, decay = self.parts()
        out, v = window_metrics(grad, decay, self.k)
        if self._previous_v is not None:
            c = min(1.0, abs(float(self._previous_v @ v)))
            out["edge_rotation"] = math.degrees(math.acos(c))
        self._previous_v = v
        return out

    def direction(self) -> Tensor:
        """The current edge direction v_1 (unit, float64, in the order of the model's trainable parameters)."""
        if self._count < 1:
            raise ValueError("no update recorded yet")
        grad, decay = self.parts()
        return edge_spectrum(grad.double() + decay.double(), 1).directions[:, 0]

    def embed(self, v: Tensor) -> Tensor:
        """A tracked-parameter vector (length ``n_params``) placed in the flat space of all trainable
        parameters (the order of :func:`flat_evaluator`), zero on the untracked ones."""
        full = torch.zeros(self._mask.numel(), dtype=v.dtype)
        full[self._mask] = v
        return full

    def restrict(self, f: FlatEval, theta: Tensor) -> tuple[FlatEval, Tensor]:
        """``f`` and the flat ``theta`` of all trainable parameters (:func:`flat_evaluator`) seen from the
        tracked ones only (the others held at ``theta``): causal tests then draw random directions, and
        ablate, inside the tracked subspace, as the edge lives there."""
        base_theta = theta.detach().cpu().clone()  # f moves θ to its data's device

        def f_sub(t: Tensor) -> tuple[float, float]:
            full = base_theta.clone().to(t.dtype)
            full[self._mask] = t
            return f(full)

        return f_sub, base_theta[self._mask]

    def probe(self) -> Probe:
        """A :data:`gradience.training.Probe` logging :meth:`metrics` at scope ``model``."""
        def probe(ctx: StepContext) -> Iterable[tuple[str, str, float]]:
            return [(MODEL_SCOPE, m, v) for m, v in self.metrics().items()]

        return probe


# --------------------------------------------------------------------------- causal tests of a direction


def flat_evaluator(model: nn.Module, x: Tensor, y: Tensor) -> tuple[FlatEval, Tensor]:
    """``(f, θ₀)``: f(θ) = (loss, accuracy) of ``model`` with trainable parameters θ on ``(x, y)``
    (targets −100 ignored); θ₀ the current flat parameters. The model is left unchanged."""
    named = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    sizes, shapes = [p.numel() for p in named.values()], [p.shape for p in named.values()]

    @torch.no_grad()
    def f(theta: Tensor) -> tuple[float, float]:
        parts = theta.to(x.device, torch.float32).split(sizes)
        params = {n: t.view(s) for n, t, s in zip(named, parts, shapes, strict=True)}
        loss, acc = loss_and_accuracy(torch.func.functional_call(model, params, (x,)), y)
        return float(loss), float(acc)

    return f, torch.cat([p.reshape(-1) for p in named.values()])


def random_directions(n: int, dim: int, seed: int) -> Tensor:
    """``[n, dim]`` Gaussian directions normalised to unit length (float64, seeded)."""
    g = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return g / torch.linalg.vector_norm(g, dim=1, keepdim=True)


def _unit(v: Tensor) -> Tensor:
    v = v.double().reshape(-1)
    n = torch.linalg.vector_norm(v)
    if not n > 0:
        raise ValueError("direction must be non-zero")
    return v / n


@dataclass(frozen=True)
class PerturbationCurve:
    eps: np.ndarray  # step lengths ‖δθ‖ (signed)
    edge: np.ndarray  # L(θ + ε v̂) − L(θ)
    random: np.ndarray  # [n_random, len(eps)]: L(θ + ε r̂) − L(θ)

    @property
    def random_mean(self) -> np.ndarray:
        return self.random.mean(0)

    @property
    def random_abs_mean(self) -> np.ndarray:
        return np.abs(self.random).mean(0)


def perturbation_curve(f: Callable[[Tensor], float | tuple[float, ...]], theta: Tensor, direction: Tensor,
                       eps: Sequence[float], n_random: int = 8, seed: int = 0) -> PerturbationCurve:
    """Loss change along the unit ``direction`` and along ``n_random`` random unit directions, at the
    same step lengths ``eps``. ``f`` returns the loss (or a tuple whose first entry is the loss)."""
    def loss(t: Tensor) -> float:
        out = f(t)
        return float(out[0] if isinstance(out, tuple) else out)

    theta64 = theta.double().reshape(-1)
    base = loss(theta.reshape(-1))
    v = _unit(direction)
    R = random_directions(n_random, v.numel(), seed)
    edge = np.array([loss((theta64 + e * v).to(theta.dtype)) - base for e in eps])
    rand = np.array([[loss((theta64 + e * r).to(theta.dtype)) - base for e in eps] for r in R])
    return PerturbationCurve(np.asarray(eps, dtype=float), edge, rand.reshape(n_random, len(eps)))


def project_out(theta: Tensor, direction: Tensor) -> Tensor:
    """θ − ⟨θ, v̂⟩ v̂ (in θ's dtype)."""
    v = _unit(direction)
    t = theta.double().reshape(-1)
    return (t - (t @ v) * v).to(theta.dtype)


@dataclass(frozen=True)
class Ablation:
    base: tuple[float, float]  # (loss, acc) at θ
    edge: tuple[float, float]  # after projecting the direction out
    random: np.ndarray  # [n_random, 2] after projecting random directions out

    @property
    def loss_ratio(self) -> float:
        """|ΔL_edge| / mean |ΔL_random|."""
        return _ratio(abs(self.edge[0] - self.base[0]), float(np.abs(self.random[:, 0] - self.base[0]).mean()))

    @property
    def acc_ratio(self) -> float:
        """|Δacc_edge| / mean |Δacc_random| (inf when random ablations leave the accuracy unchanged)."""
        return _ratio(abs(self.edge[1] - self.base[1]), float(np.abs(self.random[:, 1] - self.base[1]).mean()))


def ablation_impact(f: FlatEval, theta: Tensor, direction: Tensor, n_random: int = 8, seed: int = 0) -> Ablation:
    """Project ``direction`` out of θ (θ − ⟨θ,v̂⟩v̂) and compare (loss, acc) with projecting out
    ``n_random`` random unit directions."""
    R = random_directions(n_random, theta.numel(), seed)
    return Ablation(tuple(f(theta)), tuple(f(project_out(theta, direction))),  # type: ignore[arg-type]
                    np.array([f(project_out(theta, r)) for r in R], dtype=float).reshape(n_random, 2))


# --------------------------------------------------------------------------- probes of a coordinate
PROBE_KINDS = ("linear", "quadratic", "mlp")


def probe_pipeline(kind: str, n_features: int, alpha: float = 1e-3, pca_dim: int = 32, hidden: int = 64,
                   seed: int = 0):
    """scikit-learn regressor for a probe ``kind`` on ``n_features`` inputs. ``linear``: standardise +
    ridge (closed form); ``quadratic``: standardise, PCA to ``pca_dim`` components when wider, degree-2
    polynomial features, standardise, ridge; ``mlp``: standardise + one ReLU hidden layer of
    ``hidden`` units (Adam, early stopping on a 10 % validation cut, seeded)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    if kind == "linear":
        return make_pipeline(StandardScaler(), Ridge(alpha=alpha, solver="cholesky"))
    if kind == "quadratic":
        narrow = [PCA(n_components=pca_dim, random_state=seed)] if pca_dim and n_features > pca_dim else []
        return make_pipeline(StandardScaler(), *narrow, PolynomialFeatures(2, include_bias=False),
                             StandardScaler(), Ridge(alpha=alpha, solver="cholesky"))
    if kind == "mlp":
        return make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(hidden,), max_iter=500,
                                                            early_stopping=True, random_state=seed))
    raise ValueError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")


def probe_r2(kind: str, H_train: np.ndarray, y_train: np.ndarray, H_test: np.ndarray, y_test: np.ndarray,
             **options) -> float:
    """Held-out R² = 1 − SS_res/SS_tot of a ``kind`` probe of the scalar ``y`` from features ``H``."""
    from sklearn.metrics import r2_score

    H_train, H_test = np.asarray(H_train, dtype=float), np.asarray(H_test, dtype=float)
    if H_train.ndim != 2 or H_test.ndim != 2 or H_train.shape[1] != H_test.shape[1]:
        raise ValueError(f"probe features must be [n, d] with equal d, got {H_train.shape} and {H_test.shape}")
    model = probe_pipeline(kind, H_train.shape[1], **options).fit(H_train, np.asarray(y_train, dtype=float))
    return float(r2_score(np.asarray(y_test, dtype=float), model.predict(H_test)))


def probe_scores(H_train: np.ndarray, y_train: np.ndarray, H_test: np.ndarray, y_test: np.ndarray,
                 kinds: Sequence[str] = PROBE_KINDS, **options) -> dict[str, float]:
    """``{"probe_r2_<kind>": R²}`` for each probe kind."""
    return {f"probe_r2_{k}": probe_r2(k, H_train, y_train, H_test, y_test, **options) for k in kinds}


@torch.no_grad()
def residual_stream(model: nn.Module, tokens: Tensor) -> list[Tensor]:
    """Hidden states ``[B, T, d]`` of a ``transformers`` model (or a wrapper with ``.lm``): the
    embeddings, then the output of each block (the last one after the final norm, as ``transformers``
    returns it)."""
    lm = getattr(model, "lm", model)
    return list(lm(input_ids=tokens, output_hidden_states=True).hidden_states)
