"""Protocol A of seed 001: co-evolution of the weight spectrum and the Hessian spectrum.

A small Llama-architecture character LM is trained by full-batch gradient descent in three
regimes (see :mod:`gradience.studies.lm_regimes`). Every ``cadence_every`` steps the training
loop takes the full SVD of every weight matrix, and :func:`gradience.telemetry.probes.hessian_probe`
measures, on the whole training set (the loss GD descends, so 2/η is the exact stability edge),
the top-k Hessian eigenvalues (Lanczos), the Hutchinson trace with its standard error and
λ_max·η/2.

Hypothesis 1 (seed 001): "the weight spectrum leads the Hessian spectrum by K steps during
approach to instability"; falsifier 1: "no significant cross-correlation between weight and
Hessian spectra". How they are tested (all parameters in ``report.lead_lag``):

- Series: per run, the cadence points before divergence. A weight metric x and a Hessian metric y
  are log10-transformed when every value is positive, detrended
  (:func:`gradience.telemetry.signals.detrend`), and cross-correlated,
  r(k) = corr(x_t, y_{t+k}) for |k| ≤ ``max_lag`` cadence points (k > 0: weights lead).
- Significance: the statistic max_k |r(k)| against ``surrogates`` phase-randomised surrogates of
  x (same autocorrelation, no coupling to y); p < ``alpha`` counts as coupled.
- Lead: the lag of largest |r| among coupled runs; K = lag × ``cadence_every`` steps.
- "Approach to instability" = the runs of the marginal and unstable regimes (they reach the edge;
  unstable ones diverge); the stable regime is the control.
- The primary pair (``lead_lag.primary``, default κ vs λ_max, as the seed's hypothesis words it)
  carries the verdict; the other pairs are reported with a Bonferroni-corrected threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from gradience.config import Section
from gradience.reporting import finding, mean_spread
from gradience.studies import base
from gradience.studies.lm_regimes import (
    DIVERGED_OUTCOMES,
    CouplingParams,
    RegimeRunParams,
    coupling_table,
    cross_correlations,
    model_table,
    pre_divergence,
    regime_runs,
    train_regime,
)
from gradience.telemetry.probes import hessian_probe

WEIGHT_METRICS = ("kappa", "spectral_norm_max", "stable_rank_mean", "effective_rank", "alpha_mean",
                  "weight_norm")
HESSIAN_METRICS = ("hessian_top1", "hessian_trace", "hessian_spread")
APPROACHING = ("marginal", "unstable")


class HessianProbeParams(Section):
    top_k: int = Field(default=10, ge=2, description="Lanczos eigenvalues")
    hutchinson_probes: int = Field(default=100, ge=2)
    lanczos_tol: float = Field(default=1e-3, ge=0, lt=1, description="ARPACK relative residual tolerance")
    measure_batch: int = Field(default=0, ge=0, description="first n training windows; 0: all (GD's loss)")
    seed: int = 0


class LeadLagParams(CouplingParams):
    primary: tuple[str, str] = ("kappa", "hessian_top1")
    weight_metrics: list[str] = Field(default=list(WEIGHT_METRICS), min_length=1)
    hessian_metrics: list[str] = Field(default=list(HESSIAN_METRICS), min_length=1)
    max_lag: int = Field(default=3, ge=1, description="cadence points")
    surrogates: int = Field(default=499, ge=19)

    @model_validator(mode="after")
    def _known_metrics(self) -> LeadLagParams:
        w, h = self.primary
        bad = [m for m in [w, *self.weight_metrics] if m not in WEIGHT_METRICS]
        bad += [m for m in [h, *self.hessian_metrics] if m not in HESSIAN_METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}: weight metrics {WEIGHT_METRICS}, Hessian metrics {HESSIAN_METRICS}")
        return self

    def pairs(self) -> list[tuple[str, str]]:
        """The primary pair first, then every other weight × Hessian pair."""
        rest = [(a, b) for a in self.weight_metrics for b in self.hessian_metrics if (a, b) != tuple(self.primary)]
        return [tuple(self.primary), *rest]


class RunParams(RegimeRunParams):
    hessian: HessianProbeParams = HessianProbeParams()


class ReportParams(base.ReportParams):
    lead_lag: LeadLagParams = LeadLagParams()


DATA = ("text",)
TABLES = ("telemetry", "spectra")


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    return [base.Job(p, r.name, s, data_dir, spec=r) for r in p.regimes for s in p.seeds]


def run_one(job: base.Job) -> base.RunOutput:
    """Train one regime × seed with the Hessian probe."""
    p: RunParams = job.params  # type: ignore[assignment]
    h = p.hessian
    probe = hessian_probe(h.measure_batch, h.top_k, h.hutchinson_probes, h.lanczos_tol, h.seed)
    return train_regime(job, [probe], p.spectra_every)


def series_table(telemetry: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """:func:`lm_regimes.model_table` plus ``hessian_spread`` = λ₁/λ_k (k = ``hessian.top_k``)."""
    w = model_table(telemetry)
    if "hessian_top1" in w:
        w["hessian_spread"] = w["hessian_top1"] / w[f"hessian_top{top_k}"]
    return w


def edge_summary(series: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: where sharpness stands against 2/η before divergence.

    ``edge_step``: first cadence step with λ_max·η/2 ≥ 1; ``ratio_max``; ``ratio_after_edge``: the
    median ratio from ``edge_step`` on; ``frac_at_edge``: share of points with ratio ≥ 1.
    """
    rows = []
    for rec in runs.itertuples():
        w = pre_divergence(series[series.run == rec.run], rec.diverged_at).dropna(subset=["sharpness_over_edge"])
        ratio = w["sharpness_over_edge"].to_numpy()
        at = np.flatnonzero(ratio >= 1.0)
        rows.append({"run": rec.run, "ratio_max": float(ratio.max()) if ratio.size else math.nan,
                     "edge_step": float(w.step.iloc[at[0]]) if at.size else math.nan,
                     "ratio_after_edge": float(np.median(ratio[at[0]:])) if at.size else math.nan,
                     "frac_at_edge": float(at.size / ratio.size) if ratio.size else math.nan,
                     "lambda_max_final": float(w["hessian_top1"].iloc[-1]) if len(w) else math.nan,
                     "lr_at_end": float(w["lr"].iloc[-1]) if len(w) else math.nan,
                     "final_train_loss": float(w["train_loss"].iloc[-1]) if len(w) else math.nan})
    return runs.merge(pd.DataFrame(rows), on="run")


def lead_lag_table(series: pd.DataFrame, runs: pd.DataFrame, ll: LeadLagParams, cadence_every: int) -> pd.DataFrame:
    """Every run × (weight metric, Hessian metric) pair: :func:`lm_regimes.coupling_test` on the
    pre-divergence series; ``direction`` says whether the weights or the Hessian lead."""
    t = coupling_table(series, runs, ll.pairs(), ll, cadence_every)
    t = t.rename(columns={"x_metric": "weight_metric", "y_metric": "hessian_metric"})
    t["primary"] = (t.weight_metric == ll.primary[0]) & (t.hessian_metric == ll.primary[1])
    t["direction"] = t["direction"].replace({"x leads": "weights lead", "y leads": "Hessian leads"})
    return t


def pair_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (weight metric, Hessian metric): runs coupled beyond the surrogates (p < α) and the
    median lead (steps; > 0: weights lead) over those runs."""
    sig = table.assign(lead=table.lead_steps.where(table.significant))
    return (sig.groupby(["weight_metric", "hessian_metric"])
            .agg(significant=("significant", "sum"), lead=("lead", "median")).reset_index())


def hutchinson_precision(series: pd.DataFrame, probes: int) -> dict[str, float]:
    """Relative standard error of the Hutchinson trace estimates (median, 90th percentile) and
    the HVPs per measurement."""
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
    lead_lag: pd.DataFrame  # every run × (weight, Hessian) pair
    pairs: pd.DataFrame  # per pair: runs coupled and median lead
    cross_correlation: pd.DataFrame  # r(k) of the primary pair per run: run, regime, seed, lag, lag_steps, r
    hutchinson: dict[str, float]


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    """Series, edge summary per run, lead–lag tests of every pair and the Hutchinson precision."""
    rp: RunParams = tables.params  # type: ignore[assignment]
    runs = regime_runs(tables.runs)
    series = series_table(tables.telemetry, rp.hessian.top_k)
    summary = edge_summary(series, runs)
    table = lead_lag_table(series, summary, p.lead_lag, rp.cadence_every)
    x, y = p.lead_lag.primary
    ids = summary[["run", "regime", "seed"]]
    cc = cross_correlations(series, summary, x, y, p.lead_lag).merge(ids, on="run")
    cc["lag_steps"] = cc.lag * rp.cadence_every
    return Analysis(rp, tables.telemetry, series.merge(ids, on="run"), summary, table, pair_summary(table), cc,
                    hutchinson_precision(series, rp.hessian.hutchinson_probes))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Median λ_max·η/2 and median κ per regime, against step."""
    return base.step_curves(a.series, "regime", {"sharpness_over_edge": "median", "kappa": "median"})


def _diverged(df: pd.DataFrame) -> pd.Series:
    return df["outcome"].isin(DIVERGED_OUTCOMES)


def _regime_rows(summary: pd.DataFrame) -> list[dict[str, str]]:
    rows = []
    stable, marginal, unstable = (summary[summary.kind == k] for k in ("stable", "marginal", "unstable"))
    if len(stable):
        ok = bool((stable.ratio_max < 1).all() and not _diverged(stable).any())
        rows.append(finding("hessian_coevolution.stable_below_edge",
                            f"max λ_max·η/2 {mean_spread(stable.ratio_max)}; "
                            f"{int(_diverged(stable).sum())}/{len(stable)} diverged",
                            "reproduced" if ok else "not reproduced",
                            "sharpness measured on the full training set against 2/η of GD"))
    if len(marginal):
        reached = marginal.ratio_max >= 1
        ok = bool(reached.all() and not _diverged(marginal).any())
        rows.append(finding("hessian_coevolution.marginal_at_edge",
                            f"edge reached at step {mean_spread(marginal.edge_step)}; "
                            f"median λ_max·η/2 after it {mean_spread(marginal.ratio_after_edge)}; "
                            f"{int(reached.sum())}/{len(marginal)} reached, {int(_diverged(marginal).sum())} diverged",
                            "reproduced" if ok else "not reproduced",
                            "progressive sharpening up to 2/η, then edge-of-stability oscillation"
                            if ok else "the run did not reach the edge, or diverged"))
    if len(unstable):
        div = _diverged(unstable)
        rows.append(finding("hessian_coevolution.unstable_diverges",
                            f"{int(div.sum())}/{len(unstable)} diverged, at step {mean_spread(unstable.diverged_at)} "
                            f"(η there {mean_spread(unstable.lr_at_end)})",
                            "reproduced" if div.all() else "not reproduced",
                            "divergence = non-finite loss or loss above blowup_factor × initial"))
    return rows


def findings(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    """The *Findings vs the seed* rows, each verdict a rule applied to the measured runs."""
    ll, summary, table = p.lead_lag, a.summary, a.lead_lag
    rows = _regime_rows(summary)
    prim = table[table.primary & table.p_value.notna()]
    appr = prim[prim.kind.isin(APPROACHING)]
    pair = f"{ll.primary[0]} → {ll.primary[1]}"
    lead = appr[appr.significant & (appr.best_lag > 0)]
    n = len(appr)
    if n == 0:
        verdict, why = "inconclusive", f"no marginal/unstable run had ≥ {ll.min_points} pre-divergence points"
    elif len(lead) == n:
        verdict, why = "reproduced", "every approaching run: coupled (surrogate p < α) with the weights leading"
    elif len(lead) == 0:
        verdict, why = "not reproduced", "no approaching run shows a significant lead of the weights"
    else:
        verdict, why = "inconclusive", "the lead is significant in some approaching runs only"
    rows.append(finding(
        "hessian_coevolution.weights_lead_hessian",
        f"{pair}: {len(lead)}/{n} runs weight-leading and significant; K = {mean_spread(lead.lead_steps)} steps; "
        f"all runs: best lag {mean_spread(appr.lead_steps)} steps, abs(r) {mean_spread(appr.best_r.abs())}, "
        f"p {mean_spread(appr.p_value, '{:.2f}')}",
        verdict, why + f" (α = {ll.alpha}, {ll.surrogates} {ll.surrogate_kind} surrogates, lags ±{ll.max_lag} points)"))
    tested = table[table.p_value.notna()]
    coupled = tested.groupby("run")["significant_bonferroni"].any()
    n_pairs = tested.groupby(["weight_metric", "hessian_metric"]).ngroups
    sig = prim[prim.significant]
    if coupled.empty:
        verdict, why = "inconclusive", "no run long enough to test"
    elif coupled.sum() > len(coupled) / 2:
        verdict, why = "reproduced", "most runs have a weight–Hessian pair coupled beyond the surrogates"
    elif coupled.sum() == 0:
        verdict, why = "not reproduced", "no pair in any run survives the correction: the falsifier holds"
    else:
        verdict, why = "inconclusive", "a minority of runs is coupled"
    rows.append(finding(
        "hessian_coevolution.spectra_coupled",
        f"{int(coupled.sum())}/{len(coupled)} runs with ≥ 1 of {n_pairs} pairs significant after Bonferroni "
        f"(p < {ll.alpha}/{n_pairs}); primary pair ({pair}) p < {ll.alpha} in {len(sig)}/{len(prim)} runs "
        f"(stable {int(sig.kind.eq('stable').sum())}, marginal {int(sig.kind.eq('marginal').sum())}, "
        f"unstable {int(sig.kind.eq('unstable').sum())})",
        verdict, why))
    allp = tested[tested.kind.isin(APPROACHING)]
    bonf = allp[allp.significant_bonferroni]
    wl, hl = int((bonf.best_lag > 0).sum()), int((bonf.best_lag < 0).sum())
    rows.append(finding(
        "hessian_coevolution.weights_lead_all_pairs",
        f"{len(bonf)}/{len(allp)} run×pair tests significant after Bonferroni over {n_pairs} pairs: "
        f"{wl} weights lead, {hl} Hessian leads, {len(bonf) - wl - hl} synchronous",
        "inconclusive" if len(bonf) == 0 else ("reproduced" if wl > len(bonf) / 2 else "not reproduced"),
        "no pair survives the correction" if len(bonf) == 0 else "direction of the majority of significant tests"))
    return rows


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per regime: outcome counts, edge summary medians and the primary pair's lead–lag medians;
    and the Hutchinson precision."""
    out = {}
    prim = a.lead_lag[a.lead_lag.primary]
    for name, g in a.summary.groupby("regime", sort=False):
        t = prim[prim.regime == name]
        out[str(name)] = {
            "diverged_runs": float(_diverged(g).sum()), "diverged_at_median": float(g.diverged_at.median()),
            "ratio_max_median": float(g.ratio_max.median()), "edge_step_median": float(g.edge_step.median()),
            "ratio_after_edge_median": float(g.ratio_after_edge.median()),
            "final_train_loss_median": float(g.final_train_loss.median()),
            "primary_best_lag_steps_median": float(t.lead_steps.median()),
            "primary_best_r_median": float(t.best_r.median()), "primary_p_median": float(t.p_value.median()),
            "primary_significant_runs": float(t.significant.sum()),
        }
    return {"regimes": out, "hutchinson": a.hutchinson}
