"""Protocol D of seed 001: rank evolution of every layer of an MLP, a CNN and a transformer.

Families: an MLP on the flattened 8×8 digits, a CNN (:class:`~gradience.models.cnn.DigitsCNN`) on
the digit images, and a decoder-only transformer (Llama block) on character-level Shakespeare.
Each family is trained in several *arms* × seeds: one ``healthy`` arm, and ``unstable`` arms
that induce instability by a learning-rate spike (the learning rate × ``lr_spike`` for the
window ``spike``) and/or by removing normalisation (BatchNorm in the CNN, LayerNorm in the MLP,
RMSNorm in the transformer). The training loop records, per weight matrix (conv kernels
matricised) and cadence step, effective rank, stable rank, nuclear norm, the power-law exponent
α and κ (:mod:`gradience.telemetry.spectral`).

**Hypothesis-4 criterion** (seed 001: "effective rank follows expansion → compression →
plateau"). Let ``r_0..r_K`` be one layer's effective rank at its cadence steps ``t_0 = 0 < … <
t_K = T`` and ``s`` the centred rolling median of ``r`` over ``smoothing_window`` cadence points
(in cadence index, ends shrink the window). The *plateau window* is ``t ≥ (1 − f)·T`` with
``f = plateau_fraction``; ``L`` is the mean of ``s`` over it. With ``x = expand_min``,
``y = compress_min`` and ``w = plateau_tol``:

- *expansion*: the peak ``s_p = max s`` lies strictly inside the run, ``0 < t_p < (1 − f)·T``,
  and ``s_p ≥ (1 + x)·s_0``;
- *compression*: ``L ≤ (1 − y)·s_p``;
- *plateau*: ``max s − min s ≤ w·L`` over the plateau window.

Hypothesis 4 holds for a trajectory iff all three hold. Each trajectory also gets exactly one
shape label, the first that applies: ``expansion→compression→plateau``;
``expansion→compression`` (no plateau); ``monotone compression`` (seed 001 §4, "smooth,
monotonically decreasing": ``s`` never rises more than ``x`` above its running minimum and
``L ≤ (1 − y)·s_0``); ``compression→expansion`` (a trough ``s_m ≤ (1 − y)·s_0`` with
``0 < t_m < (1 − f)·T`` and ``L ≥ (1 + x)·s_m``); ``expansion`` (``L ≥ (1 + x)·s_0``);
``compression`` (``L ≤ (1 − y)·s_0``); ``flat``. A hypothesis "holds in a family" when at least
``holds_fraction`` of its healthy layer × seed trajectories satisfy it.

**Falsifier 4** ("rank dynamics are noisy/random, not structured"): per family and layer, the
between-seed agreement ``R² = 1 − Σ_s,t (r_st − r̄_t)² / Σ_s,t (r_st − r̄)²`` (``r̄_t`` the seed
mean at step t, ``r̄`` the grand mean) over the healthy arm. Layers whose seed-mean trajectory
moves less than ``plateau_tol`` of its mean are *flat* and left out (R² of a flat line measures
only noise). Structured: R² ≥ ``r2_min``.

**Instability.** Healthy and unstable runs of one seed share data and initialisation, so a spike
arm is identical to the healthy arm up to the spike start ``t_s`` (both aligned to the cadence
grid). *Setback* of a run: ``max_i (ℓ_i − m_i) / (ℓ_0 − m_i)`` over cadence steps
``t_i ≥ burn_in_fraction·T``, with ℓ the train loss and ``m_i = min_{j<i} ℓ_j`` (the fraction of
the progress so far that is lost); a run is *destabilised* when its setback ≥ ``setback_min``
or it diverged. *Rank signature*: a metric of the unstable arm over the healthy arm, same seed and
layer, minus one, right after the event (the spike end ``t_e``; the last step for arms without a
spike) and at the last step. *Sudden change*: the largest ``|Δ log r|`` between consecutive
points of the even cadence grid after the burn-in, maximised over layers; its separation between
unstable and healthy runs of a family is the AUC ``P(jump_unstable > jump_healthy)``
(Mann–Whitney U / n₁n₂, from scipy).

**Stages.** ``rank_survey_runs`` trains the grid and writes the telemetry and one row per run;
:func:`analyse` computes everything above from those tables (criterion, burn-in and thresholds
are ``report`` keys, so changing them reruns only the notebook).
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
from scipy.stats import mannwhitneyu

from gradience.config import Section
from gradience.studies import base
from gradience.telemetry.recorder import MODEL_SCOPE, Cadence, Recorder
from gradience.training import TrainConfig, train

Family = Literal["mlp", "cnn", "transformer"]
SIGNATURE_METRICS = ("effective_rank", "stable_rank", "nuclear_norm", "alpha", "kappa")
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


class Arm(Section):
    name: str = Field(min_length=1)
    role: Literal["healthy", "unstable"]
    norm: bool = True
    lr_spike: float = Field(default=1.0, ge=1, description="learning-rate multiplier inside the spike window")


class Spike(Section):
    start_fraction: float = Field(gt=0, lt=1)
    duration_fraction: float = Field(gt=0, lt=1)

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


class RunParams(base.RunParams):
    families: list[Family] = Field(min_length=1)
    mlp: MLPParams
    cnn: CNNParams
    transformer: TransformerParams
    arms: list[Arm] = Field(min_length=1)
    spike: Spike
    cadence_points: int = Field(default=50, ge=4, description="even cadence: every steps // cadence_points")
    cadence_log_points: int = Field(default=15, ge=0)

    @field_validator("families")
    @classmethod
    def _unique_families(cls, v: list[str]) -> list[str]:
        base.unique_names(v, "families")
        return v

    @field_validator("arms")
    @classmethod
    def _one_healthy_arm(cls, v: list[Arm]) -> list[Arm]:
        base.unique_names([a.name for a in v], "arm names")
        healthy = [a.name for a in v if a.role == "healthy"]
        if len(healthy) != 1 or not next(a for a in v if a.role == "healthy").norm:
            raise ValueError(f"exactly one arm must have role 'healthy' (with norm: true), got {healthy}")
        if any(a.role == "healthy" and a.lr_spike != 1 for a in v):
            raise ValueError("the healthy arm cannot have an lr_spike")
        return v

    def family(self, name: str) -> FamilyParams:
        return getattr(self, name)

    @property
    def healthy_arm(self) -> str:
        return next(a.name for a in self.arms if a.role == "healthy")


class ReportParams(base.ReportParams):
    criterion: Criterion = Criterion()
    burn_in_fraction: float = Field(default=0.1, ge=0, lt=1)
    setback_min: float = Field(default=0.1, gt=0)
    r2_min: float = Field(default=0.8, gt=0, le=1)
    auc_min: float = Field(default=0.9, gt=0.5, le=1)
    holds_fraction: float = Field(default=0.5, gt=0, le=1)


DATA = ("digits", "text")
TABLES = ("telemetry",)


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
    """The spike window of ``family`` under ``p`` (what its spike arms use)."""
    steps = p.family(family).steps
    return spike_window(steps, cadence_every(steps, p.cadence_points), p.spike)


def lr_multiplier(window: tuple[int, int], factor: float) -> Callable[[int], float]:
    start, end = window
    return lambda step: factor if start <= step < end else 1.0


# --------------------------------------------------------------------------- runs


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    """Every family × arm × seed (run id ``family/arm/s<seed>``), the slow families first."""
    grid = [base.Job(p, f"{family}/{arm.name}", s, data_dir, spec=(family, arm))
            for family in p.families for arm in p.arms for s in p.seeds]
    return sorted(grid, key=lambda j: -RUN_COST[j.spec[0]])


def strip_rmsnorm(model):
    """Replace every Llama RMSNorm by the identity (the transformer's "no normalisation" arm)."""
    from torch import nn
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LlamaRMSNorm):
                setattr(module, name, nn.Identity())
    return model


def build_split_and_model(family: str, fp: FamilyParams, norm: bool, seed: int, data_dir: Path):
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
        return split, MLP(split.x_train.shape[1], fp.widths, 10, norm=norm)
    if isinstance(fp, CNNParams):
        split = digits_split(data_dir, fp.train_fraction, seed)
        torch.manual_seed(seed)
        return split, DigitsCNN(fp.channels, fp.d_hidden, 10, image_size=split.x_train.shape[-1],
                                norm="batch" if norm else "none")
    if isinstance(fp, TransformerParams):
        split, vocab = char_lm_split(load_corpus(data_dir, fp.corpus), fp.context, fp.n_train, fp.n_test, seed)
        torch.manual_seed(seed)
        lm = tiny_llama(len(vocab), fp.d_model, fp.n_layers, fp.n_heads, fp.d_mlp, max_len=fp.context)
        return split, CausalLM(lm if norm else strip_rmsnorm(lm))
    raise ValueError(f"unknown family {family!r}")


def run_one(job: base.Job) -> base.RunOutput:
    """Train one (family, arm, seed): its telemetry and its run record."""
    p, (family, arm) = job.params, job.spec
    fp = p.family(family)
    split, model = build_split_and_model(family, fp, arm.norm, job.seed, Path(job.data_dir))
    every = cadence_every(fp.steps, p.cadence_points)
    window = family_spike_window(p, family)
    cfg = TrainConfig(steps=fp.steps, lr=fp.lr, weight_decay=fp.weight_decay, batch_size=fp.batch_size,
                      betas=fp.betas, seed=job.seed, eval_max_examples=fp.eval_max_examples)
    recorder = Recorder(job.run_id)
    result = train(model, split, cfg, recorder=recorder, cadence=Cadence(every, fp.steps, p.cadence_log_points),
                   device=p.device, lr_schedule=lr_multiplier(window, arm.lr_spike) if arm.lr_spike != 1 else None)
    record = {
        "family": family, "arm": arm.name, "role": arm.role, "norm": arm.norm, "lr_spike": arm.lr_spike,
        "event_start": window[0] if arm.lr_spike != 1 else 0, "event_end": window[1] if arm.lr_spike != 1 else fp.steps,
        "cadence_every": every, "steps": fp.steps, "lr": fp.lr, "weight_decay": fp.weight_decay,
        "batch_size": fp.batch_size, "betas": str(fp.betas), "optimizer": "AdamW",
        "task": "char_lm_" + fp.corpus if isinstance(fp, TransformerParams) else "digits",
        "model": fp.model_dump_json(), "outcome": result.outcome, "diverged_at": result.diverged_at,
        **{f"final_{k}": v for k, v in result.final.items()},
    }
    return base.RunOutput({"telemetry": recorder.frame()}, record)


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


def layer_frame(telemetry: pd.DataFrame, runs: pd.DataFrame, metric: str = "effective_rank") -> pd.DataFrame:
    """One metric of every weight matrix: ``run, step, scope, value`` plus the run's family/arm/seed."""
    df = telemetry[(telemetry["metric"] == metric) & (telemetry["scope"] != MODEL_SCOPE)]
    return df.merge(runs[["run", "family", "arm", "role", "seed"]], on="run")


def shapes(telemetry: pd.DataFrame, runs: pd.DataFrame, c: Criterion) -> pd.DataFrame:
    """The criterion and label of every (run, layer) effective-rank trajectory of completed runs."""
    done = runs[runs["outcome"] == "completed"]
    rows = []
    for (run, scope), g in layer_frame(telemetry, done).groupby(["run", "scope"], sort=False):
        g = g.sort_values("step")
        rows.append({"run": run, "scope": scope, **trajectory_shape(g["step"].to_numpy(), g["value"].to_numpy(), c)})
    return done[["run", "family", "arm", "role", "seed"]].merge(pd.DataFrame(rows), on="run")


def between_seed_r2(matrix: np.ndarray) -> float:
    """``1 − SS_within / SS_total`` of a seeds × steps matrix (1: every seed traces the same curve)."""
    m = np.asarray(matrix, dtype=float)
    total = ((m - m.mean()) ** 2).sum()
    return float(1 - ((m - m.mean(axis=0)) ** 2).sum() / total) if total > 0 else math.nan


def seed_agreement(telemetry: pd.DataFrame, runs: pd.DataFrame, healthy_arm: str, c: Criterion) -> pd.DataFrame:
    """Per (family, layer) of the healthy arm: between-seed R², whether it is flat, seeds used."""
    healthy = runs[(runs["arm"] == healthy_arm) & (runs["outcome"] == "completed")]
    rows = []
    for (family, scope), g in layer_frame(telemetry, healthy).groupby(["family", "scope"], sort=False):
        m = g.pivot_table(index="seed", columns="step", values="value").dropna(axis=1).to_numpy()
        mean = m.mean(axis=0)
        flat = bool(mean.max() - mean.min() < c.plateau_tol * mean.mean())
        rows.append({"family": family, "scope": scope, "r2": between_seed_r2(m), "flat": flat, "n_seeds": len(m)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- instability


def setback(steps: np.ndarray, loss: np.ndarray, burn_in_step: float) -> float:
    """``max_i (ℓ_i − m_i)/(ℓ_0 − m_i)`` over ``t_i ≥ burn_in_step``, ``m_i = min_{j<i} ℓ_j`` (0 if none)."""
    steps, loss = np.asarray(steps), np.asarray(loss, dtype=float)
    best = np.minimum.accumulate(loss)[:-1]  # m_i for i = 1..K
    gain = loss[0] - best
    keep = (steps[1:] >= burn_in_step) & (gain > 0)
    if not keep.any():
        return 0.0
    return float(max(0.0, np.max((loss[1:] - best)[keep] / gain[keep])))


def max_log_jump(steps: np.ndarray, values: np.ndarray, every: int, burn_in_step: float) -> float:
    """Largest ``|Δ log v|`` between consecutive even-grid points (multiples of ``every``) after the burn-in."""
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    grid = (steps % every == 0) & (steps >= burn_in_step)
    v = values[grid]
    return float(np.max(np.abs(np.diff(np.log(v))))) if v.size > 1 else math.nan


def run_stability(telemetry: pd.DataFrame, runs: pd.DataFrame, p: ReportParams) -> pd.DataFrame:
    """Per run: setback, destabilised, and the largest effective-rank jump over its layers."""
    rows = []
    for rec in runs.itertuples():
        tel = telemetry[telemetry["run"] == rec.run]
        burn = p.burn_in_fraction * rec.steps
        loss = tel[(tel["scope"] == MODEL_SCOPE) & (tel["metric"] == "train_loss")].sort_values("step")
        sb = math.inf if rec.outcome == "diverged" else setback(loss["step"].to_numpy(), loss["value"].to_numpy(), burn)
        ranks = tel[(tel["scope"] != MODEL_SCOPE) & (tel["metric"] == "effective_rank")]
        jumps = [max_log_jump(g["step"].to_numpy(), g["value"].to_numpy(), rec.cadence_every, burn)
                 for _, g in ranks.sort_values("step").groupby("scope")]
        rows.append({"run": rec.run, "setback": sb, "destabilised": sb >= p.setback_min,
                     "rank_jump": float(np.nanmax(jumps)) if jumps else math.nan})
    return runs.merge(pd.DataFrame(rows), on="run")


def rank_signature(telemetry: pd.DataFrame, runs: pd.DataFrame, healthy_arm: str,
                   metrics: tuple[str, ...] = SIGNATURE_METRICS) -> pd.DataFrame:
    """Per unstable run, layer and metric: value before / after the event and at the end, each also
    for the healthy run of the same family and seed, and the ratios unstable / healthy − 1."""
    tel = telemetry[(telemetry["scope"] != MODEL_SCOPE) & telemetry["metric"].isin(metrics)]
    wide = tel.pivot_table(index=["run", "scope", "metric"], columns="step", values="value")
    healthy = runs[runs["arm"] == healthy_arm].set_index(["family", "seed"])["run"]
    rows = []
    for rec in runs[(runs["role"] == "unstable") & (runs["outcome"] == "completed")].itertuples():
        h_run = healthy.get((rec.family, rec.seed))
        if h_run is None or h_run not in wide.index.get_level_values("run"):
            continue
        u, h = wide.loc[rec.run], wide.loc[h_run]
        for (scope, metric), row in u.iterrows():
            hr = h.loc[(scope, metric)]
            vals = {"before": row[rec.event_start], "after": row[rec.event_end], "end": row[rec.steps],
                    "healthy_after": hr[rec.event_end], "healthy_end": hr[rec.steps]}
            rows.append({"run": rec.run, "family": rec.family, "arm": rec.arm, "seed": rec.seed,
                         "scope": scope, "metric": metric, **vals,
                         "excess_after": _ratio(vals["after"], vals["healthy_after"]),
                         "excess_end": _ratio(vals["end"], vals["healthy_end"])})
    return pd.DataFrame(rows)


def _ratio(a: float, b: float) -> float:
    return a / b - 1 if np.isfinite(a) and np.isfinite(b) and b != 0 else math.nan


def separation_auc(unstable: np.ndarray, healthy: np.ndarray) -> float:
    """``P(X_unstable > X_healthy) + ½ P(=)``, the Mann–Whitney U statistic over n₁·n₂."""
    u, h = (np.asarray(x, dtype=float) for x in (unstable, healthy))
    u, h = u[np.isfinite(u)], h[np.isfinite(h)]
    if not (u.size and h.size):
        return math.nan
    return float(mannwhitneyu(u, h).statistic / (u.size * h.size))


# --------------------------------------------------------------------------- analysis


@dataclass
class Analysis:
    params: RunParams  # the runs' params, saved with the tables
    telemetry: pd.DataFrame
    runs: pd.DataFrame  # one row per run, with the stability columns
    shapes: pd.DataFrame  # one row per (run, layer) effective-rank trajectory
    agreement: pd.DataFrame
    signature: pd.DataFrame


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    """Stability of every run, shapes of every trajectory, between-seed agreement, rank signatures.

    Runs are put back in grid order (families, arms and seeds as in the params), whatever order
    :func:`jobs` submitted them in.
    """
    rp, tele = tables.params, tables.telemetry
    grid = {f"{f}/{arm.name}/s{s}": i for i, (f, arm, s) in enumerate(product(rp.families, rp.arms, rp.seeds))}
    runs = run_stability(tele, tables.runs.sort_values("run", key=lambda r: r.map(grid), ignore_index=True), p)
    return Analysis(rp, tele, runs, shapes(tele, runs, p.criterion),
                    seed_agreement(tele, runs, rp.healthy_arm, p.criterion),
                    rank_signature(tele, runs, rp.healthy_arm))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean effective rank (over layers and seeds) and mean train loss per family × arm, against step."""
    tele = a.telemetry
    loss = tele[(tele["scope"] == MODEL_SCOPE) & (tele["metric"] == "train_loss")].merge(a.runs[["run", "family", "arm"]])
    rank = layer_frame(tele, a.runs).rename(columns={"value": "effective_rank"})
    return pd.concat([base.step_curves(rank, ["family", "arm"], {"effective_rank": "mean"}),
                      base.step_curves(loss.rename(columns={"value": "train_loss"}), ["family", "arm"],
                                       {"train_loss": "mean"})], ignore_index=True)


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


def _holds_everywhere(fractions: dict[str, float], p: ReportParams) -> tuple[str, str]:
    held = [f for f, v in fractions.items() if v >= p.holds_fraction]
    if len(held) == len(fractions):
        return "reproduced", f"holds (≥ {p.holds_fraction:.0%}) in every family"
    where = f"holds only in {', '.join(held)}" if held else "holds in no family"
    return "not reproduced", f"{where} (threshold {p.holds_fraction:.0%} of layer × seed trajectories)"


def _arm_text(arm: Arm, spike: Spike) -> str:
    """``lr_spike (lr × 10 for 4% of the run)``: an unstable arm and what it changes."""
    what = f"lr × {arm.lr_spike:g} for {spike.duration_fraction:.0%} of the run" if arm.lr_spike != 1 else ""
    what = ", ".join(x for x in (what, "" if arm.norm else "no normalisation") if x) or "as healthy"
    return f"{arm.name} ({what})"


def findings(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    """The *Findings vs the seed* rows; every verdict is a rule applied to the measurements.

    The two instability claims get one row per unstable arm; ``measured`` names the arm.
    """
    from gradience.reporting import finding, mean_spread

    rp, rows = a.params, []
    healthy = a.shapes[a.shapes["arm"] == rp.healthy_arm]
    for claim, column in (("rank_survey.expansion_compression_plateau", "hypothesis4"),
                          ("rank_survey.monotone_decrease", "monotone")):
        if healthy.empty:
            rows.append(finding(claim, "no completed healthy run", "inconclusive", "nothing to classify"))
            continue
        counts, fractions = _per_family(healthy, column)
        verdict, why = _holds_everywhere(fractions, p)
        rows.append(finding(claim, f"{int(healthy[column].sum())}/{len(healthy)} trajectories ({counts})",
                            verdict, f"{why}; most common shape: {_dominant_shapes(healthy)}"))

    moving = a.agreement[~a.agreement["flat"]] if len(a.agreement) else a.agreement
    if moving.empty or moving["n_seeds"].max() < 2:
        rows.append(finding("rank_survey.structured_dynamics", "fewer than 2 seeds or no moving layer",
                            "inconclusive", "between-seed agreement needs ≥ 2 seeds and a trajectory that moves"))
    else:
        ok = moving["r2"] >= p.r2_min
        holds = float(ok.mean()) >= p.holds_fraction
        rows.append(finding(
            "rank_survey.structured_dynamics",
            f"between-seed R² median {moving['r2'].median():.3f}; {int(ok.sum())}/{len(moving)} moving layers "
            f"≥ {p.r2_min:g} ({int(a.agreement['flat'].sum())} flat layers left out)",
            "reproduced" if holds else "not reproduced",
            "seeds trace the same per-layer curve" if holds else
            "per-layer trajectories differ between seeds more than they move"))

    c = p.criterion
    er = a.signature[a.signature["metric"] == "effective_rank"] if len(a.signature) else a.signature
    for arm in (x for x in rp.arms if x.role == "unstable"):
        runs, label = a.runs[a.runs["arm"] == arm.name], _arm_text(arm, rp.spike)
        n_destab = int(runs["destabilised"].sum())
        destab = f"{n_destab}/{len(runs)} runs destabilised (setback ≥ {p.setback_min:g})"
        enough = len(runs) > 0 and n_destab / len(runs) >= p.holds_fraction
        sig = er[er["arm"] == arm.name] if len(er) else er
        if sig.empty:
            rows.append(finding("rank_survey.instability_rank_inflation", f"{label}: {destab}", "inconclusive",
                                "no completed run pair to compare"))
        else:
            infl = float((sig["excess_after"] >= c.expand_min).mean())
            coll = float((sig["excess_after"] <= -c.compress_min).mean())
            point = "after the spike" if arm.lr_spike != 1 else "at the end"
            measured = (f"{label}: effective rank {point} vs healthy: "
                        f"{mean_spread(100 * sig['excess_after'], '{:.1f}')} %; inflated (≥ +{c.expand_min:.0%}) "
                        f"{infl:.0%}, collapsed (≤ −{c.compress_min:.0%}) {coll:.0%} of layer × seed; {destab}")
            verdict = ("inconclusive" if not enough else "reproduced" if infl >= p.holds_fraction else "not reproduced")
            why = ("the arm did not destabilise training at this scale, so this is no test of an instability"
                   if not enough else
                   "rank inflates in most layers" if verdict == "reproduced" else
                   "the signature is rank collapse, not inflation" if coll >= p.holds_fraction else
                   "no consistent rank inflation")
            rows.append(finding("rank_survey.instability_rank_inflation", measured, verdict, why))
        aucs = {}
        for family, g in a.runs.groupby("family", sort=False):
            aucs[str(family)] = separation_auc(g[g["arm"] == arm.name]["rank_jump"],
                                               g[g["arm"] == rp.healthy_arm]["rank_jump"])
        finite = [v for v in aucs.values() if np.isfinite(v)]
        measured = (f"{label}: AUC of the largest effective-rank jump, unstable vs healthy: "
                    + ", ".join(f"{f} {v:.2f}" for f, v in aucs.items()) + f"; {destab}")
        if not finite or not enough:
            verdict, why = "inconclusive", ("no comparable runs" if not finite else
                                            "the arm did not destabilise training at this scale")
        else:
            verdict = "reproduced" if min(finite) >= p.auc_min else "not reproduced"
            why = (f"every family separates (AUC ≥ {p.auc_min:g})" if verdict == "reproduced" else
                   f"some family does not separate (AUC < {p.auc_min:g})")
        rows.append(finding("rank_survey.instability_sudden_change", measured, verdict, why))
    return rows


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Numbers for ``metrics.json`` (``dvc metrics diff``): shape fractions and counts, run outcomes
    and stability, median rank signatures, median between-seed R²."""
    out: dict = {"shapes": {}, "runs": {}, "signature": {}}
    for (family, arm), g in a.shapes.groupby(["family", "arm"], sort=False):
        out["shapes"].setdefault(family, {})[arm] = {
            "hypothesis4_fraction": float(g["hypothesis4"].mean()), "monotone_fraction": float(g["monotone"].mean()),
            **{"n_" + label.replace("→", "_to_").replace(" ", "_"): int((g["label"] == label).sum())
               for label in SHAPES}}
    for (family, arm), g in a.runs.groupby(["family", "arm"], sort=False):
        out["runs"].setdefault(family, {})[arm] = {
            "final_test_acc_mean": float(g["final_test_acc"].mean()) if "final_test_acc" in g else math.nan,
            "final_test_loss_mean": float(g["final_test_loss"].mean()) if "final_test_loss" in g else math.nan,
            "setback_mean": float(g["setback"].replace(math.inf, np.nan).mean()),
            "destabilised_runs": int(g["destabilised"].sum()), "diverged_runs": int((g["outcome"] == "diverged").sum()),
            "rank_jump_mean": float(g["rank_jump"].mean())}
    if len(a.signature):
        for (family, arm, metric), g in a.signature.groupby(["family", "arm", "metric"], sort=False):
            out["signature"].setdefault(family, {}).setdefault(arm, {})[metric] = {
                "excess_after_median": float(g["excess_after"].median()),
                "excess_end_median": float(g["excess_end"].median())}
    if len(a.agreement):
        out["seed_agreement_r2_median"] = float(a.agreement.loc[~a.agreement["flat"], "r2"].median())
    return out
