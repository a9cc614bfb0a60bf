"""Part I of seed 000: grokking on modular arithmetic, κ trajectories, κ_recovery, monitoring rules.

Definitions (stated once, used by the notebook and the tests):

- grok step: the first cadence step from which test accuracy stays ≥ ``grok_threshold``.
- κ (model): the largest condition number over the weight matrices (see
  :func:`gradience.training.record_weight_spectra`); per-layer κ is kept in the telemetry.
- κ is noisy where σ_min jitters, so peak and final use a rolling median over
  ``smoothing_window`` cadence points: κ_peak = max of the smoothed curve, κ_final = its last
  value, κ_recovery = κ_peak / κ_final.
- κ at the seed's 10k step: the seed does not state its run length; its latest event is a grok at
  33.5k steps, so we take a 50k-step budget and read κ at ``kappa_probe_fraction`` (10k/50k = 0.2)
  of this profile's budget. The same rescaling maps the "first 5k steps" of the monitoring rule to
  ``growth_window_fraction`` (0.1) of the budget.
- Monitoring rules (seed 000, Part V): *growth*: κ(window end) / κ(0) > ``kappa_growth_alert``
  ("raise weight decay"); *stuck*: κ_recovery < ``kappa_recovery_alert`` ("may be stuck").
  Both alerts predict "will not grok" and are scored against the outcome.
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
    kappa_probe_fraction: float = Field(default=0.2, gt=0, le=1)
    growth_window_fraction: float = Field(default=0.1, gt=0, le=1)
    kappa_growth_alert: float = Field(default=50.0, gt=1)
    kappa_recovery_alert: float = Field(default=2.0, gt=1)


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
                          equals_token=p.model.kind == "transformer")
    torch.manual_seed(job.seed)
    model = build_model(p)
    cfg = TrainConfig(steps=p.steps, lr=p.lr, weight_decay=c.weight_decay, batch_size=p.batch_size,
                      betas=p.betas, seed=job.seed)
    recorder = Recorder(job.run_id)
    cadence = Cadence(p.cadence_every, p.steps, p.cadence_log_points)
    result = train(model, split, cfg, recorder=recorder, cadence=cadence, spectra_every=p.spectra_every,
                   device=p.device)
    record = {
        "role": c.role, "op": c.op, "weight_decay": c.weight_decay,
        "task": f"modular_{c.op}_{p.modulus}", "model": p.model.model_dump_json(),
        "optimizer": "AdamW", "lr": p.lr, "betas": str(p.betas), "batch_size": p.batch_size,
        "train_fraction": p.train_fraction, "steps": p.steps, "outcome": result.outcome,
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


def kappa_summary(steps: np.ndarray, kappa: np.ndarray, p: ReportParams, total_steps: int) -> dict[str, float]:
    smooth = pd.Series(kappa).rolling(p.smoothing_window, min_periods=1).median().to_numpy()
    peak, final = float(np.max(smooth)), float(smooth[-1])
    growth_end = value_at(steps, smooth, p.growth_window_fraction * total_steps)
    return {
        "kappa_probe": value_at(steps, smooth, p.kappa_probe_fraction * total_steps),
        "kappa_peak": peak,
        "kappa_peak_step": float(steps[int(np.argmax(smooth))]),
        "kappa_final": final,
        "kappa_recovery": peak / final,
        "kappa_growth": growth_end / float(smooth[0]),
    }


def summarise_runs(telemetry: pd.DataFrame, runs: pd.DataFrame, p: ReportParams, total_steps: int) -> pd.DataFrame:
    """One row per run: outcome, grok step, κ summary and the monitoring rules' alerts."""
    model = telemetry[telemetry["scope"] == MODEL_SCOPE]
    rows = []
    for run_id, g in model.groupby("run", sort=False):
        w = g.pivot_table(index="step", columns="metric", values="value").sort_index()
        steps = w.index.to_numpy()
        gs = grok_step(steps, w["test_acc"].to_numpy(), p.grok_threshold)
        ks = kappa_summary(steps, w["kappa"].to_numpy(), p, total_steps)
        rows.append({"run": run_id, "grok_step": gs, "grokked": not math.isnan(gs),
                     "final_train_acc": float(w["train_acc"].iloc[-1]),
                     "final_test_acc": float(w["test_acc"].iloc[-1]),
                     "effective_rank_start": float(w["effective_rank"].iloc[0]),
                     "effective_rank_final": float(w["effective_rank"].iloc[-1]), **ks})
    out = runs.merge(pd.DataFrame(rows), on="run")
    out["alert_growth"] = out["kappa_growth"] > p.kappa_growth_alert
    out["alert_stuck"] = out["kappa_recovery"] < p.kappa_recovery_alert
    return out


def score_alerts(summary: pd.DataFrame) -> pd.DataFrame:
    """Each rule as a predictor of "will not grok": hits, misses, false alarms, correct rejections."""
    rows = []
    for rule in ("alert_growth", "alert_stuck"):
        alert, failed = summary[rule], ~summary["grokked"]
        rows.append({"rule": rule, "hits": int((alert & failed).sum()), "misses": int((~alert & failed).sum()),
                     "false_alarms": int((alert & ~failed).sum()),
                     "correct_rejections": int((~alert & ~failed).sum())})
    return pd.DataFrame(rows)


@dataclass
class Analysis:
    params: RunParams
    telemetry: pd.DataFrame
    model: pd.DataFrame  # model-scope metrics, one row per (run, step), with condition/seed/grokked
    summary: pd.DataFrame
    alerts: pd.DataFrame


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    """Grok steps, κ summaries and the monitoring rules' alerts, per run."""
    summary = summarise_runs(tables.telemetry, tables.runs, p, tables.params.steps)
    tele = tables.telemetry
    model = (tele[tele.scope == MODEL_SCOPE].pivot_table(index=["run", "step"], columns="metric", values="value")
             .reset_index().merge(summary[["run", "condition", "seed", "grokked"]], on="run"))
    return Analysis(tables.params, tele, model, summary, score_alerts(summary))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean test accuracy and median model κ per condition, against step."""
    return base.step_curves(a.model, "condition", {"test_acc": "mean", "kappa": "median"})


SEED_OUTCOMES = {  # condition → (claim id, grokked in the seed)
    "mul_wd0.1": ("grokking.mul_wd0.1_groks", True),
    "add_wd0.01": ("grokking.add_wd0.01_memorises", False),
    "add_wd0.1": ("grokking.add_wd0.1_memorises", False),
}


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per condition: fraction grokked, mean grok step, medians of the κ summary, mean final accuracy;
    and the alert scores."""
    summary, out = a.summary, {}
    for name, g in summary.groupby("condition", sort=False):
        out[str(name)] = {
            "grokked_fraction": float(g["grokked"].mean()),
            "grok_step_mean": float(g["grok_step"].mean()) if g["grokked"].any() else math.nan,
            "kappa_probe_median": float(g["kappa_probe"].median()),
            "kappa_peak_median": float(g["kappa_peak"].median()),
            "kappa_final_median": float(g["kappa_final"].median()),
            "kappa_recovery_median": float(g["kappa_recovery"].median()),
            "final_test_acc_mean": float(g["final_test_acc"].mean()),
            "diverged_runs": float((g["outcome"] == "diverged").sum()),
        }
    return {"conditions": out, "alerts": a.alerts.set_index("rule").to_dict(orient="index")}


def _runs(summary: pd.DataFrame, condition: str) -> pd.DataFrame:
    return summary[summary["condition"] == condition]


def findings(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    """The *Findings vs the seed* rows, each with its verdict rule applied to the measured runs."""
    from gradience.reporting import finding, mean_spread

    summary, rp, rows = a.summary, a.params, []
    probe_step = int(p.kappa_probe_fraction * rp.steps)
    for name, (claim, seed_grokked) in SEED_OUTCOMES.items():
        g = _runs(summary, name)
        if g.empty:
            rows.append(finding(claim, "condition not run", "not comparable", "the condition is absent from params"))
            continue
        n_grok, n = int(g["grokked"].sum()), len(g)
        measured = f"{n_grok}/{n} grokked" + (f", step {mean_spread(g['grok_step'])}" if n_grok else "")
        agrees = (n_grok == n) if seed_grokked else (n_grok == 0)
        why = (f"outcome matches in every seed within {rp.steps:,} steps" if agrees else
               f"outcomes differ within this profile's {rp.steps:,}-step budget (lr {rp.lr:g})")
        rows.append(finding(claim, measured, "reproduced" if agrees else "not reproduced", why))
    mul, add = _runs(summary, "mul_wd0.1"), _runs(summary, "add_wd0.01")
    if len(mul) and len(add):
        merged = mul.merge(add, on="seed", suffixes=("_mul", "_add"))
        ratio = merged["kappa_probe_add"] / merged["kappa_probe_mul"]
        holds = bool((ratio > 1).all())
        rows.append(finding(
            "grokking.kappa_10k_ordering",
            f"{mean_spread(add['kappa_probe'])} vs {mean_spread(mul['kappa_probe'])} at step {probe_step:,}; "
            f"ratio {mean_spread(ratio)}",
            "reproduced" if holds else "not reproduced",
            "ordering holds in every seed" if holds else "ordering fails in at least one seed"))
    stuck = summary[summary["alert_stuck"]]
    rows.append(finding(
        "grokking.low_recovery_no_grok",
        f"{len(stuck)} runs below 2; {int(stuck['grokked'].sum())} of them grokked",
        "inconclusive" if stuck.empty else ("reproduced" if not stuck["grokked"].any() else "not reproduced"),
        "no run fell below the threshold" if stuck.empty else "counted over all conditions and seeds"))
    grokked = summary[summary["grokked"]]
    rows.append(finding(
        "grokking.recovery_necessary",
        f"grokked runs: κ_rec {mean_spread(grokked['kappa_recovery'])}; "
        f"{int((grokked['kappa_recovery'] < p.kappa_recovery_alert).sum())} of {len(grokked)} below 2",
        "inconclusive" if grokked.empty else
        ("reproduced" if (grokked["kappa_recovery"] >= p.kappa_recovery_alert).all() else "not reproduced"),
        "no run grokked" if grokked.empty else "every grokking run must clear the threshold"))
    strong = summary[summary["weight_decay"] >= 1.0]
    none = summary[summary["weight_decay"] == 0.0]
    if len(strong) and len(none):
        holds = bool(strong["grokked"].all() and not none["grokked"].any())
        rows.append(finding(
            "grokking.weight_decay_causal",
            f"wd ≥ 1: {int(strong['grokked'].sum())}/{len(strong)} grokked; wd 0: {int(none['grokked'].sum())}/{len(none)}",
            "reproduced" if holds else "not reproduced",
            "controls separate cleanly" if holds else "controls do not separate"))
    if len(grokked):
        drop = grokked["effective_rank_final"] < grokked["effective_rank_start"]
        rows.append(finding(
            "grokking.compression",
            f"{int(drop.sum())}/{len(grokked)} grokking runs end below their initial mean effective rank "
            f"({mean_spread(grokked['effective_rank_start'])} → {mean_spread(grokked['effective_rank_final'])})",
            "reproduced" if drop.all() else "not reproduced", "mean effective rank over weight matrices"))
    return rows
