"""Protocol D of seed 001: rank evolution of every layer of an MLP, a CNN and a transformer.

Families: an MLP on the flattened 8×8 digits, a CNN (:class:`~gradience.models.cnn.DigitsCNN`,
BatchNorm) on the digit images, and a decoder-only transformer (Llama block) on character-level
Shakespeare, each trained with AdamW over several seeds. One run per family × *spike size* ×
seed: size ×1 is the healthy run; a size ``k > 1`` multiplies the learning rate by ``k`` for the
window ``spike`` (``t_s ≤ t < t_e``, on the cadence grid). Runs of one seed share data and
initialisation, so a spike run is the healthy run until ``t_s``.

**Three matrices per layer** (every weight matrix, conv kernels matricised), at every cadence
step: ``weight`` = W (its spectral metrics come from the training loop's telemetry); ``change`` =
W − W₀, the weight change since initialisation (from step 1); ``gradient`` = ∂L/∂W of the
mini-batch that produces the next update (what the optimiser sees, not the full-batch gradient).
For each, the effective rank exp(H(σ/Σσ)) (also stable rank and Frobenius norm; table
``changes``). W starts near its largest possible effective rank at random initialisation, so an
expansion of W's rank has little room; W − W₀ starts from a rank-one-like first update and shows
the structure training adds.

**Loss plateau** (``report.plateau``). With ``s`` the train loss on the even cadence grid,
smoothed by the centred rolling median of ``criterion.smoothing_window`` points, a run *reached
the plateau* iff over its last ``window_fraction`` of steps ``max s − min s ≤ max_progress ·
(s_0 − min s)``: the loss moves by at most that share of its total decrease.

**Hypothesis-4 criterion** (seed 001: "effective rank follows expansion → compression →
plateau"). Let ``r_0..r_K`` be one trajectory at its cadence steps ``t_0 < … < t_K = T`` (from
step 1 for W − W₀) and ``s`` its centred rolling median over ``smoothing_window`` points (ends
shrink the window). The *plateau window* is ``t ≥ (1 − f)·T`` with ``f = plateau_fraction``;
``L`` is the mean of ``s`` over it. With ``x = expand_min``, ``y = compress_min``, ``w =
plateau_tol``:

- *expansion*: the peak ``s_p = max s`` lies strictly inside the run, ``t_0 < t_p < (1 − f)·T``,
  and ``s_p ≥ (1 + x)·s_0``;
- *compression*: ``L ≤ (1 − y)·s_p``;
- *plateau*: ``max s − min s ≤ w·L`` over the plateau window.

Hypothesis 4 holds for a trajectory iff all three hold. Each trajectory also gets one shape
label, the first that applies: ``expansion→compression→plateau``; ``expansion→compression``;
``monotone compression`` (§4: ``s`` never rises more than ``x`` above its running minimum and
``L ≤ (1 − y)·s_0``); ``compression→expansion``; ``expansion`` (``L ≥ (1 + x)·s_0``);
``compression`` (``L ≤ (1 − y)·s_0``); ``flat``. A claim "holds in a family" when at least
``holds_fraction`` of its healthy layer × seed trajectories satisfy it. Budgets, per family: every
healthy run reached the loss plateau; for W also ≥ ``holds_fraction`` of the trajectories *moved*
(``‖W_T − W₀‖_F / ‖W₀‖_F ≥ move_min``) and had *room to expand* (``r_0 ≤ r_max / (1 + x)``,
``r_max`` = W₀'s numerical rank, min(m, n) at a random initialisation). The claims must hold in
every family, so one family that had its budgets and fails refutes them.

**Falsifier 4** ("rank dynamics are noisy/random, not structured"): per family, layer and matrix,
the between-seed agreement ``R² = 1 − Σ_s,t (r_st − r̄_t)² / Σ_s,t (r_st − r̄)²`` over the
healthy runs (``r̄_t`` the seed mean at step t). Layers whose seed-mean trajectory moves less than
``plateau_tol`` of its mean are *flat* and left out. Structured: R² ≥ ``r2_min``.

**LR spike, dose–response.** *Setback* of a run: ``max_i (ℓ_i − m_i) / (ℓ_0 − m_i)`` over cadence
steps ``t_i ≥ burn_in_fraction·T`` (ℓ the train loss, ``m_i = min_{j<i} ℓ_j``: the share of the
progress so far that is lost); *destabilised*: setback ≥ ``setback_min`` or diverged. A spike size
*destabilises* a family when at least ``holds_fraction`` of its seeds are destabilised. *Rank
response*: a matrix's effective rank in the spike run over the healthy run (same seed, layer),
minus one, at ``t_e`` (right after the spike) and at ``T``. *Rank jump*: the largest
``|Δ log r_eff(W)|`` over layers across the spike window ``[t_s, t_e]``; its null is the largest
such change the healthy run of the same seed shows over any window of the same length on the even
grid after the burn-in. Inflation holds in a family when ≥ ``holds_fraction`` of the layer × run
pairs of destabilised runs at destabilising sizes have a W response ≥ ``expand_min``; a sudden
change, when ≥ ``holds_fraction`` of those runs jump beyond their healthy null.

**Stages.** ``rank_survey_runs`` trains the grid; :func:`analyse` computes everything above from
the tables (criteria, burn-in and thresholds are ``report`` keys: changing them reruns only the
notebook).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt, field_validator, model_validator

from gradience.config import Section
from gradience.studies import base
from gradience.telemetry.recorder import MODEL_SCOPE, Cadence, Recorder
from gradience.telemetry.spectral import (
    singular_values,
    spectral_metrics_from_sigma,
    weight_matrices,
)
from gradience.training import TrainConfig, train

Family = Literal["mlp", "cnn", "transformer"]
MATRICES = ("weight", "change", "gradient")  # W, W − W₀, ∂L/∂W (mini-batch)
LABELS = {"weight": "W", "change": "W − W₀", "gradient": "∂L/∂W"}
CHANGE_METRICS = ("effective_rank", "stable_rank", "frobenius_norm")
ECP = "expansion→compression→plateau"
MONOTONE = "monotone compression"
SHAPES = (ECP, "expansion→compression", MONOTONE, "compression→expansion", "expansion", "compression", "flat")
RUN_COST = {"transformer": 3, "cnn": 2, "mlp": 1}  # submit the slow runs first


class FamilyParams(Section):
    steps: int = Field(gt=0)
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

    @field_validator("sizes")
    @classmethod
    def _sizes_above_one(cls, v: list[float]) -> list[float]:
        if any(s <= 1 for s in v):
            raise ValueError(f"every spike size must be > 1 (×1 is the healthy run), got {v}")
        base.unique_names([f"{s:g}" for s in v], "spike sizes")
        return sorted(v)

    @model_validator(mode="after")
    def _inside_run(self) -> Spike:
        if self.start_fraction + self.duration_fraction >= 1:
            raise ValueError("start_fraction + duration_fraction must be < 1 (the spike must end before the run)")
        return self


class Criterion(Section):
    smoothing_window: int = Field(default=5, ge=1)
    expand_min: float = Field(default=0.05, gt=0)
    compress_min: float = Field(default=0.05, gt=0, lt=1)
    plateau_fraction: float = Field(default=0.2, gt=0, lt=1)
    plateau_tol: float = Field(default=0.05, gt=0)


class Plateau(Section):
    window_fraction: float = Field(default=0.2, gt=0, lt=1, description="the last share of the run checked")
    max_progress: float = Field(default=0.025, gt=0, lt=1,
                                description="largest loss movement in the window, as a share of the total decrease")


class RunParams(base.RunParams):
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
        base.unique_names(v, "families")
        return v

    def family(self, name: str) -> FamilyParams:
        return getattr(self, name)

    @property
    def sizes(self) -> list[float]:
        """Every spike size, the healthy ×1 first."""
        return [1.0, *self.spike.sizes]


class ReportParams(base.ReportParams):
    criterion: Criterion = Criterion()
    plateau: Plateau = Plateau()
    move_min: float = Field(default=0.1, gt=0, description="‖W_T − W₀‖_F / ‖W₀‖_F a layer needs to count as moved")
    burn_in_fraction: float = Field(default=0.1, ge=0, lt=1)
    setback_min: float = Field(default=0.1, gt=0)
    r2_min: float = Field(default=0.8, gt=0, le=1)
    holds_fraction: float = Field(default=0.5, gt=0, le=1)
    min_seeds: int = Field(default=3, ge=2, description="seeds a spread over seeds needs")


DATA = ("digits", "text")
TABLES = ("telemetry", "changes")


def arm_name(size: float) -> str:
    """``x1`` (healthy), ``x10``, …"""
    return f"x{size:g}"


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


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    """Every family × spike size × seed (run id ``family/x<size>/s<seed>``), the slow families first."""
    grid = [base.Job(p, f"{family}/{arm_name(size)}", s, data_dir, spec=(family, size))
            for family in p.families for size in p.sizes for s in p.seeds]
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


def run_one(job: base.Job) -> base.RunOutput:
    """Train one (family, spike size, seed): its telemetry, its W − W₀ / gradient spectra, its record."""
    p, (family, size) = job.params, job.spec
    fp = p.family(family)
    split, model = build_split_and_model(family, fp, job.seed, Path(job.data_dir))
    every = cadence_every(fp.steps, p.cadence_points)
    window = family_spike_window(p, family)
    cfg = TrainConfig(steps=fp.steps, lr=fp.lr, weight_decay=fp.weight_decay, batch_size=fp.batch_size,
                      betas=fp.betas, seed=job.seed, eval_max_examples=fp.eval_max_examples)
    recorder, probe = Recorder(job.run_id), ChangeProbe(model)
    result = train(model, split, cfg, recorder=recorder, cadence=Cadence(every, fp.steps, p.cadence_log_points),
                   probes=[probe], device=p.device, lr_schedule=lr_multiplier(window, size) if size != 1 else None)
    if result.outcome == "completed":
        probe.finish(model, fp.steps)
    record = {
        "family": family, "arm": arm_name(size), "lr_spike": size, "role": "healthy" if size == 1 else "spike",
        "event_start": window[0], "event_end": window[1], "cadence_every": every, "steps": fp.steps,
        "lr": fp.lr, "weight_decay": fp.weight_decay, "batch_size": fp.batch_size, "betas": str(fp.betas),
        "optimizer": "AdamW", "task": "char_lm_" + fp.corpus if isinstance(fp, TransformerParams) else "digits",
        "model": fp.model_dump_json(), "outcome": result.outcome, "diverged_at": result.diverged_at,
        **{f"final_{k}": v for k, v in result.final.items()},
    }
    return base.RunOutput({"telemetry": recorder.frame(), "changes": probe.frame(job.run_id)}, record)


# --------------------------------------------------------------------------- trajectory shapes


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling median over ``window`` points; the window shrinks at the ends."""
    return pd.Series(values, dtype=float).rolling(window, center=True, min_periods=1).median().to_numpy()


def trajectory_shape(steps: np.ndarray, values: np.ndarray, c: Criterion) -> dict[str, float | bool | str]:
    """The hypothesis-4 criterion and the shape label of one trajectory (module docstring)."""
    t = np.asarray(steps, dtype=float)
    s = smooth(np.asarray(values, dtype=float), c.smoothing_window)
    if s.size < 3:
        raise ValueError(f"a trajectory needs at least 3 points, got {s.size}")
    plateau_start = (1 - c.plateau_fraction) * t[-1]
    tail = s[t >= plateau_start]
    level = float(tail.mean())
    s0, ip, im = float(s[0]), int(np.argmax(s)), int(np.argmin(s))
    inside = lambda i: 0 < i and t[i] < plateau_start  # noqa: E731
    expanded = inside(ip) and s[ip] >= (1 + c.expand_min) * s0
    compressed = expanded and level <= (1 - c.compress_min) * s[ip]
    plateau = bool(tail.max() - tail.min() <= c.plateau_tol * level)
    rebound = float(np.max(s / np.minimum.accumulate(s)) - 1)
    monotone = rebound <= c.expand_min and level <= (1 - c.compress_min) * s0
    dip = inside(im) and s[im] <= (1 - c.compress_min) * s0 and level >= (1 + c.expand_min) * s[im]
    labels = [expanded and compressed and plateau, expanded and compressed, monotone, dip,
              level >= (1 + c.expand_min) * s0, level <= (1 - c.compress_min) * s0, True]
    return {"start": s0, "peak": float(s[ip]), "peak_step": float(t[ip]), "trough": float(s[im]),
            "trough_step": float(t[im]), "end_level": level, "rebound": rebound,
            "expanded": bool(expanded), "compressed": bool(compressed), "plateau": plateau,
            "hypothesis4": bool(expanded and compressed and plateau), "monotone": bool(monotone),
            "label": SHAPES[labels.index(True)]}


def short_name(scope: str) -> str:
    """``lm.model.layers.0.self_attn.q_proj.weight`` → ``layers.0.q_proj`` (for figure labels)."""
    for prefix in ("lm.model.", "lm."):
        scope = scope.removeprefix(prefix)
    return scope.replace("self_attn.", "").replace("mlp.", "").removesuffix(".weight")


def rank_frame(telemetry: pd.DataFrame, changes: pd.DataFrame, runs: pd.DataFrame,
               metric: str = "effective_rank") -> pd.DataFrame:
    """One metric of every weight matrix, of W, W − W₀ and the gradient: ``run, step, scope, matrix,
    value`` plus the run's family, arm, spike size and seed."""
    w = telemetry[(telemetry["metric"] == metric) & (telemetry["scope"] != MODEL_SCOPE)]
    w = w[["run", "step", "scope", "value"]].assign(matrix="weight")
    c = changes[changes["metric"] == metric][["run", "step", "scope", "matrix", "value"]] if len(changes) else None
    frame = pd.concat([w, c], ignore_index=True) if c is not None else w
    frame["matrix"] = frame["matrix"].astype(str)
    return frame.merge(runs[["run", "family", "arm", "lr_spike", "role", "seed"]], on="run")


def layer_table(telemetry: pd.DataFrame, changes: pd.DataFrame, runs: pd.DataFrame, expand_min: float) -> pd.DataFrame:
    """Per (run, layer): ``r_max`` (W₀'s numerical rank), ``r0`` (W₀'s effective rank), ``room``
    (``r0 ≤ r_max / (1 + expand_min)``) and ``moved`` = ‖W_T − W₀‖_F / ‖W₀‖_F."""
    tel = telemetry[telemetry["scope"] != MODEL_SCOPE]
    at0 = tel[tel["step"] == 0].pivot_table(index=["run", "scope"], columns="metric", values="value")
    out = pd.DataFrame({"r_max": at0["numerical_rank"], "r0": at0["effective_rank"], "w0_norm": at0["frobenius_norm"]})
    out["room"] = out["r0"] <= out["r_max"] / (1 + expand_min)
    last = pd.Series(dtype=float)
    if len(changes):
        ch = changes[(changes["matrix"] == "change") & (changes["metric"] == "frobenius_norm")]
        last = ch.sort_values("step").groupby(["run", "scope"])["value"].last()
    out["moved"] = last.reindex(out.index) / out["w0_norm"]
    return out.reset_index()


def shapes(ranks: pd.DataFrame, runs: pd.DataFrame, c: Criterion) -> pd.DataFrame:
    """The criterion and label of every (run, layer, matrix) effective-rank trajectory of completed runs."""
    done = runs[runs["outcome"] == "completed"]
    rows = []
    for (run, scope, matrix), g in ranks[ranks["run"].isin(done["run"])].groupby(["run", "scope", "matrix"], sort=False):
        g = g.sort_values("step")
        rows.append({"run": run, "scope": scope, "matrix": matrix,
                     **trajectory_shape(g["step"].to_numpy(), g["value"].to_numpy(), c)})
    return done[["run", "family", "arm", "lr_spike", "role", "seed"]].merge(pd.DataFrame(rows), on="run")


def between_seed_r2(matrix: np.ndarray) -> float:
    """``1 − SS_within / SS_total`` of a seeds × steps matrix (1: every seed traces the same curve)."""
    m = np.asarray(matrix, dtype=float)
    total = ((m - m.mean()) ** 2).sum()
    return float(1 - ((m - m.mean(axis=0)) ** 2).sum() / total) if total > 0 else math.nan


def seed_agreement(ranks: pd.DataFrame, runs: pd.DataFrame, c: Criterion) -> pd.DataFrame:
    """Per (family, layer, matrix) of the healthy runs: between-seed R², whether it is flat, seeds used."""
    healthy = runs[(runs["role"] == "healthy") & (runs["outcome"] == "completed")]
    rows = []
    for (family, scope, matrix), g in ranks[ranks["run"].isin(healthy["run"])].groupby(
            ["family", "scope", "matrix"], sort=False):
        m = g.pivot_table(index="seed", columns="step", values="value").dropna(axis=1).to_numpy()
        mean = m.mean(axis=0)
        flat = bool(mean.max() - mean.min() < c.plateau_tol * mean.mean())
        rows.append({"family": family, "scope": scope, "matrix": matrix, "r2": between_seed_r2(m), "flat": flat,
                     "n_seeds": len(m)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- loss plateau and instability


def loss_plateau(steps: np.ndarray, loss: np.ndarray, every: int, window: int, p: Plateau) -> float:
    """``(max s − min s)`` over the last ``window_fraction`` of the run ÷ ``(s_0 − min s)``: how far the
    smoothed train loss still moves at the end, as a share of its total decrease (``nan`` if it never
    decreased). ``s``: the loss on the even grid (multiples of ``every``, and the last step), rolling
    median of ``window``."""
    steps, loss = np.asarray(steps), np.asarray(loss, dtype=float)
    grid = (steps % every == 0) | (steps == steps[-1])
    t, s = steps[grid], smooth(loss[grid], window)
    drop = s[0] - s.min()
    if not drop > 0:
        return math.nan
    tail = s[t >= (1 - p.window_fraction) * steps[-1]]
    return float((tail.max() - tail.min()) / drop)


def setback(steps: np.ndarray, loss: np.ndarray, burn_in_step: float) -> float:
    """``max_i (ℓ_i − m_i)/(ℓ_0 − m_i)`` over ``t_i ≥ burn_in_step``, ``m_i = min_{j<i} ℓ_j`` (0 if none)."""
    steps, loss = np.asarray(steps), np.asarray(loss, dtype=float)
    best = np.minimum.accumulate(loss)[:-1]  # m_i for i = 1..K
    gain = loss[0] - best
    keep = (steps[1:] >= burn_in_step) & (gain > 0)
    if not keep.any():
        return 0.0
    return float(max(0.0, np.max((loss[1:] - best)[keep] / gain[keep])))


def window_change(steps: np.ndarray, values: np.ndarray, start: int, end: int) -> float:
    """``|log v(end) − log v(start)|``: how much a trajectory moved across ``[start, end]``."""
    v = pd.Series(np.asarray(values, dtype=float), index=np.asarray(steps))
    return float(abs(np.log(v[end]) - np.log(v[start]))) if start in v.index and end in v.index else math.nan


def max_window_change(steps: np.ndarray, values: np.ndarray, every: int, length: int, burn_in_step: float) -> float:
    """The largest ``|log v(t + length) − log v(t)|`` over even-grid ``t ≥ burn_in_step`` (the null of a rank jump)."""
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    v = pd.Series(values[steps % every == 0], index=steps[steps % every == 0])
    t = v.index[(v.index >= burn_in_step) & np.isin(v.index + length, v.index)]
    if not len(t):
        return math.nan
    return float(np.max(np.abs(np.log(v[t + length].to_numpy()) - np.log(v[t].to_numpy()))))


def run_stability(telemetry: pd.DataFrame, ranks: pd.DataFrame, runs: pd.DataFrame, p: ReportParams) -> pd.DataFrame:
    """Per run: plateau progress (and whether it reached the loss plateau), setback, destabilised,
    the W rank jump across the spike window and the largest jump over any window of that length."""
    w = ranks[ranks["matrix"] == "weight"]
    rows = []
    for rec in runs.itertuples():
        tel = telemetry[telemetry["run"] == rec.run]
        burn = p.burn_in_fraction * rec.steps
        loss = tel[(tel["scope"] == MODEL_SCOPE) & (tel["metric"] == "train_loss")].sort_values("step")
        t, ell = loss["step"].to_numpy(), loss["value"].to_numpy()
        diverged = rec.outcome == "diverged"
        progress = math.nan if diverged else loss_plateau(t, ell, rec.cadence_every, p.criterion.smoothing_window,
                                                          p.plateau)
        sb = math.inf if diverged else setback(t, ell, burn)
        jumps, nulls = [], []
        for _, g in w[w["run"] == rec.run].sort_values("step").groupby("scope"):
            gs, gv = g["step"].to_numpy(), g["value"].to_numpy()
            jumps.append(window_change(gs, gv, rec.event_start, rec.event_end))
            nulls.append(max_window_change(gs, gv, rec.cadence_every, rec.event_end - rec.event_start, burn))
        rows.append({"run": rec.run, "plateau_progress": progress,
                     "plateau_reached": bool(progress <= p.plateau.max_progress), "setback": sb,
                     "destabilised": sb >= p.setback_min,
                     "rank_jump": float(np.nanmax(jumps)) if np.isfinite(jumps).any() else math.nan,
                     "rank_jump_null": float(np.nanmax(nulls)) if np.isfinite(nulls).any() else math.nan})
    return runs.merge(pd.DataFrame(rows), on="run")


def rank_response(ranks: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per completed spike run, layer and matrix: effective rank before the spike (``t_s``), right
    after it (``t_e``) and at the end (the last step measured in both runs: the gradient has none at
    ``T``), the healthy run's (same family and seed) at ``t_e`` and at the end, and the responses
    spike / healthy − 1."""
    wide = ranks.pivot_table(index=["run", "scope", "matrix"], columns="step", values="value")
    healthy = runs[runs["role"] == "healthy"].set_index(["family", "seed"])["run"]
    rows = []
    for rec in runs[(runs["role"] == "spike") & (runs["outcome"] == "completed")].itertuples():
        h_run = healthy.get((rec.family, rec.seed))
        if h_run is None or h_run not in wide.index.get_level_values("run"):
            continue
        u, h = wide.loc[rec.run], wide.loc[h_run]
        for (scope, matrix), row in u.iterrows():
            if (scope, matrix) not in h.index:
                continue
            hr = h.loc[(scope, matrix)]
            last = row.index[row.notna() & hr.notna()].max()  # T, or the last gradient step before it
            vals = {"before": row[rec.event_start], "after": row[rec.event_end], "end": row[last],
                    "healthy_after": hr[rec.event_end], "healthy_end": hr[last]}
            rows.append({"run": rec.run, "family": rec.family, "arm": rec.arm, "lr_spike": rec.lr_spike,
                         "seed": rec.seed, "destabilised": rec.destabilised, "scope": scope, "matrix": matrix, **vals,
                         "response_after": _ratio(vals["after"], vals["healthy_after"]),
                         "response_end": _ratio(vals["end"], vals["healthy_end"])})
    return pd.DataFrame(rows)


def _ratio(a: float, b: float) -> float:
    return a / b - 1 if np.isfinite(a) and np.isfinite(b) and b != 0 else math.nan


def dose_response(runs: pd.DataFrame, response: pd.DataFrame) -> pd.DataFrame:
    """Per family × spike size × seed: setback, destabilised, plateau, rank jump, and per matrix the
    median over layers of the rank response right after the spike (``response_<matrix>``, 0 for ×1)."""
    out = runs[["family", "arm", "lr_spike", "seed", "outcome", "setback", "destabilised", "plateau_reached",
                "rank_jump", "rank_jump_null"]].copy()
    for matrix in MATRICES:
        med = (response[response["matrix"] == matrix].groupby(["family", "lr_spike", "seed"])["response_after"]
               .median() if len(response) else pd.Series(dtype=float))
        col = out.set_index(["family", "lr_spike", "seed"]).index.map(lambda k, m=med: m.get(k, math.nan))
        out[f"response_{matrix}"] = np.where(out["lr_spike"] == 1, 0.0, np.asarray(col, dtype=float))
    return out


# --------------------------------------------------------------------------- analysis


@dataclass
class Analysis:
    params: RunParams  # the runs' params, saved with the tables
    telemetry: pd.DataFrame
    runs: pd.DataFrame  # one row per run, with plateau and stability columns
    ranks: pd.DataFrame  # effective rank of W, W − W₀ and ∂L/∂W per run, layer and step
    layers: pd.DataFrame  # per (run, layer): r_max, r0, room, moved
    shapes: pd.DataFrame  # one row per (run, layer, matrix) trajectory
    agreement: pd.DataFrame
    response: pd.DataFrame  # per spike run, layer and matrix
    dose: pd.DataFrame  # per family × size × seed


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    """Plateau and stability of every run, shapes of every trajectory, between-seed agreement, the
    rank response to each spike size. Runs are put back in grid order (families, sizes, seeds)."""
    rp, tele = tables.params, tables.telemetry
    grid = {f"{f}/{arm_name(z)}/s{s}": i for i, (f, z, s) in enumerate(product(rp.families, rp.sizes, rp.seeds))}
    runs = tables.runs.sort_values("run", key=lambda r: r.map(grid), ignore_index=True)
    ranks = rank_frame(tele, tables.changes, runs)
    runs = run_stability(tele, ranks, runs, p)
    response = rank_response(ranks, runs)
    return Analysis(rp, tele, runs, ranks, layer_table(tele, tables.changes, runs, p.criterion.expand_min),
                    shapes(ranks, runs, p.criterion), seed_agreement(ranks, runs, p.criterion), response,
                    dose_response(runs, response))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean effective rank of W, W − W₀ and ∂L/∂W (over layers and seeds) and mean train loss, per
    family × spike size, against step."""
    tele = a.telemetry
    loss = tele[(tele["scope"] == MODEL_SCOPE) & (tele["metric"] == "train_loss")].merge(a.runs[["run", "family", "arm"]])
    parts = [base.step_curves(loss.rename(columns={"value": "train_loss"}), ["family", "arm"], {"train_loss": "mean"})]
    for matrix in MATRICES:
        r = a.ranks[a.ranks["matrix"] == matrix].rename(columns={"value": f"effective_rank_{matrix}"})
        parts.append(base.step_curves(r, ["family", "arm"], {f"effective_rank_{matrix}": "mean"}))
    return pd.concat(parts, ignore_index=True)


def _per_family(frame: pd.DataFrame, column: str) -> tuple[str, dict[str, float]]:
    """``"mlp 3/9, cnn 0/12"`` and the fractions, for a boolean column."""
    parts, fractions = [], {}
    for family, g in frame.groupby("family", sort=False):
        parts.append(f"{family} {int(g[column].sum())}/{len(g)}")
        fractions[str(family)] = float(g[column].mean())
    return ", ".join(parts), fractions


def _dominant_shapes(frame: pd.DataFrame) -> str:
    """``"mlp flat (6/9), cnn …"``: each family's most common shape label."""
    parts = []
    for family, g in frame.groupby("family", sort=False):
        top = g["label"].value_counts()
        parts.append(f"{family} {top.index[0]} ({top.iloc[0]}/{len(g)})")
    return ", ".join(parts)


def _pct(values: pd.Series) -> str:
    from gradience.reporting import mean_spread

    return mean_spread(100 * values, "{:+.1f}") + " %"


def healthy_budgets(a: Analysis, p: ReportParams, matrix: str, family: str) -> list:
    """What a healthy-trajectory claim needs in ``family``: every healthy run at the loss plateau; for
    W also ≥ ``holds_fraction`` of the trajectories moved and had room to expand."""
    from gradience.reporting import Budget

    healthy = a.runs[(a.runs["role"] == "healthy") & (a.runs["family"] == family)]
    pl = p.plateau
    budgets = [Budget(f"{family} healthy runs at the loss plateau (≤ {pl.max_progress:.1%} of the loss decrease in "
                      f"the last {pl.window_fraction:.0%} of steps)", int(healthy["plateau_reached"].sum()), len(healthy))]
    if matrix == "weight":
        lay = a.layers[a.layers["run"].isin(healthy["run"])]
        need = math.ceil(p.holds_fraction * len(lay))
        budgets += [Budget(f"{family} healthy W that moved ‖W_T − W₀‖/‖W₀‖ ≥ {p.move_min:g}",
                           int((lay["moved"] >= p.move_min).sum()), need),
                    Budget(f"{family} healthy W₀ with room to expand {p.criterion.expand_min:.0%} "
                           f"(r_eff(W₀) ≤ r_max / {1 + p.criterion.expand_min:g})", int(lay["room"].sum()), need)]
    return budgets


def _shape_rows(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    """A claim that must hold in every family is refuted by one family that had every budget and
    fails; it is reproduced when it holds everywhere; otherwise the short budgets decide."""
    from gradience.reporting import judged

    rows = []
    for claim, column in (("rank_survey.expansion_compression_plateau", "hypothesis4"),
                          ("rank_survey.monotone_decrease", "monotone")):
        for matrix in MATRICES:
            h = a.shapes[(a.shapes["role"] == "healthy") & (a.shapes["matrix"] == matrix)]
            if h.empty:
                rows.append(judged(claim, f"{LABELS[matrix]}: no completed healthy run", None, "nothing to classify"))
                continue
            counts, fractions = _per_family(h, column)
            budgets = {f: healthy_budgets(a, p, matrix, f) for f in fractions}
            held = [f for f, v in fractions.items() if v >= p.holds_fraction]
            decisive = [f for f, v in fractions.items() if v < p.holds_fraction and all(b.met for b in budgets[f])]
            why = (f"holds (≥ {p.holds_fraction:.0%} of layer × seed trajectories) in "
                   + (", ".join(held) if held else "no family") + f" of {len(fractions)}")
            measured = (f"{LABELS[matrix]}: {int(h[column].sum())}/{len(h)} trajectories ({counts}); "
                        f"most common shape: {_dominant_shapes(h)}")
            if decisive:
                short = [str(b) for f in fractions if f not in decisive for b in budgets[f] if not b.met]
                why += (f"; fails in {', '.join(decisive)} with every budget met"
                        + (f" (short elsewhere: {'; '.join(short)})" if short else ""))
                rows.append(judged(claim, measured, False, why, [b for f in decisive for b in budgets[f]]))
            else:
                rows.append(judged(claim, measured, len(held) == len(fractions), why,
                                   [b for f in fractions for b in budgets[f]]))
    return rows


def _structured_rows(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    from gradience.reporting import Budget, judged

    rows = []
    for matrix in MATRICES:
        ag = a.agreement[a.agreement["matrix"] == matrix] if len(a.agreement) else a.agreement
        moving = ag[~ag["flat"]] if len(ag) else ag
        seeds = int(ag["n_seeds"].min()) if len(ag) else 0
        budgets = [Budget("seeds (healthy runs)", seeds, p.min_seeds),
                   Budget(f"layers whose seed-mean trajectory moves ≥ {p.criterion.plateau_tol:.0%}", len(moving), 1)]
        if moving.empty or seeds < 2:
            rows.append(judged("rank_survey.structured_dynamics", f"{LABELS[matrix]}: no moving layer or < 2 seeds",
                               None, "between-seed agreement needs ≥ 2 seeds and a trajectory that moves", budgets))
            continue
        ok = moving["r2"] >= p.r2_min
        holds = float(ok.mean()) >= p.holds_fraction
        rows.append(judged(
            "rank_survey.structured_dynamics",
            f"{LABELS[matrix]}: between-seed R² median {moving['r2'].median():.3f}; {int(ok.sum())}/{len(moving)} "
            f"moving layers ≥ {p.r2_min:g} ({int(ag['flat'].sum())} flat layers left out)",
            holds, "seeds trace the same per-layer curve" if holds else
            "per-layer trajectories differ between seeds more than they move", budgets))
    return rows


def destabilising_sizes(a: Analysis, family: str, p: ReportParams) -> list[float]:
    """Spike sizes > 1 that destabilised at least ``holds_fraction`` of the family's seeds."""
    d = a.dose[(a.dose["family"] == family) & (a.dose["lr_spike"] > 1)]
    frac = d.groupby("lr_spike")["destabilised"].mean()
    return [float(z) for z, f in frac.items() if f >= p.holds_fraction]


def _spike_budgets(a: Analysis, family: str, p: ReportParams, sizes: list[float]) -> list:
    from gradience.reporting import Budget

    d = a.dose[a.dose["family"] == family]
    healthy = d[(d["lr_spike"] == 1) & (d["outcome"] == "completed")]
    return [Budget(f"spike sizes that destabilised ≥ {p.holds_fraction:.0%} of seeds (setback ≥ {p.setback_min:g})",
                   len(sizes), 1),
            Budget("seeds per spike size", int(d.groupby("lr_spike").size().min()), p.min_seeds),
            Budget("healthy ×1 control runs (same seeds)", len(healthy), len(a.params.seeds))]


def _spike_rows(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    from gradience.reporting import judged, mean_spread

    rows = []
    for family in a.params.families:
        d = a.dose[a.dose["family"] == family]
        sizes = destabilising_sizes(a, family, p)
        budgets = _spike_budgets(a, family, p, sizes)
        parts = []
        for size, g in d.groupby("lr_spike", sort=True):
            text = (f"×{size:g}: setback {mean_spread(g['setback'], '{:.3f}')}, "
                    f"destabilised {int(g['destabilised'].sum())}/{len(g)}")
            if size > 1:
                text += ", r_eff vs ×1 after the spike: " + ", ".join(
                    f"{LABELS[m]} {_pct(g[f'response_{m}'])}" for m in MATRICES)
            parts.append(text)
        w = a.response[(a.response["family"] == family) & (a.response["matrix"] == "weight")
                       & a.response["lr_spike"].isin(sizes) & a.response["destabilised"]] if len(a.response) else []
        inflated = float((w["response_after"] >= p.criterion.expand_min).mean()) if len(w) else math.nan
        collapsed = float((w["response_after"] <= -p.criterion.compress_min).mean()) if len(w) else math.nan
        at = ", ".join(f"×{z:g}" for z in sizes) or "none"
        why = (f"destabilising sizes: {at}; W r_eff inflated (≥ +{p.criterion.expand_min:.0%}) in "
               f"{inflated:.0%}, collapsed (≤ −{p.criterion.compress_min:.0%}) in {collapsed:.0%} of their layer × run "
               "pairs" if len(w) else "no destabilised run to read a rank response from")
        rows.append(judged("rank_survey.instability_rank_inflation", f"{family}: " + "; ".join(parts),
                           bool(len(w)) and inflated >= p.holds_fraction, why, budgets))

        null = d[d["lr_spike"] == 1].set_index("seed")["rank_jump_null"]
        spiked = d[d["lr_spike"] > 1].copy()
        spiked["beyond"] = spiked["rank_jump"] > spiked["seed"].map(null)
        hit = spiked[spiked["lr_spike"].isin(sizes) & spiked["destabilised"] & spiked["rank_jump"].notna()]
        calm = spiked[~spiked["destabilised"]]
        jumps = "; ".join(f"×{z:g} {mean_spread(g['rank_jump'], '{:.3f}')}" for z, g in d.groupby("lr_spike", sort=True))
        measured = (f"{family}: |Δ log r_eff(W)| across the spike window, max over layers: {jumps}; healthy runs' "
                    f"largest change over any window of that length: {mean_spread(null, '{:.3f}')}; beyond it in "
                    f"{int(hit['beyond'].sum())}/{len(hit)} destabilised and {int(calm['beyond'].sum())}/{len(calm)} "
                    "non-destabilised spike runs")
        frac = float(hit["beyond"].mean()) if len(hit) else math.nan
        why = (f"destabilising sizes: {at}; {frac:.0%} of their destabilised runs jump beyond the healthy null"
               if len(hit) else "no destabilised run to read a jump from")
        rows.append(judged("rank_survey.instability_sudden_change", measured,
                           bool(len(hit)) and frac >= p.holds_fraction, why, budgets))
    return rows


def findings(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    """The *Findings vs the seed* rows, every verdict from :func:`gradience.reporting.judged`.

    Shape and agreement claims: one row per matrix (W, W − W₀, ∂L/∂W); spike claims: one row per
    family, the dose–response over spike sizes in ``measured``.
    """
    return _shape_rows(a, p) + _structured_rows(a, p) + _spike_rows(a, p)


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Numbers for ``metrics.json`` (``dvc metrics diff``): run outcomes, plateau and stability per
    family × size; healthy shape fractions per family × matrix; the dose–response; layer movement;
    median between-seed R² per matrix."""
    out: dict = {"runs": {}, "shapes": {}, "dose": {}, "layers": {}, "seed_agreement_r2_median": {}}
    for (family, arm), g in a.runs.groupby(["family", "arm"], sort=False):
        out["runs"].setdefault(family, {})[arm] = {
            "final_test_acc_mean": float(g["final_test_acc"].mean()) if "final_test_acc" in g else math.nan,
            "final_train_loss_mean": float(g["final_train_loss"].mean()) if "final_train_loss" in g else math.nan,
            "plateau_progress_mean": float(g["plateau_progress"].mean()),
            "plateau_reached_runs": int(g["plateau_reached"].sum()),
            "setback_mean": float(g["setback"].replace(math.inf, np.nan).mean()),
            "destabilised_runs": int(g["destabilised"].sum()), "diverged_runs": int((g["outcome"] == "diverged").sum()),
            "rank_jump_mean": float(g["rank_jump"].mean())}
    healthy = a.shapes[a.shapes["role"] == "healthy"]
    for (family, matrix), g in healthy.groupby(["family", "matrix"], sort=False):
        out["shapes"].setdefault(family, {})[matrix] = {
            "hypothesis4_fraction": float(g["hypothesis4"].mean()), "monotone_fraction": float(g["monotone"].mean()),
            **{"n_" + label.replace("→", "_to_").replace(" ", "_"): int((g["label"] == label).sum())
               for label in SHAPES}}
    for (family, arm), g in a.dose.groupby(["family", "arm"], sort=False):
        out["dose"].setdefault(family, {})[arm] = {f"response_{m}_mean": float(g[f"response_{m}"].mean())
                                                   for m in MATRICES}
    lay = a.layers.merge(a.runs[a.runs["role"] == "healthy"][["run", "family"]], on="run")
    for family, g in lay.groupby("family", sort=False):
        out["layers"][family] = {"moved_median": float(g["moved"].median()), "room_fraction": float(g["room"].mean()),
                                 "r0_over_rmax_median": float((g["r0"] / g["r_max"]).median())}
    for matrix, g in a.agreement.groupby("matrix", sort=False) if len(a.agreement) else ():
        out["seed_agreement_r2_median"][matrix] = float(g.loc[~g["flat"], "r2"].median())
    return out
