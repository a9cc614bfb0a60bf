"""Protocol C of seed 001 (information geometry, Fisher, against the weight spectra): the runs.

The character LM of :mod:`gradience.studies.lm_regimes.runs` is trained by full-batch GD in a stable
and an unstable regime. Every ``cadence_every`` steps, :func:`fisher_probe` forms the per-sample
gradients G of a fixed measurement batch (the first ``measure_batch`` training windows; one
"sample" = one window) and measures the empirical and the sampled ("true") Fisher F = GᵀG/n
through their n × n Gram matrix (:mod:`gradience.telemetry.fisher`): top eigenvalues, tr F, tr F²,
the participation ratio (tr F)²/tr F², the decay exponent of √λ_i, the Fisher–weight alignment and
the natural-gradient alignment (full space at every ``fisher.dampings`` and inside F's span, with
the pseudo-inverse too). The definitions the verdicts use are in :mod:`.analysis`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from gradience.config import Section
from gradience.studies.lm_regimes.runs import RegimeRunParams, train_regime
from gradience.studies.protocol import Job, RunOutput
from gradience.telemetry import fisher
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

    @field_validator("dampings")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not d > 0 for d in v):
            raise ValueError(f"every damping must be > 0, got {v}")
        return v


class RunParams(RegimeRunParams):
    fisher: FisherProbeParams = FisherProbeParams()


DATA = ("text",)
TABLES = ("telemetry", "spectra")


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
                   w0: dict[str, Tensor], seed: int) -> list[tuple[str, str, float]]:
    """One kind of Fisher on ``batch``: spectrum and shape, NG alignment (full space and inside the
    span), Fisher–weight alignment against the current weights and W₀; names prefixed ``emp_``/``true_``."""
    G = fisher.fisher_gradients(model, batch, kind, seed)
    grad = fisher.batch_grad(model, batch)
    spectrum = fisher.fisher_spectrum(G, f.top_k)
    s, V = fisher_eigensystem(G)
    lam1 = float(s[0])
    full = fisher.natural_gradient_alignment(G, grad, [d * lam1 for d in f.dampings])
    span = list(fisher.span_alignment(G, grad, [d * lam1 for d in (0.0, *f.dampings)]).values())
    layout = [(n, p.shape) for n, p in model.named_parameters() if p.requires_grad]
    now = {n: p.detach() for n, p in model.named_parameters() if n in w0}
    align, per = alignment_values(G, V[:, 0], layout, now, w0, f.overlap_rank)
    values = (spectrum
              | {"fisher_eff_dim": spectrum["fisher_trace"] ** 2 / spectrum["fisher_trace_sq"],
                 "fisher_kappa_k": float(s[0] / s[min(f.top_k, s.size) - 1]), "fisher_alpha": power_law_alpha(np.sqrt(s))}
              | {f"ng_alignment@{d:.0e}": a for d, a in zip(f.dampings, full.values(), strict=True)}
              | {"grad_span_fraction": span[0]}
              | {ng_span_key(d): a for d, a in zip((0.0, *f.dampings), span[1:], strict=True)}
              | align)
    prefix = FISHER_KIND_PREFIX[kind]
    return ([(MODEL_SCOPE, f"{prefix}_{m}", float(x)) for m, x in values.items()]
            + [(scope, f"{prefix}_{m}", x) for scope, m, x in per])


def fisher_probe(f: FisherProbeParams) -> Probe:
    """A probe logging :func:`fisher_triples` for each Fisher kind on the fixed batch
    :func:`~gradience.telemetry.probes.measurement_batch`; it keeps the weight matrices it sees at
    its first call (step 0: W₀) as the null of the alignment. Sampled labels use seed ``seed + step``."""
    w0: dict[str, Tensor] = {}

    def probe(ctx: StepContext) -> Iterable[tuple[str, str, float]]:
        if not w0:
            w0.update({n: p.detach().clone() for n, p in ctx.model.named_parameters() if p.requires_grad and p.ndim == 2})
        batch = measurement_batch(ctx.split, f.measure_batch)
        out: list[tuple[str, str, float]] = []
        for kind in f.kinds:
            out += fisher_triples(ctx.model, batch, kind, f, w0, f.seed + ctx.step)
        return out

    return probe


def jobs(p: RunParams, data_dir: str) -> list[Job[RunParams]]:
    return [Job(p, r.name, s, data_dir, spec=r) for r in p.regimes for s in p.seeds]


def run_one(job: Job[RunParams]) -> RunOutput:
    """Train one regime × seed with the Fisher probe (through :func:`lm_regimes.runs.train_regime`,
    i.e. :func:`gradience.training.train`)."""
    p = job.params
    return train_regime(job, [fisher_probe(p.fisher)], p.spectra_every)
