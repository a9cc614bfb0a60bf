"""Protocol A of seed 001: one function per claim, its docstring the claim.

Every verdict is :func:`gradience.reporting.judged` on the budgets the claim needs (lag range vs
the predicted lead, cadence, points per run, runs that reached the edge), by the claim's registered
kind. The surrogate tests' resolution is their power (:func:`surrogate_power`): too few surrogates
make a negative inconclusive, never a positive (a p below the threshold is significant at any number
of surrogates).
"""

from __future__ import annotations

import math

import pandas as pd
from scipy.stats import binomtest

from gradience.reporting import Budget, Power, judged, mean_spread
from gradience.studies.hessian_coevolution.analysis import (
    VIEWS,
    Analysis,
    LeadLagParams,
    ReportParams,
    diverged,
)
from gradience.studies.hessian_coevolution.runs import RunParams

Row = dict[str, str]
APPROACHING = ("marginal", "unstable")  # the regime kinds that approach instability


def lag_budgets(ll: LeadLagParams, cadence_every: int) -> list[Budget]:
    """What a lead of the predicted size needs from the lag analysis: a lag range reaching the
    largest predicted lead, and a cadence no coarser than the smallest."""
    lo, hi = ll.predicted_lead
    return [Budget("lag range ± steps vs the largest predicted lead", ll.max_lag * cadence_every, hi),
            Budget("smallest predicted lead in cadence steps", lo / cadence_every, 1)]


def surrogate_power(ll: LeadLagParams, tests: int = 1) -> Power:
    """What a negative needs from the surrogate test: the smallest attainable p, 1/(1 + m), at most
    half the threshold α/tests (a test that cannot reach p < α cannot find coupling, so its "no
    coupling" is no negative; a p it does reach below α is significant whatever m)."""
    return Power(f"surrogate p (1/(1 + {ll.surrogates} surrogates); claimed: half of α/{tests})",
                 1 / (ll.surrogates + 1), ll.alpha / (2 * tests))


def _edge_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The approaching runs that reached the edge (λ_max·η/2 ≥ 1 at some step)."""
    return summary[summary.kind.isin(APPROACHING) & (summary.ratio_max >= 1)]


def _kind(summary: pd.DataFrame, kind: str) -> pd.DataFrame:
    return summary[summary.kind == kind]


def _per_step(rp: RunParams) -> Budget:
    return Budget("λ_max measurements per step", 1 / rp.cadence_every, 1)


def stable_below_edge(a: Analysis, p: ReportParams) -> list[Row]:
    """Stable regime (conservative η, gradient clipping) stays below the edge of stability, λ_max < 2/η."""
    stable, marginal = _kind(a.summary, "stable"), _kind(a.summary, "marginal")
    if not len(stable):
        return []
    ok = bool((stable.ratio_max < 1).all() and not diverged(stable).any())
    need = float(marginal.edge_step.median()) if marginal.edge_step.notna().any() else math.nan
    return [judged(
        "hessian_coevolution.stable_below_edge",
        f"max λ_max·η/2 {mean_spread(stable.ratio_max)} over every step; "
        f"{int(diverged(stable).sum())}/{len(stable)} diverged",
        ok, "sharpness on the full training set against 2/η of GD, every step",
        [_per_step(a.runs), Budget("stable steps vs the marginal runs' edge step", a.runs.steps,
                                   need if math.isfinite(need) else math.inf)])]


def marginal_at_edge(a: Analysis, p: ReportParams) -> list[Row]:
    """Marginal regime sits at the edge of stability: λ_max reaches 2/η and stays near it."""
    marginal = _kind(a.summary, "marginal")
    if not len(marginal):
        return []
    reached = marginal.ratio_max >= 1
    ok = bool(reached.all() and not diverged(marginal).any())
    return [judged(
        "hessian_coevolution.marginal_at_edge",
        f"edge reached at step {mean_spread(marginal.edge_step)}; median λ_max·η/2 after it "
        f"{mean_spread(marginal.ratio_after_edge)}; {int(reached.sum())}/{len(marginal)} reached, "
        f"{int(diverged(marginal).sum())} diverged",
        ok, "progressive sharpening up to 2/η, then edge-of-stability oscillation" if ok
        else "a run did not reach the edge, or diverged",
        [_per_step(a.runs), Budget("steps held after the edge (fewest)", float(marginal.steps_after_edge.min()), 50)])]


def unstable_diverges(a: Analysis, p: ReportParams) -> list[Row]:
    """Unstable regime (η too high) eventually diverges."""
    unstable = _kind(a.summary, "unstable")
    if not len(unstable):
        return []
    div = diverged(unstable)
    return [judged(
        "hessian_coevolution.unstable_diverges",
        f"{int(div.sum())}/{len(unstable)} diverged, at step {mean_spread(unstable.diverged_at)} "
        f"(η there {mean_spread(unstable.lr_at_end)}, λ_max(θ₀)·η/2 {mean_spread(unstable.lr_at_end * unstable.lambda_max_init / 2)})",
        bool(div.all()), "divergence = non-finite loss or loss above blowup_factor × initial",
        [Budget("η reached in units of the initial edge 2/λ_max(θ₀) (smallest)",
                float((unstable.lr_at_end * unstable.lambda_max_init / 2).min()), 2.0)])]


def _lead_row(claim: str, view: str, a: Analysis, ll: LeadLagParams) -> Row:
    """H1 in one view: the primary pair's significant leads in the runs at the edge."""
    prim, rp = a.lead_lag[a.lead_lag.primary], a.runs
    edge = _edge_runs(a.summary)
    t = prim[(prim.view == view) & prim.run.isin(edge.run) & prim.p_value.notna()]
    lead = t[t.significant & (t.best_lag > 0)]
    lag = t[t.significant & (t.best_lag < 0)]
    p_binom = float(binomtest(len(lead), len(t), ll.alpha, "greater").pvalue) if len(t) else math.nan
    holds = bool(len(t) and p_binom < ll.alpha and len(lead) > len(lag))
    n_pts = float(t.n.min()) if len(t) else 0.0
    budgets = [Budget("approaching runs at the edge, tested", len(t), ll.min_runs),
               Budget("points per analysed run (fewest)", n_pts, ll.min_points), *lag_budgets(ll, rp.cadence_every)]
    return judged(
        claim,
        f"{view}, {ll.primary} vs λ_max: weights lead significantly in {len(lead)}/{len(t)} runs at the edge "
        f"(K = {mean_spread(lead.lead_steps)} steps), λ_max leads in {len(lag)}; binomial p {p_binom:.3g} "
        f"vs α per run; all runs: best lag {mean_spread(t.lead_steps)} steps, r {mean_spread(t.best_r)}",
        holds, f"surrogate test per run (α = {ll.alpha}, {ll.surrogates} {ll.surrogate_kind} surrogates), "
        f"predicted lead {ll.predicted_lead[0]}–{ll.predicted_lead[1]} steps", budgets, surrogate_power(ll))


def weights_lead_hessian(a: Analysis, p: ReportParams) -> list[Row]:
    """H1: the weight spectrum leads the Hessian spectrum by K steps during approach to instability (levels: κ and λ_max as they evolve)."""
    return [_lead_row("hessian_coevolution.weights_lead_hessian", "levels", a, p.lead_lag)]


def weights_lead_hessian_residuals(a: Analysis, p: ReportParams) -> list[Row]:
    """H1 on the fluctuations: κ's detrended residuals lead λ_max's by K steps during approach to instability."""
    return [_lead_row("hessian_coevolution.weights_lead_hessian_residuals", "residuals", a, p.lead_lag)]


def _tested(a: Analysis) -> pd.DataFrame:
    """Every view × run × pair test that was run (enough points)."""
    return a.lead_lag[a.lead_lag.p_value.notna()]


def spectra_coupled(a: Analysis, p: ReportParams) -> list[Row]:
    """Falsifier 1 is not met: weight and Hessian spectra are significantly cross-correlated."""
    ll, summary = p.lead_lag, a.summary
    tested = _tested(a)
    n_pairs = len(ll.pairs())
    per_view = {v: tested[tested.view == v].groupby("run")["significant_bonferroni"].any() for v in VIEWS}
    coupled = per_view["levels"]
    kinds = summary.set_index("run").kind
    by_kind = ", ".join(f"{k} {int(coupled[kinds[coupled.index] == k].sum())}/{int((kinds[coupled.index] == k).sum())}"
                        for k in ("stable", "marginal", "unstable"))
    res = per_view["residuals"]
    n_pts = float(tested[tested.view == "levels"].n.min()) if len(coupled) else 0.0
    return [judged(
        "hessian_coevolution.spectra_coupled",
        f"levels: {int(coupled.sum())}/{len(coupled)} runs with ≥ 1 of {n_pairs} weight metrics coupled to λ_max "
        f"after Bonferroni (p < {ll.alpha}/{n_pairs}; {by_kind}); residuals: {int(res.sum())}/{len(res)} runs",
        bool(len(coupled) and coupled.sum() > len(coupled) / 2) if len(coupled) else None,
        "falsifier 1 tested on the levels (co-evolution); verdict: most runs coupled",
        [Budget("runs tested", len(coupled), ll.min_runs), Budget("points per analysed run (fewest)", n_pts, ll.min_points)],
        surrogate_power(ll, n_pairs))]


def weights_lead_all_pairs(a: Analysis, p: ReportParams) -> list[Row]:
    """Across all weight × Hessian metric pairs (approaching runs), the weights lead."""
    ll, tested = p.lead_lag, _tested(a)
    n_pairs = len(ll.pairs())
    edge = _edge_runs(a.summary)
    allp = tested[(tested.view == "levels") & tested.run.isin(edge.run)]
    bonf = allp[allp.significant_bonferroni]
    wl, hl = int((bonf.best_lag > 0).sum()), int((bonf.best_lag < 0).sum())
    return [judged(
        "hessian_coevolution.weights_lead_all_pairs",
        f"levels, runs at the edge: {len(bonf)}/{len(allp)} run×pair tests significant after Bonferroni over "
        f"{n_pairs} pairs: {wl} weights lead, {hl} λ_max leads, {len(bonf) - wl - hl} synchronous",
        (wl > len(bonf) / 2) if len(bonf) else None,
        "direction of the majority of significant tests" if len(bonf) else "no pair survives the correction",
        [Budget("approaching runs at the edge, tested", allp.run.nunique(), ll.min_runs),
         *lag_budgets(ll, a.runs.cadence_every)], surrogate_power(ll, n_pairs))]


CLAIMS = (stable_below_edge, marginal_at_edge, unstable_diverges, weights_lead_hessian,
          weights_lead_hessian_residuals, spectra_coupled, weights_lead_all_pairs)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows, one claim function after another."""
    return [row for claim in CLAIMS for row in claim(a, p)]
