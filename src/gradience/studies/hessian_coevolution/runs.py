"""Protocol A of seed 001 (co-evolution of the weight and Hessian spectra): the runs.

A small Llama-architecture character LM is trained by full-batch gradient descent in three
regimes (see :mod:`gradience.studies.lm_regimes.runs`): stable (control), marginal (progressive
sharpening brings λ_max to 2/η) and unstable (η ramped far past the edge until the run diverges).
All Hessian quantities are measured on the whole training set, the loss GD descends, so 2/η is
the exact stability edge.

Measurements (the training loop takes the full SVD of every weight matrix at each cadence step):

- **λ_max every step** (``cadence_every: 1`` in the default profile): :func:`edge_probe` tracks the
  top Hessian eigenpair with :func:`gradience.telemetry.curvature.lanczos_top_eigenpair`,
  warm-started from the previous step's eigenvector and stopped at a relative residual
  ``hessian.track_tol`` (``lambda_max``, ``sharpness_over_edge`` = λ_max·η/2, its residual and the
  HVPs spent are logged). Every ``hessian.full_every`` steps a *cold* ARPACK Lanczos gives the
  top-k eigenvalues and the Hutchinson trace (± standard error); when the cold λ₁ exceeds the
  tracked one beyond the residual (the tracker followed a branch that was overtaken), tracking
  restarts cold (``lambda_max_restart``); ``lambda_max_cold_gap`` records the disagreement.

The lead–lag tests of hypothesis 1 are the report side (:mod:`.analysis`, :mod:`.findings`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from pydantic import Field, model_validator

from gradience.config import Section
from gradience.studies.lm_regimes.runs import RegimeRunParams, train_regime
from gradience.studies.protocol import Job, RunOutput
from gradience.telemetry import curvature
from gradience.telemetry.probes import hessian_values, measurement_batch
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.training import Probe, StepContext


class HessianProbeParams(Section):
    top_k: int = Field(default=10, ge=2, description="cold Lanczos eigenvalues every full_every steps")
    hutchinson_probes: int = Field(default=100, ge=2)
    lanczos_tol: float = Field(default=1e-3, ge=0, lt=1, description="ARPACK relative residual tolerance")
    full_every: int = Field(default=20, ge=1, description="steps between cold top-k + trace measurements")
    track_tol: float = Field(default=1e-2, gt=0, lt=1, description="tracked λ_max: stop at ‖Hv − λv‖ ≤ tol·λ")
    track_max_hvp: int = Field(default=40, ge=2, description="HVPs per tracked step at most")
    measure_batch: int = Field(default=0, ge=0, description="first n training windows; 0: all (GD's loss)")
    seed: int = 0


class RunParams(RegimeRunParams):
    hessian: HessianProbeParams = HessianProbeParams()

    @model_validator(mode="after")
    def _full_on_cadence(self) -> RunParams:
        if self.hessian.full_every % self.cadence_every:
            raise ValueError(f"hessian.full_every={self.hessian.full_every} must be a multiple of "
                             f"cadence_every={self.cadence_every} (cold measurements fall on cadence steps)")
        return self


DATA = ("text",)
TABLES = ("telemetry", "spectra")
EDGE_KEYS = ("hessian_lambda_max", "edge_2_over_lr", "sharpness_over_edge")


def jobs(p: RunParams, data_dir: str) -> list[Job[RunParams]]:
    return [Job(p, r.name, s, data_dir, spec=r) for r in p.regimes for s in p.seeds]


def edge_probe(h: HessianProbeParams) -> Probe:
    """λ_max tracked at every cadence step (warm-started Lanczos), the cold top-k and trace every
    ``h.full_every`` steps, on :func:`measurement_batch` ``(split, h.measure_batch)``."""
    state: dict[str, torch.Tensor | None] = {"v": None}

    def track(hvp: curvature.HVP, theta: torch.Tensor, v0: torch.Tensor | None) -> curvature.Eigenpair | None:
        if v0 is None:
            v0 = torch.randn(theta.shape, generator=torch.Generator().manual_seed(h.seed), dtype=theta.dtype)
            v0 = v0.to(theta.device)
        try:
            ep = curvature.lanczos_top_eigenpair(hvp, v0, h.track_tol, max_iter=h.track_max_hvp)
        except (np.linalg.LinAlgError, ValueError):
            return None
        return ep if math.isfinite(ep.value) and bool(torch.isfinite(ep.vector).all()) else None

    def probe(ctx: StepContext) -> Iterable[tuple[str, str, float]]:
        batch = measurement_batch(ctx.split, h.measure_batch)
        loss_fn, theta = curvature.make_loss_fn(ctx.model, batch)
        hvp = curvature.hvp_fn(loss_fn, theta)
        ep = track(hvp, theta, state["v"])
        out: dict[str, float] = {}
        if ctx.step % h.full_every == 0:
            cold = hessian_values(ctx.model, batch, ctx.lr, h.top_k, h.hutchinson_probes, h.lanczos_tol, h.seed)
            out |= {k: v for k, v in cold.items() if k not in EDGE_KEYS}
            top1 = cold["hessian_top1"]
            restart = ep is not None and top1 > ep.value + max(ep.residual, h.track_tol * abs(ep.value))
            out["lambda_max_restart"] = float(restart)
            if restart:
                n_before = ep.n_hvp
                ep = track(hvp, theta, None)
                if ep is not None:
                    ep = curvature.Eigenpair(ep.value, ep.vector, ep.residual, ep.n_hvp + n_before)
            out["lambda_max_cold_gap"] = (top1 - ep.value) / abs(top1) if ep is not None else math.nan
        state["v"] = ep.vector if ep is not None else None
        if ep is None:
            out |= {"lambda_max": math.nan, "sharpness_over_edge": math.nan, "lambda_max_failed": 1.0}
        else:
            out |= {"lambda_max": ep.value, "lambda_max_residual": ep.residual, "lambda_max_n_hvp": float(ep.n_hvp),
                    "lambda_max_failed": 0.0} | curvature.sharpness_vs_edge(ep.value, ctx.lr)
            del out["hessian_lambda_max"]
        return [(MODEL_SCOPE, k, float(v)) for k, v in out.items()]

    return probe


def run_one(job: Job[RunParams]) -> RunOutput:
    """Train one regime × seed with :func:`edge_probe` (through :func:`lm_regimes.runs.train_regime`,
    i.e. :func:`gradience.training.train`)."""
    p = job.params
    return train_regime(job, [edge_probe(p.hessian)], p.spectra_every)
