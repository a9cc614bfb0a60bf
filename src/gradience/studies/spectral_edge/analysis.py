"""Spectral edge: per-run summaries of the lifecycle (fit, phases, probes, ablation, Fourier, class).

Definitions (used by the notebook, the findings and the tests):

- fit step: the first measured step with train accuracy ≥ ``fit_acc``; test-fit step likewise with test
  accuracy ≥ ``test_fit_acc`` (:func:`gradience.telemetry.signals.first_step_reaching`); the grokking delay
  is test-fit step ÷ fit step.
- phases: before the fit (from step ``window``, when the tracker's window is full) and late after it (the
  second half of the steps after the fit); ``grad_energy_pre``/``_post`` are the medians of the gradient
  part's share of the edge's energy over them.
- decay clock (:func:`post_fit_decay_clock`): lr·λ·(steps after the fit), up to the removal for the removal
  arm (``decay_clock_post``), and from the fit to the removal (``decay_clock_at_removal``); decay alone
  shrinks θ by exp(−clock).
- class (:func:`classify`): the late gradient share along the edge (the seed's Term 3, gradient driving,
  against Term 2, decay damping, of its gap flow) with our bounds ``class_bounds``; the seed's prediction
  of the class from redundancy is tested with parameters per scored training target as the redundancy.

Runs are told apart by their recorded ``task`` and ``weight_decay`` (the run table), never by their names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import Field

from gradience.studies.notebook import step_curves
from gradience.studies.protocol import ReportParams as BaseReportParams
from gradience.studies.protocol import Tables
from gradience.studies.spectral_edge.runs import RunParams
from gradience.telemetry.signals import decay_clock, first_step_reaching, safe_ratio

CLASSES = ("functional", "mixed", "compression")


class ReportParams(BaseReportParams):
    fit_acc: float = Field(default=0.99, gt=0, le=1, description="per-token train accuracy that marks the fit")
    test_fit_acc: float = Field(default=0.97, gt=0, le=1, description=(
        "per-token test accuracy that marks generalisation (grokking); below it at the end a run has memorised"))
    gradient_driven: float = Field(default=0.5, gt=0, lt=1, description="edge_grad_energy above: gradient-driven")
    gap_min: float = Field(default=1.5, ge=1, description="edge dominance: median σ1/σ2 at least this")
    ablation_min: float = Field(default=4000.0, gt=1, description="the seed's ratio (> 4000×)")
    mlp_r2_min: float = Field(default=0.95, gt=0, le=1)
    linear_gap_min: float = Field(default=0.05, ge=0, description="MLP R² − linear R² at least this")
    recover_min: float = Field(default=0.05, ge=0, description="removal: linear R² gain at least this")
    acc_drop_max: float = Field(default=0.02, ge=0)
    class_bounds: tuple[float, float] = Field(default=(0.3, 0.7), description="edge_grad_energy late after the fit: "
                                              "≤ lo compression, ≥ hi functional, else mixed")
    uniform_kl_max: float = Field(default=0.01, gt=0, description="layer-0 attention 'uniform backward': mean KL "
                                  "from uniform below this (nats; the seed reports < 0.001)")
    depth_elevation_min: float = Field(default=3.0, ge=1, description="depth-basis Fourier concentration of the "
                                       "edge's response, × uniform, at least this (the seed: 5.2 at grokking, "
                                       "4.1 ± 0.7 over seeds)")
    min_seeds: int = Field(default=3, ge=1)
    min_post_steps: int = Field(default=100, ge=1, description="steps after the fit a late-phase claim needs")
    min_grok_delay: float = Field(default=2.0, gt=1, description=(
        "test-fit step (at test_fit_acc) ÷ train-fit step (at fit_acc) a claim about the phases around grokking needs: "
        "grokking is generalisation well after the training set is fitted; 2 reads it as at least twice as late"))
    min_decay_clock: float = Field(default=1.0, gt=0, description=(
        "lr·λ·(steps after the fit) a claim about the post-fit compression phase needs. AdamW's decoupled decay "
        "alone shrinks θ by exp(−lr·λ·t), so below 1 (one e-fold) decay has barely acted after the fit and a "
        "run cannot show compression, nor its absence; steps alone do not say this (at lr 1e-3, λ 1, 200 steps "
        "after the fit are a factor exp(−0.2))"))


@dataclass
class Analysis:
    wide: pd.DataFrame  # run, condition, task, seed, step, one column per metric
    per_run: pd.DataFrame  # one row per run: task, fit step, phase medians, probes, ablation ratio, Fourier, class
    perturbation: pd.DataFrame
    ablation: pd.DataFrame
    fourier: pd.DataFrame
    params: RunParams


def post_fit_decay_clock(per_run: pd.DataFrame, lr: float | pd.Series, until: pd.Series | float) -> pd.Series:
    """:func:`~gradience.telemetry.signals.decay_clock` over the steps from the fit to ``until`` per run (columns
    ``weight_decay``, ``fit_step``): lr · λ · (until − fit_step), the decoupled-decay exponent accumulated after
    the fit (decay alone shrinks θ by exp(−clock)); NaN where the run never fit, 0 when until ≤ fit."""
    return decay_clock(lr, per_run["weight_decay"], (until - per_run["fit_step"]).clip(lower=0))


def classify(grad_energy: float, bounds: tuple[float, float]) -> str:
    """The edge's class (one of :data:`CLASSES`, or "none") from its late gradient share and ``class_bounds``."""
    lo, hi = bounds
    if not np.isfinite(grad_energy):
        return "none"
    return "compression" if grad_energy <= lo else "functional" if grad_energy >= hi else "mixed"


def _fourier_summary(fr: pd.DataFrame) -> dict[str, float]:
    if fr.empty:
        return {}
    pos = fr[fr.analysis == "positional"].sort_values("index")
    att = fr[fr.analysis == "attention_kl"].sort_values("index")
    el = fr[fr.analysis == "depth_elevation"]
    el_random = fr[fr.analysis == "depth_random_elevation"]
    return {"positional_peak": float(pos["index"].iloc[int(pos.value.argmax())]),
            "positional_dc_share": float(pos.value.iloc[0]), "positional_nyquist_share": float(pos.value.iloc[-1]),
            "attention_kl_layer0": float(att.value.iloc[0]),
            "depth_elevation": float(el.value.iloc[0]), "depth_peak": float(el["index"].iloc[0]),
            "depth_elevation_random": float(el_random.value.iloc[0]) if len(el_random) else np.nan}


def _median(frame: pd.DataFrame, metric: str) -> float:
    """The median of ``metric`` in ``frame``; NaN where it was never measured (a run that diverged early)."""
    return frame[metric].median() if metric in frame else np.nan


def analyse(tables: Tables[RunParams], p: ReportParams) -> Analysis:
    """The telemetry wide (one column per metric) and one row per run with the summaries the claims read."""
    t = tables.telemetry
    runs = tables.runs.set_index("run")
    wide = t.pivot_table(index=["run", "condition", "seed", "step"], columns="metric", values="value").reset_index()
    wide.insert(2, "task", wide.run.map(runs["task"]))
    rp = tables.params
    four = tables.frames.get("fourier", pd.DataFrame())
    if "run" not in four:  # no Fourier rows at all (SCAN only, or every run diverged)
        four = pd.DataFrame(columns=["run", "analysis", "index", "value"])
    # a diverged run has no perturbation or ablation rows; if every run diverged, those tables have no columns
    pert, abl = tables.perturbation, tables.ablation
    pert = pert if "run" in pert else pd.DataFrame(columns=["run", "direction", "eps", "dloss"])
    abl = abl if "run" in abl else pd.DataFrame(columns=["run", "direction", "loss", "acc", "base_loss", "base_acc"])
    rows = []
    for (run, cond, seed, task), g in wide.groupby(["run", "condition", "seed", "task"]):
        g = g.sort_values("step")
        fs = first_step_reaching(g.step, g.train_acc, p.fit_acc)
        last = g.iloc[-1]
        pre = g[(g.step < fs) & (g.step >= rp.window)] if np.isfinite(fs) else g.iloc[0:0]
        post = g[g.step >= fs + (g.step.max() - fs) / 2] if np.isfinite(fs) else g.iloc[0:0]
        probes = g.dropna(subset=["probe_r2_linear"]) if "probe_r2_linear" in g else g.iloc[0:0]
        at_removal = probes[probes.step == rp.removal_at]
        a = abl[abl.run == run]
        e, r = a[a.direction == "edge"], a[a.direction != "edge"]
        rows.append({
            "run": run, "condition": cond, "seed": seed, "task": task,
            "fit_step": fs, "post_steps": g.step.max() - fs,
            "test_fit_step": first_step_reaching(g.step, g.test_acc, p.test_fit_acc),
            "grad_energy_pre": _median(pre, "edge_grad_energy"), "grad_energy_post": _median(post, "edge_grad_energy"),
            "rotation_post": _median(post, "edge_rotation"),
            "gap_median": _median(g[g.step >= rp.window], "edge_gap"),
            "final_test_acc": last["test_acc"], "final_train_acc": last["train_acc"],
            "final_test_seq_acc": last.get("test_seq_acc", np.nan),
            "r2_linear": probes["probe_r2_linear"].iloc[-1] if len(probes) else np.nan,
            "r2_quadratic": probes["probe_r2_quadratic"].iloc[-1] if len(probes) else np.nan,
            "r2_mlp": probes["probe_r2_mlp"].iloc[-1] if len(probes) else np.nan,
            "r2_linear_at_removal": at_removal["probe_r2_linear"].iloc[0] if len(at_removal) else np.nan,
            "test_acc_at_removal": at_removal["test_acc"].iloc[0] if len(at_removal) else np.nan,
            "ablation_loss_ratio": (safe_ratio(abs(e.loss.iloc[0] - e.base_loss.iloc[0]),
                                               float((r.loss - r.base_loss).abs().mean())) if len(e) else np.nan),
            **_fourier_summary(four[four.run == run]),
        })
    per_run = pd.DataFrame(rows)
    per_run["grok_delay"] = per_run.test_fit_step / per_run.fit_step.where(per_run.fit_step > 0)
    per_run["weight_decay"] = per_run.run.map(runs["weight_decay"])
    for col in ("n_params", "edge_params", "train_targets"):
        per_run[col] = per_run.run.map(runs[col]) if col in runs else np.nan
    per_run["params_per_target"] = per_run.n_params / per_run.train_targets
    lr = per_run.task.map({"dyck": rp.lr, "scan": rp.scan.lr})
    removal, last = per_run.condition == "removal", per_run.fit_step + per_run.post_steps
    per_run["decay_clock_post"] = post_fit_decay_clock(per_run, lr, last.where(~removal, last.clip(upper=rp.removal_at)))
    per_run["decay_clock_at_removal"] = post_fit_decay_clock(per_run, lr, rp.removal_at).where(removal)
    per_run["edge_class"] = [classify(x, p.class_bounds) for x in per_run["grad_energy_post"]]
    return Analysis(wide, per_run, pert, abl, four, rp)


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per condition, the medians over seeds of the per-run summaries (the finite ones)."""
    out = {}
    keys = ("fit_step", "grok_delay", "decay_clock_post", "grad_energy_pre", "grad_energy_post", "gap_median",
            "final_test_acc", "r2_linear", "r2_mlp", "ablation_loss_ratio", "depth_elevation", "attention_kl_layer0")
    for cond, g in a.per_run.groupby("condition"):
        out[cond] = {k: float(g[k].median()) for k in keys if k in g and np.isfinite(g[k].median())}
    return out


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean test accuracy, edge gradient share and gap, and the depth probes' R², per condition against step."""
    return step_curves(a.wide, "condition", {"test_acc": "mean", "edge_grad_energy": "mean", "edge_gap": "mean",
                                             "probe_r2_linear": "mean", "probe_r2_mlp": "mean"})
