"""Protocol C of seed 001: per-run summaries at matched loss, the held-out H3 test, the co-variation tests.

Definitions used by the verdicts (``report.analysis`` params; every free choice of the seed is here):

- **Natural-gradient alignment inside F's span.** F has rank ≤ n (64 windows) in ~10⁴ parameters,
  so F⁻¹ is undefined outside its span and a damped (F + λI)⁻¹ there is only 1/λ: the full-space
  cos(∇L, (F + λI)⁻¹∇L) mostly measures how much of ∇L lies outside the span. The verdict uses
  ∇L_F, the projection of ∇L onto span(F), and cos(∇L_F, F⁺∇L_F) (``analysis.damping`` = 0: the
  pseudo-inverse; > 0: (F + δλ₁I)⁻¹ inside the span), and reports the fraction ‖∇L_F‖²/‖∇L‖² of
  the gradient inside the span beside it. The full-space value is still logged (``ng_alignment@δ``).
- **Fisher–weight alignment A(t) with the W₀ null** (hypothesis 3): the share of tr F inside the span
  of the weights' top-r singular pairs {u_i v_jᵀ} (``share``), or the same for F's top eigenvector
  alone (``overlap``), divided by the same statistic for the same F with the *initial* weights W₀'s
  singular pairs. A = 1 at step 0 by construction; A > 1: the Fisher concentrates in the directions
  the weights have learned, beyond the structure a network has at initialisation. (Enrichment over
  a random direction, r²/mn, is logged too; it is far above 1 already at W₀.)
- **Matched loss.** Regimes are compared at the first cadence step at which each run's training
  loss is ≤ ``analysis.matched_loss`` = L* (nats), before any divergence; the H3 statistic of a run
  is min A(t) from the first step with train loss ≤ ``analysis.start_loss`` to that step, i.e. over
  the same loss range in every regime (the first steps, where A rises from 1 as the weights start
  to move, are left out alike). A run that never reaches L* counts against a budget.
- **H3 threshold on held-out seeds.** T is chosen on the runs of ``analysis.calibration_seeds`` (the
  midpoint of the gap that best separates stable from unstable min A, balanced accuracy) and
  scored on the other seeds: H3 holds if every held-out stable run stays above T and every held-out
  unstable run falls to or below it.
- "Instability ≈ low NG alignment" (Protocol C, step 4) and "instability ≈ extreme anisotropy"
  compare the regimes at matched loss with a one-sided Mann–Whitney test at ``analysis.alpha``
  (needs ≥ 4 runs per regime at L* to reach p < 0.05).
- Falsifier 3 ("Fisher and weight spectra are unrelated in practice") is tested on
  ``analysis.pairs`` of (weight metric, Fisher metric) series: detrended cross-correlation with a
  surrogate p-value (:func:`lm_regimes.analysis.coupling_test`), Bonferroni over the pairs, and on A(t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from gradience.studies.fisher_geometry.runs import FisherKind, RunParams, ng_span_key
from gradience.studies.lm_regimes.analysis import (
    CouplingParams,
    coupling_table,
    model_table,
    pre_divergence,
    regime_runs,
)
from gradience.studies.lm_regimes.runs import DIVERGED_OUTCOMES
from gradience.studies.notebook import step_curves
from gradience.studies.protocol import ReportParams as BaseReportParams
from gradience.studies.protocol import Tables
from gradience.telemetry.probes import FISHER_KIND_PREFIX
from gradience.telemetry.recorder import MODEL_SCOPE

WEIGHT_METRICS = ("kappa", "spectral_norm_max", "stable_rank_mean", "effective_rank", "alpha_mean", "weight_norm")
FISHER_METRICS = ("fisher_top1", "fisher_trace", "fisher_eff_dim", "fisher_kappa_k", "fisher_alpha",
                  "fisher_overlap_w0_enrichment", "fisher_share_w0_enrichment")
ALIGNMENTS = {"share": "fisher_share_w0_enrichment", "overlap": "fisher_overlap_w0_enrichment"}
DEFAULT_PAIRS = [("alpha_mean", "fisher_alpha"), ("kappa", "fisher_kappa_k"), ("spectral_norm_max", "fisher_top1"),
                 ("effective_rank", "fisher_eff_dim"), ("stable_rank_mean", "fisher_eff_dim")]
MATCHED_OFFSETS = (0.2, 0.1, 0.0, -0.1)  # nats above L*: the sensitivity of H3 to the matched level


class AnalysisParams(CouplingParams):
    kind: FisherKind = Field(default="true", description="the Fisher that carries the verdicts")
    damping: float = Field(default=0.0, ge=0, description="relative damping of the in-span NG alignment; 0: F⁺")
    matched_loss: float = Field(default=3.6, gt=0, description="L* (nats): regimes are compared where train loss first ≤ L*")
    calibration_seeds: list[int] = Field(default=[0, 1, 2, 3], min_length=1,
                                         description="seeds that choose the H3 threshold; the others score it")
    pairs: list[tuple[str, str]] = Field(default=DEFAULT_PAIRS, min_length=1, description="(weight metric, Fisher metric)")
    start_loss: float = Field(default=4.0, gt=0, description="the H3 window starts where train loss first ≤ this (nats)")
    max_lag: int = Field(default=3, ge=0, description="cadence points")
    surrogates: int = Field(default=499, ge=19)

    @field_validator("pairs")
    @classmethod
    def _known(cls, v: list[tuple[str, str]]) -> list[tuple[str, str]]:
        bad = [a for a, _ in v if a not in WEIGHT_METRICS] + [b for _, b in v if b not in FISHER_METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}: weight {WEIGHT_METRICS}, Fisher {FISHER_METRICS}")
        return v

    @model_validator(mode="after")
    def _window(self) -> AnalysisParams:
        if not self.start_loss > self.matched_loss:
            raise ValueError(f"start_loss={self.start_loss} must be > matched_loss={self.matched_loss} (the window runs "
                             "from the first to the second)")
        return self


class ReportParams(BaseReportParams):
    analysis: AnalysisParams = AnalysisParams()


def check_measured(a: AnalysisParams, rp: RunParams) -> None:
    """The analysed Fisher kind and damping must be among those the runs measured, and the
    calibration seeds among the run seeds with at least one seed left to hold out."""
    f = rp.fisher
    if a.kind not in f.kinds:
        raise ValueError(f"fisher_geometry.report.analysis.kind={a.kind!r} is not among the measured "
                         f"fisher_geometry.runs.fisher.kinds={f.kinds}: change one, or rerun the training stage")
    if a.damping != 0 and a.damping not in f.dampings:
        raise ValueError(f"fisher_geometry.report.analysis.damping={a.damping} is neither 0 (F⁺) nor among the measured "
                         f"fisher_geometry.runs.fisher.dampings={f.dampings}: change one, or rerun the training stage")
    unknown = sorted(set(a.calibration_seeds) - set(rp.seeds))
    if unknown or not set(rp.seeds) - set(a.calibration_seeds):
        raise ValueError(f"fisher_geometry.report.analysis.calibration_seeds={a.calibration_seeds} must be a proper "
                         f"subset of fisher_geometry.runs.seeds={rp.seeds} (the rest are held out)")


def series_table(telemetry: pd.DataFrame, a: AnalysisParams) -> pd.DataFrame:
    """:func:`lm_regimes.analysis.model_table`, plus the analysis kind's Fisher metrics without prefix
    (``fisher_top1``…), ``ng_alignment`` (inside the span, at ``analysis.damping``) and
    ``span_fraction`` (‖∇L_F‖²/‖∇L‖²), so the pairs and verdicts name them directly."""
    w = model_table(telemetry)
    prefix = FISHER_KIND_PREFIX[a.kind] + "_"
    for col in [c for c in w.columns if c.startswith(prefix)]:
        w[col[len(prefix):]] = w[col]
    w["ng_alignment"] = w.get(ng_span_key(a.damping))
    w["span_fraction"] = w.get("grad_span_fraction")
    return w


def matched_step(w: pd.DataFrame, level: float) -> float:
    """The first step of one run's (pre-divergence) rows with train loss ≤ ``level``; NaN if none.
    (A loss falling to a level: the opposite direction of :func:`signals.first_step_reaching`.)"""
    hit = w[w.train_loss <= level]
    return float(hit.step.iloc[0]) if len(hit) else math.nan


def run_summary(series: pd.DataFrame, runs: pd.DataFrame, a: AnalysisParams, level: float | None = None) -> pd.DataFrame:
    """Per run, before divergence: the matched-loss step t* (train loss first ≤ ``level``, default
    ``a.matched_loss``) and the values there; A(t) over the matched window (from the first step with
    train loss ≤ ``a.start_loss`` to t*, the same loss range in every run: min, median) and over every
    step > 0 before divergence (``{m}_min_all``; A = 1 at step 0 by construction); NG alignment,
    span fraction, participation ratio at t* (and the participation ratio's pre-divergence minimum)."""
    level = a.matched_loss if level is None else level
    rows = []
    for rec in runs.itertuples():
        w = pre_divergence(series[series.run == rec.run], rec.diverged_at).dropna(subset=["fisher_top1"])
        t = matched_step(w, level)
        late = w[w.step > 0]
        start = matched_step(w, a.start_loss)
        win = w[(w.step >= start) & (w.step <= t)] if np.isfinite(t) else w.iloc[:0]
        at = w[w.step == t].iloc[0] if np.isfinite(t) else pd.Series(dtype=float)
        row = {"run": rec.run, "matched_step": t, "n_points": len(win)}
        for short, col in ALIGNMENTS.items():
            row |= {f"{short}_min": float(win[col].min()), f"{short}_median": float(win[col].median()),
                    f"{short}_min_all": float(late[col].min()), f"{short}_chance_median": float(
                        late[col.replace("_w0_", "_")].median())}
        for col in ("ng_alignment", "span_fraction", "fisher_eff_dim", "ng_alignment_full"):
            row[f"{col}_at_match"] = float(at.get(col, math.nan))
        rows.append(row | {
            "eff_dim_min": float(late["fisher_eff_dim"].min()),
            "fisher_alpha_median": float(late["fisher_alpha"].median()),
            "weight_alpha_median": float(late["alpha_mean"].median()),
            "min_train_loss": float(w["train_loss"].min()) if len(w) else math.nan,
        })
    return runs.merge(pd.DataFrame(rows), on="run")


def choose_threshold(stable: np.ndarray, unstable: np.ndarray) -> tuple[float, float]:
    """The threshold T that best separates ``stable`` (> T) from ``unstable`` (≤ T) values:
    the candidate (midpoints between sorted values, and just outside them) with the highest balanced
    accuracy, the middle one among ties; returns (T, its balanced accuracy)."""
    v = np.unique(np.concatenate([stable, unstable]))
    cand = np.concatenate([[v[0] - 1.0], (v[:-1] + v[1:]) / 2, [v[-1] + 1.0]])
    acc = np.array([((stable > c).mean() + (unstable <= c).mean()) / 2 for c in cand])
    best = np.flatnonzero(acc == acc.max())
    k = best[len(best) // 2]
    return float(cand[k]), float(acc[k])


def h3_test(summary: pd.DataFrame, measure: str, calibration_seeds: list[int]) -> dict[str, float]:
    """Hypothesis 3 for one alignment ``measure`` on held-out seeds: T from the calibration seeds'
    per-run min A (matched window; runs that reached L*), then how many held-out stable runs stay
    above T and how many held-out unstable runs fall to or below it."""
    s = summary[summary.matched_step.notna() & summary[f"{measure}_min"].notna()]
    cal = s.seed.isin(calibration_seeds)
    col = f"{measure}_min"
    part = {(k, c): s[(s.kind == k) & (cal if c else ~cal)][col].to_numpy() for k in ("stable", "unstable") for c in (1, 0)}
    if not all(len(v) for v in part.values()):
        return {"threshold": math.nan, "calibration_accuracy": math.nan, "heldout_stable": float(len(part["stable", 0])),
                "heldout_unstable": float(len(part["unstable", 0])), "heldout_stable_above": math.nan,
                "heldout_unstable_below": math.nan, "heldout_accuracy": math.nan}
    t, acc = choose_threshold(part["stable", 1], part["unstable", 1])
    above, below = float((part["stable", 0] > t).sum()), float((part["unstable", 0] <= t).sum())
    hs, hu = len(part["stable", 0]), len(part["unstable", 0])
    return {"threshold": t, "calibration_accuracy": acc, "heldout_stable": float(hs), "heldout_unstable": float(hu),
            "heldout_stable_above": above, "heldout_unstable_below": below,
            "heldout_accuracy": (above / hs + below / hu) / 2}


def h3_sensitivity(series: pd.DataFrame, runs: pd.DataFrame, a: AnalysisParams) -> pd.DataFrame:
    """:func:`h3_test` for every measure at matched levels L* + :data:`MATCHED_OFFSETS` (does the
    verdict hinge on the level?), with the number of runs that reach each level."""
    rows = []
    for off in MATCHED_OFFSETS:
        level = a.matched_loss + off
        summary = run_summary(series, runs, a, level)
        rows += [{"matched_loss": level, "measure": m, "runs_reaching": float(summary.matched_step.notna().sum()),
                  **h3_test(summary, m, a.calibration_seeds)} for m in ALIGNMENTS]
    return pd.DataFrame(rows)


def per_matrix_enrichment(telemetry: pd.DataFrame, runs: pd.DataFrame, a: AnalysisParams) -> pd.DataFrame:
    """The analysis kind's share of tr F in each matrix's top singular subspace, now and with W₀,
    and their ratio (enrichment over W₀), at steps > 0: ``run, regime, step, matrix, share,
    share_w0, enrichment``."""
    prefix = FISHER_KIND_PREFIX[a.kind]
    t = telemetry[(telemetry.scope != MODEL_SCOPE) & (telemetry.step > 0)
                  & telemetry.metric.isin([f"{prefix}_fisher_share", f"{prefix}_fisher_share_w0"])]
    w = t.pivot_table(index=["run", "step", "scope"], columns="metric", values="value").reset_index()
    w = w.rename(columns={f"{prefix}_fisher_share": "share", f"{prefix}_fisher_share_w0": "share_w0"})
    w["enrichment"] = w.share / w.share_w0
    w["matrix"] = w.scope.str.replace("lm.model.", "", regex=False).str.replace(".weight", "", regex=False)
    w = w.merge(runs[["run", "regime"]], on="run")
    return w[["run", "regime", "step", "matrix", "share", "share_w0", "enrichment"]]


@dataclass
class Analysis:
    runs: RunParams
    telemetry: pd.DataFrame
    series: pd.DataFrame  # model-scope series, one row per (run, step), with regime and seed
    summary: pd.DataFrame  # one row per run: the run record, its matched-loss point and alignment summary
    coupling: pd.DataFrame  # every run × (weight, Fisher) pair
    h3: dict[str, dict[str, float]]  # alignment measure → :func:`h3_test`
    sensitivity: pd.DataFrame  # :func:`h3_sensitivity`
    per_matrix: pd.DataFrame  # :func:`per_matrix_enrichment`


def full_damping(a: AnalysisParams, rp: RunParams) -> float:
    """The relative damping of the full-space NG alignment shown for contrast: the analysis damping,
    or (for F⁺) the measured one nearest 0.01."""
    return a.damping or min(rp.fisher.dampings, key=lambda d: abs(math.log(d / 0.01)))


def analyse(tables: Tables[RunParams], p: ReportParams) -> Analysis:
    """Series, per-run summaries at matched loss, the co-variation tests, the held-out H3 test and
    its sensitivity to the matched level.

    Raises ``ValueError`` when ``p.analysis`` names a Fisher kind, damping or calibration seeds the
    runs did not measure.
    """
    rp = tables.params
    a = p.analysis
    check_measured(a, rp)
    runs = regime_runs(tables.runs)
    series = series_table(tables.telemetry, a)
    series["ng_alignment_full"] = series.get(f"ng_alignment@{full_damping(a, rp):.0e}")
    summary = run_summary(series, runs, a)
    coupling = coupling_table(series, runs, a.pairs, a, rp.cadence_every)
    coupling = coupling.rename(columns={"x_metric": "weight_metric", "y_metric": "fisher_metric"})
    return Analysis(rp, tables.telemetry, series.merge(runs[["run", "regime", "seed"]], on="run"), summary, coupling,
                    {m: h3_test(summary, m, a.calibration_seeds) for m in ALIGNMENTS},
                    h3_sensitivity(series, runs, a), per_matrix_enrichment(tables.telemetry, runs, a))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Median training loss and median in-span NG alignment (analysis kind and damping) per regime."""
    return step_curves(a.series, "regime", {"train_loss": "median", "ng_alignment": "median"})


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per regime: outcomes, matched-loss step and values, alignment over W₀, exponents, coupling
    counts; the held-out H3 tests and the matched level."""
    out = {}
    for name, g in a.summary.groupby("regime", sort=False):
        c = a.coupling[a.coupling.regime == name]
        out[str(name)] = {
            "diverged_runs": float(g.outcome.isin(DIVERGED_OUTCOMES).sum()),
            "diverged_at_median": float(g.diverged_at.median()),
            "matched_step_median": float(g.matched_step.median()),
            "runs_reaching_matched_loss": float(g.matched_step.notna().sum()),
            "share_min_median": float(g.share_min.median()),
            "overlap_min_median": float(g.overlap_min.median()),
            "share_over_chance_median": float(g.share_chance_median.median()),
            "ng_alignment_at_match_median": float(g.ng_alignment_at_match.median()),
            "span_fraction_at_match_median": float(g.span_fraction_at_match.median()),
            "eff_dim_at_match_median": float(g.fisher_eff_dim_at_match.median()),
            "eff_dim_min_median": float(g.eff_dim_min.median()),
            "fisher_alpha_median": float(g.fisher_alpha_median.median()),
            "weight_alpha_median": float(g.weight_alpha_median.median()),
            "coupling_significant_bonferroni": float(c.significant_bonferroni.sum()),
            "coupling_tests": float(c.p_value.notna().sum()),
        }
    return {"regimes": out, "h3": a.h3, "matched_loss": p.analysis.matched_loss}
