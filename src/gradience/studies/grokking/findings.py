"""Grokking on modular arithmetic: one function per claim, its docstring the claim.

Every verdict goes through :func:`gradience.reporting.judged` (the verdict rule) with the budgets
the claim needs; a condition absent from params is "not comparable". The predictions (κ divergence,
κ growth, κ_recovery, effective-rank compression) are scored inside the outcome condition, every row
with the one budget set :func:`outcome_budgets` and the power of the held-out AUC test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradience.reporting import Budget, Power, finding, judged, mean_spread
from gradience.studies.grokking.analysis import Analysis, ReportParams, log_ratio_test
from gradience.telemetry.recorder import MODEL_SCOPE

Row = dict[str, str]

SEED_KAPPA_RATIO = 19_794 / 1_607  # the seed's κ_add/κ_mul at its 10k probe (12.3×)


def _runs(summary: pd.DataFrame, condition: str) -> pd.DataFrame:
    return summary[summary["condition"] == condition]


def _clock_budgets(g: pd.DataFrame, p: ReportParams) -> list[Budget]:
    return [Budget("lr·wd·steps", float(g["clock"].min()), p.clock_needed),
            Budget("seeds", g["seed"].nunique(), p.condition_seeds_needed)]


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
    p_value, detectable = log_ratio_test(model_ratio.to_numpy(float), p.alpha, p.power)
    return [judged(
        "grokking.kappa_10k_ordering",
        f"κ_add/κ_mul at step {probe} (10k/33.5k of the multiplication grok step): model (max) "
        f"{mean_spread(model_ratio)} (one-sided t-test of log ratio > 0: p {p_value:.2g}); per matrix: {per}",
        None if not np.isfinite(p_value) else bool(p_value < p.alpha),
        f"the max-over-matrices κ higher in addition, paired by seed: mean log ratio > 0 at p < {p.alpha:g}",
        [Budget("seeds whose multiplication run grokked (sets the relative clock)", int(ref["grokked"].sum()), 1),
         Budget("paired seeds", len(model_ratio), p.condition_seeds_needed)],
        Power(f"κ ratio (α {p.alpha:g}, power {p.power:g})", detectable, SEED_KAPPA_RATIO))]


def outcome_budgets(a: Analysis, p: ReportParams) -> list[Budget]:
    """THE budget set of the outcome condition: every predictor row scored inside it carries this list."""
    o = a.outcome
    held = o[o["held_out"]] if len(o) else o
    return [Budget(f"seeds of {p.outcome_condition}", int(o["seed"].nunique()) if len(o) else 0, p.outcome_seeds_needed),
            Budget("lr·wd·steps reached ÷ C (each non-grokker followed to 2C)",
                   round(float(o["clock"].min()) / p.outcome_clock, 9) if len(o) else 0.0, 2.0),
            Budget("held-out runs grokked by C", int(held["grokked_by_C"].sum()) if len(o) else 0,
                   p.held_out_class_needed),
            Budget("held-out runs not grokked by C", int((~held["grokked_by_C"]).sum()) if len(o) else 0,
                   p.held_out_class_needed)]


def _outcome_text(a: Analysis, p: ReportParams) -> str:
    o = a.outcome
    fail = o[~o["grokked_by_C"]]
    late = int(fail["grokked_by_2C"].sum())
    return (f"{p.outcome_condition}, C = lr·wd·steps {p.outcome_clock:g}: {int(o['grokked_by_C'].sum())}/{len(o)} "
            f"grokked by C; of the {len(fail)} that did not, {late} grokked by 2C (late), {len(fail) - late} did not")


def _predictor(a: Analysis, p: ReportParams, claim: str, name: str, what: str) -> list[Row]:
    """A claim that ``name`` predicts "not grokked by C", scored on the held-out seeds of the outcome condition."""
    budgets = outcome_budgets(a, p)
    if a.outcome.empty:
        return [finding(claim, f"{p.outcome_condition} not run", "not comparable",
                        "the outcome condition is absent from params: no budget to state")]
    r = a.predictors.loc[name]
    o = a.outcome
    held = o[o["held_out"]]
    by = held.groupby("grokked_by_C")[r["score"]].median()
    seed_rule = ""
    if np.isfinite(r["seed_threshold"]):
        seed_rule = (f"; the seed's threshold {r['seed_threshold']:g}: {int(r['seed_hits'])} hits, "
                     f"{int(r['seed_false_alarms'])} false alarms")
    measured = (f"{_outcome_text(a, p)}. {what} (held out, median): not grokked {by.get(False, math.nan):.3g}, "
                f"grokked {by.get(True, math.nan):.3g}; AUC {r['held_out_auc']:.2f} (one-sided Mann–Whitney "
                f"p {r['p_value']:.2g}); threshold {r['calibrated_threshold']:.3g} from seeds "
                f"{min(p.calibration_seeds)}–{max(p.calibration_seeds)}: {int(r['held_out_hits'])} hits, "
                f"{int(r['held_out_false_alarms'])} false alarms over {int(r['held_out_runs'])} held-out runs{seed_rule}")
    holds = None if not np.isfinite(r["held_out_auc"]) else bool(r["p_value"] < p.alpha)
    read = {"kappa_probe": f"read at step {o['probe_step'].iloc[0]:,.0f} (10k/33.5k of the calibration seeds' median grok step)",
            "kappa_growth": f"read at step {o['growth_step'].iloc[0]:,.0f} (5k/33.5k of the calibration seeds' median grok step)",
            }.get(name, "read on the window [0, C]")
    why = f"predicts 'not grokked by C' on held-out seeds: AUC above 0.5 at one-sided p < {p.alpha:g}; {read}"
    power = Power(f"held-out AUC (α {p.alpha:g}, power {p.power:g})", float(r["detectable_auc"]), p.claimed_auc)
    return [judged(claim, measured, holds, why, budgets, power)]


def kappa_divergence_predicts(a: Analysis, p: ReportParams) -> list[Row]:
    """Inside one condition, κ at the early probe is higher in runs that will not grok (by the fixed clock)."""
    return _predictor(a, p, "grokking.kappa_divergence_predicts", "kappa_probe", "κ at the probe")


def low_recovery_no_grok(a: Analysis, p: ReportParams) -> list[Row]:
    """Low κ_recovery flags a run that will not grok (a strong negative signal), inside one condition."""
    return _predictor(a, p, "grokking.low_recovery_no_grok", "kappa_recovery",
                      "κ_recovery on [0, C] ('peak near end' = 1)")


def _followed(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Grokked runs followed long enough past their grok step."""
    grokked = a.summary[a.summary["grokked"]]
    return grokked[grokked["post_grok"] >= p.post_grok_needed]


def recovery_necessary(a: Analysis, p: ReportParams) -> list[Row]:
    """κ recovery is necessary for grokking: every grokking run's κ comes down (κ_recovery ≥ 2). A
    grokked run whose κ peaks in the last ``peak_end_fraction`` never came down: it counts as
    κ_recovery 1 (it grokked without recovering), not as undefined."""
    grokked = a.summary[a.summary["grokked"]]
    followed = _followed(a, p)
    rec = followed["recovery_score"]
    o = a.outcome
    sufficient = ""
    if len(o):
        fail = o[~o["grokked_by_C"]]
        sufficient = (f"; not sufficient: in {p.outcome_condition} {int((fail['recovery_score'] >= p.kappa_recovery_alert).sum())}"
                      f"/{len(fail)} runs not grokked by C had κ_recovery ≥ {p.kappa_recovery_alert:g} on [0, C]")
    return [judged(
        "grokking.recovery_necessary",
        f"grokked runs: {len(grokked)}, {len(followed)} followed ≥ {p.post_grok_needed:g}× their grok step; "
        f"their κ_recovery {mean_spread(rec)}, {int((rec < p.kappa_recovery_alert).sum())} below "
        f"{p.kappa_recovery_alert:g} ({int(followed['peak_near_end'].sum())} with κ still at its peak in the last "
        f"{p.peak_end_fraction:.0%}, counted as 1){sufficient}",
        bool((rec >= p.kappa_recovery_alert).all()) if len(followed) else None,
        "every grokking run followed past its grok must clear the threshold",
        [Budget(f"grokked runs followed ≥ {p.post_grok_needed:g}× their grok step", len(followed), 3)])]


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
    """κ growing more than 50× in the first 5k steps flags a run that will not grok, inside one condition."""
    return _predictor(a, p, "grokking.kappa_growth_alert", "kappa_growth", "κ growth κ(growth step)/κ(0)")


def compression(a: Analysis, p: ReportParams) -> list[Row]:
    """Grokking compresses the weights: at a matched clock, runs that grokked have a lower effective
    rank than runs of the same condition that did not."""
    return _predictor(a, p, "grokking.compression", "effective_rank", "mean effective rank at C")


CLAIMS = (mul_wd01_groks, add_wd001_memorises, add_wd01_memorises, kappa_10k_ordering, kappa_divergence_predicts,
          low_recovery_no_grok, recovery_necessary, weight_decay_causal, kappa_growth_alert, compression)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows, one claim function after another."""
    return [row for claim in CLAIMS for row in claim(a, p)]
