"""Protocol B: one function per claim, its docstring the claim.

Every verdict goes through :func:`gradience.reporting.judged` with the budgets the claim needs
(grokking runs analysed, control runs with which Mann–Whitney can reach p < α, median points
before t*) and the test's power (:class:`gradience.reporting.Power`: the smallest effect it detects
with power ≥ ``target``, from :func:`.hypothesis_tests.power_summary`, against the claimed effect).
Low power makes a negative "inconclusive"; it does not block a precursor the runs show.
"""

from __future__ import annotations

import math

import numpy as np

from gradience.reporting import Budget, Power, judged
from gradience.studies.grokking_transition.analysis import Analysis, ReportParams
from gradience.studies.grokking_transition.early_warning import (
    LEVEL,
    EarlyWarningParams,
    PowerParams,
)
from gradience.studies.grokking_transition.hypothesis_tests import TESTS, controls_needed

Row = dict[str, str]

TEST_CLAIMS = {  # hypothesis test → claim id
    "h2_autocorrelation_time": "grokking_transition.h2_autocorrelation_time",
    "lag1_autocorrelation": "grokking_transition.lag1_autocorrelation",
    "gradient_variance": "grokking_transition.gradient_variance",
    "gradient_noise_level": "grokking_transition.gradient_noise_level",
}
HOLDS = {"supported": True, "not supported": False, "inconclusive": None}


def _budgets(t, n_ctrl_needed: int, ew: EarlyWarningParams) -> list[Budget]:
    return [Budget("grokking runs analysed", t.n_grok_runs, 2),
            Budget(f"control runs (MWU can reach p < {ew.alpha:g})", t.n_control_runs, n_ctrl_needed),
            Budget("median points before t*", 0 if not np.isfinite(t.n_points) else t.n_points, ew.min_points)]


def _effect(level: bool, pw: PowerParams) -> tuple[str, float]:
    """The unit of a test's effect size (as in :func:`.hypothesis_tests.power_table`: the level
    test's rise factor, the residual tests' slowing) and the claimed effect in it."""
    if level:
        return f"tr Σ rise by t* (factor, at power ≥ {pw.target:g})", pw.claimed_rise
    return (f"slowing by t* (share of the AR(1) coefficient's distance to 1, at power ≥ {pw.target:g})",
            pw.claimed_slowing)


def _detectable(ps: dict) -> float:
    """The smallest effect detected with power ≥ target; inf when no effect tried reached it or
    no power was computed (too few points)."""
    mde = ps.get("mde_effect", math.nan)
    return float(mde) if np.isfinite(mde) else math.inf


def _power(test: str, ps: dict, pw: PowerParams) -> Power:
    measure, claimed = _effect(TESTS[test][1] == LEVEL, pw)
    return Power(measure, _detectable(ps), claimed)


def _measured(t, ps: dict) -> str:
    mde = ("no effect size tried reached the target power" if not np.isfinite(ps.get("mde_tau", math.nan))
           else f"smallest detectable τ {ps['mde_tau']:.2f} (effect {ps['mde_effect']:g})")
    return (f"{t.tested}: {t.verdict}; signalling in {t.hit_fraction:.0%} of series per grokking run "
            f"(n={t.n_grok_runs}) vs {t.control_fraction:.0%} in controls (n={t.n_control_runs}), MWU "
            f"p={t.p_mannwhitney:.3g}; median τ {t.tau_grok:.2f} vs {t.tau_control:.2f}; {mde}; power at the claim "
            f"{ps.get('power_at_claim', math.nan):.2f}")


def _power_by(a: Analysis) -> dict[tuple[str, str], dict]:
    return {(r.test, r.tested): r._asdict() for r in a.power_summary.itertuples()}


def _test_rows(a: Analysis, p: ReportParams, test: str) -> list[Row]:
    """One row per tested condition of hypothesis test ``test``, judged with the budgets it needs
    (grokking runs, controls, points before t*) and its power at the claimed effect."""
    ew, pw = p.early_warning, p.power
    ps_by = _power_by(a)
    rows = []
    for t in a.tests.itertuples():
        if t.test != test:
            continue
        ps = ps_by.get((t.test, t.tested), {})
        budgets = _budgets(t, controls_needed(t.n_grok_runs, ew.alpha), ew)
        rows.append(judged(TEST_CLAIMS[t.test], _measured(t, ps), HOLDS[t.verdict],
                           f"{t.why} (a series signals when τ > 0 and surrogate p < {ew.alpha:g})", budgets,
                           _power(t.test, ps, pw)))
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
    return _test_rows(a, p, "gradient_noise_level")


def diagnostic_not_predictive(a: Analysis, p: ReportParams) -> list[Row]:
    """Spectral metrics of the weights are diagnostic of grokking, not predictive of it."""
    pw = p.power
    ps_by = _power_by(a)
    spectral = a.tests[a.tests["group"] == "spectral"]
    supported = spectral[spectral["verdict"] == "supported"]
    holds = None if spectral.empty or (spectral["verdict"] == "inconclusive").all() else supported.empty
    # the weakest spectral test × condition with a power analysis (those with too few points have none)
    powered = [ps_by[(t.test, t.tested)] for t in spectral.itertuples() if (t.test, t.tested) in ps_by]
    weakest = max((_detectable(ps) for ps in powered), default=math.inf)
    measure, claimed = _effect(False, pw)  # the spectral tests are residual tests
    # an absence: a supported precursor in one condition already refutes "not predictive", so the
    # "≥ 2 conditions" budget is what agreeing needs; none found also needs every spectral test able to
    # see the claimed precursor (the power)
    budgets = [] if holds is False else [
        Budget("tested conditions with grokking runs", int(spectral["tested"].nunique()), 2)]
    power = Power(f"{measure} of the weakest spectral test", weakest, claimed)
    return [judged(
        "grokking_transition.diagnostic_not_predictive",
        f"spectral precursor supported in {len(supported)} of {len(spectral)} test × condition cells "
        f"({', '.join(sorted(set(supported['tested']))) or 'none'})",
        holds, "'not predictive' holds when no spectral early-warning test is supported in any grokking condition",
        budgets, power)]


# in the order of TESTS: the rows of a.tests come test by test (hypothesis_tests), so the rows keep their order
CLAIMS = (h2_autocorrelation_time, lag1_autocorrelation, gradient_variance, gradient_noise_level,
          diagnostic_not_predictive)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows: every test in every tested condition, then the diagnostic claim."""
    return [row for claim in CLAIMS for row in claim(a, p)]
