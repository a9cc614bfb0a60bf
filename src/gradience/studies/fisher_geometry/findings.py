"""Protocol C of seed 001: one function per claim, its docstring the claim.

Each verdict is a rule applied to the measured runs, judged against the budgets it needs (runs at
L*, held-out seeds, diverged unstable runs) by :func:`gradience.reporting.judged`, by the claim's
registered kind. Regime comparisons are between ``analysis.reference`` (the η-matched stable arm)
and the unstable regime; the slow stable arm's values are shown beside them. The two Mann–Whitney
comparisons, the held-out H3 test and the cross-seed test of falsifier 3 state their power (the
smallest p the test can reach at the runs' numbers, against half of α), so too few runs make their
negative inconclusive, never their positive; the κ row computes no power, so its negative reads
"inconclusive".
"""

from __future__ import annotations

import math

import pandas as pd
from scipy.stats import mannwhitneyu

from gradience.reporting import Budget, Power, judged, mean_spread
from gradience.studies.fisher_geometry.analysis import (
    Analysis,
    AnalysisParams,
    ReportParams,
    comparison_arms,
    full_damping,
)
from gradience.studies.lm_regimes.runs import DIVERGED_OUTCOMES

Row = dict[str, str]
THRESHOLD_CLAIMS = {"share": "fisher_geometry.alignment_threshold_share",
                    "overlap": "fisher_geometry.alignment_threshold_overlap"}


def _one_sided_mw(high: pd.Series, low: pd.Series) -> float:
    """p of the one-sided Mann–Whitney test that ``high`` is stochastically larger than ``low``."""
    high, low = high.dropna(), low.dropna()
    if not (len(high) and len(low)):
        return math.nan
    return float(mannwhitneyu(high, low, alternative="greater").pvalue)


def _mw_power(high: pd.Series, low: pd.Series, alpha: float) -> Power:
    """What a negative of :func:`_one_sided_mw` needs: its smallest attainable p, 1/C(n₁ + n₂, n₁) (every
    ``high`` value above every ``low`` one; the exact test, which scipy runs without ties unless both
    regimes have more than 8 runs, where any p floor is far below α), at most half of α, the margin
    :func:`gradience.studies.hessian_coevolution.findings.surrogate_power` keeps (4 runs per regime at
    α = 0.05: 1/70; 3 reach only 1/20 = α). Counted on the values the test takes (finite at L*)."""
    n1, n2 = int(high.notna().sum()), int(low.notna().sum())
    return Power(f"one-sided Mann–Whitney p (complete separation of {n1} vs {n2} runs, 1/C({n1 + n2}, {n1}); "
                 "claimed: half of α)", 1 / math.comb(n1 + n2, n1) if n1 and n2 else math.nan, alpha / 2)


def _regimes(summary: pd.DataFrame, a: AnalysisParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The compared arms: the reference (η-matched) stable regime, the unstable one."""
    return comparison_arms(summary, a.reference)


def _slow(summary: pd.DataFrame, a: AnalysisParams, col: str) -> str:
    """The other stable regimes' values of ``col``, shown beside the comparison (not judged)."""
    other = summary[(summary.kind == "stable") & (summary.regime != a.reference)]
    return "".join(f"; {name} (not compared): {mean_spread(g[col])}" for name, g in other.groupby("regime", sort=False))


def _budgets(summary: pd.DataFrame, a: AnalysisParams) -> list[Budget]:
    """What every regime comparison needs: every compared run at L* before divergence, and the
    unstable runs diverged (the instability the claim is about happened)."""
    stable, unstable = _regimes(summary, a)
    compared = pd.concat([stable, unstable])
    return [Budget(f"compared runs reaching L* = {a.matched_loss:g} nats before divergence",
                   float(compared.matched_step.notna().sum()), float(len(compared))),
            Budget("unstable runs that diverged", float(unstable.outcome.isin(DIVERGED_OUTCOMES).sum()),
                   float(max(1, len(unstable))))]


def _unmeasured(budgets: list[Budget]) -> bool | None:
    """``holds`` for a claim nothing could be measured on: "inconclusive" (None) when every budget
    was met, else False, which :func:`judged` turns into "not comparable" naming the short budget."""
    return None if all(b.met for b in budgets) else False


def regimes_differ(a: Analysis, p: ReportParams) -> list[Row]:
    """The unstable regime is unstable (diverges), the stable ones (slow, and η-matched below the edge) are not."""
    summary = a.summary
    stable, unstable = summary[summary.kind == "stable"], summary[summary.kind == "unstable"]
    div = unstable.outcome.isin(DIVERGED_OUTCOMES)
    steps = float(a.runs.steps) if a.runs is not None else math.nan
    per = "; ".join(f"{name}: {int(g.outcome.isin(DIVERGED_OUTCOMES).sum())}/{len(g)} diverged"
                    for name, g in stable.groupby("regime", sort=False))
    edge = a.series.groupby("regime").sharpness_over_edge.max() if "sharpness_over_edge" in a.series else pd.Series(dtype=float)
    per += "".join(f"; max η·λ_max/2 in {name}: {v:.2f}" for name, v in edge.dropna().items())
    return [judged("fisher_geometry.regimes_differ",
                   f"unstable: {int(div.sum())}/{len(unstable)} diverged (step {mean_spread(unstable.diverged_at)}); {per}",
                   bool(len(unstable) and div.all() and not stable.outcome.isin(DIVERGED_OUTCOMES).any()),
                   "the regimes must differ for the comparisons below to mean anything",
                   [Budget("steps of the stable runs vs the last unstable divergence step", steps,
                           float(unstable.diverged_at.max()) if div.any() else 0.0)])]


def _h3_row(a: Analysis, ap: AnalysisParams, measure: str) -> Row:
    """H3 with one alignment measure: T from the calibration seeds, scored on the held-out seeds."""
    h, summary = a.h3[measure], a.summary
    stable, unstable = _regimes(summary, ap)
    cal = sorted(set(ap.calibration_seeds))
    held = sorted(set(summary.seed) - set(cal))
    sens = a.sensitivity[a.sensitivity.measure == measure] if len(a.sensitivity) else a.sensitivity
    measured = (f"{ap.kind} Fisher, A = alignment over W₀'s, min over {ap.grid_points} loss levels {ap.start_loss:g}→L* "
                f"nats: {ap.reference} {mean_spread(stable[f'{measure}_min'])}, unstable "
                f"{mean_spread(unstable[f'{measure}_min'])}{_slow(summary, ap, f'{measure}_min')}; "
                f"T = {h['threshold']:.3g} from seeds {cal} (calibration balanced accuracy {h['calibration_accuracy']:.2f}); "
                f"held-out seeds {held}: {h['heldout_stable_above']:.0f}/{h['heldout_stable']:.0f} stable above T, "
                f"{h['heldout_unstable_below']:.0f}/{h['heldout_unstable']:.0f} unstable at or below T")
    measured += (f"; raw cadence points per window: {ap.reference} {mean_spread(stable.n_points, '{:.3g}')}, unstable "
                 f"{mean_spread(unstable.n_points, '{:.3g}')}; min over every step > 0 before divergence (unmatched): "
                 f"stable {mean_spread(stable[f'{measure}_min_all'])}, unstable {mean_spread(unstable[f'{measure}_min_all'])}")
    if len(sens):
        measured += "; held-out accuracy at L* = " + ", ".join(
            f"{r.matched_loss:g}: {r.heldout_accuracy:.2f}" for r in sens.itertuples())
    compared = pd.concat([stable, unstable])
    windows = compared.n_points[compared.matched_step.notna()]
    budgets = [Budget("held-out seeds per regime at L*", min(h["heldout_stable"], h["heldout_unstable"]), 2.0),
               Budget("raw cadence points in the shortest H3 window", float(windows.min()) if len(windows) else 0.0, 2.0),
               *_budgets(summary, ap)]
    holds = _unmeasured(budgets) if math.isnan(h["threshold"]) else bool(
        h["heldout_stable_above"] == h["heldout_stable"] and h["heldout_unstable_below"] == h["heldout_unstable"])
    hs, hu = int(h["heldout_stable"]), int(h["heldout_unstable"])
    power = Power(f"held-out separation p under exchangeable labels ({hs} vs {hu} held-out runs, 1/C({hs + hu}, {hs}); "
                  "claimed: half of α)", 1 / math.comb(hs + hu, hs) if hs and hu else math.nan, ap.alpha / 2)
    return judged(THRESHOLD_CLAIMS[measure], measured, holds,
                  "holds if T chosen on the calibration seeds puts every held-out stable run above and every "
                  f"held-out unstable run at or below it; {ap.reference} vs unstable (same η ramp), A relative to W₀, "
                  "read on the loss grid", budgets, power)


def alignment_threshold_share(a: Analysis, p: ReportParams) -> list[Row]:
    """H3: stable training maintains Fisher–weight spectral alignment above a threshold T (A = share of tr F in the weights' top singular subspace, relative to the initial weights' W₀)."""
    return [_h3_row(a, p.analysis, "share")]


def alignment_threshold_overlap(a: Analysis, p: ReportParams) -> list[Row]:
    """H3: stable training maintains Fisher–weight spectral alignment above a threshold T (A = overlap of F's top eigenvector with the weights' top singular directions, relative to W₀'s)."""
    return [_h3_row(a, p.analysis, "overlap")]


def spectra_related(a: Analysis, p: ReportParams) -> list[Row]:
    """Falsifier 3 is not met: Fisher and weight spectra are related in practice."""
    ap, summary, coupling, t = p.analysis, a.summary, a.coupling, a.cross_test
    allc = coupling[coupling.p_value.notna()]
    bonf = allc[allc.significant_bonferroni]
    budgets = [Budget(f"runs with the Fisher and weights stored at L* = {ap.matched_loss:g}", t["runs"],
                      float(summary.matched_step.notna().sum()) or 1.0)]
    holds = _unmeasured(budgets) if math.isnan(t["p_value"]) else bool(t["p_value"] < ap.alpha)
    return [judged(
        "fisher_geometry.spectra_related",
        f"cross-seed null at L* = {ap.matched_loss:g} nats: share of F_i (top {a.runs.fisher.vector_k if a.runs else '?'} "
        f"eigenvectors) in W_i's top singular subspaces ranks above W_j's (other seeds, same regime) with mean rank "
        f"fraction {t['mean_rank']:.2f} (null 0.5), own on top in {t['own_on_top']:.0f}/{t['runs']:.0f} runs, median "
        f"own/cross {t['ratio_median']:.3g} (p = {t['p_value']:.3g}); for context: median A over W₀ per run "
        f"{mean_spread(summary.share_median)} (cannot fail: the weights are written by the gradients), and "
        f"{len(bonf)}/{len(allc)} run×pair co-variation tests significant after Bonferroni over {len(ap.pairs)} pairs",
        holds, f"related = the Fisher sits in its own run's top weight directions more than in another seed's at the "
               f"same loss, p < {ap.alpha}", budgets,
        Power("cross-seed rank test p with every own share on top (Π 1/(m_i + 1)); claimed: half of α", t["min_p"],
              ap.alpha / 2))]


def kappa_correlation(a: Analysis, p: ReportParams) -> list[Row]:
    """κ of the weights correlates with κ of the Fisher (λ₁/λ_k) over training."""
    ap, coupling = p.analysis, a.coupling
    kap = coupling[(coupling.weight_metric == "kappa") & (coupling.fisher_metric == "fisher_kappa_k")]
    if not len(kap):
        return []
    tested = kap[kap.p_value.notna()]
    n_sig = int(tested.significant.sum())
    return [judged(
        "fisher_geometry.kappa_correlation",
        f"{n_sig}/{len(tested)} runs significant (p < {ap.alpha}); r at best lag {mean_spread(tested.best_r)}",
        True if n_sig > len(tested) / 2 else (False if n_sig == 0 else None),
        "detrended log series, phase-surrogate test", [Budget(f"runs with ≥ {ap.min_points} points", len(tested), len(kap))])]


def _at_matched_loss(summary: pd.DataFrame, ap: AnalysisParams) -> str:
    stable, unstable = _regimes(summary, ap)
    return f"at L* = {ap.matched_loss:g} nats (steps: {ap.reference} {mean_spread(stable.matched_step)}, unstable " \
           f"{mean_spread(unstable.matched_step)})"


def ng_alignment_stability(a: Analysis, p: ReportParams) -> list[Row]:
    """Stable training ≈ high natural-gradient alignment cos(∇L, F⁻¹∇L), instability ≈ low (here inside F's span, at matched loss)."""
    ap, summary = p.analysis, a.summary
    stable, unstable = _regimes(summary, ap)
    at = _at_matched_loss(summary, ap)
    p_ng = _one_sided_mw(stable.ng_alignment_at_match, unstable.ng_alignment_at_match)
    budgets = _budgets(summary, ap)
    damp = "F⁺" if not ap.damping else f"(F + {ap.damping:g}λ₁I)⁻¹"
    delta = full_damping(ap, a.runs) if a.runs is not None else ap.damping
    full = (f"; for contrast, full-space cos(∇L, (F+{delta:g}λ₁I)⁻¹∇L), dominated by ∇L outside the span: stable "
            f"{mean_spread(stable.ng_alignment_full_at_match)}, unstable {mean_spread(unstable.ng_alignment_full_at_match)}")
    return [judged(
        "fisher_geometry.ng_alignment_stability",
        f"cos(∇L_F, {damp}∇L_F) inside span(F) {at}: {ap.reference} {mean_spread(stable.ng_alignment_at_match)}, unstable "
        f"{mean_spread(unstable.ng_alignment_at_match)} (one-sided Mann–Whitney p = {p_ng:.3g})"
        f"{_slow(summary, ap, 'ng_alignment_at_match')}; share of ‖∇L‖² in the "
        f"span: stable {mean_spread(stable.span_fraction_at_match)}, unstable {mean_spread(unstable.span_fraction_at_match)}"
        + full,
        _unmeasured(budgets) if math.isnan(p_ng) else bool(p_ng < ap.alpha),
        f"{ap.kind} Fisher; holds if stable > unstable at p < {ap.alpha}", budgets,
        _mw_power(stable.ng_alignment_at_match, unstable.ng_alignment_at_match, ap.alpha))]


def anisotropy_instability(a: Analysis, p: ReportParams) -> list[Row]:
    """Instability corresponds to extreme anisotropy of the Fisher."""
    ap, summary = p.analysis, a.summary
    stable, unstable = _regimes(summary, ap)
    at = _at_matched_loss(summary, ap)
    budgets = _budgets(summary, ap)
    p_an = _one_sided_mw(stable.fisher_eff_dim_at_match, unstable.fisher_eff_dim_at_match)
    return [judged(
        "fisher_geometry.anisotropy_instability",
        f"participation ratio (tr F)²/tr F² {at}: {ap.reference} {mean_spread(stable.fisher_eff_dim_at_match)}, unstable "
        f"{mean_spread(unstable.fisher_eff_dim_at_match)} (one-sided Mann–Whitney p = {p_an:.3g})"
        f"{_slow(summary, ap, 'fisher_eff_dim_at_match')}; smallest before "
        f"divergence: stable {mean_spread(stable.eff_dim_min)}, unstable {mean_spread(unstable.eff_dim_min)}",
        _unmeasured(budgets) if math.isnan(p_an) else bool(p_an < ap.alpha),
        f"lower = more anisotropic; holds if unstable < stable at p < {ap.alpha}", budgets,
        _mw_power(stable.fisher_eff_dim_at_match, unstable.fisher_eff_dim_at_match, ap.alpha))]


CLAIMS = (regimes_differ, alignment_threshold_share, alignment_threshold_overlap, spectra_related,
          kappa_correlation, ng_alignment_stability, anisotropy_instability)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows, one claim function after another."""
    return [row for claim in CLAIMS for row in claim(a, p)]
