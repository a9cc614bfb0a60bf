"""Rosetta: per task × arm the final accuracy and its gap to the conventional arm, and what the rules chose.

Definitions (used by the notebook, the findings and the tests):

- the arm table: per task × arm, the final test accuracy (mean, sd, n) and train loss over seeds,
  the diverged runs, and ``acc_gap`` = the arm's mean test accuracy − the conventional arm's.
- a rule "holds" on a task when its arm's mean final test accuracy is at least the conventional
  arm's minus ``acc_tolerance``; budgets: ``min_seeds`` seeds per arm and a conventional arm that
  learns the task (test accuracy ≥ :func:`learned_needed`).
- the chosen values: per task × arm × metric of the rules table (ε, decay, MASS step sizes, LoRA
  rank, scale, dropout, targets), the median and range over weights, seeds and measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import Field

from gradience.studies.notebook import step_curves
from gradience.studies.protocol import ReportParams as BaseReportParams
from gradience.studies.protocol import Tables
from gradience.studies.rosetta.runs import CONVENTIONAL, RunParams


class ReportParams(BaseReportParams):
    acc_tolerance: float = Field(default=0.02, ge=0, lt=1, description="a rule holds within this accuracy")
    min_seeds: int = Field(default=3, ge=1)
    learned_acc: dict[str, float] = Field(default_factory=lambda: {"modular": 0.9, "digits": 0.9, "reviews": 0.6},
                                          description="test accuracy a conventional arm must reach to count as "
                                          "having learned its task; for a classifier also at least the majority-"
                                          "class share + 2 binomial SE (:func:`learned_needed`)")
    scale_range: tuple[float, float] = (22.0, 2700.0)
    lora_steps_needed: int = Field(default=30, ge=1, description=(
        "LoRA updates the scale-excess claim needs (‖BA‖₂ grows with training; a free choice)"))


@dataclass
class Analysis:
    runs: RunParams
    summary: pd.DataFrame  # one row per run (the run record)
    arms: pd.DataFrame  # per task × arm: final accuracy mean, sd, n, and its gap to the conventional arm
    history: pd.DataFrame
    rules: pd.DataFrame
    lora: pd.DataFrame
    chosen: pd.DataFrame  # per task × rule metric: the value the rule chose (median) vs the conventional one


def arm_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task × arm: final test accuracy and train loss (mean, sd, n), diverged runs, and the gap
    of the mean accuracy to the conventional arm of the same task."""
    g = summary.groupby(["task", "arm"], sort=False)
    t = g.agg(acc_mean=("final_test_acc", "mean"), acc_sd=("final_test_acc", "std"), n=("final_test_acc", "count"),
              loss_mean=("final_train_loss", "mean"), runs=("run", "count"),
              diverged=("outcome", lambda s: int((s != "completed").sum()))).reset_index()
    conv = t[t.arm == CONVENTIONAL].set_index("task").acc_mean
    t["acc_gap"] = t.acc_mean - t.task.map(conv)
    return t


def chosen_values(rules: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per task × metric of the rules table: the median value the geometric rules chose, its range."""
    if rules.empty:
        return pd.DataFrame(columns=["task", "arm", "metric", "median", "min", "max"])
    r = rules.merge(summary[["run", "task", "arm"]], on="run")
    r = r[np.isfinite(r.value.astype(float))]
    return (r.groupby(["task", "arm", "metric"]).value.agg(["median", "min", "max"]).reset_index())


def analyse(tables: Tables[RunParams], p: ReportParams) -> Analysis:
    s = tables.runs.copy()
    for col in ("final_test_acc", "final_train_loss"):
        if col not in s:
            s[col] = math.nan
    return Analysis(tables.params, s, arm_table(s), tables.history, tables.rules, tables.lora,
                    chosen_values(tables.rules, s))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean test accuracy per task and arm against step (the small tasks' evaluation cadence)."""
    h = a.history[a.history.metric == "test_acc"].merge(a.summary[["run", "task", "arm"]], on="run")
    h = h[h.task != "reviews"].pivot_table(index=["task", "arm", "step", "run"], columns="metric", values="value").reset_index()
    if h.empty:
        return pd.DataFrame(columns=["curve", "step", "value"])
    return step_curves(h, ["task", "arm"], {"test_acc": "mean"})


def learned_needed(summary: pd.DataFrame, task: str, p: ReportParams) -> float:
    """Test accuracy that counts as having learned ``task``: ``learned_acc[task]``, and for a classifier
    at least the majority-class share m of the scored examples + 2·√(m(1−m)/n) (its trivial answer)."""
    need = p.learned_acc.get(task, 0.0)
    rows = summary[summary.task == task]
    if "majority_share" in rows and rows.majority_share.notna().any():
        m, n = float(rows.majority_share.dropna().iloc[0]), float(rows.n_test.dropna().iloc[0])
        need = max(need, m + 2 * math.sqrt(m * (1 - m) / n))
    return need


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per task × arm: final test accuracy mean and sd, gap to conventional, diverged runs; LoRA excess."""
    out: dict = {}
    for _, r in a.arms.iterrows():
        out.setdefault(r.task, {})[r.arm] = {"test_acc_mean": float(r.acc_mean), "test_acc_sd": float(r.acc_sd),
                                             "acc_gap": float(r.acc_gap), "diverged": float(r.diverged),
                                             "train_loss_mean": float(r.loss_mean)}
    if not a.lora.empty:
        g = a.lora.merge(a.summary[["run", "arm"]], on="run")
        out["lora_excess_median"] = {arm: float(x.excess.median()) for arm, x in g.groupby("arm")}
    return out
