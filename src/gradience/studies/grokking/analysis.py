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
- the seed's relative clock (the seed's conditions): its multiplication run grokked at 33.5k steps and it reads κ at 10k, so
  κ "at 10k" is read at 10/33.5 of the ``reference_condition``'s (multiplication wd 0.1) measured
  grok step — that seed's own, or the median over seeds when it did not grok. The growth rule's
  "first 5k steps" is 5/33.5 of the same step.
- the outcome condition (``outcome_condition``, one condition where only the outcome varies) and
  its fixed clock C (``outcome_clock``): a run's outcome is "grokked by C" (its grok step, read on
  the whole run to 2C, ≤ C); the rest of the run confirms each non-grokker (a late grokker by 2C, or
  not grokked by 2C). Every predictor is read on the run's window [0, C] only: κ at the probe, κ
  growth, κ_recovery (on the window; "peak near end" read as κ_recovery = 1, κ never came down) and
  the mean effective rank at C. The probe and growth steps are 10k/33.5k and 5k/33.5k of the median
  grok step of the ``calibration_seeds`` (the same steps for every run: no run's own outcome sets
  them).
- the predictors (Part V's monitoring rules and Part I's κ divergence), each a predictor of "not
  grokked by C": a threshold calibrated on ``calibration_seeds`` (max hit rate − false-alarm rate)
  scored on the other seeds of the outcome condition (hits, false alarms), the seed's threshold on
  the same held-out seeds, and the held-out AUC with its one-sided Mann–Whitney p-value and the
  smallest AUC that test detects at ``alpha`` with probability ``power`` (:func:`detectable_auc`).
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
    calibration_seeds: list[int] = Field(default_factory=lambda: list(range(8)), min_length=1, description=(
        "seeds of the outcome condition the thresholds and the probe step are chosen on; the other seeds score them"))
    outcome_condition: str = Field(default="add_wd1", description=(
        "the condition where only the outcome varies: the κ predictors are scored inside it"))
    outcome_clock: float = Field(default=7.2, gt=0, description=(
        "C: the outcome is 'grokked by lr·wd·steps C'; the runs go to 2C to confirm each non-grokker"))
    claimed_auc: float = Field(default=0.9, gt=0.5, le=1, description=(
        "the separation a rule acted on run by run needs (the source: a 'strong' signal, 'high' confidence)"))
    alpha: float = Field(default=0.05, gt=0, lt=1, description="level of the one-sided AUC test")
    power: float = Field(default=0.8, gt=0, lt=1, description="power at which the detectable AUC is stated")
    outcome_seeds_needed: int = Field(default=24, ge=1, description="seeds of the outcome condition a predictor claim needs")
    held_out_class_needed: int = Field(default=4, ge=1, description=(
        "held-out runs of each outcome (grokked by C, not) a predictor claim needs"))
    condition_seeds_needed: int = Field(default=2, ge=1, description=(
        "seeds a condition's outcome claim needs (the seed reports one run per condition)"))
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
    """One row per run (outcome, grok step, clock, model κ summary, recovery score) and one row per
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
    return out, kappa


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties ½ (Mann–Whitney); ``nan`` if a class is empty."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return math.nan
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


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


def auc_p_value(score: np.ndarray, positive: np.ndarray) -> float:
    """One-sided Mann–Whitney p-value for "positives score higher" (exact without ties at small n);
    ``nan`` if a class is empty."""
    from scipy.stats import mannwhitneyu

    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return math.nan
    return float(mannwhitneyu(pos, neg, alternative="greater").pvalue)


def detectable_auc(n_pos: int, n_neg: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest AUC a one-sided Mann–Whitney test at level ``alpha`` detects with probability
    ``power`` between ``n_pos`` and ``n_neg`` runs (normal approximation: the null's standard error
    √((n₊ + n₋ + 1)/(12 n₊ n₋)), the alternative's Hanley–McNeil). ``inf`` when no AUC ≤ 1 is detectable."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    if n_pos < 1 or n_neg < 1:
        return math.inf
    za, zb = norm.ppf(1 - alpha), norm.ppf(power)
    se0 = math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))

    def gap(a: float) -> float:
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
        return a - 0.5 - za * se0 - zb * math.sqrt(max(var, 0.0))

    if gap(1.0) < 0:
        return math.inf
    return float(brentq(gap, 0.5, 1.0))


def log_ratio_test(ratios: np.ndarray, alpha: float = 0.05, power: float = 0.8) -> tuple[float, float]:
    """Paired ratios (> 0): the one-sided t-test p-value of mean log ratio > 0, and the smallest ratio
    that test detects with probability ``power`` at this n and the observed spread,
    exp((t₁₋α + t_power)·sd/√n) on n − 1 degrees of freedom. ``nan``/``inf`` below two pairs."""
    from scipy.stats import t, ttest_1samp

    x = np.log(np.asarray(ratios, dtype=float))
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan, math.inf
    sd = float(x.std(ddof=1))
    if sd == 0:
        return (0.0 if x[0] > 0 else 1.0), 1.0
    n = len(x)
    p_value = float(ttest_1samp(x, 0.0, alternative="greater").pvalue)
    return p_value, float(math.exp((t.ppf(1 - alpha, n - 1) + t.ppf(power, n - 1)) * sd / math.sqrt(n)))


def outcome_runs(telemetry: pd.DataFrame, runs: pd.DataFrame, p: ReportParams) -> pd.DataFrame:
    """One row per run of the outcome condition: grok step (whole run), grokked by C and by 2C, and
    the predictors read on the window [0, C] at the calibration seeds' probe and growth steps."""
    g = runs[runs["condition"] == p.outcome_condition]
    if g.empty:
        return pd.DataFrame()
    tele = telemetry[telemetry["run"].isin(g["run"]) & (telemetry["scope"] == MODEL_SCOPE)
                     & telemetry["metric"].isin(["test_acc", "kappa", "effective_rank"])]
    wide = {run: w.pivot_table(index="step", columns="metric", values="value").sort_index()
            for run, w in tele.groupby("run", sort=False)}
    out = g[["run", "seed", "lr", "weight_decay", "steps", "clock"]].copy()
    out["clock_steps"] = p.outcome_clock / (out["lr"] * out["weight_decay"])
    out["grok_step"] = [first_step_staying(wide[r].index.to_numpy(), wide[r]["test_acc"].to_numpy(), p.grok_threshold)
                        for r in out["run"]]
    out["grokked_by_C"] = out["grok_step"] <= out["clock_steps"]
    out["grokked_by_2C"] = out["grok_step"] <= 2 * out["clock_steps"]
    out["held_out"] = ~out["seed"].isin(p.calibration_seeds)
    cal = out.loc[~out["held_out"], "grok_step"]
    ref = float(np.nanmedian(cal)) if np.isfinite(cal).any() else math.nan
    out["probe_step"] = SEED_PROBE_STEP / SEED_GROK_STEP * ref
    out["growth_step"] = SEED_GROWTH_STEPS / SEED_GROK_STEP * ref
    rows = []
    for _, r in out.iterrows():
        w = wide[r["run"]]
        w = w[w.index <= r["clock_steps"]]
        k = w["kappa"].dropna()
        ks = kappa_summary(k.index.to_numpy(), k.to_numpy(), p, r["probe_step"], r["growth_step"])
        rows.append({**ks, "effective_rank_at_clock": float(w["effective_rank"].dropna().iloc[-1]),
                     "effective_rank_start": float(w["effective_rank"].dropna().iloc[0])})
    out = pd.concat([out.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    out["recovery_score"] = out["kappa_recovery"].fillna(1.0)
    return out


PREDICTORS = {  # predictor → (score column, sign, the seed's threshold or None): high sign·score → not grokked by C
    "kappa_probe": ("kappa_probe", 1.0, None),
    "kappa_growth": ("kappa_growth", 1.0, "kappa_growth_alert"),
    "kappa_recovery": ("recovery_score", -1.0, "kappa_recovery_alert"),
    "effective_rank": ("effective_rank_at_clock", 1.0, None),
}


def score_predictors(out: pd.DataFrame, p: ReportParams) -> pd.DataFrame:
    """Each predictor of "not grokked by C" inside the outcome condition: the threshold calibrated on
    ``calibration_seeds`` and, on the other seeds, its confusion, the seed's threshold's confusion,
    the AUC, its one-sided p-value and the smallest detectable AUC at the held-out counts."""
    rows = []
    for name, (col, sign, seed_key) in PREDICTORS.items():
        if out.empty:
            rows.append({"predictor": name, "held_out_auc": math.nan, "p_value": math.nan,
                         "detectable_auc": math.inf})
            continue
        cal, held = out[~out["held_out"]], out[out["held_out"]]
        failed_cal, failed = ~cal["grokked_by_C"].to_numpy(), ~held["grokked_by_C"].to_numpy()
        thr = calibrate(cal[col].to_numpy(float), failed_cal, sign)
        score = sign * held[col].to_numpy(float)
        fires = pd.Series(score > sign * thr if np.isfinite(thr) else np.zeros(len(held), bool), index=held.index)
        row = {"predictor": name, "score": col, "sign": sign, "calibrated_threshold": thr,
               "calibration_runs": len(cal), "held_out_runs": len(held),
               **{f"held_out_{k}": v for k, v in confusion(fires, pd.Series(failed, index=held.index)).items()},
               "held_out_auc": auc(score, failed), "p_value": auc_p_value(score, failed),
               "detectable_auc": detectable_auc(int(failed.sum()), int((~failed).sum()), p.alpha, p.power),
               "seed_threshold": getattr(p, seed_key) if seed_key else math.nan}
        if seed_key:
            seed_fires = pd.Series(score > sign * row["seed_threshold"], index=held.index)
            row |= {f"seed_{k}": v for k, v in confusion(seed_fires, pd.Series(failed, index=held.index)).items()}
        rows.append(row)
    return pd.DataFrame(rows).set_index("predictor")


@dataclass
class Analysis:
    params: RunParams
    telemetry: pd.DataFrame
    model: pd.DataFrame  # model-scope metrics, one row per (run, step), with condition/seed/grokked/clock
    summary: pd.DataFrame
    kappa: pd.DataFrame  # κ summary per (run, matrix), model scope included
    outcome: pd.DataFrame  # the outcome condition's runs: grokked by C / 2C, predictors on [0, C]
    predictors: pd.DataFrame  # each predictor scored on the held-out seeds of the outcome condition


def analyse(tables: Tables[RunParams], p: ReportParams) -> Analysis:
    """Grok steps, κ summaries per matrix on the seed's relative clock, and the predictors scored
    inside the outcome condition."""
    summary, kappa = summarise_runs(tables.telemetry, tables.runs, p)
    tele = tables.telemetry
    model = (tele[tele.scope == MODEL_SCOPE].pivot_table(index=["run", "step"], columns="metric", values="value")
             .reset_index().merge(summary[["run", "condition", "seed", "grokked"]], on="run"))
    per_run = summary.set_index("run")
    model["clock"] = decay_clock(model["run"].map(per_run["lr"]), model["run"].map(per_run["weight_decay"]),
                                 model["step"])
    outcome = outcome_runs(tele, tables.runs, p)
    return Analysis(tables.params, tele, model, summary, kappa, outcome, score_predictors(outcome, p))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean test accuracy and median model κ per condition, against step."""
    return step_curves(a.model, "condition", {"test_acc": "mean", "kappa": "median"})


def _median(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.median()) if len(x) else math.nan


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per condition: fraction grokked, grok step and clock, and per matrix the medians of the κ
    summary with the count of runs whose κ peaked near the end; and the outcome condition: its
    counts (grokked by C, by 2C, late grokkers) and each predictor scored on the held-out seeds."""
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
    o = a.outcome
    outcome = {} if o.empty else {
        "condition": p.outcome_condition, "clock": p.outcome_clock, "runs": len(o),
        "clock_reached_min": float(o["clock"].min()), "grokked_by_clock": int(o["grokked_by_C"].sum()),
        "grokked_by_twice_clock": int(o["grokked_by_2C"].sum()),
        "late_grokkers": int((o["grokked_by_2C"] & ~o["grokked_by_C"]).sum()),
        "probe_step": float(o["probe_step"].iloc[0]), "growth_step": float(o["growth_step"].iloc[0]),
        "predictors": a.predictors.drop(columns=["score"], errors="ignore").to_dict(orient="index")}
    return {"conditions": out, "outcome": outcome,
            "reference_grok_step_median": _median(a.summary["reference_grok_step"])}
