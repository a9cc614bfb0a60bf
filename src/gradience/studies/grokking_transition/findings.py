"""Protocol B: one function per claim, its docstring the claim.

Every verdict comes from the ensemble indicators (:mod:`.ensemble`): the seeds of the ensemble
condition aligned on their transition, each with the reference run of the same seed at the same
steps. One budget set for every row of a tested condition (pairs aligned ≥ ``ensemble.min_pairs``),
and each test's power (:class:`gradience.reporting.Power`: the smallest effect it detects with
power ≥ ``target`` against the claimed effect). Low power makes a negative "inconclusive"; it does
not block a precursor the runs show. The per-run analyses are descriptive (shown in the notebook).
"""

from __future__ import annotations

import math

import numpy as np

from gradience.reporting import Budget, Power, judged
from gradience.studies.grokking_transition.analysis import (
    Analysis,
    ReportParams,
    ensemble_detectable,
)

Row = dict[str, str]

TEST_CLAIMS = {  # ensemble test → claim id
    "h2_autocorrelation_time": "grokking_transition.h2_autocorrelation_time",
    "lag1_autocorrelation": "grokking_transition.lag1_autocorrelation",
    "gradient_variance": "grokking_transition.gradient_variance",
}
INDICATOR_WORDS = {"autocorrelation_time": "AR(1) autocorrelation time (1+ρ)/(1−ρ) (ρ's trend)",
                   "lag1_ac": "lag-1 autocorrelation ρ", "variance": "variance"}


def _budgets(a: Analysis, p: ReportParams, tested: str) -> list[Budget]:
    """THE budget set of a tested condition, the same on every row."""
    pairs = a.ensemble_pairs
    n = int(pairs.loc[pairs["condition"] == tested, "kept"].sum()) if len(pairs) else 0
    return [Budget("pairs aligned on t* (tested seed + its reference at the same steps)", n, p.ensemble.min_pairs)]


def _slowing_power(a: Analysis, p: ReportParams, test: str, tested: str) -> tuple[Power, float]:
    pw = a.ensemble_power[(a.ensemble_power["test"] == test) & (a.ensemble_power["tested"] == tested)]
    at = pw[pw["claimed"]]
    power = Power(f"slowing by t* (share of the AR(1) coefficient's distance to 1, at power ≥ {p.power.target:g}, "
                  "one series: a lower bound for the mean over series)",
                  ensemble_detectable(pw, p.power.target), p.power.claimed_slowing)
    return power, float(at["power"].iloc[0]) if len(at) else math.nan


def _holds(t) -> bool | None:
    """Supported: the grokking ensemble's trend is positive and exceeds the references' (p < α)."""
    if not np.isfinite(getattr(t, "p_value", math.nan)):
        return None
    return bool(t.p_value < t.alpha and t.tau_tested > 0)


def _tests(a: Analysis, p: ReportParams):
    return a.ensemble_tests.assign(alpha=p.ensemble.alpha)


def _test_rows(a: Analysis, p: ReportParams, test: str) -> list[Row]:
    """One row per tested ensemble condition of ensemble test ``test``."""
    rows = []
    for t in _tests(a, p).itertuples():
        if t.test != test:
            continue
        power, at_claim = _slowing_power(a, p, t.test, t.tested)
        if np.isfinite(getattr(t, "p_value", math.nan)):
            measured = (f"{t.tested}: {t.n_pairs} pairs, {t.n_series} {t.group} series; Kendall τ of the "
                        f"across-seed {INDICATOR_WORDS[t.indicator]} against time to t*: {t.tau_tested:+.2f} "
                        f"(grokking) vs {t.tau_reference:+.2f} (references at the same steps); Δτ "
                        f"{t.delta_tau:+.2f} (90% bootstrap {t.delta_lo:+.2f} to {t.delta_hi:+.2f}), p={t.p_value:.3g}; "
                        f"residual lag-1 {t.resid_lag1:.2f}; power at the claimed slowing {at_claim:.2f}")
        else:
            measured = f"{t.tested}: {t.n_pairs} pairs aligned: too few to compute"
        rows.append(judged(TEST_CLAIMS[test], measured, _holds(t),
                           f"holds when the grokking ensemble's trend is positive and exceeds the references' "
                           f"(bootstrap over pairs, p < {p.ensemble.alpha:g})",
                           _budgets(a, p, t.tested), power))
    return rows


def h2_autocorrelation_time(a: Analysis, p: ReportParams) -> list[Row]:
    """Grokking is preceded by a diverging autocorrelation time in layer-wise spectral metrics."""
    return _test_rows(a, p, "h2_autocorrelation_time")


def lag1_autocorrelation(a: Analysis, p: ReportParams) -> list[Row]:
    """Before grokking, the lag-1 autocorrelation of layer-wise spectral metrics rises (critical slowing down)."""
    return _test_rows(a, p, "lag1_autocorrelation")


def gradient_variance(a: Analysis, p: ReportParams) -> list[Row]:
    """The fluctuations (detrended residual variance) of gradient statistics increase before the transition."""
    return _test_rows(a, p, "gradient_variance")


def gradient_noise_level(a: Analysis, p: ReportParams) -> list[Row]:
    """The gradient noise itself, tr Σ of the per-example gradients, rises before the transition."""
    rows = []
    for r in a.ensemble_level.to_dict("records"):
        n = r.get("n_pairs", 0)
        detect, upper = r.get("detectable", math.inf), r.get("own_upper", math.inf)
        # A negative is decisive when the runs exclude the claimed rise: the upper (1 − α) confidence bound
        # of the rise is below it. Before the data, the test sees a rise of ×10^detect with power ≥ target.
        power = Power(f"rise of tr Σ over the window before t* the runs leave possible (factor, one-sided upper "
                      f"{1 - p.ensemble.alpha:.0%} confidence bound over pairs; before the data the test sees "
                      f"×{10 ** detect:.3g} at power ≥ {p.power.target:g})",
                      10 ** upper if np.isfinite(upper) else math.inf, p.power.claimed_rise)
        if n >= 2:
            direction = "falls" if r["own_change"] < 0 else "rises"
            measured = (f"{r['tested']}: {n} pairs; over the window before t* tr Σ of the grokking runs {direction} "
                        f"×{10 ** r['own_change']:.3g} (p rise {r['p_own_rise']:.3g}, p fall {r['p_own_fall']:.3g}); "
                        f"at the same steps it is ×{10 ** r['level']:.3g} the references' (p higher "
                        f"{r['p_level_higher']:.3g}, p lower {r['p_level_lower']:.3g}), ×{10 ** r['change']:.3g} "
                        f"of it by the end relative to the start")
            holds = bool(r["p_own_rise"] < p.ensemble.alpha)
        else:
            measured, holds = f"{r['tested']}: {n} pairs aligned: too few to compute", None
        rows.append(judged("grokking_transition.gradient_noise_level", measured, holds,
                           f"holds when tr Σ of the grokking runs rises over the window before t* "
                           f"(p < {p.ensemble.alpha:g})", _budgets(a, p, r["tested"]), power))
    return rows


def diagnostic_not_predictive(a: Analysis, p: ReportParams) -> list[Row]:
    """Spectral metrics of the weights are diagnostic of grokking, not predictive of it."""
    rows = []
    tests = _tests(a, p)
    if "group" not in tests:
        return rows
    spectral = tests[tests["group"] == "spectral"]
    for tested, g in spectral.groupby("tested", sort=True):
        verdicts = [_holds(t) for t in g.itertuples()]
        supported = [t.test for t, v in zip(g.itertuples(), verdicts, strict=True) if v]
        holds = None if all(v is None for v in verdicts) else not supported
        powers = [_slowing_power(a, p, t.test, tested)[0] for t in g.itertuples()]
        weakest = max((pw.detectable for pw in powers), default=math.inf)
        power = Power("slowing by t* of the weakest spectral ensemble test (share of the AR(1) coefficient's "
                      f"distance to 1, at power ≥ {p.power.target:g})", weakest, p.power.claimed_slowing)
        rows.append(judged(
            "grokking_transition.diagnostic_not_predictive",
            f"{tested}: spectral ensemble precursor supported in {len(supported)} of {len(g)} tests "
            f"({', '.join(supported) or 'none'})",
            holds, "'not predictive' holds when no spectral ensemble early-warning test is supported",
            _budgets(a, p, tested), power))
    return rows


# the Findings order: the claims in the order of the registry
CLAIMS = (h2_autocorrelation_time, lag1_autocorrelation, gradient_variance, gradient_noise_level,
          diagnostic_not_predictive)


def _no_ensemble(claim, p: ReportParams) -> Row:
    return judged(f"grokking_transition.{claim.__name__}", "no ensemble pairs (no ensemble condition grokked)",
                  None, "the verdicts read the ensemble indicators",
                  [Budget("pairs aligned on t* (tested seed + its reference at the same steps)", 0,
                          p.ensemble.min_pairs)])


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows: every claim in every tested ensemble condition."""
    return [row for claim in CLAIMS for row in (claim(a, p) or [_no_ensemble(claim, p)])]
