"""Grokking on modular arithmetic: one function per claim, its docstring the claim.

Every verdict goes through :func:`gradience.reporting.judged` (the verdict rule) with the budgets
the claim needs; a condition absent from params is "not comparable".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradience.reporting import Budget, finding, judged, mean_spread
from gradience.studies.grokking.analysis import Analysis, ReportParams
from gradience.telemetry.recorder import MODEL_SCOPE

Row = dict[str, str]


def _runs(summary: pd.DataFrame, condition: str) -> pd.DataFrame:
    return summary[summary["condition"] == condition]


def _clock_budgets(g: pd.DataFrame, p: ReportParams, seeds_needed: int = 3) -> list[Budget]:
    return [Budget("lr·wd·steps", float(g["clock"].min()), p.clock_needed),
            Budget("seeds", g["seed"].nunique(), seeds_needed)]


def _outcome(a: Analysis, p: ReportParams, claim: str, condition: str, seed_grokked: bool) -> list[Row]:
    g = _runs(a.summary, condition)
    if g.empty:
        return [finding(claim, "condition not run", "not comparable",
                        "the condition is absent from params: no budget to state")]
    n_grok, n = int(g["grokked"].sum()), len(g)
    measured = f"{n_grok}/{n} grokked by lr·wd·steps {g['clock'].min():.3g}" + (
        f", at step {mean_spread(g['grok_step'])} (clock {mean_spread(g['clock_at_grok'])})" if n_grok else "")
    holds = (n_grok == n) if seed_grokked else (n_grok == 0)
    why = f"{n} seeds, lr {g['lr'].iloc[0]:g}, {int(g['steps'].iloc[0]):,} steps"
    return [judged(claim, measured, holds, why, _clock_budgets(g, p))]


def mul_wd01_groks(a: Analysis, p: ReportParams) -> list[Row]:
    """Multiplication mod 97 at weight decay 0.1 groks."""
    return _outcome(a, p, "grokking.mul_wd0.1_groks", "mul_wd0.1", True)


def add_wd001_memorises(a: Analysis, p: ReportParams) -> list[Row]:
    """Addition mod 97 at weight decay 0.01 stays memorised (does not grok)."""
    return _outcome(a, p, "grokking.add_wd0.01_memorises", "add_wd0.01", False)


def add_wd01_memorises(a: Analysis, p: ReportParams) -> list[Row]:
    """Addition mod 97 at weight decay 0.1 stays memorised (does not grok)."""
    return _outcome(a, p, "grokking.add_wd0.1_memorises", "add_wd0.1", False)


def kappa_10k_ordering(a: Analysis, p: ReportParams) -> list[Row]:
    """κ at the 10k probe is higher in the memorising addition run than in the grokking multiplication run."""
    summary, kappa = a.summary, a.kappa
    ref, add = _runs(summary, p.reference_condition), _runs(summary, "add_wd0.01")
    if not (len(ref) and len(add)):
        return []
    km = kappa[kappa["scope"] != MODEL_SCOPE]
    pair = (kappa[kappa["condition"] == "add_wd0.01"].merge(
        kappa[kappa["condition"] == p.reference_condition], on=["seed", "scope"], suffixes=("_add", "_mul")))
    pair["ratio"] = pair["kappa_probe_add"] / pair["kappa_probe_mul"]
    model_ratio = pair[pair["scope"] == MODEL_SCOPE]["ratio"]
    per = "; ".join(f"{s} {mean_spread(g['ratio'])}" for s, g in pair[pair["scope"].isin(km["scope"])]
                    .groupby("scope"))
    probe = mean_spread(add["probe_step"], "{:,.0f}")
    return [judged(
        "grokking.kappa_10k_ordering",
        f"κ_add/κ_mul at step {probe} (10k/33.5k of the multiplication grok step): model (max) "
        f"{mean_spread(model_ratio)}; per matrix: {per}",
        bool((model_ratio > 1).all()) if len(model_ratio) else None,
        "ordering of the max-over-matrices κ in every paired seed",
        [Budget("seeds whose multiplication run grokked (sets the relative clock)", int(ref["grokked"].sum()), 1),
         Budget("paired seeds", len(model_ratio), 3)])]


def low_recovery_no_grok(a: Analysis, p: ReportParams) -> list[Row]:
    """κ_recovery below 2 flags a run that will not grok (a strong negative signal)."""
    summary = a.summary
    defined = summary[~summary["peak_near_end"]]
    failed_full = summary[~summary["grokked"] & ((summary["clock"] >= p.clock_needed) | summary["shuffle_labels"])]
    stuck = a.alerts.set_index("rule").loc["alert_stuck"]
    return [judged(
        "grokking.low_recovery_no_grok",
        f"seed rule (κ_recovery < {p.kappa_recovery_alert:g}, 'peak near end' counted as < 2): "
        f"{int(stuck['seed_hits'])} hits, {int(stuck['seed_false_alarms'])} false alarms over {len(summary)} runs; "
        f"κ peaked in the last {p.peak_end_fraction:.0%} in {int(summary['peak_near_end'].sum())} runs; "
        f"held out: threshold {stuck['calibrated_threshold']:.3g} → {int(stuck['held_out_hits'])} hits, "
        f"{int(stuck['held_out_false_alarms'])} false alarms, AUC {stuck['held_out_auc']:.2f}",
        None if not len(summary) else bool(stuck["seed_false_alarms"] == 0 and stuck["seed_hits"] > 0),
        "a strong negative signal: alerts and no false alarms (a run too short to grok agrees vacuously)",
        [Budget("runs with κ_recovery defined (κ peaked before the end)", len(defined), 3),
         Budget("non-grokking runs at full clock or random labels", len(failed_full), 3)])]


def _followed(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Grokked runs followed long enough past their grok step."""
    grokked = a.summary[a.summary["grokked"]]
    return grokked[grokked["post_grok"] >= p.post_grok_needed]


def recovery_necessary(a: Analysis, p: ReportParams) -> list[Row]:
    """κ recovery is necessary for grokking: every grokking run's κ comes down (κ_recovery ≥ 2)."""
    grokked = a.summary[a.summary["grokked"]]
    followed = _followed(a, p)
    g_def = followed[~followed["peak_near_end"]]
    return [judged(
        "grokking.recovery_necessary",
        f"grokked runs: {len(grokked)}, {len(followed)} followed ≥ {p.post_grok_needed:g}× their grok step; "
        f"of these κ_recovery defined in {len(g_def)} "
        f"({mean_spread(g_def['kappa_recovery'])}), {int((g_def['kappa_recovery'] < p.kappa_recovery_alert).sum())} "
        f"below {p.kappa_recovery_alert:g}; {len(followed) - len(g_def)} peaked in the last {p.peak_end_fraction:.0%}",
        bool((g_def["kappa_recovery"] >= p.kappa_recovery_alert).all()) if len(g_def) else None,
        "every grokking run with a defined κ_recovery must clear the threshold",
        [Budget(f"grokked runs followed ≥ {p.post_grok_needed:g}× their grok step", len(followed), 3),
         Budget("of these, runs with κ_recovery defined", len(g_def), 3)])]


def weight_decay_causal(a: Analysis, p: ReportParams) -> list[Row]:
    """Weight decay causes grokking: strong decay groks, no decay does not; random labels never generalise."""
    summary = a.summary
    strong = summary[(summary["weight_decay"] >= 1.0) & ~summary["shuffle_labels"]]
    none = summary[summary["weight_decay"] == 0.0]
    rand = summary[summary["shuffle_labels"]]
    if not (len(strong) and len(none)):
        return []
    slowest = float(summary.loc[summary["weight_decay"] >= 0.1, "grok_step"].max())
    slowest = slowest if np.isfinite(slowest) else math.inf
    return [judged(
        "grokking.weight_decay_causal",
        f"wd 1: {int(strong['grokked'].sum())}/{len(strong)} grokked; wd 0: {int(none['grokked'].sum())}/{len(none)}; "
        f"random labels at wd 1: {int(rand['grokked'].sum())}/{len(rand)} (test acc "
        f"{mean_spread(rand['final_test_acc'])})",
        bool(strong["grokked"].all() and not none["grokked"].any()),
        "wd 1 must grok and wd 0 must not; random labels show weight decay alone cannot make a run generalise",
        [Budget("wd 1 runs", len(strong), 3), Budget("wd 0 runs", len(none), 3),
         Budget("wd 0 steps ÷ slowest grok step at wd ≥ 0.1", float(none["steps"].min()) / slowest, 1.0),
         Budget("random-label runs", len(rand), 1)])]


def kappa_growth_alert(a: Analysis, p: ReportParams) -> list[Row]:
    """κ growing more than 50× in the first 5k steps flags a run that will not grok (raise weight decay)."""
    summary = a.summary
    growth = a.alerts.set_index("rule").loc["alert_growth"]
    held = summary[~summary["seed"].isin(p.calibration_seeds)]
    return [judged(
        "grokking.kappa_growth_alert",
        f"κ growth by step {mean_spread(summary['growth_step'], '{:,.0f}')} (5k/33.5k of the multiplication grok "
        f"step): {mean_spread(summary['kappa_growth'])}; seed rule (> {p.kappa_growth_alert:g}×): "
        f"{int(growth['seed_hits'])} hits, {int(growth['seed_false_alarms'])} false alarms; held out: threshold "
        f"{growth['calibrated_threshold']:.3g} → {int(growth['held_out_hits'])} hits, "
        f"{int(growth['held_out_false_alarms'])} false alarms, AUC {growth['held_out_auc']:.2f}",
        None if not np.isfinite(growth["held_out_auc"]) else bool(growth["held_out_auc"] >= 0.8),
        f"held-out AUC ≥ 0.8 (threshold calibrated on seeds {p.calibration_seeds})",
        [Budget("held-out runs that did not grok", int((~held["grokked"]).sum()), 3),
         Budget("held-out runs that grokked", int(held["grokked"].sum()), 3)])]


def compression(a: Analysis, p: ReportParams) -> list[Row]:
    """Grokking compresses the weights: effective rank ends below where it started."""
    if not a.summary["grokked"].any():
        return []
    followed = _followed(a, p)
    drop = followed["effective_rank_final"] < followed["effective_rank_start"]
    return [judged(
        "grokking.compression",
        f"{int(drop.sum())}/{len(followed)} grokking runs followed ≥ {p.post_grok_needed:g}× their grok step end "
        f"below their initial mean effective rank ({mean_spread(followed['effective_rank_start'])} → "
        f"{mean_spread(followed['effective_rank_final'])})",
        bool(drop.all()) if len(followed) else None,
        "mean effective rank over weight matrices, start vs end of the run",
        [Budget(f"grokked runs followed ≥ {p.post_grok_needed:g}× their grok step", len(followed), 3)])]


CLAIMS = (mul_wd01_groks, add_wd001_memorises, add_wd01_memorises, kappa_10k_ordering, low_recovery_no_grok,
          recovery_necessary, weight_decay_causal, kappa_growth_alert, compression)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows, one claim function after another."""
    return [row for claim in CLAIMS for row in claim(a, p)]
