"""Protocol A of seed 001: the edge summary per run and the lead–lag tests of the weight metrics × λ_max.

Hypothesis 1 (seed 001): "the weight spectrum leads the Hessian spectrum by K steps during
approach to instability"; falsifier 1: "no significant cross-correlation between weight and
Hessian spectra". How they are tested (all parameters in ``report.lead_lag``):

- Series: per run, every step before divergence (the whole run otherwise). A weight metric x and
  λ_max are log10-transformed (all positive) and cross-correlated, r(k) = corr(x_t, y_{t+k}) for
  |k| ≤ ``max_lag`` steps (k > 0: the weights lead), in two views: **levels** (no detrending:
  co-evolution is in the trends, and detrending removes it) and **residuals** (Gaussian-kernel
  detrended, the fluctuations about the trends).
- Significance: max_k |r(k)| against ``surrogates`` phase-randomised surrogates of x (same
  periodogram, no coupling to y); p < ``alpha`` counts as coupled.
- Predicted lead (a free choice; the seed gives no K): 1 ≤ K ≤ ``predicted_lead[1]`` steps. A lead
  below one update cannot be causal for GD, and a lead must fit inside the approach it precedes:
  the marginal runs sharpen from ~0.3 to 1 × 2/η in 30–60 steps and reach the edge 53–92 steps
  into training (default profile, 3 seeds), so K ≤ 30 steps. Budgets: the lag range max_lag must reach the largest predicted lead, the cadence must
  resolve the smallest one, and every analysed run must have ``min_points`` points (≥ 2·max_lag + 3).
- "Approach to instability" = the marginal and unstable runs that reached the edge
  (λ_max·η/2 ≥ 1 at some step); at least ``min_runs`` of them are needed. H1 holds when the
  runs where the weights lead significantly are more than chance gives (binomial test against the
  per-run false-positive rate α) and outnumber the runs where λ_max leads.
- The primary pair (``lead_lag.primary``, default κ vs λ_max, as the seed's hypothesis words it)
  carries the H1 verdicts; every other weight metric × λ_max pair is reported with a
  Bonferroni-corrected threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from gradience.studies.hessian_coevolution.runs import RunParams
from gradience.studies.lm_regimes.analysis import (
    CouplingParams,
    coupling_table,
    cross_correlations,
    model_table,
    pre_divergence,
    regime_runs,
)
from gradience.studies.lm_regimes.runs import DIVERGED_OUTCOMES
from gradience.studies.notebook import step_curves
from gradience.studies.protocol import ReportParams as BaseReportParams
from gradience.studies.protocol import Tables
from gradience.telemetry.signals import first_step_reaching

WEIGHT_METRICS = ("kappa", "spectral_norm_max", "stable_rank_mean", "effective_rank", "alpha_mean",
                  "weight_norm")
HESSIAN_METRIC = "lambda_max"  # tracked every cadence step; the lead-lag partner of every weight metric
VIEWS = ("levels", "residuals")


class LeadLagParams(CouplingParams):
    primary: str = Field(default="kappa", description="the weight metric of the primary pair (with λ_max)")
    weight_metrics: list[str] = Field(default=list(WEIGHT_METRICS), min_length=1)
    max_lag: int = Field(default=40, ge=1, description="steps × cadence_every")
    surrogates: int = Field(default=499, ge=19)
    min_points: int = Field(default=100, ge=6, description="shorter pre-divergence series are not tested")
    predicted_lead: tuple[int, int] = Field(default=(1, 30), description="H1's lead K, smallest and largest (steps)")
    min_runs: int = Field(default=4, ge=1, description="approaching runs at the edge that H1 needs")

    @model_validator(mode="after")
    def _known_metrics(self) -> LeadLagParams:
        bad = [m for m in [self.primary, *self.weight_metrics] if m not in WEIGHT_METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}: weight metrics {WEIGHT_METRICS}")
        if self.detrend == "none":
            raise ValueError("detrend='none': the residual view needs a detrending (the levels view has none)")
        lo, hi = self.predicted_lead
        if not 1 <= lo <= hi:
            raise ValueError(f"predicted_lead={self.predicted_lead} must satisfy 1 ≤ smallest ≤ largest")
        return self

    def pairs(self) -> list[tuple[str, str]]:
        """The primary pair first, then every other weight metric with λ_max."""
        return [(m, HESSIAN_METRIC) for m in dict.fromkeys([self.primary, *self.weight_metrics])]

    def view(self, name: str) -> LeadLagParams:
        """The coupling test of one view: ``levels`` (no detrending) or ``residuals``."""
        if name not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {name!r}")
        return self if name == "residuals" else self.model_copy(update={"detrend": "none"})


class ReportParams(BaseReportParams):
    lead_lag: LeadLagParams = LeadLagParams()


def diverged(df: pd.DataFrame) -> pd.Series:
    """Whether each run diverged (an outcome in :data:`lm_regimes.runs.DIVERGED_OUTCOMES`)."""
    return df["outcome"].isin(DIVERGED_OUTCOMES)


def _agg(w: pd.DataFrame, name: str, how: str) -> float:
    return float(w[name].agg(how)) if name in w and w[name].notna().any() else math.nan


def edge_summary(series: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per run, from the per-step λ_max·η/2 before divergence: ``edge_step`` (first step ≥ 1),
    ``ratio_max``, ``ratio_after_edge`` (median from ``edge_step`` on), ``frac_at_edge`` (share of
    steps ≥ 1), ``steps_after_edge``, ``n_points``; the tracking cost ``hvp_per_step`` (median) and
    its largest disagreement with the cold Lanczos, ``cold_gap_max``; loss and η at the end."""
    rows = []
    for rec in runs.itertuples():
        w = pre_divergence(series[series.run == rec.run], rec.diverged_at).dropna(subset=["sharpness_over_edge"])
        ratio = w["sharpness_over_edge"].to_numpy()
        at = np.flatnonzero(ratio >= 1.0)
        last = float(w.step.iloc[-1]) if len(w) else math.nan
        edge_step = first_step_reaching(w.step.to_numpy(), ratio, 1.0)

        rows.append({"run": rec.run, "n_points": len(w), "ratio_max": float(ratio.max()) if ratio.size else math.nan,
                     "edge_step": edge_step,
                     "ratio_after_edge": float(np.median(ratio[at[0]:])) if at.size else math.nan,
                     "frac_at_edge": float(at.size / ratio.size) if ratio.size else math.nan,
                     "steps_after_edge": last - edge_step if at.size else math.nan,
                     "hvp_per_step": _agg(w, "lambda_max_n_hvp", "median"),
                     "cold_gap_max": float(w["lambda_max_cold_gap"].abs().max()) if "lambda_max_cold_gap" in w else math.nan,
                     "restarts": _agg(w, "lambda_max_restart", "sum"),
                     "lambda_max_final": float(w["lambda_max"].iloc[-1]) if len(w) else math.nan,
                     "lr_at_end": float(w["lr"].iloc[-1]) if len(w) else math.nan,
                     "final_train_loss": float(w["train_loss"].iloc[-1]) if len(w) else math.nan})
    return runs.merge(pd.DataFrame(rows), on="run")


def lead_lag_table(series: pd.DataFrame, runs: pd.DataFrame, ll: LeadLagParams, cadence_every: int) -> pd.DataFrame:
    """Every view × run × (weight metric, λ_max): :func:`lm_regimes.analysis.coupling_test` on the
    pre-divergence series; ``direction`` says whether the weights or λ_max lead."""
    parts = []
    for view in VIEWS:
        t = coupling_table(series, runs, ll.pairs(), ll.view(view), cadence_every)
        parts.append(t.rename(columns={"x_metric": "weight_metric", "y_metric": "hessian_metric"}).assign(view=view))
    t = pd.concat(parts, ignore_index=True)
    t["primary"] = t.weight_metric == ll.primary
    t["direction"] = t["direction"].replace({"x leads": "weights lead", "y leads": "Hessian leads"})
    return t


def pair_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per view and weight metric: runs coupled beyond the surrogates (p < α) and the median lead
    (steps; > 0: weights lead) over those runs."""
    sig = table.assign(lead=table.lead_steps.where(table.significant))
    return (sig.groupby(["view", "weight_metric"], sort=False)
            .agg(significant=("significant", "sum"), tested=("p_value", "count"), lead=("lead", "median"))
            .reset_index())


def hutchinson_precision(series: pd.DataFrame, probes: int) -> dict[str, float]:
    """Relative standard error of the Hutchinson trace estimates (median, 90th percentile) and
    the HVPs per cold measurement."""
    h = series.dropna(subset=["hessian_trace"])
    rel = h.hessian_trace_stderr / h.hessian_trace.abs()
    return {"probes": probes, "relative_stderr_median": float(rel.median()),
            "relative_stderr_p90": float(rel.quantile(0.9)), "hvp_per_measurement_median": float(h.hessian_n_hvp.median())}


@dataclass
class Analysis:
    runs: RunParams
    telemetry: pd.DataFrame
    series: pd.DataFrame  # model-scope series, one row per (run, step), with regime and seed
    summary: pd.DataFrame  # one row per run: the run record and the edge summary
    lead_lag: pd.DataFrame  # every view × run × (weight metric, λ_max)
    pairs: pd.DataFrame  # per view and weight metric: runs coupled and median lead
    cross_correlation: pd.DataFrame  # r(k) of the primary pair: view, run, regime, seed, lag, lag_steps, r
    hutchinson: dict[str, float]


def analyse(tables: Tables[RunParams], p: ReportParams) -> Analysis:
    """Series, edge summary per run, lead–lag tests of every pair in both views, Hutchinson precision."""
    rp = tables.params
    runs = regime_runs(tables.runs)
    series = model_table(tables.telemetry)
    summary = edge_summary(series, runs)
    table = lead_lag_table(series, summary, p.lead_lag, rp.cadence_every)
    ids = summary[["run", "regime", "seed"]]
    cc = pd.concat([cross_correlations(series, summary, p.lead_lag.primary, HESSIAN_METRIC, p.lead_lag.view(v))
                    .assign(view=v) for v in VIEWS], ignore_index=True).merge(ids, on="run")
    cc["lag_steps"] = cc.lag * rp.cadence_every
    return Analysis(rp, tables.telemetry, series.merge(ids, on="run"), summary, table, pair_summary(table), cc,
                    hutchinson_precision(series, rp.hessian.hutchinson_probes))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Median λ_max·η/2 and median κ per regime, against step."""
    return step_curves(a.series, "regime", {"sharpness_over_edge": "median", "kappa": "median"})


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per regime: outcomes, edge summary medians, tracking cost and the primary pair's lead–lag
    medians in both views; the Hutchinson precision."""
    out = {}
    prim = a.lead_lag[a.lead_lag.primary]
    for name, g in a.summary.groupby("regime", sort=False):
        m = {"diverged_runs": float(diverged(g).sum()), "diverged_at_median": float(g.diverged_at.median()),
             "ratio_max_median": float(g.ratio_max.median()), "edge_step_median": float(g.edge_step.median()),
             "ratio_after_edge_median": float(g.ratio_after_edge.median()),
             "final_train_loss_median": float(g.final_train_loss.median()),
             "hvp_per_step_median": float(g.hvp_per_step.median()), "cold_gap_max": float(g.cold_gap_max.max())}
        for view in VIEWS:
            t = prim[(prim.regime == name) & (prim.view == view)]
            m |= {f"{view}_best_lag_steps_median": float(t.lead_steps.median()),
                  f"{view}_best_r_median": float(t.best_r.median()), f"{view}_p_median": float(t.p_value.median()),
                  f"{view}_significant_runs": float(t.significant.sum())}
        out[str(name)] = m
    return {"regimes": out, "hutchinson": a.hutchinson}
