"""Protocol B of seed 001: dense telemetry around grokking, its early-warning statistics and their power.

Hypothesis 2 of the agenda: "grokking is preceded by diverging autocorrelation time in layer-wise
spectral metrics"; expectation 2: "increasing variance in gradients"; falsifier: "no detectable
precursors to phase transitions". Definitions (stated once, used by the notebook and the tests):

- Runs and conditions: :mod:`.runs` (mini-batch AdamW, dense telemetry, tested and reference
  conditions, the stop rule).
- Memorisation step t_mem: the first cadence step with train accuracy ≥ ``memorised_threshold``
  (:func:`gradience.telemetry.signals.first_step_reaching`). Transition onset t*: the first cadence
  step from which test accuracy stays ≥ ``onset_threshold``
  (:func:`gradience.telemetry.signals.first_step_staying`); grok step: the same with ``grok_threshold``.
- Ensemble indicators (:mod:`.ensemble`, the verdicts): the seeds of the ensemble condition aligned
  on their transition t*, each paired with the reference run of the same seed at the same steps;
  variance and lag-1 autocorrelation across seeds at each aligned time, their trend against time
  to t* contrasted with the references' (bootstrap over pairs), its power by simulation; tr Σ of
  tested vs reference runs at matched steps (level, change, direction) with its analytic power.
- Per-run analyses (descriptive: one run's autocorrelated residuals give them power ≈ 0.04–0.12 at
  the claimed effect), on the runs of ``runs.seeds`` only. Analysis units (:func:`analysis_units`): a grokking run over [t_mem, t*); a reference run once
  per tested condition, over that condition's grokking window of the same seed (medians; all seeds
  when that seed has none), from its own memorisation on.
- Residual and level statistics, lead time and lead–lag: :mod:`.early_warning`.
- Hypothesis verdict per test and tested condition, and power: :mod:`.hypothesis_tests`.
- Findings (:func:`gradience.studies.grokking_transition.findings.findings`, ``reporting.judged``)
  from the ensemble: one budget for every row (pairs aligned ≥ ``ensemble.min_pairs``); a
  negative ("not reproduced") also needs the power to see the claimed effect (the smallest effect
  detected with power ≥ ``target`` no larger than it), else "inconclusive".

Free choices the seed does not fix: lr, batch size, train fraction, the conditions, the cadence,
the evaluation subset, the tr Σ subsample, the stop rule and the claimed effect sizes (all in the
params; the default profile's values are stated in the notebook).

Stages: ``grokking_transition_runs`` trains the grid and writes the telemetry and one row per run;
:func:`analyse` computes everything else from those tables with the ``report`` keys
(``transition``, ``early_warning``, ``power``, ``ensemble``), so changing them reruns only the notebook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from pydantic import Field

from gradience.config import Section
from gradience.studies.grokking_transition.early_warning import (
    EarlyWarningParams,
    PowerParams,
    early_warning_table,
    signal_table,
)
from gradience.studies.grokking_transition.ensemble import EnsembleParams, ensemble_analysis
from gradience.studies.grokking_transition.hypothesis_tests import (
    hit_fractions,
    hypothesis_tests,
    power_summary,
    power_table,
)
from gradience.studies.grokking_transition.runs import RunParams
from gradience.studies.notebook import step_curves
from gradience.studies.protocol import ReportParams as BaseReportParams
from gradience.studies.protocol import Tables
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.telemetry.signals import first_step_reaching, first_step_staying


class TransitionParams(Section):
    memorised_threshold: float = Field(default=0.99, gt=0, le=1)
    onset_threshold: float = Field(default=0.1, gt=0, le=1)
    grok_threshold: float = Field(default=0.95, gt=0, le=1)


class ReportParams(BaseReportParams):
    transition: TransitionParams = TransitionParams()
    early_warning: EarlyWarningParams = EarlyWarningParams()
    power: PowerParams = PowerParams()
    ensemble: EnsembleParams = EnsembleParams()


# ---------------------------------------------------------------------------------- transitions


def transition_table(telemetry: pd.DataFrame, runs: pd.DataFrame, tp: TransitionParams) -> pd.DataFrame:
    """Per run: t_mem, t* (onset), the 0.5 midpoint, the grok step, final accuracies, grokked."""
    model = telemetry[(telemetry["scope"] == MODEL_SCOPE) & telemetry["metric"].isin(["train_acc", "test_acc"])]
    rows = []
    for run_id, g in model.groupby("run", sort=False):
        w = g.pivot_table(index="step", columns="metric", values="value").sort_index()
        steps, test = w.index.to_numpy(), w["test_acc"].to_numpy()
        rows.append({"run": run_id, "t_mem": first_step_reaching(steps, w["train_acc"].to_numpy(),
                                                                 tp.memorised_threshold),
                     "t_onset": first_step_staying(steps, test, tp.onset_threshold),
                     "t_mid": first_step_staying(steps, test, 0.5),
                     "grok_step": first_step_staying(steps, test, tp.grok_threshold),
                     "final_train_acc": float(w["train_acc"].iloc[-1]),
                     "final_test_acc": float(test[-1])})
    out = runs.merge(pd.DataFrame(rows), on="run")
    out["grokked"] = out["grok_step"].notna()
    return out


UNIT_COLUMNS = ["run", "condition", "seed", "tested", "control", "grokked", "t_onset", "window_start", "window_end"]


def analysis_units(transitions: pd.DataFrame) -> pd.DataFrame:
    """What is analysed: one row per (run, tested condition) with its window [start, end).

    A run of a tested condition is analysed for its own condition over [t_mem, t*) (no window when
    it did not grok). A reference run is analysed once per tested condition, as its control, over
    the steps of that condition's grokking runs with the same seed (median t_mem and t*; all seeds
    when that seed has none), from its own memorisation on: same stage of training, same length.
    """
    tested = transitions[~transitions["reference"]]
    grok = tested[tested["grokked"] & tested["t_onset"].notna()]
    rows = [{"run": r.run, "condition": r.condition, "seed": r.seed, "tested": r.condition, "control": False,
             "grokked": bool(r.grokked), "t_onset": r.t_onset, "window_start": r.t_mem,
             "window_end": r.t_onset if r.grokked else math.nan} for r in tested.itertuples()]
    for r in transitions[transitions["reference"]].itertuples():
        for name in tested["condition"].unique():
            g = grok[grok["condition"] == name]
            same = g[g["seed"] == r.seed]
            src = same if len(same) else g
            start = max(r.t_mem, float(src["t_mem"].median())) if len(src) else math.nan
            end = float(src["t_onset"].median()) if len(src) else math.nan
            rows.append({"run": r.run, "condition": r.condition, "seed": r.seed, "tested": name, "control": True,
                         "grokked": bool(r.grokked), "t_onset": math.nan, "window_start": start, "window_end": end})
    return pd.DataFrame(rows, columns=UNIT_COLUMNS)


@dataclass
class Analysis:
    params: RunParams  # the runs' params, saved with the tables
    telemetry: pd.DataFrame
    model: pd.DataFrame  # model-scope metrics, one row per (run, step), with condition/seed/grokked
    transitions: pd.DataFrame  # one row per run: the run record, t_mem, t*, grok step
    units: pd.DataFrame  # one row per analysed (run, tested condition) and its window
    early_warning: pd.DataFrame
    signals: pd.DataFrame
    fractions: pd.DataFrame  # per unit and test: the fraction of its series that signal
    tests: pd.DataFrame  # per test × tested condition: the verdict rule
    power: pd.DataFrame  # per test × tested condition × effect size: power
    power_summary: pd.DataFrame
    # the ensemble indicators (:mod:`.ensemble`): the verdicts' measurements
    ensemble_tests: pd.DataFrame  # per ensemble test × tested condition: τ, Δτ, bootstrap p
    ensemble_power: pd.DataFrame  # per test × tested condition × slowing effect: power
    ensemble_level: pd.DataFrame  # per tested condition: tr Σ tested vs reference at matched steps
    ensemble_pairs: pd.DataFrame  # per pair: kept, or why dropped
    ensemble_curves: pd.DataFrame  # ensemble indicators against aligned time, for figures


def analyse(tables: Tables[RunParams], p: ReportParams, workers: int = 1) -> Analysis:
    """Transitions; the ensemble indicators and their power (the verdicts); the per-run analyses
    on the runs of ``runs.seeds`` only: analysis units, the early-warning statistics of every unit
    (over ``workers`` processes), the single-run hypothesis tests and their power."""
    tele = tables.telemetry
    transitions = transition_table(tele, tables.runs, p.transition)
    if "ensemble" not in transitions:  # tables written before ensemble conditions existed
        transitions["ensemble"] = False
    ens = ensemble_analysis(tele, transitions, p.ensemble, p.power.target, p.power.claimed_slowing,
                            p.ensemble.slowing_effects, tables.params.cadence_every)
    units = analysis_units(transitions[transitions["seed"].isin(tables.params.seeds)])
    ew_table, level = early_warning_table(tele, units, p.early_warning, workers, p.power)
    fractions = hit_fractions(ew_table)
    tests = hypothesis_tests(fractions, ew_table, p.early_warning)
    power = power_table(tests, level, p.early_warning, p.power)
    model = (tele[tele["scope"] == MODEL_SCOPE].pivot_table(index=["run", "step"], columns="metric", values="value")
             .reset_index().merge(transitions[["run", "condition", "seed", "grokked"]], on="run"))
    return Analysis(tables.params, tele, model, transitions, units, ew_table, signal_table(ew_table), fractions,
                    tests, power, power_summary(power, p.power.target), ens["tests"], ens["power"], ens["level"],
                    ens["pairs"], ens["curves"])


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean test accuracy and median tr Σ (gradient noise trace) per condition, against step."""
    return step_curves(a.model, "condition", {"test_acc": "mean", "grad_noise_trace": "median"})


def metrics(a: Analysis, p: ReportParams) -> dict:
    """metrics.json: per condition outcomes, transition steps and the lr·wd·steps clock; per test and
    tested condition the verdict rule and its power."""
    conditions = {}
    for name, g in a.transitions.groupby("condition", sort=False):
        grok = g[g["grokked"]]
        # the clock at the grok step, in the order grok_step·lr·wd (not decay_clock's lr·wd·steps,
        # which may round differently in the last bit)
        conditions[str(name)] = {
            "grokked_fraction": float(g["grokked"].mean()),
            "onset_fraction": float(g["t_onset"].notna().mean()),
            "t_mem_mean": float(g["t_mem"].mean()),
            "t_onset_mean": float(grok["t_onset"].mean()) if len(grok) else math.nan,
            "grok_step_mean": float(grok["grok_step"].mean()) if len(grok) else math.nan,
            "grok_clock_mean": float((grok["grok_step"] * grok["lr"] * grok["weight_decay"]).mean())
            if len(grok) else math.nan,
            "steps_run_mean": float(g["steps_run"].mean()),
            "final_test_acc_mean": float(g["final_test_acc"].mean()),
            "diverged_runs": float((g["outcome"] == "diverged").sum()),
        }
    ps_by = {(r.test, r.tested): r._asdict() for r in a.power_summary.itertuples()}
    tests: dict[str, dict] = {}
    for t in a.tests.itertuples():
        ps = ps_by.get((t.test, t.tested), {})
        tests.setdefault(t.test, {})[t.tested] = {
            k: getattr(t, k) for k in ("verdict", "hit_fraction", "control_fraction", "n_grok_runs",
                                       "n_control_runs", "p_mannwhitney", "n_points", "resid_lag1", "tau_grok",
                                       "tau_control")} | {k: ps.get(k, math.nan) for k in
                                                          ("power_at_claim", "mde_effect", "mde_tau")}
    ensemble: dict[str, dict] = {}
    for t in a.ensemble_tests.itertuples():
        pw = a.ensemble_power[(a.ensemble_power["test"] == t.test) & (a.ensemble_power["tested"] == t.tested)]
        at = pw[pw["claimed"]]
        ensemble.setdefault(t.test, {})[t.tested] = {
            k: float(getattr(t, k, math.nan)) for k in ("tau_tested", "tau_reference", "delta_tau", "p_value",
                                                        "n_pairs", "resid_lag1")} | {
            "power_at_claim": float(at["power"].iloc[0]) if len(at) else math.nan,
            "mde_effect": ensemble_detectable(pw, p.power.target)}
    level = {str(r["tested"]): {k: float(v) for k, v in r.items() if k not in ("tested", "metric")}
             for r in a.ensemble_level.to_dict("records")}
    return {"conditions": conditions, "tests": tests, "ensemble": ensemble, "ensemble_level": level}


def ensemble_detectable(power: pd.DataFrame, target: float) -> float:
    """The smallest slowing effect an ensemble test detects with power ≥ ``target`` (inf: none tried)."""
    ok = power[power["power"] >= target]
    return float(ok["effect"].min()) if len(ok) else math.inf
