"""Protocol C of seed 001 (information geometry, Fisher, against the weight spectra): the runs.

The character LM of :mod:`gradience.studies.lm_regimes.runs` is trained by full-batch GD in a stable
and an unstable regime. Every ``cadence_every`` steps, :func:`fisher_probe` forms the per-sample
gradients G of a fixed measurement batch (the first ``measure_batch`` training windows; one
"sample" = one window) and measures the empirical and the sampled ("true") Fisher F = GᵀG/n
through their n × n Gram matrix (:mod:`gradience.telemetry.fisher`): top eigenvalues, tr F, tr F²,
the participation ratio (tr F)²/tr F², the decay exponent of √λ_i, the Fisher–weight alignment and
the natural-gradient alignment (full space at every ``fisher.dampings`` and inside F's span, with
the pseudo-inverse too). The definitions the verdicts use are in :mod:`.analysis`.

Free choices of this module, and the measurement behind each:

- **η-matched stable arm** (``edge_cap`` of a regime): the unstable arm's ramp, with η capped at
  ``edge_cap`` · 2/λ_max(θ_t), λ_max of the training-set Hessian tracked at every cadence step
  (warm-started Lanczos, :func:`curvature.lanczos_top_eigenpair`; between two measurements the cap
  holds). So "stable vs unstable" compares runs with the same η schedule up to the edge, not a small
  η against a large one. ``edge_cap`` 0.8 leaves 20 % for sharpening between cadence steps; the
  tracked ``sharpness_over_edge`` = η·λ_max/2 shows whether a run stayed below 1.
- **λ_max tracking** (``track_sharpness``, forced on by ``edge_cap``): logged as ``lambda_max``,
  ``sharpness_over_edge``, ``lambda_max_n_hvp`` (HVPs spent); the tolerance ``sharpness_tol`` is relative.
- **Vectors for the cross-seed null** (``fisher.vector_losses``): at the first cadence step whose
  full-batch training loss is ≤ each level, the ``vector_kind`` Fisher's top ``vector_k``
  eigenvectors (scaled by √λ, so Σ rows' squares is the top-k part of tr F) and every weight matrix,
  split per matrix, go to the ``vectors`` table (float32; ≈ (k + 1) × #parameters numbers per run
  and level). The report reads the Fisher of seed i against the weights of seed j there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from gradience.config import Section
from gradience.studies.lm_regimes.runs import Regime, RegimeRunParams, setup_regime, train_set_up
from gradience.studies.protocol import Job, RunOutput
from gradience.telemetry import curvature, fisher
from gradience.telemetry.probes import FISHER_KIND_PREFIX, fisher_eigensystem, measurement_batch
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.telemetry.spectral import power_law_alpha
from gradience.training import Probe, StepContext

FisherKind = Literal["empirical", "true"]


class FisherProbeParams(Section):
    top_k: int = Field(default=10, ge=2)
    kinds: list[FisherKind] = Field(default=["empirical", "true"], min_length=1)
    dampings: list[float] = Field(default=[1e-3, 1e-2, 1e-1], min_length=1,
                                  description="relative: λ = δ·λ₁(F); the in-span alignment also uses δ = 0 (F⁺)")
    overlap_rank: int = Field(default=1, ge=1, description="top-r singular pairs of each weight matrix")
    measure_batch: int = Field(default=0, ge=0, description="first n training windows; 0: all")
    seed: int = 0
    vector_kind: FisherKind = Field(default="true", description="the Fisher whose eigenvectors are stored")
    vector_k: int = Field(default=8, ge=1, description="top eigenvectors stored per level")
    vector_losses: list[float] = Field(default=[], description="train-loss levels (nats) at which vectors are stored")

    @field_validator("dampings")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not d > 0 for d in v):
            raise ValueError(f"every damping must be > 0, got {v}")
        return v


    @model_validator(mode="after")
    def _vector_kind(self) -> FisherProbeParams:
        if self.vector_losses and self.vector_kind not in self.kinds:
            raise ValueError(f"vector_kind={self.vector_kind!r} must be among kinds={self.kinds}")
        return self


class FisherRegime(Regime):
    edge_cap: float = Field(default=0.0, ge=0, lt=1, description="η ≤ edge_cap·2/λ_max(θ_t), λ_max tracked; 0: no cap")
    track_sharpness: bool = Field(default=False, description="log λ_max at every cadence step (forced by edge_cap)")
    seeds: list[int] | None = Field(default=None, description="this regime's seeds (a subset of runs.seeds); None: all")


class RunParams(RegimeRunParams):
    regimes: list[FisherRegime] = Field(min_length=1)
    fisher: FisherProbeParams = FisherProbeParams()
    sharpness_tol: float = Field(default=1e-2, gt=0, description="relative residual of the tracked λ_max")

    @model_validator(mode="after")
    def _regime_seeds(self) -> RunParams:
        bad = {r.name: r.seeds for r in self.regimes if r.seeds is not None and not set(r.seeds) <= set(self.seeds)}
        if bad:
            raise ValueError(f"regime seeds {bad} must be subsets of seeds={self.seeds}")
        return self


DATA = ("text",)
TABLES = ("telemetry", "spectra", "vectors")
VECTOR_COLUMNS = ["run", "level", "step", "item", "index", "scope", "rows", "cols", "value", "values"]


def _ratios(parts: dict[str, tuple[float, float, float]]) -> tuple[float, float, float]:
    inside, energy, chance = (sum(v[i] for v in parts.values()) for i in range(3))
    return inside, energy, chance


def alignment_values(G: Tensor, v: Tensor, layout: list[tuple[str, torch.Size]], now: dict[str, Tensor],
                     w0: dict[str, Tensor], rank: int) -> tuple[dict[str, float], list[tuple[str, str, float]]]:
    """Model-level Fisher–weight alignment of G (``share``) and of F's top eigenvector v
    (``overlap``) with the current weights and with W₀ (:func:`fisher.subspace_share`):
    ``fisher_{m}`` (share of energy inside the current top-r subspaces), ``fisher_{m}_chance``,
    ``fisher_{m}_enrichment`` (over a random direction), ``fisher_{m}_w0`` (share inside W₀'s) and
    ``fisher_{m}_w0_enrichment`` = inside(W_t) / inside(W₀); and per-matrix ``fisher_share``,
    ``fisher_share_w0`` triples (scope = parameter name).

    The ratios are NaN when the denominator is 0 (not :func:`signals.safe_ratio`, which gives inf
    for a positive numerator): an empty reference subspace has no alignment to compare."""
    values, per = {}, []
    for m, rows in (("share", G), ("overlap", v[None])):
        cur, ref = fisher.subspace_share(rows, layout, now, rank), fisher.subspace_share(rows, layout, w0, rank)
        (inside, energy, chance), (inside0, _, _) = _ratios(cur), _ratios(ref)
        if energy > 0:
            values |= {f"fisher_{m}": inside / energy, f"fisher_{m}_chance": chance / energy,
                       f"fisher_{m}_enrichment": inside / chance, f"fisher_{m}_w0": inside0 / energy,
                       f"fisher_{m}_w0_enrichment": inside / inside0 if inside0 > 0 else math.nan}
        if m == "share":
            per += [(name, "fisher_share", c[0] / c[1] if c[1] > 0 else math.nan) for name, c in cur.items()]
            per += [(name, "fisher_share_w0", c[0] / c[1] if c[1] > 0 else math.nan) for name, c in ref.items()]
    return values, per


def ng_span_key(damping: float) -> str:
    """The metric name of the in-span NG alignment at relative ``damping`` (0: the pseudo-inverse)."""
    return f"ng_span@{damping:.0e}" if damping else "ng_span@pinv"


def fisher_triples(model: nn.Module, batch: tuple[Tensor, Tensor], kind: FisherKind, f: FisherProbeParams,
                   w0: dict[str, Tensor], seed: int, keep: dict | None = None) -> list[tuple[str, str, float]]:
    """One kind of Fisher on ``batch``: spectrum and shape, NG alignment (full space and inside the
    span), Fisher–weight alignment against the current weights and W₀; names prefixed ``emp_``/``true_``.
    ``keep`` (if given) receives the eigensystem ``s``, ``V`` and the ``layout``."""
    G = fisher.fisher_gradients(model, batch, kind, seed)
    grad = fisher.batch_grad(model, batch)
    spectrum = fisher.fisher_spectrum(G, f.top_k)
    s, V = fisher_eigensystem(G)
    prefix = FISHER_KIND_PREFIX[kind]
    if s.size == 0:  # no positive (finite) eigenvalue: the gradients vanished or blew up (a diverging run)
        return [(MODEL_SCOPE, f"{prefix}_fisher_failed", 1.0)]
    lam1 = float(s[0])
    full = fisher.natural_gradient_alignment(G, grad, [d * lam1 for d in f.dampings])
    span = list(fisher.span_alignment(G, grad, [d * lam1 for d in (0.0, *f.dampings)]).values())
    layout = [(n, p.shape) for n, p in model.named_parameters() if p.requires_grad]
    now = {n: p.detach() for n, p in model.named_parameters() if n in w0}
    align, per = alignment_values(G, V[:, 0], layout, now, w0, f.overlap_rank)
    if keep is not None:
        keep |= {"s": s, "V": V, "layout": layout}
    values = (spectrum
              | {"fisher_eff_dim": spectrum["fisher_trace"] ** 2 / spectrum["fisher_trace_sq"],
                 "fisher_kappa_k": float(s[0] / s[min(f.top_k, s.size) - 1]), "fisher_alpha": power_law_alpha(np.sqrt(s))}
              | {f"ng_alignment@{d:.0e}": a for d, a in zip(f.dampings, full.values(), strict=True)}
              | {"grad_span_fraction": span[0]}
              | {ng_span_key(d): a for d, a in zip((0.0, *f.dampings), span[1:], strict=True)}
              | align)
    return ([(MODEL_SCOPE, f"{prefix}_{m}", float(x)) for m, x in values.items()]
            + [(scope, f"{prefix}_{m}", x) for scope, m, x in per])


def vector_rows(run: str, level: float, step: int, s: np.ndarray, V: Tensor, layout: list[tuple[str, torch.Size]],
                weights: dict[str, Tensor], k: int) -> list[dict]:
    """The ``vectors`` rows of one level: for each of F's top-``k`` eigenpairs, √λ·v split over the
    2-D parameters (``item`` "fisher", ``index`` = eigen-index, ``value`` = λ), and each weight matrix
    (``item`` "weight"); ``values`` flattened row-major, float32."""
    sizes = [math.prod(shape) for _, shape in layout]
    k = min(k, s.size)
    blocks = dict(zip([n for n, _ in layout], (V[:, :k] * torch.as_tensor(np.sqrt(s[:k]))).split(sizes, dim=0), strict=True))
    rows = []
    for name, W in weights.items():
        base = {"run": run, "level": level, "step": step, "scope": name, "rows": W.shape[0], "cols": W.shape[1]}
        rows += [base | {"item": "fisher", "index": i, "value": float(s[i]),
                         "values": blocks[name][:, i].float().cpu().numpy()} for i in range(k)]
        rows.append(base | {"item": "weight", "index": 0, "value": math.nan,
                            "values": W.detach().reshape(-1).float().cpu().numpy()})
    return rows


def fisher_probe(f: FisherProbeParams, run: str = "", vectors: list[dict] | None = None) -> Probe:
    """A probe logging :func:`fisher_triples` for each Fisher kind on the fixed batch
    :func:`~gradience.telemetry.probes.measurement_batch`; it keeps the weight matrices it sees at
    its first call (step 0: W₀) as the null of the alignment. Sampled labels use seed ``seed + step``.
    With ``vectors`` (a list it appends to), at the first step with full-batch loss ≤ each of
    ``f.vector_losses`` it adds :func:`vector_rows` of the ``f.vector_kind`` Fisher."""
    w0: dict[str, Tensor] = {}
    pending = sorted(f.vector_losses, reverse=True)

    def probe(ctx: StepContext) -> Iterable[tuple[str, str, float]]:
        if not w0:
            w0.update({n: p.detach().clone() for n, p in ctx.model.named_parameters() if p.requires_grad and p.ndim == 2})
        batch = measurement_batch(ctx.split, f.measure_batch)
        out: list[tuple[str, str, float]] = []
        for kind in f.kinds:
            keep: dict | None = {} if vectors is not None and kind == f.vector_kind else None
            out += fisher_triples(ctx.model, batch, kind, f, w0, f.seed + ctx.step, keep)
            while keep is not None and pending and ctx.loss <= pending[0]:
                now = {n: p.detach() for n, p in ctx.model.named_parameters() if n in w0}
                vectors.extend(vector_rows(run, pending.pop(0), ctx.step, keep["s"], keep["V"], keep["layout"], now,
                                           f.vector_k))
        return out

    return probe


class SharpnessTracker:
    """λ_max of the training-set Hessian at every cadence step (warm-started Lanczos, relative
    tolerance ``tol``), logged as ``lambda_max``, ``sharpness_over_edge`` = η·λ_max/2, ``lambda_max_n_hvp``; with
    ``edge_cap`` > 0 it is also the learning-rate schedule that caps η at edge_cap·2/λ̂, λ̂ the last
    λ_max times its growth over the last cadence interval (clipped to [1, 2]): progressive sharpening
    raises λ_max by up to ~60 % per interval early on (pilot), which an unextrapolated cap lets past
    the edge."""

    def __init__(self, lambda0: float, base_lr, edge_cap: float, tol: float) -> None:
        self.lam, self.base_lr, self.edge_cap, self.tol = lambda0, base_lr, edge_cap, tol
        self.prev = lambda0
        self.vector: Tensor | None = None

    def probe(self, ctx: StepContext) -> Iterable[tuple[str, str, float]]:
        loss_fn, theta = curvature.make_loss_fn(ctx.model, (ctx.split.x_train, ctx.split.y_train))
        theta = theta.detach()
        v0 = self.vector if self.vector is not None else torch.randn(theta.numel(), generator=torch.Generator().manual_seed(0),
                                                                      dtype=theta.dtype).to(theta.device)
        try:
            pair = curvature.lanczos_top_eigenpair(curvature.hvp_fn(loss_fn, theta), v0, tol=self.tol)
        except np.linalg.LinAlgError:  # non-finite HVPs (a diverging run): no λ_max, and no cap from it
            self.prev, self.lam = self.lam, math.nan
            return [(MODEL_SCOPE, "lambda_max", math.nan), (MODEL_SCOPE, "lambda_max_failed", 1.0)]
        self.prev, self.lam, self.vector = self.lam, pair.value, pair.vector.detach()
        return [(MODEL_SCOPE, "lambda_max", pair.value), (MODEL_SCOPE, "sharpness_over_edge", ctx.lr * pair.value / 2.0),
                (MODEL_SCOPE, "lambda_max_n_hvp", float(pair.n_hvp))]

    def schedule(self, step: int) -> float:
        """The multiplier of the base η of update ``step + 1``: 1, or the cap over the base η."""
        if not self.edge_cap or not self.lam > 0:
            return 1.0
        growth = min(2.0, max(1.0, self.lam / self.prev)) if self.prev > 0 else 1.0
        return min(1.0, self.edge_cap * 2.0 / (self.lam * growth) / self.base_lr(step))


def jobs(p: RunParams, data_dir: str) -> list[Job[RunParams]]:
    return [Job(p, r.name, s, data_dir, spec=r) for r in p.regimes for s in p.seeds if r.seeds is None or s in r.seeds]


def run_one(job: Job[RunParams]) -> RunOutput:
    """Train one regime × seed with the Fisher probe (and, where the regime asks, the λ_max tracker
    and the edge cap as the learning-rate schedule): :func:`lm_regimes.runs.train_set_up`, its run
    record plus ``edge_cap``, and the ``vectors`` table."""
    p, r = job.params, job.spec
    run = setup_regime(job)
    vectors: list[dict] = []
    probes = [fisher_probe(p.fisher, job.run_id, vectors)]
    tracker = None
    if r.track_sharpness or r.edge_cap:
        tracker = SharpnessTracker(run.lambda0, lambda step: run.lr * (step + 1) / p.steps if r.ramp else run.lr,
                                   r.edge_cap, p.sharpness_tol)
        probes.append(tracker.probe)
    recorder, record = train_set_up(job, run, probes, p.spectra_every,
                                    lr_schedule=tracker.schedule if tracker is not None and r.edge_cap else None)
    return RunOutput({"telemetry": recorder.frame(), "spectra": recorder.spectra_frame(),
                      "vectors": pd.DataFrame(vectors, columns=VECTOR_COLUMNS)}, record | {"edge_cap": r.edge_cap})
