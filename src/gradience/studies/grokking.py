"""Parts I and V of seed 000: grokking on modular arithmetic, κ per matrix, κ_recovery, the monitoring rules.

Definitions (stated once, used by the notebook and the tests):

- grok step: the first cadence step from which test accuracy stays ≥ ``grok_threshold``.
- clock: lr·wd·steps (weight decay shrinks the weights by 1 − lr·wd per step). A claim about a
  weight-decay condition needs ``clock_needed`` (10) on it; a shorter run is "not comparable".
- κ: σ_max/σ_min of each weight matrix (embedding, hidden, readout), and its max over matrices
  (scope ``model``); every κ summary is given per matrix and for the max. κ is noisy where σ_min
  jitters, so it is read on a rolling median over ``smoothing_window`` cadence points:
  κ_peak = max, κ_final = last value, κ_recovery = κ_peak / κ_final — *undefined* (NaN, counted as
  "peak near end") when the peak lies in the last ``peak_end_fraction`` (10 %) of the run's steps.
- the seed's relative clock: its multiplication run grokked at 33.5k steps and it reads κ at 10k, so
  κ "at 10k" is read at 10/33.5 of the ``reference_condition``'s (multiplication wd 0.1) measured
  grok step — that seed's own, or the median over seeds when it did not grok. The growth rule's
  "first 5k steps" is 5/33.5 of the same step.
- monitoring rules (Part V), each a predictor of "will not grok": *growth*: κ(window end)/κ(0) >
  ``kappa_growth_alert``; *stuck*: κ_recovery < ``kappa_recovery_alert``, with "peak near end" read
  as κ_recovery = 1 (κ never came down). Scored at the seed's thresholds on every run, and at
  thresholds calibrated on ``calibration_seeds`` (max hit rate − false-alarm rate) on the other
  seeds: hits, false alarms and AUC.

Free choices (the seed does not fix them), with the measurement behind each:

- lr 1e-2 with AdamW (β 0.9, 0.98), no warm-up: a 10k-step run reaches clock 10 at wd 0.1;
  multiplication and addition at wd 0.1 grok near clock 5–6 at lr 1e-2 as at lr 3e-3.
- mini-batch 256: per run and step on one thread, 2.0 ms vs 3.7 ms (batch 512) and 19.6 ms (full
  batch); stacking 15 runs into one ``torch.func.vmap`` model measured 0.72× the batch-512 step
  (1.4× faster) but needs a second, stacked training loop (per-run weight decay, divergence,
  telemetry); it is not used: the grid already fits its budget with one run per core
  (``benchmarks/grokking_cost.py``, ``benchmarks/results/grokking_cost.json``).
- telemetry: one cadence point (evaluation on both splits + three SVDs) costs ≈ 20 ms ≈ 10 steps;
  every 100 steps plus 20 log-spaced points resolves the grok step to 100 steps (≈ 2 % of it) at
  ≈ 10 % overhead.
- width (embed 64, hidden 160), train fraction 0.4, p = 97, four seeds (0–1 calibrate, 2–3 score).
- per-condition run lengths: wd 0.1, 0.01 and 0: 10k steps; wd 1 and random labels 2k (clock 20);
  addition wd 0.03 12.5k: where its grok falls, so that its outcome can differ across seeds (at 11k
  no seed had grokked, test accuracy 0.72–0.90; at 12.5k seed 1 reached 0.985, seed 2 0.82).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from gradience.config import Section
from gradience.models.mlp import TokenPairMLP
from gradience.models.transformer import LastTokenClassifier, tiny_llama
from gradience.studies import base
from gradience.tasks.modular import MODULI, modular_split
from gradience.telemetry import signals
from gradience.telemetry.recorder import MODEL_SCOPE, Cadence, Recorder
from gradience.training import TrainConfig, train


class Condition(Section):
    name: str
    op: Literal["add", "sub", "mul", "div"]
    weight_decay: float = Field(ge=0)
    role: Literal["seed", "control"] = "control"
    steps: int = Field(default=0, ge=0, description="this condition's run length; 0: the study's steps")
    shuffle_labels: bool = Field(default=False, description="random labels: memorisable, never generalisable")

    def run_steps(self, default: int) -> int:
        return self.steps or default


class ModelParams(Section):
    kind: Literal["mlp", "transformer"] = "mlp"
    d_embed: int = Field(default=64, ge=1)
    d_hidden: int = Field(default=160, ge=1, description="MLP hidden width, or transformer MLP width")
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=4, ge=1)


class ModularRunParams(base.RunParams):
    """The runs keys of every modular-arithmetic study (this one and grokking_transition)."""

    modulus: int = 97
    train_fraction: float = Field(gt=0, lt=1)
    steps: int = Field(gt=0)
    lr: float = Field(gt=0)
    batch_size: int = Field(default=0, ge=0, description="0: full batch")
    betas: tuple[float, float] = (0.9, 0.98)
    model: ModelParams = ModelParams()
    conditions: list[Condition] = Field(min_length=1)
    cadence_every: int = Field(gt=0, description="steps between measurements")

    @field_validator("modulus")
    @classmethod
    def _shipped_modulus(cls, v: int) -> int:
        if v not in MODULI:
            raise ValueError(f"must be one of the moduli shipped in data/modular: {MODULI}")
        return v

    @field_validator("conditions")
    @classmethod
    def _unique_names(cls, v: list[Condition]) -> list[Condition]:
        base.unique_names([c.name for c in v], "condition names")
        return v


class RunParams(ModularRunParams):
    cadence_log_points: int = Field(default=0, ge=0)
    spectra_every: int = Field(default=0, ge=0)


class ReportParams(base.ReportParams):
    grok_threshold: float = Field(default=0.95, gt=0, le=1)
    smoothing_window: int = Field(default=5, ge=1)
    peak_end_fraction: float = Field(default=0.1, gt=0, lt=1, description=(
        "κ peaking within this last fraction of a run leaves κ_recovery undefined"))
    reference_condition: str = Field(default="mul_wd0.1", description=(
        "the condition whose grok step maps the seed's 33.5k steps (the relative clock)"))
    kappa_growth_alert: float = Field(default=50.0, gt=1, description="the seed's growth rule")
    kappa_recovery_alert: float = Field(default=2.0, gt=1, description="the seed's stuck rule")
    calibration_seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1, description=(
        "seeds the alert thresholds are chosen on; the other seeds score them"))
    clock_needed: float = Field(default=10.0, gt=0, description="lr·wd·steps a weight-decay claim needs")
    post_grok_needed: float = Field(default=0.5, ge=0, description=(
        "steps past the grok step, as a fraction of it, that a κ-recovery claim needs"))


DATA = ("modular",)
TABLES = ("telemetry", "spectra")


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    return [base.Job(p, c.name, s, data_dir, spec=c) for c in p.conditions for s in p.seeds]


def build_model(p: RunParams):
    m = p.model
    if m.kind == "mlp":
        return TokenPairMLP(p.modulus, p.modulus, m.d_embed, m.d_hidden)
    lm = tiny_llama(p.modulus + 1, m.d_embed, m.n_layers, m.n_heads, m.d_hidden, max_len=3)
    return LastTokenClassifier(lm, p.modulus)


def run_one(job: base.Job) -> base.RunOutput:
    """Train one (condition, seed): its telemetry, singular-value snapshots and run record."""
    import torch

    p, c = job.params, job.spec
    split = modular_split(Path(job.data_dir), p.modulus, c.op, p.train_fraction, job.seed,
                          equals_token=p.model.kind == "transformer", shuffle_labels=c.shuffle_labels)
    torch.manual_seed(job.seed)
    model = build_model(p)
    steps = c.run_steps(p.steps)
    cfg = TrainConfig(steps=steps, lr=p.lr, weight_decay=c.weight_decay, batch_size=p.batch_size,
                      betas=p.betas, seed=job.seed)
    recorder = Recorder(job.run_id)
    cadence = Cadence(p.cadence_every, steps, p.cadence_log_points)
    result = train(model, split, cfg, recorder=recorder, cadence=cadence, spectra_every=p.spectra_every,
                   device=p.device)
    record = {
        "role": c.role, "op": c.op, "weight_decay": c.weight_decay,
        "task": f"modular_{c.op}_{p.modulus}", "model": p.model.model_dump_json(),
        "optimizer": "AdamW", "lr": p.lr, "betas": str(p.betas), "batch_size": p.batch_size,
        "train_fraction": p.train_fraction, "steps": steps, "shuffle_labels": c.shuffle_labels,
        "clock": p.lr * c.weight_decay * steps, "outcome": result.outcome,
        "diverged_at": result.diverged_at,
    }
    return base.RunOutput({"telemetry": recorder.frame(), "spectra": recorder.spectra_frame()}, record)


def grok_step(steps: np.ndarray, test_acc: np.ndarray, threshold: float) -> float:
    """First step from which ``test_acc`` stays ≥ ``threshold``; ``nan`` if it never does."""
    i = signals.detect_transition(test_acc, threshold)
    return math.nan if i is None else float(steps[i])


def value_at(steps: np.ndarray, values: np.ndarray, step: float) -> float:
    """The value at the last cadence step ≤ ``step``."""
    i = np.searchsorted(steps, step, side="right") - 1
    return float(values[max(i, 0)])


def kappa_summary(steps: np.ndarray, kappa: np.ndarray, p: ReportParams, probe_step: float,
                  growth_step: float) -> dict[str, float]:
    """κ peak, final, recovery, the value at ``probe_step`` and the growth κ(``growth_step``)/κ(0),
    all on the rolling median of ``kappa``. κ_recovery is ``nan`` (``peak_near_end``) when the
    smoothed peak lies in the last ``peak_end_fraction`` of the run: κ has not come down, so
    κ_peak / κ_final ≈ 1 would say nothing about recovery."""
    smooth = pd.Series(kappa).rolling(p.smoothing_window, min_periods=1).median().to_numpy()
    k = int(np.argmax(smooth))
    peak, final, peak_step = float(smooth[k]), float(smooth[-1]), float(steps[k])
    near_end = peak_step >= (1 - p.peak_end_fraction) * float(steps[-1])
    def at(step: float) -> float:
        return value_at(steps, smooth, step) if np.isfinite(step) else math.nan

    return {
        "kappa_probe": at(probe_step),
        "kappa_peak": peak,
        "kappa_peak_step": peak_step,
        "kappa_final": final,
        "peak_near_end": near_end,
        "kappa_recovery": math.nan if near_end else peak / final,
        "kappa_growth": at(growth_step) / float(smooth[0]),
    }


def seed_clock(grok_steps: pd.Series, seeds: pd.Series) -> pd.Series:
    """Per seed, the reference condition's grok step that stands for the seed's 33.5k steps: that
    seed's own when it grokked, else the median over the seeds that did (``nan`` if none did)."""
    own = dict(zip(seeds, grok_steps, strict=True))
    median = float(np.nanmedian(grok_steps)) if np.isfinite(grok_steps).any() else math.nan
    return pd.Series({s: own[s] if np.isfinite(own[s]) else median for s in own}, name="reference_grok_step")


def summarise_runs(telemetry: pd.DataFrame, runs: pd.DataFrame, p: ReportParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run (outcome, grok step, clock, model κ summary, alert scores) and one row per
    (run, matrix) with that matrix's κ summary, on the seed's relative clock."""
    tele = telemetry[telemetry["metric"].isin(["test_acc", "train_acc", "kappa", "effective_rank"])]
    wide = {run: g.pivot_table(index="step", columns=["scope", "metric"], values="value").sort_index()
            for run, g in tele.groupby("run", sort=False)}
    outcome = []
    for run, w in wide.items():
        steps = w.index.to_numpy()
        gs = grok_step(steps, w[(MODEL_SCOPE, "test_acc")].to_numpy(), p.grok_threshold)
        outcome.append({"run": run, "grok_step": gs, "grokked": not math.isnan(gs),
                        "final_train_acc": float(w[(MODEL_SCOPE, "train_acc")].iloc[-1]),
                        "final_test_acc": float(w[(MODEL_SCOPE, "test_acc")].iloc[-1]),
                        "effective_rank_start": float(w[(MODEL_SCOPE, "effective_rank")].iloc[0]),
                        "effective_rank_final": float(w[(MODEL_SCOPE, "effective_rank")].iloc[-1])})
    out = runs.merge(pd.DataFrame(outcome), on="run")
    out["clock_at_grok"] = out["lr"] * out["weight_decay"] * out["grok_step"]
    out["post_grok"] = (out["steps"] - out["grok_step"]) / out["grok_step"].clip(lower=1)
    ref = out[out["condition"] == p.reference_condition]
    clock = seed_clock(ref["grok_step"], ref["seed"]) if len(ref) else pd.Series(dtype=float)
    out["reference_grok_step"] = out["seed"].map(clock).astype(float)
    out["probe_step"] = SEED_PROBE_STEP / SEED_GROK_STEP * out["reference_grok_step"]
    out["growth_step"] = SEED_GROWTH_STEPS / SEED_GROK_STEP * out["reference_grok_step"]
    per_matrix = []
    for _, r in out.iterrows():
        w = wide[r["run"]]
        for scope in [c for c in w.columns.get_level_values(0).unique()]:
            if (scope, "kappa") not in w:
                continue
            k = w[(scope, "kappa")].dropna()
            ks = kappa_summary(k.index.to_numpy(), k.to_numpy(), p, r["probe_step"], r["growth_step"])
            per_matrix.append({"run": r["run"], "condition": r["condition"], "seed": r["seed"], "scope": scope,
                               "grokked": r["grokked"], **ks})
    kappa = pd.DataFrame(per_matrix)
    out = out.merge(kappa[kappa["scope"] == MODEL_SCOPE].drop(columns=["condition", "seed", "scope", "grokked"]),
                    on="run")
    # the stuck rule's score: κ_recovery, with "peak near end" read as no recovery at all (1.0)
    out["recovery_score"] = out["kappa_recovery"].fillna(1.0)
    out["alert_growth"] = out["kappa_growth"] > p.kappa_growth_alert
    out["alert_stuck"] = out["recovery_score"] < p.kappa_recovery_alert
    return out, kappa


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties ½ (Mann–Whitney); ``nan`` if a class is empty."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return math.nan
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


RULES = {  # rule → (score column, sign): the alert fires when sign·score > sign·threshold
    "alert_growth": ("kappa_growth", 1.0),
    "alert_stuck": ("recovery_score", -1.0),
}


def confusion(alert: pd.Series, failed: pd.Series) -> dict[str, int]:
    return {"hits": int((alert & failed).sum()), "misses": int((~alert & failed).sum()),
            "false_alarms": int((alert & ~failed).sum()), "correct_rejections": int((~alert & ~failed).sum())}


def calibrate(score: np.ndarray, failed: np.ndarray, sign: float) -> float:
    """The threshold that maximises hit rate − false-alarm rate (Youden's J) on these runs; candidate
    cuts are midpoints between sorted distinct scores. ``nan`` without both outcomes."""
    s = sign * score
    if failed.all() or not failed.any():
        return math.nan
    u = np.unique(s)
    cuts = (u[1:] + u[:-1]) / 2 if len(u) > 1 else u
    j = [(s[failed] > c).mean() - (s[~failed] > c).mean() for c in cuts]
    return float(sign * cuts[int(np.argmax(j))])


def score_alerts(summary: pd.DataFrame, p: ReportParams) -> pd.DataFrame:
    """Each rule as a predictor of "will not grok": the seed's threshold on every run; a threshold
    calibrated on ``calibration_seeds`` and scored (hits, false alarms, AUC) on the other seeds."""
    seed_thresholds = {"alert_growth": p.kappa_growth_alert, "alert_stuck": p.kappa_recovery_alert}
    cal = summary["seed"].isin(p.calibration_seeds)
    held = summary[~cal]
    rows = []
    for rule, (col, sign) in RULES.items():
        failed = ~summary["grokked"]
        thr = calibrate(summary.loc[cal, col].to_numpy(float), failed[cal].to_numpy(), sign)
        fires = (sign * held[col] > sign * thr) if np.isfinite(thr) else pd.Series(False, index=held.index)
        rows.append({"rule": rule, "seed_threshold": seed_thresholds[rule],
                     **{f"seed_{k}": v for k, v in confusion(summary[rule], failed).items()},
                     "calibrated_threshold": thr, "calibration_runs": int(cal.sum()), "held_out_runs": len(held),
                     **{f"held_out_{k}": v for k, v in confusion(fires, ~held["grokked"]).items()},
                     "held_out_auc": auc(sign * held[col].to_numpy(float), ~held["grokked"].to_numpy())})
    return pd.DataFrame(rows)


@dataclass
class Analysis:
    params: RunParams
    telemetry: pd.DataFrame
    model: pd.DataFrame  # model-scope metrics, one row per (run, step), with condition/seed/grokked/clock
    summary: pd.DataFrame
    kappa: pd.DataFrame  # κ summary per (run, matrix), model scope included
    alerts: pd.DataFrame


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    """Grok steps, κ summaries per matrix on the seed's relative clock, and the alerts scored."""
    summary, kappa = summarise_runs(tables.telemetry, tables.runs, p)
    tele = tables.telemetry
    model = (tele[tele.scope == MODEL_SCOPE].pivot_table(index=["run", "step"], columns="metric", values="value")
             .reset_index().merge(summary[["run", "condition", "seed", "grokked"]], on="run"))
    rate = summary.set_index("run").eval("lr * weight_decay")
    model["clock"] = model["run"].map(rate) * model["step"]
    return Analysis(tables.params, tele, model, summary, kappa, score_alerts(summary, p))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean test accuracy and median model κ per condition, against step."""
    return base.step_curves(a.model, "condition", {"test_acc": "mean", "kappa": "median"})


SEED_GROK_STEP = 33_500  # the seed's multiplication run grokked at 33.5k steps
SEED_PROBE_STEP = 10_000  # its κ comparison step
SEED_GROWTH_STEPS = 5_000  # its growth rule's window ("first 5k steps")
SEED_OUTCOMES = {  # condition → (claim id, grokked in the seed)
    "mul_wd0.1": ("grokking.mul_wd0.1_groks", True),
    "add_wd0.01": ("grokking.add_wd0.01_memorises", False),
    "add_wd0.1": ("grokking.add_wd0.1_memorises", False),
}


def _median(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.median()) if len(x) else math.nan


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per condition: fraction grokked, grok step and clock, and per matrix the medians of the κ
    summary with the count of runs whose κ peaked near the end; and the alert scores."""
    out = {}
    for name, g in a.summary.groupby("condition", sort=False):
        k = a.kappa[a.kappa["condition"] == name]
        out[str(name)] = {
            "grokked_fraction": float(g["grokked"].mean()),
            "grok_step_mean": float(g["grok_step"].mean()) if g["grokked"].any() else math.nan,
            "clock_reached": float(g["clock"].max()),
            "clock_at_grok_mean": float(g["clock_at_grok"].mean()) if g["grokked"].any() else math.nan,
            "final_test_acc_mean": float(g["final_test_acc"].mean()),
            "diverged_runs": float((g["outcome"] == "diverged").sum()),
            "kappa": {str(scope): {"probe_median": _median(m["kappa_probe"]), "peak_median": _median(m["kappa_peak"]),
                                   "final_median": _median(m["kappa_final"]),
                                   "recovery_median": _median(m["kappa_recovery"]),
                                   "peak_near_end_runs": int(m["peak_near_end"].sum())}
                      for scope, m in k.groupby("scope")},
        }
    return {"conditions": out, "alerts": a.alerts.set_index("rule").to_dict(orient="index"),
            "reference_grok_step_median": _median(a.summary["reference_grok_step"])}


def _runs(summary: pd.DataFrame, condition: str) -> pd.DataFrame:
    return summary[summary["condition"] == condition]


def _clock_budgets(g: pd.DataFrame, p: ReportParams, seeds_needed: int = 3) -> list:
    from gradience.reporting import Budget

    return [Budget("lr·wd·steps", float(g["clock"].min()), p.clock_needed),
            Budget("seeds", g["seed"].nunique(), seeds_needed)]


def findings(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    """The *Findings vs the seed* rows; every verdict through :func:`gradience.reporting.judged`."""
    from gradience.reporting import Budget, finding, judged, mean_spread

    summary, kappa, rows = a.summary, a.kappa, []
    for name, (claim, seed_grokked) in SEED_OUTCOMES.items():
        g = _runs(summary, name)
        if g.empty:
            rows.append(finding(claim, "condition not run", "not comparable",
                                "the condition is absent from params: no budget to state"))
            continue
        n_grok, n = int(g["grokked"].sum()), len(g)
        measured = f"{n_grok}/{n} grokked by lr·wd·steps {g['clock'].min():.3g}" + (
            f", at step {mean_spread(g['grok_step'])} (clock {mean_spread(g['clock_at_grok'])})" if n_grok else "")
        holds = (n_grok == n) if seed_grokked else (n_grok == 0)
        why = f"{n} seeds, lr {g['lr'].iloc[0]:g}, {int(g['steps'].iloc[0]):,} steps"
        rows.append(judged(claim, measured, holds, why, _clock_budgets(g, p), absence=not seed_grokked))

    ref, add = _runs(summary, p.reference_condition), _runs(summary, "add_wd0.01")
    if len(ref) and len(add):
        km = kappa[kappa["scope"] != MODEL_SCOPE]
        pair = (kappa[kappa["condition"] == "add_wd0.01"].merge(
            kappa[kappa["condition"] == p.reference_condition], on=["seed", "scope"], suffixes=("_add", "_mul")))
        pair["ratio"] = pair["kappa_probe_add"] / pair["kappa_probe_mul"]
        model_ratio = pair[pair["scope"] == MODEL_SCOPE]["ratio"]
        per = "; ".join(f"{s} {mean_spread(g['ratio'])}" for s, g in pair[pair["scope"].isin(km["scope"])]
                        .groupby("scope"))
        probe = mean_spread(add["probe_step"], "{:,.0f}")
        rows.append(judged(
            "grokking.kappa_10k_ordering",
            f"κ_add/κ_mul at step {probe} (10k/33.5k of the multiplication grok step): model (max) "
            f"{mean_spread(model_ratio)}; per matrix: {per}",
            bool((model_ratio > 1).all()) if len(model_ratio) else None,
            "ordering of the max-over-matrices κ in every paired seed",
            [Budget("seeds whose multiplication run grokked (sets the relative clock)", int(ref["grokked"].sum()), 1),
             Budget("paired seeds", len(model_ratio), 3)]))

    grokked = summary[summary["grokked"]]
    defined = summary[~summary["peak_near_end"]]
    failed_full = summary[~summary["grokked"] & ((summary["clock"] >= p.clock_needed) | summary["shuffle_labels"])]
    stuck = a.alerts.set_index("rule").loc["alert_stuck"]
    rows.append(judged(
        "grokking.low_recovery_no_grok",
        f"seed rule (κ_recovery < {p.kappa_recovery_alert:g}, 'peak near end' counted as < 2): "
        f"{int(stuck['seed_hits'])} hits, {int(stuck['seed_false_alarms'])} false alarms over {len(summary)} runs; "
        f"κ peaked in the last {p.peak_end_fraction:.0%} in {int(summary['peak_near_end'].sum())} runs; "
        f"held out: threshold {stuck['calibrated_threshold']:.3g} → {int(stuck['held_out_hits'])} hits, "
        f"{int(stuck['held_out_false_alarms'])} false alarms, AUC {stuck['held_out_auc']:.2f}",
        None if not len(summary) else bool(stuck["seed_false_alarms"] == 0 and stuck["seed_hits"] > 0),
        "a strong negative signal: alerts and no false alarms (a run too short to grok agrees vacuously)",
        [Budget("runs with κ_recovery defined (κ peaked before the end)", len(defined), 3),
         Budget("non-grokking runs at full clock or random labels", len(failed_full), 3)], absence=True))

    followed = grokked[grokked["post_grok"] >= p.post_grok_needed]  # runs long enough past their grok
    g_def = followed[~followed["peak_near_end"]]
    rows.append(judged(
        "grokking.recovery_necessary",
        f"grokked runs: {len(grokked)}, {len(followed)} followed ≥ {p.post_grok_needed:g}× their grok step; "
        f"of these κ_recovery defined in {len(g_def)} "
        f"({mean_spread(g_def['kappa_recovery'])}), {int((g_def['kappa_recovery'] < p.kappa_recovery_alert).sum())} "
        f"below {p.kappa_recovery_alert:g}; {len(followed) - len(g_def)} peaked in the last {p.peak_end_fraction:.0%}",
        bool((g_def["kappa_recovery"] >= p.kappa_recovery_alert).all()) if len(g_def) else None,
        "every grokking run with a defined κ_recovery must clear the threshold",
        [Budget(f"grokked runs followed ≥ {p.post_grok_needed:g}× their grok step", len(followed), 3),
         Budget("of these, runs with κ_recovery defined", len(g_def), 3)]))

    strong = summary[(summary["weight_decay"] >= 1.0) & ~summary["shuffle_labels"]]
    none = summary[summary["weight_decay"] == 0.0]
    rand = summary[summary["shuffle_labels"]]
    if len(strong) and len(none):
        slowest = float(summary.loc[summary["weight_decay"] >= 0.1, "grok_step"].max())
        slowest = slowest if np.isfinite(slowest) else math.inf
        rows.append(judged(
            "grokking.weight_decay_causal",
            f"wd 1: {int(strong['grokked'].sum())}/{len(strong)} grokked; wd 0: {int(none['grokked'].sum())}/{len(none)}; "
            f"random labels at wd 1: {int(rand['grokked'].sum())}/{len(rand)} (test acc "
            f"{mean_spread(rand['final_test_acc'])})",
            bool(strong["grokked"].all() and not none["grokked"].any()),
            "wd 1 must grok and wd 0 must not; random labels show weight decay alone cannot make a run generalise",
            [Budget("wd 1 runs", len(strong), 3), Budget("wd 0 runs", len(none), 3),
             Budget("wd 0 steps ÷ slowest grok step at wd ≥ 0.1", float(none["steps"].min()) / slowest, 1.0),
             Budget("random-label runs", len(rand), 1)]))

    growth = a.alerts.set_index("rule").loc["alert_growth"]
    held = summary[~summary["seed"].isin(p.calibration_seeds)]
    rows.append(judged(
        "grokking.kappa_growth_alert",
        f"κ growth by step {mean_spread(summary['growth_step'], '{:,.0f}')} (5k/33.5k of the multiplication grok "
        f"step): {mean_spread(summary['kappa_growth'])}; seed rule (> {p.kappa_growth_alert:g}×): "
        f"{int(growth['seed_hits'])} hits, {int(growth['seed_false_alarms'])} false alarms; held out: threshold "
        f"{growth['calibrated_threshold']:.3g} → {int(growth['held_out_hits'])} hits, "
        f"{int(growth['held_out_false_alarms'])} false alarms, AUC {growth['held_out_auc']:.2f}",
        None if not np.isfinite(growth["held_out_auc"]) else bool(growth["held_out_auc"] >= 0.8),
        f"held-out AUC ≥ 0.8 (threshold calibrated on seeds {p.calibration_seeds})",
        [Budget("held-out runs that did not grok", int((~held["grokked"]).sum()), 3),
         Budget("held-out runs that grokked", int(held["grokked"].sum()), 3)]))

    if len(grokked):
        drop = followed["effective_rank_final"] < followed["effective_rank_start"]
        rows.append(judged(
            "grokking.compression",
            f"{int(drop.sum())}/{len(followed)} grokking runs followed ≥ {p.post_grok_needed:g}× their grok step end "
            f"below their initial mean effective rank ({mean_spread(followed['effective_rank_start'])} → "
            f"{mean_spread(followed['effective_rank_final'])})",
            bool(drop.all()) if len(followed) else None,
            "mean effective rank over weight matrices, start vs end of the run",
            [Budget(f"grokked runs followed ≥ {p.post_grok_needed:g}× their grok step", len(followed), 3)]))
    return rows
