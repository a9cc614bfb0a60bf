"""True-gradient effective rank (paper 86): the report side — the series, the tables, the metrics.

Definitions (stated once, used by the notebook, the findings and the tests):

- the series: the model-scope telemetry of the ``trajectory`` runs, one row per (run, step), and
  the per-matrix telemetry (with the decoder ``layer``); runs are picked and given their seed
  from the run table's ``condition`` and ``seed``; the adaptation arms' telemetry from the
  ``adapt`` table's ``run``, ``seed`` and ``arm`` (through :func:`.runs.arm_run`).
- rise-then-fall: over steps 1..``window``, an interior peak of the true ER (mean over matrices)
  above both ends by ``margin`` of the peak (:func:`.paper_tables.rise_fall`).
- the paper's phases (initial 1–5, rising 5–15, peak 15–25, refinement 25–40) are ``phases``;
  per phase the exact k95 (mean over matrices) and the grid K for 95 % of the ratio of means.
- the paper's three tables, the cosines and the loss reached per arm: :mod:`.paper_tables`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from pydantic import Field, field_validator, model_validator

from gradience.config import Section
from gradience.reporting import mean_spread
from gradience.studies.gradient_rank.paper_tables import (
    K95,
    PAPER_PHASE_K,
    adapt_table,
    cosine_table,
    coverage_ratios,
    k_grid_for,
    rise_fall,
    table1,
    table2,
    table3,
)
from gradience.studies.gradient_rank.runs import RunParams, arm_run
from gradience.studies.notebook import step_curves
from gradience.studies.protocol import ReportParams as BaseReportParams
from gradience.studies.protocol import Tables, unique_names
from gradience.telemetry import kbasis as kb
from gradience.telemetry.recorder import MODEL_SCOPE


class Phase(Section):
    name: str
    first: int = Field(ge=0)
    last: int = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> Phase:
        if self.last < self.first:
            raise ValueError(f"phase {self.name!r}: last={self.last} < first={self.first}")
        return self


class ReportParams(BaseReportParams):
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
        unique_names([p.name for p in v], "phase names")
        return v


def trajectory_seeds(runs: pd.DataFrame) -> pd.Series:
    """The seed of each ``trajectory`` run, indexed by run id (from the run table's fields)."""
    return runs[runs.condition == "trajectory"].set_index("run").seed


def model_series(telemetry: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Model-scope telemetry of the trajectory runs, one row per (run, step), with ``seed``."""
    seeds = trajectory_seeds(runs)
    t = telemetry[(telemetry.scope == MODEL_SCOPE) & telemetry.run.isin(seeds.index)]
    s = t.pivot_table(index=["run", "step"], columns="metric", values="value", aggfunc="first").reset_index()
    s.columns.name = None
    s["seed"] = s.run.map(seeds)
    return s


def matrix_series(telemetry: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-matrix telemetry of the trajectory runs (one row per run, step, matrix), with ``layer``
    (nan outside the decoder layers) and ``seed``."""
    seeds = trajectory_seeds(runs)
    t = telemetry[(telemetry.scope != MODEL_SCOPE) & telemetry.run.isin(seeds.index)
                  & (telemetry.metric.isin(["grad_er", K95]) | telemetry.metric.str.match(r"k\d+_"))]
    s = t.pivot_table(index=["run", "step", "scope"], columns="metric", values="value", aggfunc="first").reset_index()
    s.columns.name = None
    s["layer"] = s.scope.map(lambda n: kb.layer_of(n)).astype(float)
    s["seed"] = s.run.map(seeds)
    return s


def adapt_series(telemetry: pd.DataFrame, adapt: pd.DataFrame) -> pd.DataFrame:
    """Model-scope telemetry of the adaptation arms, one row per (arm run, step), with ``seed`` and
    ``arm`` from the ``adapt`` table."""
    arms = (pd.DataFrame({"seed": adapt.seed.to_numpy(), "arm": adapt.arm.to_numpy()},
                         index=[arm_run(r, a) for r, a in zip(adapt.run, adapt.arm, strict=True)])
            if len(adapt) else pd.DataFrame(columns=["seed", "arm"]))
    a = telemetry[(telemetry.scope == MODEL_SCOPE) & telemetry.run.isin(arms.index)]
    s = a.pivot_table(index=["run", "step"], columns="metric", values="value", aggfunc="first").reset_index()
    s.columns.name = None
    if len(s):
        s["seed"], s["arm"] = s.run.map(arms.seed), s.run.map(arms.arm)
    return s


def phase_table(series: pd.DataFrame, phases: list[Phase], ks: Iterable[int]) -> pd.DataFrame:
    """Per phase (steps first..last): the mean true ER, the exact k95 (mean over matrices), and the
    grid K for 95 % of the ratio of means; mean ± sd over seeds, the paper's K beside."""
    rows = []
    for ph in phases:
        g = series[(series.step >= ph.first) & (series.step <= ph.last)]
        per_seed = g.groupby("seed").mean(numeric_only=True)
        grid = [k_grid_for(coverage_ratios(r, ks)) for _, r in per_seed.iterrows()]
        rows.append({"phase": ph.name, "steps": f"{ph.first}–{ph.last}", "points": int(g.step.nunique()),
                     "er_mean": mean_spread(per_seed.get("grad_er_mean", []), "{:.3g}"),
                     "k95": mean_spread(per_seed.get(K95, []), "{:.3g}"),
                     "k95_mean": float(per_seed[K95].mean()) if K95 in per_seed and len(per_seed) else math.nan,
                     "k95_grid": mean_spread(grid, "{:.3g}"),
                     "paper_k": PAPER_PHASE_K.get(ph.name, math.nan)})
    return pd.DataFrame(rows)


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


def analyse(tables: Tables[RunParams], p: ReportParams) -> Analysis:
    """The series of the trajectory and adaptation runs, the rise/fall shapes and the tables."""
    rp, tel = tables.params, tables.telemetry
    series, matrices = model_series(tel, tables.runs), matrix_series(tel, tables.runs)
    return Analysis(rp, series, matrices, adapt_series(tel, tables.adapt), tables.adapt,
                    rise_fall(series, p.window, p.margin), table1(series), table2(series, rp.ks),
                    table3(matrices, p.layer_step), phase_table(series, p.phases, rp.ks),
                    cosine_table(series, rp.ks, p.window), adapt_table(tables.adapt))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean true-gradient ER (mean and max over matrices) and k95 per seed, against step."""
    return step_curves(a.series, "seed", {"grad_er_mean": "mean", "grad_er_max": "mean", K95: "mean"})


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
