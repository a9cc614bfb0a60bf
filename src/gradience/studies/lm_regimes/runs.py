"""Character-level language modelling under stable / marginal / unstable training (Protocols A, C).

Shared by the ``hessian_coevolution`` and ``fisher_geometry`` studies (and the model and data of
``gradient_rank``); this module is their training side, :mod:`.analysis` the report side.

- Task: :func:`gradience.tasks.text.char_lm_split` windows of a corpus (``data/text/<corpus>.txt``
  offline, or a ``datasets`` corpus such as ``tiny_shakespeare`` in the paper profile).
- Model: :func:`gradience.models.transformer.tiny_llama` in :class:`CausalLM`, with *eager*
  attention: PyTorch's fused CPU attention kernel has neither a forward-mode nor a double-backward
  derivative, and both Hessian-vector products and per-sample gradients need one.
- Optimiser: full-batch gradient descent (``optimizer: sgd``, ``batch_size`` 0). For GD the edge of
  stability is exactly λ_max(H) = 2/η (Cohen et al. 2021), so the regimes are defined against it;
  with Adam the threshold applies to the preconditioned Hessian, which the probes do not see.
- Learning rates are absolute, or (``lr_unit: initial_edge``) fractions of the initial edge
  2/λ_max(θ₀), which carries a regime across model sizes; every run records λ_max(θ₀) and η.
- Regimes: ``stable`` (small η, gradient clipping), ``marginal`` (η for which progressive
  sharpening brings λ_max to 2/η within the run), ``unstable`` (η too high: here a linear ramp
  of η up to a value far past the edge, ``ramp: true``, so the run approaches instability
  gradually and its lead-up is observable).
- Divergence is an outcome: the training loop stops at a non-finite loss or gradient
  (``diverged``); this module also stops a run whose training loss exceeds ``blowup_factor`` × its
  value at step 0 (``blew_up``: GD on a transformer often overflows to a finite but meaningless
  state first). Both count as divergence in the analyses; the step is ``diverged_at``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from gradience.config import Section
from gradience.models.transformer import CausalLM, tiny_llama
from gradience.studies.protocol import Job, RunOutput, unique_names
from gradience.studies.protocol import RunParams as BaseRunParams
from gradience.tasks import Split
from gradience.tasks.text import HUB_CORPORA, char_lm_split, load_corpus
from gradience.telemetry import curvature
from gradience.telemetry.recorder import MODEL_SCOPE, Cadence, Recorder
from gradience.training import Probe, TrainConfig, resolve_device, train

RegimeKind = Literal["stable", "marginal", "unstable"]
DIVERGED_OUTCOMES = ("diverged", "blew_up")
MATRIX_SUMMARIES = {"spectral_norm_max": ("spectral_norm", "max"), "stable_rank_mean": ("stable_rank", "mean"),
                    "alpha_mean": ("alpha", "mean")}  # model-level column → (per-matrix metric, aggregate)


class LMModel(Section):
    d_model: int = Field(ge=2)
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    d_mlp: int = Field(ge=1)


class Regime(Section):
    name: str
    kind: RegimeKind
    lr: float = Field(gt=0, description="learning rate η (the peak of the ramp when ramp is true)")
    lr_unit: Literal["absolute", "initial_edge"] = Field(
        default="absolute", description="initial_edge: η = lr · 2/λ_max(θ₀), λ_max on the training set at init")
    ramp: bool = Field(default=False, description="η rises linearly from η/steps to η over the run")
    grad_clip: float = Field(default=0.0, ge=0, description="global-norm clipping; 0: none")


class LMData(Section):
    corpus: str = Field(description="data/text/<corpus>.txt, or a datasets corpus (paper profile)")
    context: int = Field(ge=2, le=4096)
    n_train: int = Field(ge=2, description="training windows; GD uses all of them every step")
    n_test: int = Field(ge=1)

    @field_validator("corpus")
    @classmethod
    def _known_corpus(cls, v: str) -> str:
        if v not in HUB_CORPORA and not v.isidentifier():
            raise ValueError(f"must be a file stem under data/text/ or one of {sorted(HUB_CORPORA)}")
        return v


class RegimeRunParams(BaseRunParams):
    """The runs keys of every char-LM regime study (hessian_coevolution, fisher_geometry)."""

    data: LMData
    model: LMModel
    regimes: list[Regime] = Field(min_length=1)
    steps: int = Field(gt=0)
    cadence_every: int = Field(gt=0, description="steps between measurements (evenly spaced: lead-lag needs it)")
    blowup_factor: float = Field(default=1.5, gt=1, description="stop when train loss > factor × its initial value")
    spectra_every: int = Field(default=0, ge=0)

    @field_validator("regimes")
    @classmethod
    def _unique(cls, v: list[Regime]) -> list[Regime]:
        unique_names([r.name for r in v], "regime names")
        return v


def lm_split(data_dir: str | Path, data: LMData, seed: int) -> tuple[Split, int]:
    """The seeded window split and the vocabulary size."""
    split, vocab = char_lm_split(load_corpus(Path(data_dir), data.corpus), data.context,
                                 data.n_train, data.n_test, seed)
    return split, len(vocab)


def build_model(vocab: int, m: LMModel, context: int, seed: int) -> CausalLM:
    torch.manual_seed(seed)
    lm = tiny_llama(vocab, m.d_model, m.n_layers, m.n_heads, m.d_mlp, max_len=context)
    lm.set_attn_implementation("eager")
    return CausalLM(lm)


def initial_sharpness(model: torch.nn.Module, split: Split, tol: float = 1e-3) -> float:
    """λ_max of the training-set Hessian at the current θ (Lanczos, top 1)."""
    loss_fn, theta = curvature.make_loss_fn(model, (split.x_train, split.y_train))
    return float(curvature.lanczos_top_eigenvalues(curvature.hessian_operator(loss_fn, theta), k=1, tol=tol).values[0])


def blowup_stop(factor: float) -> Callable[[Recorder | None, int], bool]:
    """Stop when the training loss exceeds ``factor`` × its value at step 0 (or is not finite)."""
    def stop(recorder: Recorder | None, step: int) -> bool:
        if recorder is None:
            return False
        df = recorder.frame()
        loss = df[(df.scope == MODEL_SCOPE) & (df.metric == "train_loss")].set_index("step")["value"]
        return bool(step > 0 and not loss[step] <= factor * loss[0])

    return stop


@dataclass
class RegimeRun:
    """One regime × seed set up for training: its data on the device, the model, the initial
    sharpness λ_max(θ₀), the learning rate (in units of the initial edge 2/λ_max(θ₀) where the regime
    says so) and the training configuration (full-batch GD; the ramp is a linear warm-up over the run)."""

    split: Split
    model: CausalLM
    lambda0: float
    lr: float
    cfg: TrainConfig


def setup_regime(job: Job[RegimeRunParams]) -> RegimeRun:
    p, r = job.params, job.spec
    device = resolve_device(p.device)
    split, vocab = lm_split(job.data_dir, p.data, job.seed)
    split = split.to(device)
    model = build_model(vocab, p.model, p.data.context, job.seed).to(device)
    lambda0 = initial_sharpness(model, split)
    lr = r.lr * 2.0 / lambda0 if r.lr_unit == "initial_edge" else r.lr
    cfg = TrainConfig(steps=p.steps, lr=lr, batch_size=0, grad_clip=r.grad_clip, seed=job.seed,
                      warmup_steps=p.steps if r.ramp else 0, optimizer="sgd")
    return RegimeRun(split, model, lambda0, lr, cfg)


def train_set_up(job: Job[RegimeRunParams], run: RegimeRun, probes: Sequence[Probe], spectra_every: int = 0,
                 lr_schedule: Callable[[int], float] | None = None) -> tuple[Recorder, dict]:
    """Train ``run`` with the stage's probes (and ``lr_schedule``, a multiplier of the base η per
    update, where given); the recorder and the run record (a run stopped by the blow-up rule is
    ``blew_up``)."""
    p, r = job.params, job.spec
    recorder = Recorder(job.run_id)
    result = train(run.model, run.split, run.cfg, recorder=recorder, cadence=Cadence(p.cadence_every, p.steps),
                   probes=probes, spectra_every=spectra_every, device=p.device,
                   stop=blowup_stop(p.blowup_factor), lr_schedule=lr_schedule)
    outcome, at = result.outcome, result.diverged_at
    if outcome == "completed" and result.steps_run < p.steps:
        outcome, at = "blew_up", result.steps_run
        recorder.log(at, MODEL_SCOPE, "blew_up", 1.0)
    lr, lambda0 = run.lr, run.lambda0
    record = {
        "kind": r.kind, "lr": lr, "lr_param": r.lr, "lr_unit": r.lr_unit, "lambda_max_init": lambda0,
        "lr_over_initial_edge": lr * lambda0 / 2.0, "ramp": r.ramp, "grad_clip": r.grad_clip,
        "optimizer": "GD (SGD, full batch, no momentum)", "task": f"char_lm:{p.data.corpus}",
        "data": p.data.model_dump_json(), "model": p.model.model_dump_json(), "steps": p.steps,
        "cadence_every": p.cadence_every, "blowup_factor": p.blowup_factor, "outcome": outcome,
        "diverged_at": float(at) if at is not None else math.nan,
        "n_params": sum(q.numel() for q in run.model.parameters()),
    }
    return recorder, record


def train_regime(job: Job[RegimeRunParams], probes: Sequence[Probe], spectra_every: int = 0) -> RunOutput:
    """Train one regime × seed (``job.spec``: its :class:`Regime`) with the stage's probes;
    telemetry, spectra and the run record. ``job.params`` carries ``data``, ``model``, ``steps``,
    ``cadence_every`` and ``blowup_factor``."""
    recorder, record = train_set_up(job, setup_regime(job), probes, spectra_every)
    return RunOutput({"telemetry": recorder.frame(), "spectra": recorder.spectra_frame()}, record)
