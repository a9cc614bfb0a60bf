"""Protocol B: the single-run hypothesis tests per tested condition and their power (report side).

Descriptive since the ensemble indicators (:mod:`.ensemble`) carry the verdicts: one run's
residuals are autocorrelated at any cadence, so these tests have little power at the claimed effect.

- Hypothesis verdict (:func:`hypothesis_verdict`) per test and tested condition: per unit, the
  fraction of its series that signal. *present*: mean over grokking runs ≥ ``min_hit_fraction``;
  *specific*: grokking runs' fractions exceed the controls' (one-sided Mann–Whitney U, p < ``alpha``).
- Power (:func:`power_table`): residual tests against critical slowing down injected into AR(1)
  noise of the median length and median residual lag-1 autocorrelation of the condition's grokking
  series (the coefficient covers ``claimed_slowing`` of its distance to 1 by t*); the level test
  against a rise of tr Σ by ``claimed_rise`` added to each grokking run's own fluctuations. The
  smallest detectable Kendall τ is the median τ at the smallest effect with power ≥ ``target``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from gradience.studies.grokking_transition.early_warning import (
    LEVEL,
    EarlyWarningParams,
    Group,
    PowerParams,
    surrogate_seed,
)
from gradience.telemetry import signals


def run_hit_fractions(ew_table: pd.DataFrame, group: Group, indicator: str) -> pd.DataFrame:
    """Per unit (tested condition × run; grokking runs and controls only): the fraction of its
    analysed series of ``group`` that signal with ``indicator``; ``grokked`` is false for controls."""
    sub = ew_table[(ew_table["group"] == group) & (ew_table["indicator"] == indicator)
                   & (ew_table["skipped"] == "") & (ew_table["control"] | ew_table["grokked"])]
    out = (sub.groupby(["tested", "run", "control"])["signals"].agg(["mean", "size"])
           .rename(columns={"mean": "fraction", "size": "n_series"}).reset_index())
    out["grokked"] = ~out["control"]
    return out


HypothesisVerdict = Literal["supported", "not supported", "inconclusive"]


def hypothesis_verdict(fractions: pd.DataFrame, alpha: float, min_hit_fraction: float) -> dict:
    """Supported / not supported / inconclusive from per-run signalling fractions (module docstring)."""
    grok = fractions.loc[fractions["grokked"], "fraction"].to_numpy(dtype=float)
    ctrl = fractions.loc[~fractions["grokked"], "fraction"].to_numpy(dtype=float)
    out = {"hit_fraction": float(grok.mean()) if grok.size else math.nan,
           "control_fraction": float(ctrl.mean()) if ctrl.size else math.nan,
           "n_grok_runs": int(grok.size), "n_control_runs": int(ctrl.size), "p_mannwhitney": math.nan}
    if grok.size < 2 or ctrl.size < 2:
        return out | {"verdict": "inconclusive",
                      "why": f"{grok.size} grokking and {ctrl.size} control runs analysed (need ≥ 2 each)"}
    p = float(stats.mannwhitneyu(grok, ctrl, alternative="greater").pvalue)
    present, specific = out["hit_fraction"] >= min_hit_fraction, p < alpha
    out["p_mannwhitney"] = p
    if present and specific:
        verdict: HypothesisVerdict = "supported"
        why = "the precursor is common in grokking runs and more frequent than in the controls"
    elif (not present and not specific) or (present and out["hit_fraction"] <= out["control_fraction"]):
        verdict = "not supported"
        why = ("no more frequent in grokking runs than in non-grokking controls" if present else
               "the precursor is rare in grokking runs and does not separate them from the controls")
    else:
        verdict = "inconclusive"
        why = ("common in grokking runs but not significantly more than in the controls" if present else
               "more frequent than in the controls but present in under "
               f"{min_hit_fraction:.0%} of the series of grokking runs")
    return out | {"verdict": verdict, "why": why}


def controls_needed(n_grok: int, alpha: float) -> int:
    """Fewest control runs with which a one-sided Mann–Whitney U over ``n_grok`` grokking runs can
    reach p < α at all (its smallest p-value is 1 / C(n_grok + m, m))."""
    if n_grok < 1:
        return 1
    m = 1
    while 1 / math.comb(n_grok + m, m) >= alpha:
        m += 1
    return m


TESTS = {  # test → (group of series, indicator)
    "h2_autocorrelation_time": ("spectral", "autocorrelation_time"),
    "lag1_autocorrelation": ("spectral", "lag1_ac"),
    "gradient_variance": ("gradient", "variance"),
    "gradient_noise_level": ("gradient", LEVEL),
}


def hit_fractions(ew_table: pd.DataFrame) -> pd.DataFrame:
    """:func:`run_hit_fractions` of every test of :data:`TESTS`, stacked (column ``test``)."""
    return pd.concat([run_hit_fractions(ew_table, group, ind).assign(test=name)
                      for name, (group, ind) in TESTS.items()], ignore_index=True)


def hypothesis_tests(fractions: pd.DataFrame, ew_table: pd.DataFrame, ew: EarlyWarningParams) -> pd.DataFrame:
    """One row per test × tested condition: the verdict rule on that condition's grokking runs vs
    the controls matched to it, the median points per series and the median residual lag-1
    autocorrelation of the grokking runs' series."""
    rows = []
    for name, (group, ind) in TESTS.items():
        for tested in sorted(ew_table.loc[~ew_table["control"], "tested"].unique()):
            f = fractions[(fractions["test"] == name) & (fractions["tested"] == tested)]
            sub = ew_table[(ew_table["group"] == group) & (ew_table["indicator"] == ind) & (ew_table["skipped"] == "")
                           & (ew_table["tested"] == tested)]
            grok, ctrl = sub[~sub["control"] & sub["grokked"]], sub[sub["control"]]
            rows.append({"test": name, "tested": tested, "group": group, "indicator": ind,
                         **hypothesis_verdict(f, ew.alpha, ew.min_hit_fraction),
                         "n_points": float(grok["n_points"].median()) if len(grok) else math.nan,
                         "resid_lag1": float(grok["resid_lag1"].median()) if len(grok) else math.nan,
                         "tau_grok": float(grok["kendall_tau"].median()) if len(grok) else math.nan,
                         "tau_control": float(ctrl["kendall_tau"].median()) if len(ctrl) else math.nan,
                         "ratio_grok": float(grok["ratio"].median()) if len(grok) else math.nan,
                         "ratio_control": float(ctrl["ratio"].median()) if len(ctrl) else math.nan})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------- power


def power_table(tests: pd.DataFrame, level: pd.DataFrame, ew: EarlyWarningParams, pw: PowerParams) -> pd.DataFrame:
    """Power of every test × tested condition against effects of known size (``effect``, ``power``,
    ``critical_tau``, ``median_tau``; ``claimed`` marks the claimed effect).

    Residual tests: :func:`gradience.telemetry.signals.csd_power` at the median length and median
    residual lag-1 autocorrelation of the condition's grokking series (effect: the fraction of the
    distance to 1 the AR(1) coefficient covers by t*). Level test: the mean over the condition's
    grokking runs of :func:`level_power` on each run's own tr Σ fluctuations (effect: the factor by
    which the level rises by t*).
    """
    rows = []
    for t in tests.itertuples():
        if t.indicator == LEVEL:
            sub = level[level["tested"] == t.tested]
            if sub.empty:
                continue
            agg = sub.groupby("effect").agg(power=("power", "mean"), critical_tau=("critical_tau", "median"),
                                            median_tau=("median_tau", "median")).reset_index()
            claimed = pw.claimed_rise
        else:
            if not (np.isfinite(t.n_points) and np.isfinite(t.resid_lag1)) or t.n_points < ew.min_points:
                continue
            agg = signals.csd_power(int(t.n_points), float(np.clip(t.resid_lag1, -0.95, 0.95)),
                                    sorted({*pw.slowing_effects, pw.claimed_slowing}), indicator=t.indicator,
                                    window=ew.window, bandwidth=ew.bandwidth, method=ew.detrend, n_sims=pw.n_sims,
                                    alpha=ew.alpha, seed=surrogate_seed(t.test, t.tested)).drop(columns="phi_end")
            claimed = pw.claimed_slowing
        rows.append(agg.assign(test=t.test, tested=t.tested, claimed=np.isclose(agg["effect"], claimed)))
    cols = ["test", "tested", "effect", "claimed", "power", "critical_tau", "median_tau"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


def power_summary(power: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per test × tested condition: power at the claimed effect, and the smallest effect detectable
    with power ≥ ``target`` with the median Kendall τ the test saw there (the smallest detectable τ)."""
    rows = []
    for (test, tested), g in power.groupby(["test", "tested"], sort=False):
        mde = signals.minimum_detectable(g, "effect", target)
        claimed = g[g["claimed"]]
        rows.append({"test": test, "tested": tested,
                     "power_at_claim": float(claimed["power"].iloc[0]) if len(claimed) else math.nan,
                     "tau_at_claim": float(claimed["median_tau"].iloc[0]) if len(claimed) else math.nan,
                     "mde_effect": mde["effect"], "mde_tau": mde["median_tau"]})
    return pd.DataFrame(rows, columns=["test", "tested", "power_at_claim", "tau_at_claim", "mde_effect", "mde_tau"])
