"""Grokking on modular arithmetic: grok steps, κ summaries per matrix, the monitoring rules scored.

Definitions (stated once, used by the notebook, the findings and the tests):

- grok step: the first cadence step from which test accuracy stays ≥ ``grok_threshold``.
- clock: lr·wd·steps (weight decay shrinks the weights by 1 − lr·wd per step). A claim about a
  weight-decay condition needs ``clock_needed`` (10) on it; a shorter run is "not comparable".
- κ: σ_max/σ_min of each weight matrix (embedding, hidden, readout), and its max over matrices
  (scope ``model``); every κ summary is given per matrix and for the max. κ is noisy where σ_min
  jitters, so it is read on a rolling median over ``smoothing_window`` cadence points:
  κ_peak = max, κ_final = last value, κ_recovery = κ_peak / κ_final — *undefined* (NaN, counted as
  "peak near end") when the peak lies in the last ``peak_end_fraction`` (10 %) of the run's steps.
- the seed's relative clock: its multiplication run grokked at 33.5k steps and it reads κ at 10k, so
  κ "at 10k" is read at 10/33.5 of the ``reference_condition``'s (multiplication wd 0.1) measured
  grok step — that seed's own, or the median over seeds when it did not grok. The growth rule's
  "first 5k steps" is 5/33.5 of the same step.
- monitoring rules (Part V), each a predictor of "will not grok": *growth*: κ(window end)/κ(0) >
  ``kappa_growth_alert``; *stuck*: κ_recovery < ``kappa_recovery_alert``, with "peak near end" read
  as κ_recovery = 1 (κ never came down). Scored at the seed's thresholds on every run, and at
  thresholds calibrated on ``calibration_seeds`` (max hit rate − false-alarm rate) on the other
  seeds: hits, false alarms and AUC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import Field

from gradience.studies.grokking.runs import RunParams
from gradience.studies.notebook import step_curves
from gradience.studies.protocol import ReportParams as BaseReportParams
from gradience.studies.protocol import Tables
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.telemetry.signals import decay_clock, first_step_staying

SEED_GROK_STEP = 33_500  # the seed's multiplication run grokked at 33.5k steps
SEED_PROBE_STEP = 10_000  # its κ comparison step
SEED_GROWTH_STEPS = 5_000  # its growth rule's window ("first 5k steps")


class ReportParams(BaseReportParams):
    grok_threshold: float = Field(default=0.95, gt=0, le=1)
    smoothing_window: int = Field(default=5, ge=1)
    peak_end_fraction: float = Field(default=0.1, gt=0, lt=1, description=(
        "κ peaking within this last fraction of a run leaves κ_recovery undefined"))
    reference_condition: str = Field(default="mul_wd0.1", description=(
        "the condition whose grok step maps the seed's 33.5k steps (the relative clock)"))
    kappa_growth_alert: float = Field(default=50.0, gt=1, description="the seed's growth rule")
    kappa_recovery_alert: float = Field(default=2.0, gt=1, description="the seed's stuck rule")
    calibration_seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1, description=(
        "seeds the alert thresholds are chosen on; the other seeds score them"))
    clock_needed: float = Field(default=10.0, gt=0, description="lr·wd·steps a weight-decay claim needs")
    post_grok_needed: float = Field(default=0.5, ge=0, description=(
        "steps past the grok step, as a fraction of it, that a κ-recovery claim needs"))



def value_at(steps: np.ndarray, values: np.ndarray, step: float) -> float:
    """The value at the last cadence step ≤ ``step``."""
    i = np.searchsorted(steps, step, side="right") - 1
    return float(values[max(i, 0)])


def kappa_summary(steps: np.ndarray, kappa: np.ndarray, p: ReportParams, probe_step: float,
                  growth_step: float) -> dict[str, float]:
    """κ peak, final, recovery, the value at ``probe_step`` and the growth κ(``growth_step``)/κ(0),
    all on the rolling median of ``kappa``. κ_recovery is ``nan`` (``peak_near_end``) when the
    smoothed peak lies in the last ``peak_end_fraction`` of the run: κ has not come down, so
    κ_peak / κ_final ≈ 1 would say nothing about recovery."""
    smooth = pd.Series(kappa).rolling(p.smoothing_window, min_periods=1).median().to_numpy()
    k = int(np.argmax(smooth))
    peak, final, peak_step = float(smooth[k]), float(smooth[-1]), float(steps[k])
    near_end = peak_step >= (1 - p.peak_end_fraction) * float(steps[-1])
    def at(step: float) -> float:
        return value_at(steps, smooth, step) if np.isfinite(step) else math.nan

    return {
        "kappa_probe": at(probe_step),
        "kappa_peak": peak,
        "kappa_peak_step": peak_step,
        "kappa_final": final,
        "peak_near_end": near_end,
        "kappa_recovery": math.nan if near_end else peak / final,
        "kappa_growth": at(growth_step) / float(smooth[0]),
    }


def seed_clock(grok_steps: pd.Series, seeds: pd.Series) -> pd.Series:
    """Per seed, the reference condition's grok step that stands for the seed's 33.5k steps: that
    seed's own when it grokked, else the median over the seeds that did (``nan`` if none did)."""
    own = dict(zip(seeds, grok_steps, strict=True))
    median = float(np.nanmedian(grok_steps)) if np.isfinite(grok_steps).any() else math.nan
    return pd.Series({s: own[s] if np.isfinite(own[s]) else median for s in own}, name="reference_grok_step")


def summarise_runs(telemetry: pd.DataFrame, runs: pd.DataFrame, p: ReportParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run (outcome, grok step, clock, model κ summary, alert scores) and one row per
    (run, matrix) with that matrix's κ summary, on the seed's relative clock."""
    tele = telemetry[telemetry["metric"].isin(["test_acc", "train_acc", "kappa", "effective_rank"])]
    wide = {run: g.pivot_table(index="step", columns=["scope", "metric"], values="value").sort_index()
            for run, g in tele.groupby("run", sort=False)}
    outcome = []
    for run, w in wide.items():
        steps = w.index.to_numpy()
        gs = first_step_staying(steps, w[(MODEL_SCOPE, "test_acc")].to_numpy(), p.grok_threshold)
        outcome.append({"run": run, "grok_step": gs, "grokked": not math.isnan(gs),
                        "final_train_acc": float(w[(MODEL_SCOPE, "train_acc")].iloc[-1]),
                        "final_test_acc": float(w[(MODEL_SCOPE, "test_acc")].iloc[-1]),
                        "effective_rank_start": float(w[(MODEL_SCOPE, "effective_rank")].iloc[0]),
                        "effective_rank_final": float(w[(MODEL_SCOPE, "effective_rank")].iloc[-1])})
    out = runs.merge(pd.DataFrame(outcome), on="run")
    out["clock_at_grok"] = decay_clock(out["lr"], out["weight_decay"], out["grok_step"])
    out["post_grok"] = (out["steps"] - out["grok_step"]) / out["grok_step"].clip(lower=1)
    ref = out[out["condition"] == p.reference_condition]
    clock = seed_clock(ref["grok_step"], ref["seed"]) if len(ref) else pd.Series(dtype=float)
    out["reference_grok_step"] = out["seed"].map(clock).astype(float)
    out["probe_step"] = SEED_PROBE_STEP / SEED_GROK_STEP * out["reference_grok_step"]
    out["growth_step"] = SEED_GROWTH_STEPS / SEED_GROK_STEP * out["reference_grok_step"]
    per_matrix = []
    for _, r in out.iterrows():
        w = wide[r["run"]]
        for scope in [c for c in w.columns.get_level_values(0).unique()]:
            if (scope, "kappa") not in w:
                continue
            k = w[(scope, "kappa")].dropna()
            ks = kappa_summary(k.index.to_numpy(), k.to_numpy(), p, r["probe_step"], r["growth_step"])
            per_matrix.append({"run": r["run"], "condition": r["condition"], "seed": r["seed"], "scope": scope,
                               "grokked": r["grokked"], **ks})
    kappa = pd.DataFrame(per_matrix)
    out = out.merge(kappa[kappa["scope"] == MODEL_SCOPE].drop(columns=["condition", "seed", "scope", "grokked"]),
                    on="run")
    # the stuck rule's score: κ_recovery, with "peak near end" read as no recovery at all (1.0)
    out["recovery_score"] = out["kappa_recovery"].fillna(1.0)
    out["alert_growth"] = out["kappa_growth"] > p.kappa_growth_alert
    out["alert_stuck"] = out["recovery_score"] < p.kappa_recovery_alert
    return out, kappa


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties ½ (Mann–Whitney); ``nan`` if a class is empty."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return math.nan
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


RULES = {  # rule → (score column, sign): the alert fires when sign·score > sign·threshold
    "alert_growth": ("kappa_growth", 1.0),
    "alert_stuck": ("recovery_score", -1.0),
}


def confusion(alert: pd.Series, failed: pd.Series) -> dict[str, int]:
    return {"hits": int((alert & failed).sum()), "misses": int((~alert & failed).sum()),
            "false_alarms": int((alert & ~failed).sum()), "correct_rejections": int((~alert & ~failed).sum())}


def calibrate(score: np.ndarray, failed: np.ndarray, sign: float) -> float:
    """The threshold that maximises hit rate − false-alarm rate (Youden's J) on these runs; candidate
    cuts are midpoints between sorted distinct scores. ``nan`` without both outcomes."""
    s = sign * score
    if failed.all() or not failed.any():
        return math.nan
    u = np.unique(s)
    cuts = (u[1:] + u[:-1]) / 2 if len(u) > 1 else u
    j = [(s[failed] > c).mean() - (s[~failed] > c).mean() for c in cuts]
    return float(sign * cuts[int(np.argmax(j))])


def score_alerts(summary: pd.DataFrame, p: ReportParams) -> pd.DataFrame:
    """Each rule as a predictor of "will not grok": the seed's threshold on every run; a threshold
    calibrated on ``calibration_seeds`` and scored (hits, false alarms, AUC) on the other seeds."""
    seed_thresholds = {"alert_growth": p.kappa_growth_alert, "alert_stuck": p.kappa_recovery_alert}
    cal = summary["seed"].isin(p.calibration_seeds)
    held = summary[~cal]
    rows = []
    for rule, (col, sign) in RULES.items():
        failed = ~summary["grokked"]
        thr = calibrate(summary.loc[cal, col].to_numpy(float), failed[cal].to_numpy(), sign)
        fires = (sign * held[col] > sign * thr) if np.isfinite(thr) else pd.Series(False, index=held.index)
        rows.append({"rule": rule, "seed_threshold": seed_thresholds[rule],
                     **{f"seed_{k}": v for k, v in confusion(summary[rule], failed).items()},
                     "calibrated_threshold": thr, "calibration_runs": int(cal.sum()), "held_out_runs": len(held),
                     **{f"held_out_{k}": v for k, v in confusion(fires, ~held["grokked"]).items()},
                     "held_out_auc": auc(sign * held[col].to_numpy(float), ~held["grokked"].to_numpy())})
    return pd.DataFrame(rows)


@dataclass
class Analysis:
    params: RunParams
    telemetry: pd.DataFrame
    model: pd.DataFrame  # model-scope metrics, one row per (run, step), with condition/seed/grokked/clock
    summary: pd.DataFrame
    kappa: pd.DataFrame  # κ summary per (run, matrix), model scope included
    alerts: pd.DataFrame


def analyse(tables: Tables[RunParams], p: ReportParams) -> Analysis:
    """Grok steps, κ summaries per matrix on the seed's relative clock, and the alerts scored."""
    summary, kappa = summarise_runs(tables.telemetry, tables.runs, p)
    tele = tables.telemetry
    model = (tele[tele.scope == MODEL_SCOPE].pivot_table(index=["run", "step"], columns="metric", values="value")
             .reset_index().merge(summary[["run", "condition", "seed", "grokked"]], on="run"))
    per_run = summary.set_index("run")
    model["clock"] = decay_clock(model["run"].map(per_run["lr"]), model["run"].map(per_run["weight_decay"]),
                                 model["step"])
    return Analysis(tables.params, tele, model, summary, kappa, score_alerts(summary, p))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean test accuracy and median model κ per condition, against step."""
    return step_curves(a.model, "condition", {"test_acc": "mean", "kappa": "median"})


def _median(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.median()) if len(x) else math.nan


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per condition: fraction grokked, grok step and clock, and per matrix the medians of the κ
    summary with the count of runs whose κ peaked near the end; and the alert scores."""
    out = {}
    for name, g in a.summary.groupby("condition", sort=False):
        k = a.kappa[a.kappa["condition"] == name]
        out[str(name)] = {
            "grokked_fraction": float(g["grokked"].mean()),
            "grok_step_mean": float(g["grok_step"].mean()) if g["grokked"].any() else math.nan,
            "clock_reached": float(g["clock"].max()),
            "clock_at_grok_mean": float(g["clock_at_grok"].mean()) if g["grokked"].any() else math.nan,
            "final_test_acc_mean": float(g["final_test_acc"].mean()),
            "diverged_runs": float((g["outcome"] == "diverged").sum()),
            "kappa": {str(scope): {"probe_median": _median(m["kappa_probe"]), "peak_median": _median(m["kappa_peak"]),
                                   "final_median": _median(m["kappa_final"]),
                                   "recovery_median": _median(m["kappa_recovery"]),
                                   "peak_near_end_runs": int(m["peak_near_end"].sum())}
                      for scope, m in k.groupby("scope")},
        }
    return {"conditions": out, "alerts": a.alerts.set_index("rule").to_dict(orient="index"),
            "reference_grok_step_median": _median(a.summary["reference_grok_step"])}
