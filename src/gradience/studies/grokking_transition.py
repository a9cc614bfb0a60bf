"""Protocol B of seed 001: dense telemetry around grokking, its early-warning statistics and their power.

Hypothesis 2 of the agenda: "grokking is preceded by diverging autocorrelation time in layer-wise
spectral metrics"; expectation 2: "increasing variance in gradients"; falsifier: "no detectable
precursors to phase transitions". Definitions (stated once, used by the notebook and the tests):

- Runs: mini-batch AdamW (``batch_size`` ≥ 1 is required: full-batch dynamics have almost no
  fluctuations to slow down). Telemetry every ``cadence_every`` steps (evenly spaced): train/test
  loss and accuracy on the first ``eval_examples`` examples of each split, the spectral metrics of
  every weight matrix, the mini-batch gradient norm and loss, and the probes of
  :mod:`gradience.telemetry.gradients` (per-matrix gradient norm, cosine with the gradient one
  cadence interval earlier, tr Σ of per-example gradients and B_simple on a fixed subsample). A run
  stops ``stop.hold_steps`` after its test accuracy stays ≥ ``stop.threshold`` (so grokking runs
  cost only what they need); a condition may cap its own steps (``steps``).
- Conditions: *tested* ones (expected to grok) and *reference* ones (``reference: true``, weight
  decay 0: the non-grokking controls). Every tested condition is tested on its own.
- Memorisation step t_mem: the first cadence step with train accuracy ≥ ``memorised_threshold``.
  Transition onset t*: the first cadence step from which test accuracy stays ≥ ``onset_threshold``
  (:func:`gradience.studies.grokking.grok_step`); grok step: the same with ``grok_threshold``.
- Analysis units (:func:`analysis_units`): a grokking run over [t_mem, t*); a reference run once
  per tested condition, over that condition's grokking window of the same seed (medians; all seeds
  when that seed has none), from its own memorisation on.
- Residual statistics (Dakos et al. 2012, :mod:`gradience.telemetry.signals`): each series in the
  window (log10 when strictly positive) is detrended with a Gaussian kernel; rolling variance,
  lag-1 autocorrelation and integrated autocorrelation time over ``window`` × its length; each
  indicator's trend is Kendall's τ against time, judged against ``n_surrogates`` surrogate residual
  series. Level statistic (the ``level_metrics``, tr Σ by default): Kendall τ of the log level
  against time, judged against surrogates of its linearly detrended series
  (:func:`gradience.telemetry.signals.trend_test`). A series *signals* when τ > 0 and p < ``alpha``.
  Retrospective: detrending uses the whole window, t* is known.
- Lead time and lead–lag (grokking units): the alarm is the first step from which the rolling
  indicator stays above mean + ``alarm_z`` sd of its first ``baseline_fraction``; the lag of
  largest |corr(Δx_t, Δacc_{t+k})| over t* ± ``lead_lag_half_window`` steps (k > 0: series first).
- Hypothesis verdict (:func:`hypothesis_verdict`) per test and tested condition: per unit, the
  fraction of its series that signal. *present*: mean over grokking runs ≥ ``min_hit_fraction``;
  *specific*: grokking runs' fractions exceed the controls' (one-sided Mann–Whitney U, p < ``alpha``).
- Power (:func:`power_table`): residual tests against critical slowing down injected into AR(1)
  noise of the median length and median residual lag-1 autocorrelation of the condition's grokking
  series (the coefficient covers ``claimed_slowing`` of its distance to 1 by t*); the level test
  against a rise of tr Σ by ``claimed_rise`` added to each grokking run's own fluctuations. The
  smallest detectable Kendall τ is the median τ at the smallest effect with power ≥ ``target``.
- Findings (:func:`findings`, ``reporting.judged``): budgets = grokking runs analysed (≥ 2),
  control runs with which Mann–Whitney can reach p < α (:func:`controls_needed`), median points
  before t* (≥ ``min_points``) and power at the claimed effect (≥ ``target``): "not reproduced" only
  when all are met.

Free choices the seed does not fix: lr, batch size, train fraction, the conditions, the cadence,
the evaluation subset, the tr Σ subsample, the stop rule and the claimed effect sizes (all in the
params; the default profile's values are stated in the notebook).

Stages: ``grokking_transition_runs`` trains the grid and writes the telemetry and one row per run;
:func:`analyse` computes everything else from those tables with the ``report`` keys
(``transition``, ``early_warning``, ``power``), so changing them reruns only the notebook.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator
from scipy import stats

from gradience.config import Section
from gradience.parallel import map_runs
from gradience.studies import base, grokking
from gradience.studies.grokking import build_model, grok_step
from gradience.tasks.modular import modular_split
from gradience.telemetry import signals
from gradience.telemetry.recorder import MODEL_SCOPE, Cadence, Recorder
from gradience.telemetry.spectral import SPECTRAL_METRICS
from gradience.training import TrainConfig, evaluate, train

INDICATORS = ("autocorrelation_time", "lag1_ac", "variance")
MODEL_METRICS = ("grad_norm", "grad_cosine", "grad_noise_scale", "grad_noise_trace", "batch_loss", "train_loss",
                 "test_loss", "weight_norm")
Group = Literal["spectral", "gradient", "loss"]
LEVEL = "level"  # the indicator name of the level-trend test


class TransitionParams(Section):
    memorised_threshold: float = Field(default=0.99, gt=0, le=1)
    onset_threshold: float = Field(default=0.1, gt=0, le=1)
    grok_threshold: float = Field(default=0.95, gt=0, le=1)


class GradientParams(Section):
    noise_examples: int = Field(default=256, ge=2, description="training examples for tr Σ and B_simple")
    chunk: int = Field(default=256, ge=1, description="per-example gradients computed at once")


class EarlyWarningParams(Section):
    spectral_metrics: list[str] = Field(
        default_factory=lambda: ["kappa", "stable_rank", "effective_rank", "spectral_norm", "nuclear_norm"],
        min_length=1)
    model_metrics: list[str] = Field(
        default_factory=lambda: ["grad_norm", "grad_cosine", "grad_noise_scale", "grad_noise_trace", "train_loss",
                                 "test_loss"])
    detrend: Literal["gaussian", "linear", "none"] = "gaussian"
    bandwidth: float = Field(default=0.2, gt=0, le=1, description="Gaussian σ as a fraction of the window")
    window: float = Field(default=0.5, gt=0, le=1, description="rolling window, fraction of the series")
    surrogate: Literal["phase", "shuffle"] = "phase"
    n_surrogates: int = Field(default=99, ge=19)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    min_points: int = Field(default=40, ge=10, description="shortest pre-transition series analysed")
    alarm_z: float = Field(default=2.0, gt=0)
    baseline_fraction: float = Field(default=0.25, gt=0, lt=1)
    min_hit_fraction: float = Field(default=0.5, gt=0, le=1)
    lead_lag_half_window: int = Field(default=500, ge=1, description="steps either side of t*")
    lead_lag_max: int = Field(default=20, ge=1, description="largest lag, in cadence points")
    level_metrics: list[str] = Field(default_factory=lambda: ["grad_noise_trace"],
                                     description="model-scope series whose level trend is tested")

    @field_validator("spectral_metrics")
    @classmethod
    def _spectral(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(SPECTRAL_METRICS))
        if unknown:
            raise ValueError(f"unknown spectral metrics {unknown}; allowed: {SPECTRAL_METRICS}")
        return v

    @field_validator("model_metrics", "level_metrics")
    @classmethod
    def _model(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(MODEL_METRICS))
        if unknown:
            raise ValueError(f"unknown model metrics {unknown}; allowed: {MODEL_METRICS}")
        return v


class PowerParams(Section):
    """What the tests could have detected: critical slowing down or a level rise of known size."""

    target: float = Field(default=0.8, gt=0, lt=1, description="power a negative verdict needs")
    claimed_slowing: float = Field(default=0.5, gt=0, lt=1, description=(
        "the claimed effect: the residuals' AR(1) coefficient covers this fraction of its distance to 1 by t*"))
    slowing_effects: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.5, 0.7, 0.9], min_length=1)
    claimed_rise: float = Field(default=2.0, gt=1, description="the claimed effect: tr Σ rises by this factor by t*")
    rises: list[float] = Field(default_factory=lambda: [1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0], min_length=1)
    n_sims: int = Field(default=400, ge=20, description="simulated series per effect size")

    @field_validator("slowing_effects")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 <= e < 1 for e in v):
            raise ValueError(f"slowing effects are fractions in [0, 1), got {v}")
        return v

    @field_validator("rises")
    @classmethod
    def _factors(cls, v: list[float]) -> list[float]:
        if any(r < 1 for r in v):
            raise ValueError(f"rises are factors ≥ 1, got {v}")
        return v


class TransitionCondition(grokking.Condition):
    reference: bool = Field(default=False, description="a non-grokking reference (control) for every tested condition")
    steps: int | None = Field(default=None, gt=0, description="this condition's step cap (default: runs.steps)")


class StopParams(Section):
    threshold: float = Field(default=0.95, gt=0, le=1)
    hold_steps: int = Field(default=300, ge=0, description="stop once test accuracy stayed ≥ threshold this long "
                                                            "(0: never stop early)")


class RunParams(grokking.ModularRunParams):
    conditions: list[TransitionCondition] = Field(min_length=1)
    gradients: GradientParams = GradientParams()
    eval_examples: int = Field(default=0, ge=0, description="examples of each split evaluated per point (0: all)")
    stop: StopParams = StopParams()

    @field_validator("batch_size")
    @classmethod
    def _mini_batch(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be ≥ 1: critical slowing down needs fluctuations, and full-batch (0) training "
                             "has almost none")
        return v

    @field_validator("conditions")
    @classmethod
    def _tested_and_reference(cls, v: list[TransitionCondition]) -> list[TransitionCondition]:
        if not any(c.reference for c in v) or all(c.reference for c in v):
            raise ValueError("need at least one tested condition and one reference condition (reference: true)")
        return v


class ReportParams(base.ReportParams):
    transition: TransitionParams = TransitionParams()
    early_warning: EarlyWarningParams = EarlyWarningParams()
    power: PowerParams = PowerParams()


DATA = ("modular",)
TABLES = ("telemetry",)


# ---------------------------------------------------------------------------------------- runs


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    return [base.Job(p, c.name, s, data_dir, spec=c) for c in p.conditions for s in p.seeds]


class GrokStop:
    """``train``'s ``stop``: true once test accuracy (on the first ``eval_examples`` test examples)
    has stayed ≥ ``threshold`` for ``hold_steps`` steps at the measured steps."""

    def __init__(self, model, x_test, y_test, sp: StopParams) -> None:
        self.model, self.x, self.y, self.sp = model, x_test, y_test, sp
        self.since: int | None = None

    def __call__(self, recorder, step: int) -> bool:
        if self.sp.hold_steps == 0:
            return False
        dev = next(self.model.parameters()).device
        _, acc = evaluate(self.model, self.x.to(dev), self.y.to(dev))
        if acc < self.sp.threshold:
            self.since = None
            return False
        self.since = step if self.since is None else self.since
        return step - self.since >= self.sp.hold_steps


def run_one(job: base.Job) -> base.RunOutput:
    """Train one (condition, seed), mini-batch, with dense telemetry and the gradient probes; a
    grokking run stops ``stop.hold_steps`` after it groks."""
    import torch

    from gradience.telemetry.gradients import GradientProbe, NoiseScaleProbe

    p, c = job.params, job.spec
    split = modular_split(Path(job.data_dir), p.modulus, c.op, p.train_fraction, job.seed,
                          equals_token=p.model.kind == "transformer")
    torch.manual_seed(job.seed)
    model = build_model(p)
    steps = c.steps or p.steps
    cfg = TrainConfig(steps=steps, lr=p.lr, weight_decay=c.weight_decay, batch_size=p.batch_size,
                      betas=p.betas, seed=job.seed, eval_max_examples=p.eval_examples)
    recorder = Recorder(job.run_id)
    probes = [GradientProbe(), NoiseScaleProbe(p.gradients.noise_examples, job.seed, p.gradients.chunk)]
    n_eval = p.eval_examples or split.x_test.shape[0]
    stop = GrokStop(model, split.x_test[:n_eval], split.y_test[:n_eval], p.stop)
    result = train(model, split, cfg, recorder=recorder, cadence=Cadence(p.cadence_every, steps),
                   probes=probes, device=p.device, stop=stop)
    record = {
        "role": c.role, "reference": c.reference, "op": c.op, "weight_decay": c.weight_decay,
        "task": f"modular_{c.op}_{p.modulus}", "model": p.model.model_dump_json(), "optimizer": "AdamW",
        "lr": p.lr, "betas": str(p.betas), "batch_size": p.batch_size, "train_fraction": p.train_fraction,
        "steps": steps, "steps_run": result.steps_run, "clock": p.lr * c.weight_decay * result.steps_run,
        "cadence_every": p.cadence_every, "noise_examples": p.gradients.noise_examples,
        "eval_examples": p.eval_examples, "outcome": result.outcome, "diverged_at": result.diverged_at,
    }
    return base.RunOutput({"telemetry": recorder.frame()}, record)


# ---------------------------------------------------------------------------------- transitions


def first_step_at_least(steps: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """The first step with ``values ≥ threshold``; NaN if none."""
    hit = np.flatnonzero(np.asarray(values) >= threshold)
    return float(steps[hit[0]]) if hit.size else math.nan


def transition_table(telemetry: pd.DataFrame, runs: pd.DataFrame, tp: TransitionParams) -> pd.DataFrame:
    """Per run: t_mem, t* (onset), the 0.5 midpoint, the grok step, final accuracies, grokked."""
    model = telemetry[(telemetry["scope"] == MODEL_SCOPE) & telemetry["metric"].isin(["train_acc", "test_acc"])]
    rows = []
    for run_id, g in model.groupby("run", sort=False):
        w = g.pivot_table(index="step", columns="metric", values="value").sort_index()
        steps, test = w.index.to_numpy(), w["test_acc"].to_numpy()
        rows.append({"run": run_id, "t_mem": first_step_at_least(steps, w["train_acc"].to_numpy(),
                                                                 tp.memorised_threshold),
                     "t_onset": grok_step(steps, test, tp.onset_threshold),
                     "t_mid": grok_step(steps, test, 0.5),
                     "grok_step": grok_step(steps, test, tp.grok_threshold),
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


# ------------------------------------------------------------------------------- early warning


def series_group(scope: str, metric: str) -> Group:
    if scope != MODEL_SCOPE and metric in SPECTRAL_METRICS:
        return "spectral"
    return "gradient" if metric.startswith("grad_") else "loss"


def select_series(telemetry: pd.DataFrame, ew: EarlyWarningParams) -> pd.DataFrame:
    """The rows of the analysed series: the chosen spectral metrics of every weight matrix, and
    the chosen metrics (residual and level) at scope ``model``."""
    spectral = (telemetry["scope"] != MODEL_SCOPE) & telemetry["metric"].isin(ew.spectral_metrics)
    model = (telemetry["scope"] == MODEL_SCOPE) & telemetry["metric"].isin([*ew.model_metrics, *ew.level_metrics])
    return telemetry[spectral | model]


def alarm_index(indicator: np.ndarray, baseline_fraction: float, z: float) -> int | None:
    """First index from which ``indicator`` stays above mean + z·sd of its first defined values."""
    defined = np.flatnonzero(np.isfinite(indicator))
    n_base = max(2, int(math.ceil(baseline_fraction * defined.size)))
    if defined.size < n_base + 1:
        return None
    base = indicator[defined[:n_base]]
    threshold = base.mean() + z * base.std(ddof=1)
    return signals.detect_transition(np.where(np.isfinite(indicator), indicator, -np.inf), threshold)


def surrogate_seed(*parts: object) -> int:
    """A seed that is stable across processes (Python's ``hash`` is salted)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def early_warning_one(steps: np.ndarray, values: np.ndarray, ew: EarlyWarningParams,
                      seed: int) -> list[dict]:
    """Kendall τ, surrogate p-value, indicator end/start ratio and lead time for each indicator
    of one pre-transition series (``steps`` evenly spaced, window end = ``steps[-1] + Δ``), with
    the residuals' lag-1 autocorrelation (the noise the power analysis simulates)."""
    x = signals.log_if_positive(values)
    summary = signals.early_warning_summary(
        x, None, window=ew.window, bandwidth=ew.bandwidth, method=ew.detrend, indicators=INDICATORS,
        n_surrogates=ew.n_surrogates, kind=ew.surrogate, seed=seed).set_index("indicator")
    resid = signals.detrend(x, ew.detrend, ew.bandwidth)
    resid_lag1 = signals.lag1_autocorrelation(resid)
    end = steps[-1] + (steps[-1] - steps[-2])
    rows = []
    for name in INDICATORS:
        w = int(summary.loc[name, "window"])
        ind = signals.INDICATORS[name](resid, w)
        defined = ind[np.isfinite(ind)]
        alarm = alarm_index(ind, ew.baseline_fraction, ew.alarm_z)
        rows.append({"indicator": name, "kendall_tau": float(summary.loc[name, "kendall_tau"]),
                     "p_value": float(summary.loc[name, "p_value"]),
                     "ratio": float(defined[-1] / defined[0]) if defined.size and defined[0] > 0 else math.nan,
                     "lead_steps": float(end - steps[alarm]) if alarm is not None else math.nan,
                     "n_points": int(x.size), "window_points": w, "resid_lag1": resid_lag1})
    return rows


def level_one(values: np.ndarray, ew: EarlyWarningParams, seed: int) -> dict:
    """The level-trend test of one series (log10 when positive): Kendall τ against time, its
    surrogate p-value (:func:`gradience.telemetry.signals.trend_test`) and the ratio of the mean
    level over the last to the first tenth of the window."""
    x = signals.log_if_positive(values)
    tau, p = signals.trend_test(x, ew.n_surrogates, ew.surrogate, seed)
    k = max(1, values.size // 10)
    first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
    return {"indicator": LEVEL, "kendall_tau": tau, "p_value": p, "ratio": last / first if first > 0 else math.nan,
            "lead_steps": math.nan, "n_points": int(x.size), "window_points": int(x.size),
            "resid_lag1": signals.lag1_autocorrelation(signals.detrend(x, "linear"))}


def level_power(values: np.ndarray, ew: EarlyWarningParams, pw: PowerParams, seed: int) -> pd.DataFrame:
    """Power of the level test on this series' own fluctuations (its linearly detrended log10,
    phase-randomised) against a rise by each factor of ``pw.rises`` over the window."""
    noise = signals.detrend(signals.log_if_positive(values), "linear")
    factors = sorted({*pw.rises, pw.claimed_rise})
    table = signals.trend_power(noise, [math.log10(f) for f in factors], n_sims=pw.n_sims, alpha=ew.alpha,
                                kind=ew.surrogate, seed=seed)
    return table.assign(effect=factors).drop(columns="rise")


def lead_lag_one(steps: np.ndarray, values: np.ndarray, acc: np.ndarray, t_onset: float,
                 ew: EarlyWarningParams) -> dict:
    """Best lag (in steps; > 0: the series moves first) of corr(Δx_t, Δacc_{t+k}) around t*."""
    keep = np.abs(steps - t_onset) <= ew.lead_lag_half_window
    dx, da = np.diff(signals.log_if_positive(values[keep])), np.diff(acc[keep])
    max_lag = min(ew.lead_lag_max, dx.size - 3)
    if max_lag < 1 or np.std(dx) == 0 or np.std(da) == 0:
        return {"xcorr_lag_steps": math.nan, "xcorr_r": math.nan}
    ll = signals.lead_lag(dx, da, max_lag)
    return {"xcorr_lag_steps": float(ll.best_lag * (steps[1] - steps[0])), "xcorr_r": ll.best_correlation}


def indicator_curves(telemetry: pd.DataFrame, units: pd.DataFrame, scope: str, metric: str,
                     ew: EarlyWarningParams) -> pd.DataFrame:
    """For figures: per unit, the prepared series, its residual and the rolling indicators over its
    window, tidy (``run, control, step, quantity, value``)."""
    frames = []
    sel = telemetry[(telemetry["scope"] == scope) & (telemetry["metric"] == metric)]
    for r in units.itertuples():
        g = sel[(sel["run"] == r.run) & (sel["step"] >= r.window_start) & (sel["step"] < r.window_end)]
        g = g.sort_values("step")
        if len(g) < ew.min_points or not np.all(np.isfinite(g["value"])):
            continue
        x = signals.log_if_positive(g["value"].to_numpy())
        resid = signals.detrend(x, ew.detrend, ew.bandwidth)
        w = signals.window_length(ew.window, x.size)
        curves = {"series": x, "residual": resid} | {n: signals.INDICATORS[n](resid, w) for n in INDICATORS}
        frames += [pd.DataFrame({"run": r.run, "control": bool(r.control), "step": g["step"].to_numpy(),
                                 "quantity": name, "value": v}) for name, v in curves.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["run", "control", "step", "quantity", "value"])


@dataclass(frozen=True)
class AnalysisJob:
    run: str
    tested: str
    control: bool
    grokked: bool
    window: tuple[float, float]
    t_onset: float
    series: pd.DataFrame  # this run's selected series: scope, metric, step, value
    acc: pd.Series  # test accuracy by step
    ew: EarlyWarningParams
    pw: PowerParams = PowerParams()


def analyse_run(job: AnalysisJob) -> tuple[list[dict], list[dict]]:
    """Early-warning rows (one per series × indicator, and the level test of the level metrics) of
    one unit, skipped series saying why; and, for a grokking unit, the level test's power rows."""
    start, end = job.window
    rows, power = [], []
    ew = job.ew
    for (scope, metric), g in job.series.groupby(["scope", "metric"], sort=True):
        g = g.sort_values("step")
        key = {"run": job.run, "tested": job.tested, "control": job.control, "grokked": job.grokked,
               "group": series_group(scope, metric), "scope": scope, "metric": metric}
        inside = g[(g["step"] >= start) & (g["step"] < end)]
        steps, values = inside["step"].to_numpy(), inside["value"].to_numpy()
        residual = scope != MODEL_SCOPE or metric in ew.model_metrics
        level = scope == MODEL_SCOPE and metric in ew.level_metrics
        names = [*(INDICATORS if residual else ()), *((LEVEL,) if level else ())]
        reason = ("no window" if not np.isfinite(start) or not np.isfinite(end) else
                  f"{steps.size} points < {ew.min_points}" if steps.size < ew.min_points else
                  "non-finite values" if not np.all(np.isfinite(values)) else
                  "constant" if np.ptp(values) == 0 else
                  "uneven steps" if np.ptp(np.diff(steps)) != 0 else "")
        if reason:
            rows += [key | {"indicator": name, "skipped": reason} for name in names]
            continue
        seed = surrogate_seed(job.run, job.tested, scope, metric)
        if residual:
            extra = {}
            if job.grokked and not job.control:
                allsteps, allvalues = g["step"].to_numpy(), g["value"].to_numpy()
                if np.all(np.isfinite(allvalues)):
                    extra = lead_lag_one(allsteps, allvalues, job.acc.reindex(allsteps).to_numpy(),
                                         job.t_onset, ew)
            rows += [key | r | extra | {"skipped": ""} for r in early_warning_one(steps, values, ew, seed)]
        if level:
            rows.append(key | level_one(values, ew, seed) | {"skipped": ""})
            if not job.control:
                power += (level_power(values, ew, job.pw, seed).assign(run=job.run, tested=job.tested, metric=metric)
                          .to_dict("records"))
    return rows, power


def early_warning_table(telemetry: pd.DataFrame, units: pd.DataFrame, ew: EarlyWarningParams,
                        workers: int = 1, pw: PowerParams | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All units' early-warning rows (see :func:`analyse_run`), over ``workers`` processes, and the
    level tests' power rows of the grokking units."""
    chosen = select_series(telemetry, ew)
    acc = telemetry[(telemetry["scope"] == MODEL_SCOPE) & (telemetry["metric"] == "test_acc")]
    tasks = [AnalysisJob(r.run, r.tested, bool(r.control), bool(r.grokked),
                         (float(r.window_start), float(r.window_end)), float(r.t_onset),
                         chosen.loc[chosen["run"] == r.run, ["scope", "metric", "step", "value"]],
                         acc[acc["run"] == r.run].set_index("step")["value"], ew, pw or PowerParams())
             for r in units.itertuples()]
    outs = map_runs(analyse_run, tasks, workers=workers, desc="early warnings")
    table = pd.DataFrame([row for rows, _ in outs for row in rows])
    table[[c for c in ("kendall_tau", "p_value", "ratio", "lead_steps", "resid_lag1", "n_points")
           if c not in table]] = math.nan  # all skipped
    table["signals"] = (table["kendall_tau"] > 0) & (table["p_value"] < ew.alpha)
    power = pd.DataFrame([row for _, rows in outs for row in rows],
                         columns=["effect", "power", "critical_tau", "median_tau", "run", "tested", "metric"])
    return table, power


def signal_table(ew_table: pd.DataFrame) -> pd.DataFrame:
    """Per tested condition, series and indicator: its grokking runs vs the controls (median τ,
    fraction signalling, median indicator end/start ratio, median lead time and cross-correlation lag)."""
    done = ew_table[(ew_table["skipped"] == "") & (ew_table["control"] | ew_table["grokked"])]
    keys = ["tested", "group", "scope", "metric", "indicator"]

    def agg(g: pd.DataFrame) -> pd.Series:
        grok, ctrl = g[~g["control"]], g[g["control"]]
        out = {"tau_grok": grok["kendall_tau"].median(), "signal_grok": grok["signals"].mean(),
               "ratio_grok": grok["ratio"].median(), "lead_steps_grok": grok["lead_steps"].median(),
               "n_grok": len(grok), "tau_control": ctrl["kendall_tau"].median(),
               "signal_control": ctrl["signals"].mean(), "ratio_control": ctrl["ratio"].median(),
               "n_control": len(ctrl)}
        if "xcorr_lag_steps" in g:
            out |= {"xcorr_lag_steps": grok["xcorr_lag_steps"].median(), "xcorr_r": grok["xcorr_r"].median()}
        return pd.Series(out)

    return done.groupby(keys, sort=True).apply(agg, include_groups=False).reset_index()


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


# ----------------------------------------------------------------------------------- analysis


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


def analyse(tables: base.Tables, p: ReportParams, workers: int = 1) -> Analysis:
    """Transitions, analysis units, the early-warning statistics of every unit (over ``workers``
    processes), the hypothesis tests per tested condition and their power."""
    tele = tables.telemetry
    transitions = transition_table(tele, tables.runs, p.transition)
    units = analysis_units(transitions)
    ew_table, level = early_warning_table(tele, units, p.early_warning, workers, p.power)
    fractions = hit_fractions(ew_table)
    tests = hypothesis_tests(fractions, ew_table, p.early_warning)
    power = power_table(tests, level, p.early_warning, p.power)
    model = (tele[tele["scope"] == MODEL_SCOPE].pivot_table(index=["run", "step"], columns="metric", values="value")
             .reset_index().merge(transitions[["run", "condition", "seed", "grokked"]], on="run"))
    return Analysis(tables.params, tele, model, transitions, units, ew_table, signal_table(ew_table), fractions,
                    tests, power, power_summary(power, p.power.target))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean test accuracy and median tr Σ (gradient noise trace) per condition, against step."""
    return base.step_curves(a.model, "condition", {"test_acc": "mean", "grad_noise_trace": "median"})


# ---------------------------------------------------------------------------- vs the seed


TEST_CLAIMS = {  # hypothesis test → claim id
    "h2_autocorrelation_time": "grokking_transition.h2_autocorrelation_time",
    "lag1_autocorrelation": "grokking_transition.lag1_autocorrelation",
    "gradient_variance": "grokking_transition.gradient_variance",
    "gradient_noise_level": "grokking_transition.gradient_noise_level",
}
HOLDS = {"supported": True, "not supported": False, "inconclusive": None}


def _claimed(test: str, pw: PowerParams) -> str:
    return (f"tr Σ ×{pw.claimed_rise:g} by t*" if TESTS[test][1] == LEVEL else
            f"AR(1) coefficient {pw.claimed_slowing:.0%} of the way to 1 by t*")


def _budgets(t, ps: dict, n_ctrl_needed: int, ew: EarlyWarningParams, pw: PowerParams):
    from gradience.reporting import Budget

    return [Budget("grokking runs analysed", t.n_grok_runs, 2),
            Budget(f"control runs (MWU can reach p < {ew.alpha:g})", t.n_control_runs, n_ctrl_needed),
            Budget("median points before t*", 0 if not np.isfinite(t.n_points) else t.n_points, ew.min_points),
            Budget(f"power at the claimed effect ({_claimed(t.test, pw)})",
                   0 if not np.isfinite(ps.get("power_at_claim", math.nan)) else ps["power_at_claim"], pw.target)]


def _measured(t, ps: dict) -> str:
    mde = ("no effect size tried reached the target power" if not np.isfinite(ps.get("mde_tau", math.nan))
           else f"smallest detectable τ {ps['mde_tau']:.2f} (effect {ps['mde_effect']:g})")
    return (f"{t.tested}: {t.verdict}; signalling in {t.hit_fraction:.0%} of series per grokking run "
            f"(n={t.n_grok_runs}) vs {t.control_fraction:.0%} in controls (n={t.n_control_runs}), MWU "
            f"p={t.p_mannwhitney:.3g}; median τ {t.tau_grok:.2f} vs {t.tau_control:.2f}; {mde}; power at the claim "
            f"{ps.get('power_at_claim', math.nan):.2f}")


def findings(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    """The *Findings vs the seed* rows: every test in every tested condition, judged with the
    budgets it needs (grokking runs, controls, points before t*, power at the claimed effect)."""
    from gradience.reporting import Budget, judged

    ew, pw = p.early_warning, p.power
    ps_by = {(r.test, r.tested): r._asdict() for r in a.power_summary.itertuples()}
    rows = []
    for t in a.tests.itertuples():
        ps = ps_by.get((t.test, t.tested), {})
        budgets = _budgets(t, ps, controls_needed(t.n_grok_runs, ew.alpha), ew, pw)
        rows.append(judged(TEST_CLAIMS[t.test], _measured(t, ps), HOLDS[t.verdict],
                           f"{t.why} (a series signals when τ > 0 and surrogate p < {ew.alpha:g})", budgets))
    spectral = a.tests[a.tests["group"] == "spectral"]
    supported = spectral[spectral["verdict"] == "supported"]
    holds = None if spectral.empty or (spectral["verdict"] == "inconclusive").all() else supported.empty
    powers = [ps_by.get((t.test, t.tested), {}).get("power_at_claim", math.nan) for t in spectral.itertuples()]
    weakest = float(np.nanmin(powers)) if np.isfinite(powers).any() else 0.0
    n_cond = int(spectral["tested"].nunique())
    budgets = []
    if holds:  # an absence needs conditions and the power to see a precursor; a precursor found needs neither
        budgets = [Budget("tested conditions with grokking runs", n_cond, 2),
                   Budget("least power at the claimed effect over spectral tests", weakest, pw.target)]
    rows.append(judged(
        "grokking_transition.diagnostic_not_predictive",
        f"spectral precursor supported in {len(supported)} of {len(spectral)} test × condition cells "
        f"({', '.join(sorted(set(supported['tested']))) or 'none'})",
        holds, "'not predictive' holds when no spectral early-warning test is supported in any grokking condition",
        budgets, absence=True))
    return rows


def metrics(a: Analysis, p: ReportParams) -> dict:
    """metrics.json: per condition outcomes, transition steps and the lr·wd·steps clock; per test and
    tested condition the verdict rule and its power."""
    conditions = {}
    for name, g in a.transitions.groupby("condition", sort=False):
        grok = g[g["grokked"]]
        conditions[str(name)] = {
            "grokked_fraction": float(g["grokked"].mean()),
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
    return {"conditions": conditions, "tests": tests}
