"""Rosetta: one function per claim, its docstring the claim (``claims/registry.yaml``).

Every verdict goes through :func:`gradience.reporting.judged`. An arm comparison (rules 1–7, 10–14)
is judged per task on the arm table: the rule holds when the arm's mean final test accuracy is at
least the conventional arm's minus ``acc_tolerance``, with ``min_seeds`` seeds per arm and a
conventional arm that learned the task as its budgets, and as its power (what a negative needs) the
smallest gap the seeds could tell from noise, ``Z_DETECT`` standard errors of the difference of the two
means (from the arm table's sd and n), against ``acc_tolerance``; an arm of several optimizer rules
has no claim of its own and no row.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradience.reporting import Budget, Power, judged, mean_spread
from gradience.studies.rosetta.analysis import Analysis, ReportParams, learned_needed
from gradience.studies.rosetta.runs import CONVENTIONAL

Row = dict[str, str]

#: the claim an arm of one optimizer rule (or any geometric LoRA arm: ``lora``) is judged against
ARM_CLAIMS = {"mass": "rosetta.lr_mass", "adam_epsilon": "rosetta.adam_epsilon", "decay": "rosetta.weight_decay",
              "no_clip": "rosetta.no_clipping", "no_warmup": "rosetta.no_warmup", "lora": "rosetta.lora_geometric"}
SCALE_CLAIM = "rosetta.lora_scale_excess"
BUDGET_CLAIM = "rosetta.lora_budget_held"
STOP_CLAIM = "rosetta.early_stopping"
BATCH_CLAIM = "rosetta.critical_batch"

#: standard errors of the difference of the arm means a gap must exceed to be told from seed noise
#: (the study's 2-SE convention, as in :func:`learned_needed`)
Z_DETECT = 2.0

#: the chosen values a Findings row shows for each rule
SHOWN = {"mass": ("eta_step",), "adam_epsilon": ("adam_eps",), "decay": ("weight_decay",),
         "rank": ("lora_rank",), "scale": ("lora_scale",), "dropout": ("lora_dropout",), "targets": ("n_targets",)}


def _budgets(arm: pd.Series, conv: pd.Series, p: ReportParams, summary: pd.DataFrame) -> list[Budget]:
    return [Budget(f"seeds per arm (fewest of the two, {arm.task})", float(min(arm.runs, conv.runs)), p.min_seeds),
            Budget(f"conventional {arm.task} test accuracy (the task is learned)", float(conv.acc_mean),
                   learned_needed(summary, arm.task, p))]


def _power(arm: pd.Series, conv: pd.Series, p: ReportParams) -> Power:
    """The smallest accuracy gap the seeds could detect, ``Z_DETECT``·√(sd²/n + sd_conv²/n_conv) from the
    arm table, against the tolerance the rule is held to (NaN, i.e. unknown, with fewer than 2 finite
    accuracies in either arm). An arm whose every run diverged lost the task outright: a loss of any
    size shows, so its detectable gap is 0."""
    n, nc = int(arm.n), int(conv.n)
    if n == 0 and int(arm.diverged) >= int(arm.runs) > 0:
        return Power(f"test-accuracy gap (all {int(arm.runs)} arm runs diverged: any loss shows)", 0.0,
                     p.acc_tolerance)
    se = math.sqrt(arm.acc_sd ** 2 / n + conv.acc_sd ** 2 / nc) if n and nc else math.nan
    return Power(f"test-accuracy gap at n {n} vs {nc} ({Z_DETECT:g}·SE of the difference of means)",
                 Z_DETECT * se, p.acc_tolerance)


def _value_text(a: Analysis, task: str, arm: str, rules: list[str]) -> str:
    c = a.chosen[(a.chosen.task == task) & (a.chosen.arm == arm)]
    c = c[c.metric.isin({m for r in rules for m in SHOWN.get(r, ())})]
    return "; ".join(f"{r.metric} {r['median']:.3g} [{r['min']:.3g}, {r['max']:.3g}]" for _, r in c.iterrows())


def _comparisons(a: Analysis, p: ReportParams, claims: set[str]) -> list[Row]:
    """The rows of the geometric arms (vs the conventional arm of their task) whose claim is in
    ``claims``, in the arm table's order (task by task)."""
    rows = []
    t = a.arms
    rp = a.runs
    for _, arm in t[t.arm != CONVENTIONAL].iterrows():
        conv = t[(t.task == arm.task) & (t.arm == CONVENTIONAL)]
        if conv.empty:
            continue
        conv = conv.iloc[0]
        rules = (rp.lora_arms if arm.task == "reviews" else rp.arms)
        rule_list = next(x.rules for x in rules if x.name == arm.arm)
        claim = ARM_CLAIMS["lora"] if arm.task == "reviews" else ARM_CLAIMS[rule_list[0]] if len(rule_list) == 1 else None
        if claim is None or claim not in claims:
            continue
        if arm.task == "reviews":
            tuned = f"; conventional r {rp.reviews.r}, α/r {rp.reviews.alpha_over_r}, dropout {rp.reviews.dropout}"
        else:
            tt = rp.modular if arm.task == "modular" else rp.digits
            tuned = f"; tuned lr {tt.lr:g}, wd {tt.weight_decay:g}, ε {rp.adam_eps:g}"
        runs = a.summary[(a.summary.task == arm.task) & (a.summary.arm == arm.arm)]
        convruns = a.summary[(a.summary.task == arm.task) & (a.summary.arm == CONVENTIONAL)]
        holds = bool(arm.acc_mean >= conv.acc_mean - p.acc_tolerance) if math.isfinite(arm.acc_mean) else False
        gap = f"gap {arm.acc_gap:+.3f}" if math.isfinite(arm.acc_gap) else "no gap: no run completed"
        rows.append(judged(
            claim,
            f"{arm.task}, arm {arm.arm} ({'+'.join(rule_list)}): test acc {mean_spread(runs.final_test_acc)} vs "
            f"conventional {mean_spread(convruns.final_test_acc)} ({gap}); "
            f"{int(arm.diverged)} diverged; "
            f"chosen: {_value_text(a, arm.task, arm.arm, rule_list) or '—'}{tuned}",
            holds, f"holds when the arm's mean test accuracy ≥ conventional − {p.acc_tolerance}",
            _budgets(arm, conv, p, a.summary), _power(arm, conv, p)))
    return rows


def lr_mass(a: Analysis, p: ReportParams) -> list[Row]:
    """The MASS step size min(η_ceiling, η_sps, η_weyl), without Adam/momentum, warm-up or schedule, replaces the tuned learning rate."""
    return _comparisons(a, p, {ARM_CLAIMS["mass"]})


def adam_epsilon(a: Analysis, p: ReportParams) -> list[Row]:
    """Adam ε = max(σ_k², √ε·σ_max²) per weight replaces 1e-8 without loss."""
    return _comparisons(a, p, {ARM_CLAIMS["adam_epsilon"]})


def weight_decay(a: Analysis, p: ReportParams) -> list[Row]:
    """Condition-aware decay λ₀·σ_k/σ_max per weight replaces uniform decay without loss."""
    return _comparisons(a, p, {ARM_CLAIMS["decay"]})


def no_clipping(a: Analysis, p: ReportParams) -> list[Row]:
    """Gradient clipping can be removed."""
    return _comparisons(a, p, {ARM_CLAIMS["no_clip"]})


def no_warmup(a: Analysis, p: ReportParams) -> list[Row]:
    """Warm-up can be removed."""
    return _comparisons(a, p, {ARM_CLAIMS["no_warmup"]})


def lora_geometric(a: Analysis, p: ReportParams) -> list[Row]:
    """Geometric LoRA (scale ≤ σ_k/‖BA‖₂, rank = tail_dims, targets with tail_dims > 0, dropout = redundancy × adapter fraction, spectral init) replaces r 8, α/r 2, q+v, dropout 0.1, zero-B init without loss."""
    return _comparisons(a, p, {ARM_CLAIMS["lora"]})


def early_stopping(a: Analysis, p: ReportParams) -> list[Row]:
    """Stop when the loss change is below √ε (or the spectral budget is > 0.9): no validation set needed."""
    s = a.summary[(a.summary.arm == CONVENTIONAL) & (a.summary.task != "reviews")]
    if s.empty or "stop_step" not in s:
        return []
    fired = s.stop_step.notna()
    lost = (s.final_test_acc - s.stop_test_acc)[fired]
    holds = bool(fired.any() and (lost <= p.acc_tolerance).all())
    reasons = ", ".join(sorted(set(s.stop_reason[fired]))) or "—"
    learned = s.final_test_acc >= s.task.map(p.learned_acc).fillna(0.0)
    return [judged(STOP_CLAIM,
                   f"conventional runs: rule fired in {int(fired.sum())}/{len(s)} (step {mean_spread(s.stop_step)}; "
                   f"{reasons}); test accuracy lost by stopping there {mean_spread(lost)}",
                   holds, "holds when the rule fires and stopping there loses ≤ acc_tolerance test accuracy "
                   "(budget part not applicable: no base weight)",
                   [Budget("conventional runs that learned their task (a point to stop at exists)",
                           int(learned.sum()), p.min_seeds)])]


def critical_batch(a: Analysis, p: ReportParams) -> list[Row]:
    """The batch size follows from the gradient noise scale B_crit = Var(g)/‖E[g]‖²."""
    s = a.summary[(a.summary.arm == CONVENTIONAL) & (a.summary.task != "reviews")]
    if s.empty or "b_crit_init" not in s:
        return []
    parts = [f"{task}: B_crit {mean_spread(g.b_crit_init)} at init, {mean_spread(g.b_crit_final)} at the end "
             f"vs the tuned batch {int(g.batch_size.iloc[0])}" for task, g in s.groupby("task")]
    return [judged(BATCH_CLAIM, "; ".join(parts), None,
                   "measured only: the claim (linear speed-up below B_crit) needs a batch-size sweep, not run")]


def _lora_arms(a: Analysis):
    """(arm, its rows of the LoRA table) in the table's order (the conventional arm first)."""
    return a.lora.merge(a.summary[["run", "arm"]], on="run").groupby("arm", sort=False)


def lora_scale_excess(a: Analysis, p: ReportParams) -> list[Row]:
    """Common LoRA scales exceed the spectral bound σ_k(W)/‖BA‖₂ by large factors."""
    if a.lora.empty:
        return []
    lo, hi = p.scale_range
    rows = []
    for arm, g in _lora_arms(a):
        if arm != CONVENTIONAL:
            continue
        e = g.excess[np.isfinite(g.excess)]
        share = float((e >= lo).mean()) if len(e) else math.nan
        rows.append(judged(
            SCALE_CLAIM,
            f"trained conventional adapters (s = {g.scale.iloc[0]:.3g}): excess s·‖BA‖₂/σ_k median {e.median():.3g}, "
            f"range {e.min():.3g}–{e.max():.3g} over {len(e)} modules; {share:.0%} ≥ {lo:g}",
            bool(len(e) and share >= 0.5), f"holds when most modules exceed the bound by ≥ {lo:g}× "
            f"(the document's range {lo:g}–{hi:g}×)",
            [Budget("LoRA runs", g.run.nunique(), p.min_seeds),
             Budget("LoRA updates", a.runs.reviews.steps, p.lora_steps_needed)]))
    return rows


def lora_budget_held(a: Analysis, p: ReportParams) -> list[Row]:
    """A spectrally initialised adapter at scale 1 stays inside the spectral budget (‖BA‖₂/σ_k ≤ 0.9 not exceeded)."""
    if a.lora.empty:
        return []
    rows = []
    for arm, g in _lora_arms(a):
        if arm == CONVENTIONAL:
            continue
        over = float((g.budget_ratio > 0.9).mean())
        halt = a.summary[a.summary.arm == arm].get("budget_halt_step", pd.Series(dtype=float))
        h = a.history[(a.history.metric == "budget_ratio_max") & (a.history.step == 0) & a.history.run.isin(g.run)]
        rows.append(judged(
            BUDGET_CLAIM,
            f"arm {arm}: budget ratio ‖s·BA‖₂/σ_k after training median {g.budget_ratio.median():.3g}, "
            f"max {g.budget_ratio.max():.3g}; {over:.0%} of modules past 0.9; the 0.9 monitor would halt "
            f"after update {mean_spread(halt)} of {a.runs.reviews.steps} (ratio at initialisation "
            f"{mean_spread(h.value)}: rule 14 starts at the bound, above rule 9's 0.9)",
            bool(over == 0), "holds when every trained geometric adapter stays within 0.9 of its budget",
            [Budget("LoRA runs", g.run.nunique(), p.min_seeds)]))
    return rows


#: the claims judged per task on the arm table (:func:`_comparisons`)
ARM_COMPARISONS = (lr_mass, adam_epsilon, weight_decay, no_clipping, no_warmup, lora_geometric)
CLAIMS = (*ARM_COMPARISONS, early_stopping, critical_batch, lora_scale_excess, lora_budget_held)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows: the arm comparisons (the claims of ``ARM_COMPARISONS``) task by
    task in the arm table's order, as this table has always listed them, then the other claims one
    function after another (rules 9, 8, then the LoRA scale and budget claims)."""
    rest = CLAIMS[len(ARM_COMPARISONS):]
    return _comparisons(a, p, set(ARM_CLAIMS.values())) + [row for claim in rest for row in claim(a, p)]
