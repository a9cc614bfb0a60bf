"""Protocol D of seed 001 (rank evolution of every layer of an MLP, a CNN and a transformer): the runs.

Families: an MLP on the flattened 8×8 digits, a CNN (:class:`~gradience.models.cnn.DigitsCNN`,
BatchNorm) on the digit images, and a decoder-only transformer (Llama block) on character-level
Shakespeare, each trained with AdamW over several seeds. One run per family × *arm* × seed: arm
×1 is the healthy run; a spike size ``k > 1`` multiplies the learning rate by ``k`` for the window
``spike`` (``t_s ≤ t < t_e``, on the cadence grid); ``kick_x<k>`` is the matched-norm control
below. Runs of one seed share data and initialisation, so a spike run is the healthy run until
``t_s``.

**Three matrices per layer** (every weight matrix, conv kernels matricised), at every cadence
step: ``weight`` = W (its spectral metrics come from the training loop's telemetry); ``change`` =
W − W₀, the weight change since initialisation (from step 1); ``gradient`` = ∂L/∂W of the
mini-batch that produces the next update (what the optimiser sees, not the full-batch gradient).
For each, the effective rank exp(H(σ/Σσ)) (also stable rank and Frobenius norm; table
``changes``). W starts near its largest possible effective rank at random initialisation, so an
expansion of W's rank has little room; W − W₀ starts from a rank-one-like first update and shows
the structure training adds.

**Matched kick** (arm ``kick_x<k>``, for the spike sizes in ``spike.kick_sizes``): the control for
"a large update moves W". Its job first retrains the spike run ×k of the same seed up to ``t_e``
without telemetry (same data order and initialisation, so the same weights) to measure that spike's
window update ``‖W(t_e) − W(t_s)‖_F`` per weight matrix; it then trains at the healthy learning rate
and, at ``t_s`` (after that step's measurements, before its update), adds to each weight matrix a
Gaussian random matrix of that norm. Cost: one run plus ``t_e / T`` of one. Free choices: Gaussian
directions (a random kick of a matrix raises its effective rank), weight matrices only (not biases
or norms), the kick at one step rather than spread over the window.

**Cooldown** (``<family>.cooldown``, optional): the learning rate falls linearly to ``factor`` of
itself between two fractions of the run and stays there; the spike must end before it starts. The
character-level transformer's loss still falls at a constant learning rate long after the budget
(pilot: 2·10³–3·10³ steps, its trend over the last 20 % still 3–5 % of its total decrease), so it is
trained the way language models are, stable then decayed, and its loss-plateau check reads the last
part, at the low rate. The digit models plateau at a constant rate and get none.

**Stages.** ``rank_survey_runs`` trains the grid (this module); :func:`.analysis.analyse` computes
the criteria (:mod:`.trajectories`) from the tables and :mod:`.findings` judges the claims
(criteria, burn-in and thresholds are ``report`` keys: changing them reruns only the notebook).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, PositiveInt, field_validator, model_validator

from gradience.config import Section
from gradience.studies.protocol import Job, RunOutput, unique_names
from gradience.studies.protocol import RunParams as BaseRunParams
from gradience.telemetry.recorder import Cadence, Recorder
from gradience.telemetry.spectral import (
    singular_values,
    spectral_metrics_from_sigma,
    weight_matrices,
)
from gradience.training import TrainConfig, train

Family = Literal["mlp", "cnn", "transformer"]
CHANGE_METRICS = ("effective_rank", "stable_rank", "frobenius_norm")
RUN_COST = {"transformer": 3, "cnn": 2, "mlp": 1}  # submit the slow runs first


class Cooldown(Section):
    """The learning rate falls linearly from ×1 at ``start_fraction`` of the run to ×``factor`` at
    ``end_fraction`` and stays there (a stable-then-decay schedule, as language models are trained)."""

    start_fraction: float = Field(gt=0, lt=1)
    end_fraction: float = Field(gt=0, le=1)
    factor: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> Cooldown:
        if self.end_fraction <= self.start_fraction:
            raise ValueError("cooldown end_fraction must be after start_fraction")
        return self

    def multiplier(self, steps: int) -> Callable[[int], float]:
        a, b = self.start_fraction * steps, self.end_fraction * steps
        return lambda step: 1.0 if step < a else self.factor if step >= b else 1 + (self.factor - 1) * (step - a) / (b - a)


class FamilyParams(Section):
    steps: int = Field(gt=0)
    cooldown: Cooldown | None = None
    lr: float = Field(gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    batch_size: int = Field(default=128, ge=0, description="0: full batch")
    betas: tuple[float, float] = (0.9, 0.999)
    eval_max_examples: int = Field(default=0, ge=0, description="0: the whole split")


class MLPParams(FamilyParams):
    widths: list[PositiveInt] = Field(min_length=1)
    train_fraction: float = Field(default=0.7, gt=0, lt=1)


class CNNParams(FamilyParams):
    channels: list[PositiveInt] = Field(min_length=1)
    d_hidden: PositiveInt = 32
    train_fraction: float = Field(default=0.7, gt=0, lt=1)


class TransformerParams(FamilyParams):
    corpus: str = "shakespeare"
    context: PositiveInt = 32
    n_train: PositiveInt = 4096
    n_test: PositiveInt = 512
    d_model: PositiveInt = 64
    n_layers: PositiveInt = 2
    n_heads: PositiveInt = 4
    d_mlp: PositiveInt = 128

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerParams:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        return self


class Spike(Section):
    start_fraction: float = Field(gt=0, lt=1)
    duration_fraction: float = Field(gt=0, lt=1)
    sizes: list[float] = Field(min_length=1, description="learning-rate multipliers (> 1); ×1 is the healthy run")
    kick_sizes: list[float] = Field(default=[], description="spike sizes that get a matched-norm random-kick control")

    @field_validator("sizes")
    @classmethod
    def _sizes_above_one(cls, v: list[float]) -> list[float]:
        if any(s <= 1 for s in v):
            raise ValueError(f"every spike size must be > 1 (×1 is the healthy run), got {v}")
        unique_names([f"{s:g}" for s in v], "spike sizes")
        return sorted(v)

    @model_validator(mode="after")
    def _inside_run(self) -> Spike:
        if self.start_fraction + self.duration_fraction >= 1:
            raise ValueError("start_fraction + duration_fraction must be < 1 (the spike must end before the run)")
        if not set(self.kick_sizes) <= set(self.sizes):
            raise ValueError(f"kick_sizes {self.kick_sizes} must be spike sizes {self.sizes}")
        unique_names([f"{s:g}" for s in self.kick_sizes], "kick sizes")
        return self


@dataclass(frozen=True)
class Arm:
    """One arm of a family: ``lr_spike`` multiplies the learning rate over the spike window (1: healthy
    lr); ``kick`` > 0: at ``t_s`` the weights get a random kick matching the update of spike size ``kick``."""

    name: str
    lr_spike: float
    kick: float = 0.0

    @property
    def role(self) -> str:
        return "kick" if self.kick else "healthy" if self.lr_spike == 1 else "spike"


class RunParams(BaseRunParams):
    families: list[Family] = Field(min_length=1)
    mlp: MLPParams
    cnn: CNNParams
    transformer: TransformerParams
    spike: Spike
    cadence_points: int = Field(default=50, ge=4, description="even cadence: every steps // cadence_points")
    cadence_log_points: int = Field(default=15, ge=0)

    @field_validator("families")
    @classmethod
    def _unique_families(cls, v: list[str]) -> list[str]:
        unique_names(v, "families")
        return v

    @model_validator(mode="after")
    def _spike_before_cooldown(self) -> RunParams:
        for name in self.families:
            cd = self.family(name).cooldown
            if cd is not None and self.spike.start_fraction + self.spike.duration_fraction > cd.start_fraction:
                raise ValueError(f"{name}: the spike window must end before the cooldown starts")
        return self

    def family(self, name: str) -> FamilyParams:
        return getattr(self, name)

    @property
    def sizes(self) -> list[float]:
        """Every spike size, the healthy ×1 first."""
        return [1.0, *self.spike.sizes]

    @property
    def arms(self) -> list[Arm]:
        """Healthy, the spike sizes, then the matched kicks (``kick_x10``, …)."""
        return ([Arm(arm_name(z), z) for z in self.sizes]
                + [Arm(kick_arm_name(z), 1.0, z) for z in self.spike.kick_sizes])


DATA = ("digits", "text")
TABLES = ("telemetry", "changes")


def arm_name(size: float) -> str:
    """``x1`` (healthy), ``x10``, …"""
    return f"x{size:g}"


def kick_arm_name(size: float) -> str:
    """``kick_x10``: the random kick matched to the update of spike size ×10."""
    return "kick_" + arm_name(size)


def cadence_every(steps: int, points: int) -> int:
    return max(1, steps // points)


def spike_window(steps: int, every: int, spike: Spike) -> tuple[int, int]:
    """``(t_s, t_e)``: spike updates are those of steps ``t_s ≤ t < t_e``; both on the cadence grid."""
    start = max(every, round(spike.start_fraction * steps / every) * every)
    end = start + max(1, round(spike.duration_fraction * steps / every)) * every
    if end >= steps:
        raise ValueError(f"spike window [{start}, {end}) does not end before step {steps}: shorten the spike")
    return start, end


def family_spike_window(p: RunParams, family: str) -> tuple[int, int]:
    """The spike window of ``family`` under ``p``."""
    steps = p.family(family).steps
    return spike_window(steps, cadence_every(steps, p.cadence_points), p.spike)


def lr_multiplier(window: tuple[int, int], factor: float) -> Callable[[int], float]:
    start, end = window
    return lambda step: factor if start <= step < end else 1.0


def lr_schedule(fp: FamilyParams, window: tuple[int, int], factor: float) -> Callable[[int], float] | None:
    """The run's learning-rate multiplier: the spike (``factor`` over ``window``) times the cooldown."""
    parts = ([lr_multiplier(window, factor)] if factor != 1 else []) + (
        [fp.cooldown.multiplier(fp.steps)] if fp.cooldown is not None else [])
    if not parts:
        return None
    return lambda step: math.prod(f(step) for f in parts)


# --------------------------------------------------------------------------- runs


class ChangeProbe:
    """A training probe: spectral metrics of W − W₀ and of the batch gradient ∂L/∂W per weight matrix.

    W₀ is copied when the probe is made (before training). Rows ``step, scope, matrix, metric,
    value`` (``matrix`` ∈ {change, gradient}) collect in :attr:`rows`; the probe logs nothing into
    the run's main telemetry. W − W₀ = 0 at step 0 and is not measured there; the gradient has no
    value at the last step ``T`` (no batch is drawn there), W − W₀ gets one from :meth:`finish`.
    """

    def __init__(self, model) -> None:
        self.initial = {name: w.detach().clone() for name, w in weight_matrices(model)}
        self.rows: list[tuple[int, str, str, str, float]] = []

    def _log(self, step: int, scope: str, matrix: str, m) -> None:
        sigma = singular_values(m)
        if sigma.size and sigma[0] > 0:
            metrics = spectral_metrics_from_sigma(sigma, tuple(m.shape))
            self.rows += [(step, scope, matrix, k, metrics[k]) for k in CHANGE_METRICS]

    def __call__(self, ctx) -> list:
        params = dict(ctx.model.named_parameters())
        for name, w in weight_matrices(ctx.model):
            if ctx.step > 0:
                self._log(ctx.step, name, "change", w.detach() - self.initial[name].to(w.device))
            if params[name].grad is not None:
                self._log(ctx.step, name, "gradient", params[name].grad.reshape(w.shape))
        return []

    def finish(self, model, step: int) -> None:
        """Log W − W₀ after the last update (the loop runs no probe at its last step, where it takes no batch)."""
        for name, w in weight_matrices(model):
            self._log(step, name, "change", w.detach() - self.initial[name].to(w.device))

    def frame(self, run: str) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=["step", "scope", "matrix", "metric", "value"])
        df.insert(0, "run", run)
        return df.astype({"run": "string", "step": "int64", "scope": "string", "matrix": "string",
                          "metric": "string", "value": "float64"})


class KickProbe:
    """A training probe that adds, at step ``at``, a random matrix of Frobenius norm ``norms[name]`` to
    each weight matrix (Gaussian direction from ``seed``); it logs nothing. It runs after the step's
    measurements and gradient, before its update."""

    def __init__(self, at: int, norms: dict[str, float], seed: int) -> None:
        self.at, self.norms, self.seed = at, norms, seed

    def __call__(self, ctx) -> list:
        if ctx.step == self.at:
            import torch

            gen = torch.Generator().manual_seed(10_000 + self.seed)
            params = dict(ctx.model.named_parameters())
            with torch.no_grad():
                for name, w in weight_matrices(ctx.model):
                    g = torch.randn(w.shape, generator=gen, dtype=w.dtype)
                    params[name].add_((self.norms[name] * g / g.norm()).reshape(params[name].shape).to(w.device))
        return []


class WeightSnapshot:
    """A probe that keeps a copy of every weight matrix at step ``at``."""

    def __init__(self, at: int) -> None:
        self.at, self.weights = at, {}

    def __call__(self, ctx) -> list:
        if ctx.step == self.at:
            self.weights = {name: w.detach().clone() for name, w in weight_matrices(ctx.model)}
        return []


def spike_update_norms(family: str, fp: FamilyParams, seed: int, data_dir: Path, window: tuple[int, int],
                       size: float, device: str) -> dict[str, float]:
    """``‖W(t_e) − W(t_s)‖_F`` per weight matrix in the spike run of ``size`` (same seed): that run's
    first ``t_e`` steps, retrained without telemetry (same data order and initialisation, so the same
    weights). ``nan`` for every matrix if it diverged before ``t_e``."""
    split, model = build_split_and_model(family, fp, seed, data_dir)
    snap = WeightSnapshot(window[0])
    cfg = TrainConfig(steps=window[1], lr=fp.lr, weight_decay=fp.weight_decay, batch_size=fp.batch_size,
                      betas=fp.betas, seed=seed, eval_max_examples=fp.eval_max_examples)
    result = train(model, split, cfg, recorder=Recorder("prefix"), cadence=Cadence(window[0], window[1]),
                   probes=[snap], device=device, lr_schedule=lr_schedule(fp, window, size))
    if result.outcome != "completed":
        return {name: float("nan") for name, _ in weight_matrices(model)}
    return {name: float((w.detach() - snap.weights[name].to(w.device)).norm()) for name, w in weight_matrices(model)}


def jobs(p: RunParams, data_dir: str) -> list[Job[RunParams]]:
    """Every family × arm × seed (run id ``family/<arm>/s<seed>``), the slow families first."""
    grid = [Job(p, f"{family}/{arm.name}", s, data_dir, spec=(family, arm))
            for family in p.families for arm in p.arms for s in p.seeds]
    return sorted(grid, key=lambda j: -RUN_COST[j.spec[0]])


def build_split_and_model(family: str, fp: FamilyParams, seed: int, data_dir: Path):
    """The seeded data split and the freshly initialised model of one run."""
    import torch

    from gradience.models.cnn import DigitsCNN
    from gradience.models.mlp import MLP
    from gradience.models.transformer import CausalLM, tiny_llama
    from gradience.tasks.digits import digits_split
    from gradience.tasks.text import char_lm_split, load_corpus

    if isinstance(fp, MLPParams):
        split = digits_split(data_dir, fp.train_fraction, seed, flatten=True)
        torch.manual_seed(seed)
        return split, MLP(split.x_train.shape[1], fp.widths, 10)
    if isinstance(fp, CNNParams):
        split = digits_split(data_dir, fp.train_fraction, seed)
        torch.manual_seed(seed)
        return split, DigitsCNN(fp.channels, fp.d_hidden, 10, image_size=split.x_train.shape[-1])
    if isinstance(fp, TransformerParams):
        split, vocab = char_lm_split(load_corpus(data_dir, fp.corpus), fp.context, fp.n_train, fp.n_test, seed)
        torch.manual_seed(seed)
        return split, CausalLM(tiny_llama(len(vocab), fp.d_model, fp.n_layers, fp.n_heads, fp.d_mlp,
                                          max_len=fp.context))
    raise ValueError(f"unknown family {family!r}")


def run_one(job: Job[RunParams]) -> RunOutput:
    """Train one (family, arm, seed): its telemetry, its W − W₀ / gradient spectra, its record. A kick arm
    first measures the matched spike run's window update (:func:`spike_update_norms`), then trains at the
    healthy learning rate with that kick at ``t_s``."""
    p, (family, arm) = job.params, job.spec
    fp = p.family(family)
    split, model = build_split_and_model(family, fp, job.seed, Path(job.data_dir))
    every = cadence_every(fp.steps, p.cadence_points)
    window = family_spike_window(p, family)
    cfg = TrainConfig(steps=fp.steps, lr=fp.lr, weight_decay=fp.weight_decay, batch_size=fp.batch_size,
                      betas=fp.betas, seed=job.seed, eval_max_examples=fp.eval_max_examples)
    recorder, probe = Recorder(job.run_id), ChangeProbe(model)
    probes, kick = [probe], {}
    if arm.kick:
        norms = spike_update_norms(family, fp, job.seed, Path(job.data_dir), window, arm.kick, p.device)
        w0 = {name: float(w.detach().norm()) for name, w in weight_matrices(model)}
        kick = {"kick_norm": float(sum(v * v for v in norms.values()) ** 0.5),
                "kick_relative": float(sum(v * v for v in norms.values()) ** 0.5
                                       / sum(v * v for v in w0.values()) ** 0.5)}
        if all(v == v for v in norms.values()):  # the matched spike run completed its window
            probes.append(KickProbe(window[0], norms, job.seed))
    result = train(model, split, cfg, recorder=recorder, cadence=Cadence(every, fp.steps, p.cadence_log_points),
                   probes=probes, device=p.device, lr_schedule=lr_schedule(fp, window, arm.lr_spike))
    if result.outcome == "completed":
        probe.finish(model, fp.steps)
    record = {
        "family": family, "arm": arm.name, "lr_spike": arm.lr_spike, "kick": arm.kick, "role": arm.role,
        "kicked": len(probes) > 1, "kick_norm": kick.get("kick_norm", 0.0),
        "kick_relative": kick.get("kick_relative", 0.0),
        "event_start": window[0], "event_end": window[1], "cadence_every": every, "steps": fp.steps,
        "lr": fp.lr, "weight_decay": fp.weight_decay, "batch_size": fp.batch_size, "betas": str(fp.betas),
        "optimizer": "AdamW", "task": "char_lm_" + fp.corpus if isinstance(fp, TransformerParams) else "digits",
        "model": fp.model_dump_json(), "outcome": result.outcome, "diverged_at": result.diverged_at,
        **{f"final_{k}": v for k, v in result.final.items()},
    }
    return RunOutput({"telemetry": recorder.frame(), "changes": probe.frame(job.run_id)}, record)
