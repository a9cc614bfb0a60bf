"""True-gradient effective rank over training and K-basis adaptation (paper 86 of the K series).

**Model and data.** The repository's character LM (:mod:`gradience.studies.lm_regimes`): a
Llama-block decoder (:func:`gradience.models.transformer.tiny_llama`, 8 layers, d_model 64 in the
default profile, as the paper's 8-layer model) on random windows of Shakespeare
(``data/text/shakespeare.txt``; the paper profile loads TinyShakespeare through ``datasets``). The
paper's model is a word LM (loss 7.84 at step 1, so a vocabulary of a few thousand words); ours has
a vocabulary of ~75 characters, so losses are on another scale (ln 75 ≈ 4.3 at initialisation).

**Trajectory runs** (condition ``trajectory``, one per seed). :func:`gradience.training.train`
(the repository's loop, unchanged) trains every parameter with the stated optimiser (AdamW in the
default profile; the paper says "SGD", which at this scale either barely moves or blows up) on
mini-batches. At the measured steps — every step or every ``schedule.dense_every`` steps up to
``schedule.dense_until``, the paper's steps 1, 5, 10, 20, 40 always, then every
``schedule.sparse_every`` to the end, to see what follows — :class:`gradience.telemetry.kbasis.GradientRankProbe`
takes the true gradient ∂L/∂W of every 2-D weight on the batch of that step (the batch that makes
the next update; "step t" = after t updates, the loop's convention) and logs its Roy–Vetterli
effective rank ``grad_er`` (mean and max over matrices, per decoder layer), and, for each K of
``ks`` with the basis of the *current* weight (its top-K singular pairs), the K-constrained
gradient's ER ``k<K>_er``, its ``coverage`` (% of the true ER), the cosines ``k<K>_cos`` (true
gradient vs its projection on what K-basis adaptation can express) and ``k<K>_cos_subspace``
(vs its two-sided projection on the top-K singular subspaces), and ``k95`` (the smallest K whose
K-constrained ER reaches 95 % of the true ER, per matrix). Definitions: :mod:`gradience.telemetry.kbasis`.

**Adaptation runs** (condition ``adapt``, one per seed). The seed's model is retrained to the
checkpoint at step ``adapt.from_step`` (same seed, same batches: the checkpoint is the trajectory
run's weights at that step), then for each K of ``adapt.ks`` a copy gets W + U_K diag(a) V_Kᵀ on
every 2-D weight (U_K, V_K the checkpoint weight's top-K singular vectors, frozen; a = 0 at start,
the only trainable parameters, AdamW at ``adapt.lr``) and is trained for ``adapt.steps`` steps on
the same seeded batch order for every K (a paired comparison). ``adapt.full_control`` adds the same
continuation with every parameter trainable at the trajectory's optimiser settings: what the model
reaches unconstrained. The loss reached is the mean cross-entropy over the whole training split
after the last step (``train_loss``; ``test_loss`` beside). At d_model 64 every weight has
min(m, n) = 64, so K = 64 is the full singular basis (still only 64 coefficients per matrix: the
diagonal of UᵀΔW V, not a full-rank update).

**Reading of the paper's tables.** Table 1's "K32 covers" is ER(K=32-constrained)/ER(true), both
means over matrices, at that step (the paper divided one fixed K-constrained ER, measured at step
1, by each step's true ER; we measure it at every step). Table 2's "% of true ER" is the same ratio
at step 1 per K; "K for 95 %" read off that table is the smallest K of the grid whose ratio reaches
95 % (``k95_grid``), beside the exact per-matrix ``k95``. Table 3's "optimal K" per layer is the
layer's mean per-matrix ``k95``. The paper's phases (initial 1–5, rising 5–15, peak 15–25,
refinement 25–40) are ``report.phases``.

A custom loop is not needed: the probe mechanism of :func:`gradience.training.train` gives the
gradient at a cadence step, and an explicit step set (:class:`StepSet`) stands in for its cadence.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from gradience.config import Section
from gradience.reporting import Budget, judged, mean_spread
from gradience.studies import base
from gradience.studies.lm_regimes import LMData, LMModel, build_model, lm_split
from gradience.telemetry import kbasis as kb
from gradience.telemetry.recorder import MODEL_SCOPE, Cadence, Recorder, concat
from gradience.training import TrainConfig, evaluate, resolve_device, train

DATA = ("text",)
TABLES = ("telemetry", "adapt")
PAPER_STEPS = (1, 5, 10, 20, 40)
PAPER_KS = (2, 4, 8, 16, 32, 64)
TARGET = 95.0  # % coverage that defines k95 (the paper's "K needed for 95 % true ER coverage")
K95 = f"k{TARGET:g}"

# The seed document's three tables (paper 86), reproduced beside the measurements.
PAPER_TABLE1 = pd.DataFrame({
    "step": [1, 5, 10, 20, 40], "loss": [7.8407, 4.9717, 4.6185, 3.9913, 3.6535],
    "er_mean": [5.55, 11.07, 15.49, 19.17, 9.33], "er_max": [14.25, 31.36, 33.77, 34.91, 25.16],
    "k32_covers": [358.2, 181.8, 131.1, 106.3, 215.7], "k64_covers": [704.3, 352.8, 252.2, 203.7, 418.7]})
PAPER_TABLE2 = pd.DataFrame({"K": list(PAPER_KS), "er_k": [1.650, 2.995, 5.435, 10.146, 19.872, 39.065],
                             "pct_of_true": [29.7, 54.0, 98.0, 182.9, 358.2, 704.3]})
PAPER_TABLE3 = pd.DataFrame({"layer": list(range(8)), "er": [9.88, 9.18, 9.31, 9.14, 8.92, 8.64, 7.93, 7.74],
                             "k32_covers": [203.3, 223.1, 189.2, 245.4, 228.6, 242.7, 255.7, 250.2],
                             "optimal_k": [16, 15, 15, 15, 14, 14, 13, 12]})
PAPER_PHASE_K = {"initial": 8, "rising": 16, "peak": 32, "refinement": 12}


def _check_ks(v: list[int]) -> list[int]:
    base.unique_names([str(k) for k in v], "ks")
    if any(k < 1 for k in v):
        raise ValueError(f"every K must be ≥ 1, got {v}")
    return sorted(v)


class Optim(Section):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(gt=0)
    batch_size: int = Field(ge=1, description="windows per step")
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.0, ge=0, lt=1, description="SGD only")
    grad_clip: float = Field(default=0.0, ge=0, description="global-norm clipping; 0: none")


class Schedule(Section):
    """Measured steps: step 0, every ``dense_every`` steps up to ``dense_until``, the paper's steps
    1, 5, 10, 20, 40 (where ≤ ``steps``), every ``sparse_every`` steps after, and the last step."""

    dense_until: int = Field(default=40, ge=0)
    dense_every: int = Field(default=1, ge=1)
    sparse_every: int = Field(default=10, ge=1)

    def steps(self, total: int) -> list[int]:
        s = set(range(0, min(self.dense_until, total) + 1, self.dense_every))
        s |= {t for t in PAPER_STEPS if t <= total} | set(range(0, total + 1, self.sparse_every)) | {total}
        return sorted(s)


class Adapt(Section):
    ks: list[int] = Field(default=list(PAPER_KS), description="K of each K-basis adaptation arm; [] skips them")
    from_step: int = Field(default=40, ge=0, description="the checkpoint: the trajectory's weights after this many steps")
    steps: int = Field(default=50, ge=1, description="steps of training only the K-basis coefficients a")
    lr: float = Field(default=1e-2, gt=0, description="AdamW learning rate of a")
    full_control: bool = Field(default=True, description="also continue with every parameter trainable")

    @field_validator("ks")
    @classmethod
    def _valid_ks(cls, v: list[int]) -> list[int]:
        return _check_ks(v) if v else v


class RunParams(base.RunParams):
    data: LMData
    model: LMModel
    train: Optim
    steps: int = Field(gt=0, description="trajectory length")
    schedule: Schedule = Schedule()
    ks: list[int] = Field(default=list(PAPER_KS), min_length=1, description="K grid of the coverage probe")
    eval_max_examples: int = Field(default=32, ge=1, description="windows per split for the losses at measured steps")
    adapt: Adapt = Adapt()

    @field_validator("ks")
    @classmethod
    def _valid_ks(cls, v: list[int]) -> list[int]:
        return _check_ks(v)

    @model_validator(mode="after")
    def _fits(self) -> RunParams:
        if self.data.n_train < self.train.batch_size:
            raise ValueError(f"train.batch_size={self.train.batch_size} exceeds data.n_train={self.data.n_train}")
        return self


class Phase(Section):
    name: str
    first: int = Field(ge=0)
    last: int = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> Phase:
        if self.last < self.first:
            raise ValueError(f"phase {self.name!r}: last={self.last} < first={self.first}")
        return self


class ReportParams(base.ReportParams):
    window: int = Field(default=40, ge=2, description="the paper's window [1, window] for rise-then-fall")
    margin: float = Field(default=0.2, ge=0, description="rise-then-fall: the peak exceeds ER(step 1) and "
                          "ER(window) by this fraction of the peak")
    layer_step: int = Field(default=40, ge=0, description="step of the per-layer table (paper: 40)")
    phases: list[Phase] = Field(default_factory=lambda: [Phase(name="initial", first=1, last=5),
                                                         Phase(name="rising", first=6, last=15),
                                                         Phase(name="peak", first=16, last=25),
                                                         Phase(name="refinement", first=26, last=40)])
    min_seeds: int = Field(default=3, ge=1)
    min_adapt_steps: int = Field(default=40, ge=1, description="paper 84's comparison of K was at 40 steps")

    @field_validator("phases")
    @classmethod
    def _phases(cls, v: list[Phase]) -> list[Phase]:
        base.unique_names([p.name for p in v], "phase names")
        return v


class StepSet(Cadence):
    """An explicit set of measured steps, in the shape :func:`gradience.training.train` expects."""

    def __init__(self, steps: Iterable[int]) -> None:
        steps = sorted({int(s) for s in steps})
        if not steps or steps[0] < 0:
            raise ValueError(f"steps must be non-empty and ≥ 0, got {steps}")
        super().__init__(every=max(steps) + 1, total_steps=max(steps))
        self.steps = frozenset(steps)


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    out = [base.Job(p, "trajectory", s, data_dir) for s in p.seeds]
    if p.adapt.ks or p.adapt.full_control:
        out += [base.Job(p, "adapt", s, data_dir) for s in p.seeds]
    return out


def _config(p: RunParams, steps: int, seed: int, lr: float | None = None, optimizer: str | None = None) -> TrainConfig:
    o = p.train
    return TrainConfig(steps=steps, lr=lr or o.lr, weight_decay=o.weight_decay if lr is None else 0.0,
                       batch_size=o.batch_size, grad_clip=o.grad_clip if lr is None else 0.0, seed=seed,
                       eval_max_examples=p.eval_max_examples, optimizer=optimizer or o.optimizer,
                       momentum=o.momentum if lr is None else 0.0)


def run_one(job: base.Job) -> base.RunOutput:
    """``trajectory``: the model trained from scratch with the gradient-rank probe at the measured
    steps. ``adapt``: the checkpoint at ``adapt.from_step``, then each K-basis arm (and the
    full-training control) for ``adapt.steps`` steps; one ``adapt`` row per arm."""
    p: RunParams = job.params  # type: ignore[assignment]
    device = resolve_device(p.device)
    split, vocab = lm_split(job.data_dir, p.data, job.seed)
    model = build_model(vocab, p.model, p.data.context, job.seed).to(device)
    record = {"vocab": vocab, "n_params": sum(q.numel() for q in model.parameters())}
    if job.condition == "trajectory":
        recorder = Recorder(job.run_id)
        steps = p.schedule.steps(p.steps)
        result = train(model, split, _config(p, p.steps, job.seed), recorder=recorder, cadence=StepSet(steps),
                       probes=[kb.GradientRankProbe(p.ks, TARGET)], device=p.device, progress=True)
        record |= {"outcome": result.outcome, "steps_run": result.steps_run, "measured_steps": len(steps),
                   **{f"final_{k}": v for k, v in result.final.items()}}
        return base.RunOutput({"telemetry": recorder.frame(), "adapt": pd.DataFrame()}, record)
    if job.condition != "adapt":
        raise ValueError(f"unknown condition {job.condition!r}")
    if p.adapt.from_step:
        train(model, split, _config(p, p.adapt.from_step, job.seed), device=p.device)
    split = split.to(device)
    ck_train, _ = evaluate(model, split.x_train, split.y_train)
    ck_test, _ = evaluate(model, split.x_test, split.y_test)
    arms: list[tuple[str, int | None]] = [(f"k{k}", k) for k in p.adapt.ks]
    if p.adapt.full_control:
        arms.append(("full", None))
    rows, frames = [], []
    for arm, k in arms:
        m = copy.deepcopy(model)
        if k is None:
            cfg, probe_ks = _config(p, p.adapt.steps, job.seed), tuple(p.adapt.ks or p.ks)
            trainable = sum(q.numel() for q in m.parameters())
        else:
            a = kb.apply_kbasis(m, k)
            cfg, probe_ks = _config(p, p.adapt.steps, job.seed, lr=p.adapt.lr, optimizer="adamw"), (k,)
            trainable = sum(x.numel() for x in a.values())
        recorder = Recorder(f"{job.run_id}/{arm}")
        result = train(m, split, cfg, recorder=recorder, cadence=StepSet({0, p.adapt.steps}),
                       probes=[kb.GradientRankProbe(probe_ks, TARGET)], device=p.device)
        frames.append(recorder.frame())
        rows.append({"run": job.run_id, "seed": job.seed, "arm": arm, "k": float(k) if k else math.nan,
                     "trainable": trainable, "outcome": result.outcome, "checkpoint_step": p.adapt.from_step,
                     "checkpoint_train_loss": ck_train, "checkpoint_test_loss": ck_test,
                     "train_loss": result.final.get("train_loss", math.nan),
                     "test_loss": result.final.get("test_loss", math.nan)})
    record |= {"outcome": "completed", "arms": len(arms), "checkpoint_train_loss": ck_train}
    return base.RunOutput({"telemetry": concat(frames), "adapt": pd.DataFrame(rows)}, record)


# ------------------------------------------------------------------------------------ analysis


def model_series(telemetry: pd.DataFrame) -> pd.DataFrame:
    """Model-scope telemetry of the trajectory runs, one row per (run, step), with ``seed``."""
    t = telemetry[(telemetry.scope == MODEL_SCOPE) & telemetry.run.str.startswith("trajectory/")]
    s = t.pivot_table(index=["run", "step"], columns="metric", values="value", aggfunc="first").reset_index()
    s.columns.name = None
    s["seed"] = s.run.str.extract(r"/s(-?\d+)$")[0].astype(int)
    return s


def matrix_series(telemetry: pd.DataFrame) -> pd.DataFrame:
    """Per-matrix telemetry of the trajectory runs (one row per run, step, matrix), with ``layer``
    (nan outside the decoder layers) and ``seed``."""
    t = telemetry[(telemetry.scope != MODEL_SCOPE) & telemetry.run.str.startswith("trajectory/")
                  & (telemetry.metric.isin(["grad_er", K95]) | telemetry.metric.str.match(r"k\d+_"))]
    s = t.pivot_table(index=["run", "step", "scope"], columns="metric", values="value", aggfunc="first").reset_index()
    s.columns.name = None
    s["layer"] = s.scope.map(lambda n: kb.layer_of(n)).astype(float)
    s["seed"] = s.run.str.extract(r"/s(-?\d+)$")[0].astype(int)
    return s


def coverage_ratio(series: pd.DataFrame, k: int) -> pd.Series:
    """The paper's "K covers": 100 · mean_matrices(ER of the K-constrained gradient) / mean_matrices(true ER)."""
    return 100.0 * series[f"k{k}_er"] / series["grad_er_mean"]


def _ratios(row: pd.Series, ks: Iterable[int]) -> dict[int, float]:
    return {k: float(100 * row[f"k{k}_er"] / row["grad_er_mean"]) for k in ks if f"k{k}_er" in row}


def k_grid_for(ratios: dict[int, float], target: float = TARGET) -> float:
    """Smallest K of the grid whose coverage ratio reaches ``target`` %; nan when none does."""
    hit = [k for k in sorted(ratios) if math.isfinite(ratios[k]) and ratios[k] >= target]
    return float(hit[0]) if hit else math.nan


def rise_fall(series: pd.DataFrame, window: int, margin: float) -> pd.DataFrame:
    """Per seed, over steps 1..window: ER(step 1), the peak (step, value), ER(window), the trough
    (step, value), and the shape: ``rise-fall`` (interior peak above both ends by ``margin``·peak),
    ``fall-rise`` (interior trough below both ends by ``margin``·(that end)), else ``monotone/flat``."""
    rows = []
    for seed, g in series.groupby("seed"):
        w = g[(g.step >= 1) & (g.step <= window)].dropna(subset=["grad_er_mean"]).sort_values("step")
        if w.empty or w.step.iloc[0] != 1:
            rows.append({"seed": seed, "shape": "not measured"})
            continue
        er = w.grad_er_mean.to_numpy()
        first, last = er[0], er[-1]
        ip, it = int(np.argmax(er)), int(np.argmin(er))
        peak, trough = er[ip], er[it]
        rise = 0 < ip < len(er) - 1 and first <= (1 - margin) * peak and last <= (1 - margin) * peak
        fall = 0 < it < len(er) - 1 and trough <= (1 - margin) * first and trough <= (1 - margin) * last
        rows.append({"seed": seed, "er_step1": first, "peak_step": float(w.step.iloc[ip]), "er_peak": peak,
                     "trough_step": float(w.step.iloc[it]), "er_trough": trough,
                     "last_step": float(w.step.iloc[-1]), "er_last": last,
                     "shape": "rise-fall" if rise else "fall-rise" if fall else "monotone/flat"})
    return pd.DataFrame(rows)


def table1(series: pd.DataFrame, steps: Iterable[int] = PAPER_STEPS) -> pd.DataFrame:
    """The paper's Table 1 at ``steps``: batch loss, true ER mean and max (over matrices), K32 and
    K64 coverage ratios — mean ± sd over seeds — with the paper's numbers beside."""
    rows = []
    for step in steps:
        g = series[series.step == step]
        row = {"step": step, "seeds": len(g)}
        for col, values in (("loss", g.get("batch_loss")), ("er_mean", g.get("grad_er_mean")),
                            ("er_max", g.get("grad_er_max")),
                            ("k32_covers", coverage_ratio(g, 32) if "k32_er" in g else None),
                            ("k64_covers", coverage_ratio(g, 64) if "k64_er" in g else None)):
            row[col] = mean_spread(values if values is not None else [], "{:.3g}")
            row[f"{col}_mean"] = float(np.nanmean(values)) if values is not None and len(values) else math.nan
        rows.append(row)
    return pd.DataFrame(rows).merge(PAPER_TABLE1.add_prefix("paper_").rename(columns={"paper_step": "step"}),
                                    on="step", how="left")


def table2(series: pd.DataFrame, ks: Iterable[int], step: int = 1) -> pd.DataFrame:
    """The paper's Table 2 at ``step``: per K, the K-constrained gradient's ER (mean over matrices)
    beside the ER of K i.i.d. Gaussian values (:func:`kbasis.iid_gaussian_er`), its % of the true ER
    (mean over matrices) and the cosines, mean ± sd over seeds, with the paper's numbers."""
    g = series[series.step == step]
    rows = []
    for k in ks:
        if f"k{k}_er" not in g:
            continue
        pct = coverage_ratio(g, k)
        rows.append({"K": k, "er_k": mean_spread(g[f"k{k}_er"], "{:.3g}"), "er_k_mean": float(g[f"k{k}_er"].mean()),
                     "iid_gaussian_er": kb.iid_gaussian_er(k),
                     "pct_of_true": mean_spread(pct, "{:.3g}"), "pct_mean": float(pct.mean()),
                     "cos": float(g[f"k{k}_cos"].mean()), "cos_subspace": float(g[f"k{k}_cos_subspace"].mean())})
    out = pd.DataFrame(rows, columns=["K", "er_k", "er_k_mean", "iid_gaussian_er", "pct_of_true", "pct_mean", "cos", "cos_subspace"])
    return out.merge(PAPER_TABLE2.add_prefix("paper_").rename(columns={"paper_K": "K"}), on="K", how="left")


def table3(matrices: pd.DataFrame, step: int) -> pd.DataFrame:
    """The paper's Table 3 at ``step``: per decoder layer, the true ER (mean over the layer's
    matrices), K32 coverage (100·mean k32_er / mean true ER) and the "optimal K" (mean per-matrix
    k95), each mean ± sd over seeds, with the paper's numbers."""
    g = matrices[(matrices.step == step) & matrices.layer.notna()]
    rows = []
    if len(g):
        per = g.groupby(["seed", "layer"]).agg(er=("grad_er", "mean"), k32=("k32_er", "mean") if "k32_er" in g else
                                               ("grad_er", lambda x: math.nan), k95=(K95, "mean")).reset_index()
        per["cov"] = 100 * per.k32 / per.er
        rows = [{"layer": int(layer), "er": mean_spread(h.er, "{:.3g}"), "er_mean": float(h.er.mean()),
                 "k32_covers": mean_spread(h["cov"], "{:.3g}"), "optimal_k": mean_spread(h.k95, "{:.3g}"),
                 "optimal_k_mean": float(h.k95.mean())} for layer, h in per.groupby("layer")]
    out = pd.DataFrame(rows, columns=["layer", "er", "er_mean", "k32_covers", "optimal_k", "optimal_k_mean"])
    return out.astype({"layer": int}).merge(PAPER_TABLE3.add_prefix("paper_").rename(columns={"paper_layer": "layer"}),
                                            on="layer", how="left")


def phase_table(series: pd.DataFrame, phases: list[Phase], ks: Iterable[int]) -> pd.DataFrame:
    """Per phase (steps first..last): the mean true ER, the exact k95 (mean over matrices), and the
    grid K for 95 % of the ratio of means; mean ± sd over seeds, the paper's K beside."""
    rows = []
    for ph in phases:
        g = series[(series.step >= ph.first) & (series.step <= ph.last)]
        per_seed = g.groupby("seed").mean(numeric_only=True)
        grid = [k_grid_for(_ratios(r, ks)) for _, r in per_seed.iterrows()]
        rows.append({"phase": ph.name, "steps": f"{ph.first}–{ph.last}", "points": int(g.step.nunique()),
                     "er_mean": mean_spread(per_seed.get("grad_er_mean", []), "{:.3g}"),
                     "k95": mean_spread(per_seed.get(K95, []), "{:.3g}"),
                     "k95_mean": float(per_seed[K95].mean()) if K95 in per_seed and len(per_seed) else math.nan,
                     "k95_grid": mean_spread(grid, "{:.3g}"),
                     "paper_k": PAPER_PHASE_K.get(ph.name, math.nan)})
    return pd.DataFrame(rows)


def cosine_table(series: pd.DataFrame, ks: Iterable[int], window: int) -> pd.DataFrame:
    """Per K, over steps 1..window where the true ER (mean) < 32: the mean cosine between the true
    gradient and its K-basis projection (diagonal and subspace), mean ± sd over seeds."""
    g = series[(series.step >= 1) & (series.step <= window) & (series.grad_er_mean < 32)]
    per_seed = g.groupby("seed").mean(numeric_only=True)
    rows = [{"K": k, "points": len(g), "cos": mean_spread(per_seed[f"k{k}_cos"], "{:.3g}"),
             "cos_mean": float(per_seed[f"k{k}_cos"].mean()),
             "cos_subspace": mean_spread(per_seed[f"k{k}_cos_subspace"], "{:.3g}"),
             "cos_subspace_mean": float(per_seed[f"k{k}_cos_subspace"].mean())}
            for k in ks if f"k{k}_cos" in per_seed]
    return pd.DataFrame(rows, columns=["K", "points", "cos", "cos_mean", "cos_subspace", "cos_subspace_mean"])


def adapt_table(adapt: pd.DataFrame) -> pd.DataFrame:
    """Per arm (K, then full): the loss reached (train and test, mean ± sd over seeds), the
    checkpoint loss, trainable parameters."""
    if adapt.empty:
        return pd.DataFrame(columns=["arm", "k", "trainable", "train_loss", "train_loss_mean", "test_loss",
                                     "checkpoint_train_loss"])
    rows = []
    for arm, g in adapt.groupby("arm", sort=False):
        rows.append({"arm": arm, "k": g.k.iloc[0], "trainable": int(g.trainable.iloc[0]), "seeds": len(g),
                     "train_loss": mean_spread(g.train_loss, "{:.4g}"), "train_loss_mean": float(g.train_loss.mean()),
                     "test_loss": mean_spread(g.test_loss, "{:.4g}"), "test_loss_mean": float(g.test_loss.mean()),
                     "checkpoint_train_loss": float(g.checkpoint_train_loss.mean())})
    return pd.DataFrame(rows).sort_values("k", na_position="last").reset_index(drop=True)


@dataclass
class Analysis:
    runs: RunParams
    series: pd.DataFrame  # model scope, trajectory runs: one row per (run, step)
    matrices: pd.DataFrame  # per matrix, trajectory runs
    adapt_series: pd.DataFrame  # model scope, adaptation arms: run, arm, seed, step, metrics
    adapt: pd.DataFrame  # one row per seed × arm
    shapes: pd.DataFrame  # rise/fall per seed
    table1: pd.DataFrame
    table2: pd.DataFrame
    table3: pd.DataFrame
    phases: pd.DataFrame
    cosines: pd.DataFrame
    arms: pd.DataFrame


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    rp: RunParams = tables.params  # type: ignore[assignment]
    tel = tables.telemetry
    series, matrices = model_series(tel), matrix_series(tel)
    a = tel[(tel.scope == MODEL_SCOPE) & tel.run.str.startswith("adapt/")]
    aseries = a.pivot_table(index=["run", "step"], columns="metric", values="value", aggfunc="first").reset_index()
    aseries.columns.name = None
    if len(aseries):
        parts = aseries.run.str.extract(r"^adapt/s(?P<seed>-?\d+)/(?P<arm>.+)$")
        aseries["seed"], aseries["arm"] = parts.seed.astype(int), parts.arm
    return Analysis(rp, series, matrices, aseries, tables.adapt, rise_fall(series, p.window, p.margin),
                    table1(series), table2(series, rp.ks), table3(matrices, p.layer_step),
                    phase_table(series, p.phases, rp.ks), cosine_table(series, rp.ks, p.window),
                    adapt_table(tables.adapt))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean true-gradient ER (mean and max over matrices) and k95 per seed, against step."""
    return base.step_curves(a.series, "seed", {"grad_er_mean": "mean", "grad_er_max": "mean", K95: "mean"})


# ------------------------------------------------------------------------------------ findings


def _seed_budget(n: int, p: ReportParams) -> Budget:
    return Budget("seeds", n, p.min_seeds)


def _paper_steps_budget(a: Analysis) -> Budget:
    measured = set(a.series.step.unique())
    return Budget("paper steps (1, 5, 10, 20, 40) measured", sum(s in measured for s in PAPER_STEPS), len(PAPER_STEPS))


def _k_at(a: Analysis, step: int) -> tuple[list[float], str]:
    """Grid K for 95 % (ratio of means) per seed at ``step``, and the ratios as text."""
    g = a.series[a.series.step == step]
    out = [k_grid_for(_ratios(r, a.runs.ks)) for _, r in g.iterrows()]
    return out, ", ".join(f"K{k} {100 * g[f'k{k}_er'].mean() / g.grad_er_mean.mean():.0f} %"
                          for k in a.runs.ks if f"k{k}_er" in g) if len(g) else "—"


def findings(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    rows = []
    s, sh, rp = a.series, a.shapes, a.runs
    seeds = int(s.seed.nunique()) if len(s) else 0
    steps_budget = Budget("trajectory steps vs the paper's window", rp.steps, p.window)
    ok = sh[sh["shape"] != "not measured"] if "shape" in sh else sh
    n_rf = int((ok["shape"] == "rise-fall").sum()) if len(ok) else 0
    n_fr = int((ok["shape"] == "fall-rise").sum()) if len(ok) else 0
    measured = (f"{n_rf}/{len(ok)} seeds rise then fall, {n_fr} fall then rise; ER mean at step 1 "
                f"{mean_spread(ok.get('er_step1', []), '{:.3g}')}, peak {mean_spread(ok.get('er_peak', []), '{:.3g}')} "
                f"at step {mean_spread(ok.get('peak_step', []), '{:.3g}')}, trough {mean_spread(ok.get('er_trough', []), '{:.3g}')} "
                f"at step {mean_spread(ok.get('trough_step', []), '{:.3g}')}, step {p.window} "
                f"{mean_spread(ok.get('er_last', []), '{:.3g}')}") if len(ok) else "no trajectory measured step 1"
    rows.append(judged("gradient_rank.er_rise_fall", measured, bool(n_rf > len(ok) / 2) if len(ok) else None,
                       f"shape over steps 1..{p.window} of the mean over matrices (interior peak ≥ both ends "
                       f"by {p.margin:.0%} of the peak)", [_seed_budget(len(ok), p), _paper_steps_budget(a), steps_budget]))

    k1, ratios1 = _k_at(a, 1)
    rows.append(judged("gradient_rank.k8_at_step1",
                       f"grid K for 95 % at step 1: {mean_spread(k1, '{:.3g}')}; coverage {ratios1}; exact k95 "
                       f"{mean_spread(s[s.step == 1].get(K95, []), '{:.3g}')} (mean over matrices)",
                       bool(k1) and all(k == 8 for k in k1) if k1 else None,
                       "holds when every seed's smallest grid K with ER(K-constrained) ≥ 95 % of the true ER is 8",
                       [_seed_budget(len(k1), p), Budget("K grid contains 4, 8, 16", len({4, 8, 16} & set(rp.ks)), 3)]))

    kp = [k_grid_for(_ratios(s[(s.seed == r.seed) & (s.step == r.peak_step)].iloc[0], rp.ks))
          for r in ok.itertuples()] if len(ok) and "peak_step" in ok else []
    rows.append(judged("gradient_rank.k32_at_peak",
                       f"grid K for 95 % at each seed's ER peak (steps {mean_spread(ok.get('peak_step', []), '{:.3g}')}): "
                       f"{mean_spread(kp, '{:.3g}')}", bool(kp) and all(k == 32 for k in kp) if kp else None,
                       "holds when the K needed at the peak of the true ER is 32 in every seed",
                       [_seed_budget(len(kp), p), Budget("K grid contains 16, 32, 64", len({16, 32, 64} & set(rp.ks)), 3),
                        steps_budget]))

    ph = a.phases
    kph = ph.k95_mean.to_numpy() if len(ph) else np.array([])
    interior = bool(len(kph) >= 3 and np.isfinite(kph).all() and 0 < int(np.argmax(kph)) < len(kph) - 1)
    rows.append(judged("gradient_rank.k_per_phase",
                       "exact k95 per phase: " + "; ".join(f"{r.phase} ({r.steps}) {r.k95}" for r in ph.itertuples()),
                       interior if len(kph) >= 3 and np.isfinite(kph).all() else None,
                       "holds when the phase with the largest k95 (mean over seeds) is neither the first nor the last",
                       [_seed_budget(seeds, p), steps_budget,
                        Budget("phases with a measurement", int((ph.points > 0).sum()) if len(ph) else 0, max(len(ph), 3))]))

    t3 = a.table3
    n_layers = len(t3)
    if n_layers >= 5:
        early, late = t3.er_mean.iloc[:3].mean(), t3.er_mean.iloc[-2:].mean()
        ke, kl = t3.optimal_k_mean.iloc[:3].mean(), t3.optimal_k_mean.iloc[-2:].mean()
        m3 = (f"step {p.layer_step}: true ER per layer {t3.er_mean.min():.3g}–{t3.er_mean.max():.3g}, k95 "
              f"{t3.optimal_k_mean.min():.3g}–{t3.optimal_k_mean.max():.3g}; first three layers ER {early:.3g} "
              f"(k95 {ke:.3g}) vs last two {late:.3g} (k95 {kl:.3g})")
        holds3 = bool(ke > kl and early > late)
    else:
        m3, holds3 = f"{n_layers} decoder layers measured at step {p.layer_step}", None
    rows.append(judged("gradient_rank.early_layers_need_more_k", m3, holds3,
                       "holds when the first three layers have both a higher mean true ER and a higher mean k95 "
                       "than the last two", [_seed_budget(seeds, p), Budget("decoder layers", n_layers, 8)]))

    t2 = a.table2
    if len(t2) >= 2:
        er_k = t2.er_k_mean.to_numpy()
        mono = bool(np.all(np.diff(er_k) > 0))
        top = t2.iloc[-1]
        holds5 = bool(mono and top.pct_mean > 100)
        m5 = ("step 1: ER(K-constrained) " + ", ".join(f"K{int(r.K)} {r.er_k_mean:.3g}" for r in t2.itertuples())
              + f"; K{int(top.K)} covers {top.pct_mean:.0f} % of the true ER")
    else:
        holds5, m5 = None, "fewer than two K measured"
    rows.append(judged("gradient_rank.constrained_er_tracks_k", m5, holds5,
                       "holds when the K-constrained ER rises with every K and the largest K exceeds the true ER",
                       [_seed_budget(seeds, p), Budget("K values", len(t2), 4)]))

    c = a.cosines.set_index("K") if len(a.cosines) else pd.DataFrame()
    if 32 in c.index and 64 in c.index:
        g = s[(s.step >= 1) & (s.step <= p.window) & (s.grad_er_mean < 32)]
        per_seed = g.groupby("seed")[["k32_cos", "k64_cos"]].mean()
        holds6 = bool(len(per_seed) and (per_seed.k64_cos > per_seed.k32_cos).all())
        gain = (per_seed.k64_cos / per_seed.k32_cos - 1) * 100
        m6 = (f"steps 1..{p.window} with true ER < 32 ({int(c.loc[32, 'points'])} points): cos(G, P_K G) K32 "
              f"{c.loc[32, 'cos']}, K64 {c.loc[64, 'cos']} (gain {mean_spread(gain, '{:.3g}')} %); two-sided "
              f"subspace projection K32 {c.loc[32, 'cos_subspace']}, K64 {c.loc[64, 'cos_subspace']}")
    else:
        holds6, m6, per_seed = None, "K = 32 and 64 not both probed", pd.DataFrame()
    rows.append(judged("gradient_rank.cosine_grows_with_k", m6, holds6,
                       "the K-basis directions are nested, so cos(G, P_64 G) ≥ cos(G, P_32 G) by construction: "
                       "the informative number is the size of the gain",
                       [_seed_budget(len(per_seed), p)]))

    ad = a.adapt
    if len(ad) and {"k32", "k64"} <= set(ad.arm):
        w = ad.pivot_table(index="seed", columns="arm", values="train_loss")
        diff = w["k32"] - w["k64"]
        holds7 = bool((diff > 0).all())
        order = a.arms.dropna(subset=["k"])
        m7 = (f"train loss after {rp.adapt.steps} steps from step {rp.adapt.from_step}: K32 − K64 "
              f"{mean_spread(diff, '{:.3g}')} (paired by seed); by K: "
              + ", ".join(f"K{int(r.k)} {r.train_loss_mean:.4g}" for r in order.itertuples())
              + (f"; full training {a.arms.set_index('arm').loc['full', 'train_loss_mean']:.4g}" if "full" in set(ad.arm) else "")
              + f"; checkpoint {ad.checkpoint_train_loss.mean():.4g}")
    else:
        holds7, m7, diff = None, "K = 32 and 64 not both adapted", pd.Series(dtype=float)
    rows.append(judged("gradient_rank.k64_beats_k32", m7, holds7,
                       "holds when K = 64 reaches a lower training loss than K = 32 in every seed",
                       [_seed_budget(len(diff), p), Budget("adaptation steps", rp.adapt.steps, p.min_adapt_steps)]))
    return rows


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Table 1's means at the paper's steps, the rise/fall shapes, Table 2, the phases, the
    cosines, the losses reached per adaptation arm."""
    t1 = {str(int(r.step)): {"er_mean": r.er_mean_mean, "er_max": r.er_max_mean, "loss": r.loss_mean,
                             "k32_covers": r.k32_covers_mean, "k64_covers": r.k64_covers_mean}
          for r in a.table1.itertuples()}
    shapes = a.shapes["shape"].value_counts().to_dict() if "shape" in a.shapes else {}
    return {"table1": t1, "shapes": shapes,
            "table2": {f"k{int(r.K)}": {"er_k": r.er_k_mean, "pct_of_true": r.pct_mean} for r in a.table2.itertuples()},
            "table3": {f"layer{int(r.layer)}": {"er": r.er_mean, "k95": r.optimal_k_mean} for r in a.table3.itertuples()},
            "phases": {r.phase: {"k95": r.k95_mean} for r in a.phases.itertuples()},
            "cosines": {f"k{int(r.K)}": {"cos": r.cos_mean, "cos_subspace": r.cos_subspace_mean}
                        for r in a.cosines.itertuples()},
            "adapt": {str(r.arm): {"train_loss": r.train_loss_mean, "test_loss": r.test_loss_mean}
                      for r in a.arms.itertuples()}}
