"""Protocol A of seed 001: one function per claim, its docstring the claim.

Every verdict is :func:`gradience.reporting.judged` on the budgets the claim needs (lag range vs
the predicted lead, cadence, points per run, runs that reached the edge), by the claim's registered
kind. The surrogate tests' resolution is their power (:func:`surrogate_power`): too few surrogates
make a negative inconclusive, never a positive (a p below the threshold is significant at any number
of surrogates). The cross-seed pairing null's resolution is its smallest attainable p, 1/(number of
within-regime pairings) (:func:`pairing_power`): 1/72 for regimes of 3, 3 and 2 runs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from gradience.reporting import Budget, Power, judged, mean_spread
from gradience.studies.hessian_coevolution.analysis import (
    ALL_WEIGHTS,
    HESSIAN_METRIC,
    VIEWS,
    Analysis,
    LeadLagParams,
    ReportParams,
    cold_coupling,
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
            Budget("smallest predicted lead in series points", lo / cadence_every, 1)]


def surrogate_power(ll: LeadLagParams, tests: int = 1) -> Power:
    """What a negative needs from the surrogate test: the smallest attainable p, 1/(1 + m), at most
    half the threshold α/tests (a test that cannot reach p < α cannot find coupling, so its "no
    coupling" is no negative; a p it does reach below α is significant whatever m)."""
    return Power(f"surrogate p (1/(1 + {ll.surrogates} surrogates); claimed: half of α/{tests})",
                 1 / (ll.surrogates + 1), ll.alpha / (2 * tests))


def pairing_power(min_p: float, alpha: float, tests: int = 1) -> Power:
    """What a negative needs from the pairing null: its smallest attainable p (1/pairings) at most
    half the threshold α/tests, as for the surrogates."""
    return Power(f"pairing-null p (1/pairings; claimed: half of α/{tests})", min_p, alpha / (2 * tests))


def _pairing(a: Analysis, hessian_metric: str, view: str = "levels", weight_metric: str | None = None) -> pd.Series | None:
    t = a.pairing
    if not len(t):
        return None
    weight_metric = a.lead_lag.weight_metric[a.lead_lag.primary].iloc[0] if weight_metric is None and len(a.lead_lag) \
        else weight_metric
    t = t[(t.hessian_metric == hessian_metric) & (t.view == view) & (t.weight_metric == weight_metric)]
    return t.iloc[0] if len(t) else None


def _pairing_text(r: pd.Series | None) -> str:
    if r is None or not r.runs:
        return "pairing null: no regime with 2 runs long enough"
    return (f"matched max abs r {r.matched:.3g} vs mismatched {r.mismatched:.3g}, pairing p {r.p_value:.3g} "
            f"({int(r.runs)} runs, {int(r.regimes)} regimes, {int(r.pairings)} pairings)")


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


def _lead_row(claim: str, view: str, a: Analysis, ll: LeadLagParams, table: pd.DataFrame | None = None,
              cadence: int | None = None, partner: str = "λ_max", extra: str = "", max_lag: int | None = None) -> Row:
    """H1 in one view: the primary pair's significant leads in the runs at the edge (``table``: the
    primary pair's tests, default :attr:`Analysis.lead_lag`'s; ``cadence``: steps per series point;
    ``max_lag``: its lag range in points, default ``ll.max_lag``)."""
    rp = a.runs
    prim = a.lead_lag[a.lead_lag.primary & (a.lead_lag.view == view)] if table is None else table
    cadence = rp.cadence_every if cadence is None else cadence
    edge = _edge_runs(a.summary)
    t = prim[prim.run.isin(edge.run) & prim.p_value.notna()]
    lead = t[t.significant & (t.best_lag > 0)]
    lag = t[t.significant & (t.best_lag < 0)]
    p_binom = float(binomtest(len(lead), len(t), ll.alpha, "greater").pvalue) if len(t) else math.nan
    holds = bool(len(t) and p_binom < ll.alpha and len(lead) > len(lag))
    n_pts = float(t.n.min()) if len(t) else 0.0
    budgets = [Budget("approaching runs at the edge, tested", len(t), ll.min_runs),
               Budget("points per analysed run (fewest)", n_pts, ll.min_points), *lag_budgets(ll if max_lag is None else ll.model_copy(update={"max_lag": max_lag}), cadence)]
    return judged(
        claim,
        f"{view}, {ll.primary} vs {partner}: weights lead significantly in {len(lead)}/{len(t)} runs at the edge "
        f"(K = {mean_spread(lead.lead_steps)} steps), {partner} leads in {len(lag)}; binomial p {p_binom:.3g} "
        f"vs α per run; all runs: best lag {mean_spread(t.lead_steps)} steps, r {mean_spread(t.best_r)}{extra}",
        holds, f"surrogate test per run (α = {ll.alpha}, {ll.surrogates} {ll.surrogate_kind} surrogates), "
        f"predicted lead {ll.predicted_lead[0]}–{ll.predicted_lead[1]} steps", budgets, surrogate_power(ll))


def weights_lead_hessian(a: Analysis, p: ReportParams) -> list[Row]:
    """H1: the weight spectrum leads the Hessian spectrum by K steps during approach to instability (levels: κ and λ_max as they evolve)."""
    return [_lead_row("hessian_coevolution.weights_lead_hessian", "levels", a, p.lead_lag)]


def weights_lead_hessian_residuals(a: Analysis, p: ReportParams) -> list[Row]:
    """H1 on the fluctuations: κ's detrended residuals lead λ_max's by K steps during approach to instability."""
    return [_lead_row("hessian_coevolution.weights_lead_hessian_residuals", "residuals", a, p.lead_lag)]


def weights_lead_hessian_conditioning(a: Analysis, p: ReportParams) -> list[Row]:
    """H1 on ill-conditioning: κ leads the Hessian's conditioning λ₁/λ_k by K steps during approach to instability."""
    ll, rp = p.lead_lag, a.runs
    t = a.conditioning
    if not len(t):
        return []
    c = cold_coupling(ll, p.pairing, rp.hessian.full_every, rp.cadence_every)
    conc = t[(t.hessian_metric == "hessian_concentration") & t.run.isin(_edge_runs(a.summary).run) & t.p_value.notna()]
    extra = (f"; κ vs λ₁·P/tr H: weights lead significantly in {int((conc.significant & (conc.best_lag > 0)).sum())}"
             f"/{len(conc)}, it leads in {int((conc.significant & (conc.best_lag < 0)).sum())}; "
             f"at the cold steps (every {rp.hessian.full_every} steps, lags ±{c.max_lag} points)")
    return [_lead_row("hessian_coevolution.weights_lead_hessian_conditioning", "levels", a, ll,
                      t[t.hessian_metric == "hessian_condition"], rp.hessian.full_every,
                      f"λ₁/λ_{rp.hessian.top_k}", extra, c.max_lag)]


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
    pair, kappa = _pairing(a, HESSIAN_METRIC, "levels", ALL_WEIGHTS), _pairing(a, HESSIAN_METRIC, "levels")
    pair_res = _pairing(a, HESSIAN_METRIC, "residuals")
    surrogates_say = bool(len(coupled) and coupled.sum() > len(coupled) / 2)
    pairing_says = pair is not None and bool(pair.runs) and pair.p_value < ll.alpha
    # a negative needs both tests' resolution: the surrogates' is named here, the pairing null's is the power,
    # unless the surrogates' is the one short
    surrogate = surrogate_power(ll, n_pairs)
    power = pairing_power(pair.min_p if pair is not None else 1.0, ll.alpha)
    power, surrogate = (surrogate, str(power)) if not surrogate.sufficient else (power, str(surrogate))
    return [judged(
        "hessian_coevolution.spectra_coupled",
        f"levels: {int(coupled.sum())}/{len(coupled)} runs with ≥ 1 of {n_pairs} weight metrics coupled to λ_max "
        f"beyond phase surrogates after Bonferroni (p < {ll.alpha}/{n_pairs}; {by_kind}); residuals: "
        f"{int(res.sum())}/{len(res)} runs; cross-seed pairing, levels, mean over the {n_pairs} weight metrics vs "
        f"λ_max: {_pairing_text(pair)}; {ll.primary} alone: {_pairing_text(kappa)}; {ll.primary}, residuals: "
        f"{_pairing_text(pair_res)}",
        (surrogates_say and pairing_says) if len(coupled) and pair is not None and pair.runs else None,
        f"falsifier 1 tested on the levels: most runs coupled beyond phase surrogates AND the matched runs' "
        f"weight–λ_max coupling (max abs r averaged over the weight metrics, one test) beyond the same regime's "
        f"mismatched pairs (pairing p < α; trends every run of a regime shares beat surrogates whether or not a "
        f"run's own spectra are coupled); {surrogate}",
        [Budget("runs tested", len(coupled), ll.min_runs), Budget("points per analysed run (fewest)", n_pts, ll.min_points)],
        power)]


def conditioning_coupled(a: Analysis, p: ReportParams) -> list[Row]:
    """Falsifier 1 on ill-conditioning: κ and the Hessian's conditioning λ₁/λ_k are coupled within a run, beyond what runs of the same regime share."""
    ll, rp = p.lead_lag, a.runs
    cond, conc = _pairing(a, "hessian_condition"), _pairing(a, "hessian_concentration")
    if cond is None:
        return []
    c = cold_coupling(ll, p.pairing, rp.hessian.full_every, rp.cadence_every)
    return [judged(
        "hessian_coevolution.conditioning_coupled",
        f"levels at the cold steps (every {rp.hessian.full_every} steps, lags ±{c.max_lag} points), {ll.primary} vs "
        f"λ₁/λ_{rp.hessian.top_k}: {_pairing_text(cond)}; {ll.primary} vs λ₁·P/tr H: {_pairing_text(conc)}",
        bool(cond.p_value < ll.alpha) if cond.runs else None,
        f"cross-seed pairing null on λ₁/λ_{rp.hessian.top_k} (λ₁·P/tr H shown beside it, not judged): matched runs' "
        f"coupling beyond the same regime's mismatched pairs, pairing p < α = {ll.alpha}",
        [Budget("runs in the pairing null", float(cond.runs), ll.min_runs),
         Budget("cold points per run (common window, fewest)", _fewest_points(a, "hessian_condition"), c.min_points)],
        pairing_power(float(cond.min_p), ll.alpha))]


def _fewest_points(a: Analysis, hessian_metric: str) -> float:
    t = a.pairing_pairs
    t = t[(t.hessian_metric == hessian_metric) & t.matched] if len(t) else t
    return float(t.n.min()) if len(t) else 0.0


def _direction(a: Analysis, p: ReportParams) -> dict:
    """The lead direction over all weight × λ_max pairs (levels, runs at the edge): each run votes
    with its pairs significant after Bonferroni (+1 where more of them peak with λ_max first, best
    lag < 0, −1 where more peak with the weights first, 0 tie; a run with none abstains)."""
    ll, tested = p.lead_lag, _tested(a)
    levels = tested[tested.view == "levels"]
    allp = levels[levels.run.isin(_edge_runs(a.summary).run)]
    bonf = allp[allp.significant_bonferroni]

    def votes(t: pd.DataFrame) -> pd.Series:
        return t.groupby("run").best_lag.agg(lambda g: int(np.sign(int((g < 0).sum()) - int((g > 0).sum()))))

    v = votes(bonf)
    stable = levels[levels.run.isin(_kind(a.summary, "stable").run) & levels.significant_bonferroni]
    return {"tested": allp, "bonf": bonf, "hl": int((v > 0).sum()), "wl": int((v < 0).sum()), "tied": int((v == 0).sum()),
            "runs": int(allp.run.nunique()), "control": votes(stable), "edge_lags": int((allp.best_lag.abs() == ll.max_lag).sum())}


def _direction_row(claim: str, a: Analysis, p: ReportParams, hessian_first: bool) -> Row:
    """A one-sided sign test over the voting runs of :func:`_direction`, for λ_max first
    (``hessian_first``) or the weights first; the power is the smallest p the voting runs could reach."""
    ll, d = p.lead_lag, _direction(a, p)
    hl, wl, bonf = d["hl"], d["wl"], d["bonf"]
    k, n = (hl if hessian_first else wl), hl + wl
    p_sign = float(binomtest(k, n, 0.5, "greater").pvalue) if n else math.nan
    first = bonf[bonf.best_lag < 0] if hessian_first else bonf[bonf.best_lag > 0]
    c = d["control"]
    return judged(
        claim,
        f"levels, runs at the edge: {len(bonf)}/{len(d['tested'])} run×pair tests significant after Bonferroni over "
        f"{len(ll.pairs())} pairs, {int((bonf.best_lag < 0).sum())} with λ_max first, {int((bonf.best_lag > 0).sum())} "
        f"with the weights first ({'λ_max' if hessian_first else 'weights'} first by {mean_spread(first.lead_steps.abs())} "
        f"steps; {d['edge_lags']} of all {len(d['tested'])} best lags at the ±{ll.max_lag} edge of the lag range); "
        f"per run: λ_max first in {hl}, the weights first in {wl}, tied {d['tied']}, no significant pair "
        f"{d['runs'] - hl - wl - d['tied']}, of {d['runs']}; sign test p {p_sign:.3g}; stable control: λ_max first in "
        f"{int((c > 0).sum())}, the weights in {int((c < 0).sum())} of {len(c)} runs with a significant pair",
        bool(p_sign < ll.alpha) if n else None,
        "one-sided sign test over the runs (a run's pairs share its series: runs are the units, not run×pair tests), "
        f"α = {ll.alpha}; significance from the phase surrogates",
        [Budget("approaching runs at the edge, tested", d["runs"], ll.min_runs), *lag_budgets(ll, a.runs.cadence_every)],
        Power(f"sign-test p with all {n} voting runs agreeing (0.5^n; claimed: α)", 0.5 ** n if n else 1.0, ll.alpha))


def weights_lead_all_pairs(a: Analysis, p: ReportParams) -> list[Row]:
    """Across all weight × Hessian metric pairs (approaching runs), the weights lead."""
    return [_direction_row("hessian_coevolution.weights_lead_all_pairs", a, p, hessian_first=False)]


def hessian_leads_weights(a: Analysis, p: ReportParams) -> list[Row]:
    """Repository finding (H1's opposite direction): during approach to instability λ_max leads the weight metrics."""
    return [_direction_row("hessian_coevolution.hessian_leads_weights", a, p, hessian_first=True)]


CLAIMS = (stable_below_edge, marginal_at_edge, unstable_diverges, weights_lead_hessian,
          weights_lead_hessian_residuals, weights_lead_hessian_conditioning, spectra_coupled, conditioning_coupled,
          weights_lead_all_pairs, hessian_leads_weights)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows, one claim function after another."""
    return [row for claim in CLAIMS for row in claim(a, p)]
