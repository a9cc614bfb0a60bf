"""Protocol A of seed 001: co-evolution of the weight spectrum and the Hessian spectrum.

A small Llama-architecture character LM is trained by full-batch gradient descent in three
regimes (see :mod:`gradience.studies.lm_regimes`): stable (control), marginal (progressive
sharpening brings λ_max to 2/η) and unstable (η ramped far past the edge until the run diverges).
All Hessian quantities are measured on the whole training set, the loss GD descends, so 2/η is
the exact stability edge.

Measurements (the training loop takes the full SVD of every weight matrix at each cadence step):

- **λ_max every step** (``cadence_every: 1`` in the default profile): :func:`edge_probe` tracks the
  top Hessian eigenpair with :func:`gradience.telemetry.curvature.lanczos_top_eigenpair`,
  warm-started from the previous step's eigenvector and stopped at a relative residual
  ``hessian.track_tol`` (``lambda_max``, ``sharpness_over_edge`` = λ_max·η/2, its residual and the
  HVPs spent are logged). Every ``hessian.full_every`` steps a *cold* ARPACK Lanczos gives the
  top-k eigenvalues and the Hutchinson trace (± standard error); when the cold λ₁ exceeds the
  tracked one beyond the residual (the tracker followed a branch that was overtaken), tracking
  restarts cold (``lambda_max_restart``); ``lambda_max_cold_gap`` records the disagreement.

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
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator
from scipy.stats import binomtest

from gradience.config import Section
from gradience.reporting import Budget, judged, mean_spread
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
from gradience.telemetry import curvature
from gradience.telemetry.probes import hessian_values, measurement_batch
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.training import Probe, StepContext

WEIGHT_METRICS = ("kappa", "spectral_norm_max", "stable_rank_mean", "effective_rank", "alpha_mean",
                  "weight_norm")
HESSIAN_METRIC = "lambda_max"  # tracked every cadence step; the lead-lag partner of every weight metric
APPROACHING = ("marginal", "unstable")
VIEWS = ("levels", "residuals")


class HessianProbeParams(Section):
    top_k: int = Field(default=10, ge=2, description="cold Lanczos eigenvalues every full_every steps")
    hutchinson_probes: int = Field(default=100, ge=2)
    lanczos_tol: float = Field(default=1e-3, ge=0, lt=1, description="ARPACK relative residual tolerance")
    full_every: int = Field(default=20, ge=1, description="steps between cold top-k + trace measurements")
    track_tol: float = Field(default=1e-2, gt=0, lt=1, description="tracked λ_max: stop at ‖Hv − λv‖ ≤ tol·λ")
    track_max_hvp: int = Field(default=40, ge=2, description="HVPs per tracked step at most")
    measure_batch: int = Field(default=0, ge=0, description="first n training windows; 0: all (GD's loss)")
    seed: int = 0


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


class RunParams(RegimeRunParams):
    hessian: HessianProbeParams = HessianProbeParams()

    @model_validator(mode="after")
    def _full_on_cadence(self) -> RunParams:
        if self.hessian.full_every % self.cadence_every:
            raise ValueError(f"hessian.full_every={self.hessian.full_every} must be a multiple of "
                             f"cadence_every={self.cadence_every} (cold measurements fall on cadence steps)")
        return self


class ReportParams(base.ReportParams):
    lead_lag: LeadLagParams = LeadLagParams()


DATA = ("text",)
TABLES = ("telemetry", "spectra")
EDGE_KEYS = ("hessian_lambda_max", "edge_2_over_lr", "sharpness_over_edge")


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    return [base.Job(p, r.name, s, data_dir, spec=r) for r in p.regimes for s in p.seeds]


def edge_probe(h: HessianProbeParams) -> Probe:
    """λ_max tracked at every cadence step (warm-started Lanczos), the cold top-k and trace every
    ``h.full_every`` steps, on :func:`measurement_batch` ``(split, h.measure_batch)``."""
    state: dict[str, torch.Tensor | None] = {"v": None}

    def track(hvp: curvature.HVP, theta: torch.Tensor, v0: torch.Tensor | None) -> curvature.Eigenpair | None:
        if v0 is None:
            v0 = torch.randn(theta.shape, generator=torch.Generator().manual_seed(h.seed), dtype=theta.dtype)
            v0 = v0.to(theta.device)
        try:
            ep = curvature.lanczos_top_eigenpair(hvp, v0, h.track_tol, max_iter=h.track_max_hvp)
        except (np.linalg.LinAlgError, ValueError):
            return None
        return ep if math.isfinite(ep.value) and bool(torch.isfinite(ep.vector).all()) else None

    def probe(ctx: StepContext) -> Iterable[tuple[str, str, float]]:
        batch = measurement_batch(ctx.split, h.measure_batch)
        loss_fn, theta = curvature.make_loss_fn(ctx.model, batch)
        hvp = curvature.hvp_fn(loss_fn, theta)
        ep = track(hvp, theta, state["v"])
        out: dict[str, float] = {}
        if ctx.step % h.full_every == 0:
            cold = hessian_values(ctx.model, batch, ctx.lr, h.top_k, h.hutchinson_probes, h.lanczos_tol, h.seed)
            out |= {k: v for k, v in cold.items() if k not in EDGE_KEYS}
            top1 = cold["hessian_top1"]
            restart = ep is not None and top1 > ep.value + max(ep.residual, h.track_tol * abs(ep.value))
            out["lambda_max_restart"] = float(restart)
            if restart:
                n_before = ep.n_hvp
                ep = track(hvp, theta, None)
                if ep is not None:
                    ep = curvature.Eigenpair(ep.value, ep.vector, ep.residual, ep.n_hvp + n_before)
            out["lambda_max_cold_gap"] = (top1 - ep.value) / abs(top1) if ep is not None else math.nan
        state["v"] = ep.vector if ep is not None else None
        if ep is None:
            out |= {"lambda_max": math.nan, "sharpness_over_edge": math.nan, "lambda_max_failed": 1.0}
        else:
            out |= {"lambda_max": ep.value, "lambda_max_residual": ep.residual, "lambda_max_n_hvp": float(ep.n_hvp),
                    "lambda_max_failed": 0.0} | curvature.sharpness_vs_edge(ep.value, ctx.lr)
            del out["hessian_lambda_max"]
        return [(MODEL_SCOPE, k, float(v)) for k, v in out.items()]

    return probe


def run_one(job: base.Job) -> base.RunOutput:
    """Train one regime × seed with :func:`edge_probe`."""
    p: RunParams = job.params  # type: ignore[assignment]
    return train_regime(job, [edge_probe(p.hessian)], p.spectra_every)


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

        rows.append({"run": rec.run, "n_points": len(w), "ratio_max": float(ratio.max()) if ratio.size else math.nan,
                     "edge_step": float(w.step.iloc[at[0]]) if at.size else math.nan,
                     "ratio_after_edge": float(np.median(ratio[at[0]:])) if at.size else math.nan,
                     "frac_at_edge": float(at.size / ratio.size) if ratio.size else math.nan,
                     "steps_after_edge": last - float(w.step.iloc[at[0]]) if at.size else math.nan,
                     "hvp_per_step": _agg(w, "lambda_max_n_hvp", "median"),
                     "cold_gap_max": float(w["lambda_max_cold_gap"].abs().max()) if "lambda_max_cold_gap" in w else math.nan,
                     "restarts": _agg(w, "lambda_max_restart", "sum"),
                     "lambda_max_final": float(w["lambda_max"].iloc[-1]) if len(w) else math.nan,
                     "lr_at_end": float(w["lr"].iloc[-1]) if len(w) else math.nan,
                     "final_train_loss": float(w["train_loss"].iloc[-1]) if len(w) else math.nan})
    return runs.merge(pd.DataFrame(rows), on="run")


def lead_lag_table(series: pd.DataFrame, runs: pd.DataFrame, ll: LeadLagParams, cadence_every: int) -> pd.DataFrame:
    """Every view × run × (weight metric, λ_max): :func:`lm_regimes.coupling_test` on the
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


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    """Series, edge summary per run, lead–lag tests of every pair in both views, Hutchinson precision."""
    rp: RunParams = tables.params  # type: ignore[assignment]
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
    return base.step_curves(a.series, "regime", {"sharpness_over_edge": "median", "kappa": "median"})


def _diverged(df: pd.DataFrame) -> pd.Series:
    return df["outcome"].isin(DIVERGED_OUTCOMES)


def lag_budgets(ll: LeadLagParams, cadence_every: int) -> list[Budget]:
    """What a lead of the predicted size needs from the lag analysis: a lag range reaching the
    largest predicted lead, and a cadence no coarser than the smallest."""
    lo, hi = ll.predicted_lead
    return [Budget("lag range ± steps vs the largest predicted lead", ll.max_lag * cadence_every, hi),
            Budget("smallest predicted lead in cadence steps", lo / cadence_every, 1)]


def surrogate_budget(ll: LeadLagParams, tests: int = 1) -> Budget:
    """Enough surrogates that the smallest attainable p, 1/(1 + m), is at most half the threshold
    α/tests (a test that cannot reach p < α cannot find coupling)."""
    return Budget("surrogates + 1", ll.surrogates + 1, 2 * tests / ll.alpha)


def _edge_runs(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary.kind.isin(APPROACHING) & (summary.ratio_max >= 1)]


def _regime_rows(summary: pd.DataFrame, p: RunParams) -> list[dict[str, str]]:
    rows = []
    stable, marginal, unstable = (summary[summary.kind == k] for k in ("stable", "marginal", "unstable"))
    per_step = Budget("λ_max measurements per step", 1 / p.cadence_every, 1)
    if len(stable):
        ok = bool((stable.ratio_max < 1).all() and not _diverged(stable).any())
        need = float(marginal.edge_step.median()) if marginal.edge_step.notna().any() else math.nan
        rows.append(judged(
            "hessian_coevolution.stable_below_edge",
            f"max λ_max·η/2 {mean_spread(stable.ratio_max)} over every step; "
            f"{int(_diverged(stable).sum())}/{len(stable)} diverged",
            ok, "sharpness on the full training set against 2/η of GD, every step",
            [per_step, Budget("stable steps vs the marginal runs' edge step", p.steps,
                              need if math.isfinite(need) else math.inf)], absence=True))
    if len(marginal):
        reached = marginal.ratio_max >= 1
        ok = bool(reached.all() and not _diverged(marginal).any())
        rows.append(judged(
            "hessian_coevolution.marginal_at_edge",
            f"edge reached at step {mean_spread(marginal.edge_step)}; median λ_max·η/2 after it "
            f"{mean_spread(marginal.ratio_after_edge)}; {int(reached.sum())}/{len(marginal)} reached, "
            f"{int(_diverged(marginal).sum())} diverged",
            ok, "progressive sharpening up to 2/η, then edge-of-stability oscillation" if ok
            else "a run did not reach the edge, or diverged",
            [per_step, Budget("steps held after the edge (fewest)", float(marginal.steps_after_edge.min()), 50)]))
    if len(unstable):
        div = _diverged(unstable)
        rows.append(judged(
            "hessian_coevolution.unstable_diverges",
            f"{int(div.sum())}/{len(unstable)} diverged, at step {mean_spread(unstable.diverged_at)} "
            f"(η there {mean_spread(unstable.lr_at_end)}, λ_max(θ₀)·η/2 {mean_spread(unstable.lr_at_end * unstable.lambda_max_init / 2)})",
            bool(div.all()), "divergence = non-finite loss or loss above blowup_factor × initial",
            [Budget("η reached in units of the initial edge 2/λ_max(θ₀) (smallest)",
                    float((unstable.lr_at_end * unstable.lambda_max_init / 2).min()), 2.0)]))
    return rows


def _lead_row(claim: str, view: str, prim: pd.DataFrame, summary: pd.DataFrame, ll: LeadLagParams,
              rp: RunParams) -> dict[str, str]:
    edge = _edge_runs(summary)
    t = prim[(prim.view == view) & prim.run.isin(edge.run) & prim.p_value.notna()]
    lead = t[t.significant & (t.best_lag > 0)]
    lag = t[t.significant & (t.best_lag < 0)]
    p_binom = float(binomtest(len(lead), len(t), ll.alpha, "greater").pvalue) if len(t) else math.nan
    holds = bool(len(t) and p_binom < ll.alpha and len(lead) > len(lag))
    n_pts = float(t.n.min()) if len(t) else 0.0
    budgets = [Budget("approaching runs at the edge, tested", len(t), ll.min_runs),
               Budget("points per analysed run (fewest)", n_pts, ll.min_points), *lag_budgets(ll, rp.cadence_every),
               surrogate_budget(ll)]
    return judged(
        claim,
        f"{view}, {ll.primary} vs λ_max: weights lead significantly in {len(lead)}/{len(t)} runs at the edge "
        f"(K = {mean_spread(lead.lead_steps)} steps), λ_max leads in {len(lag)}; binomial p {p_binom:.3g} "
        f"vs α per run; all runs: best lag {mean_spread(t.lead_steps)} steps, r {mean_spread(t.best_r)}",
        holds, f"surrogate test per run (α = {ll.alpha}, {ll.surrogates} {ll.surrogate_kind} surrogates), "
        f"predicted lead {ll.predicted_lead[0]}–{ll.predicted_lead[1]} steps", budgets)


def findings(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    """The *Findings vs the seed* rows; every verdict is :func:`reporting.judged` on its budgets."""
    ll, summary, table, rp = p.lead_lag, a.summary, a.lead_lag, a.runs
    rows = _regime_rows(summary, rp)
    prim = table[table.primary]
    rows.append(_lead_row("hessian_coevolution.weights_lead_hessian", "levels", prim, summary, ll, rp))
    rows.append(_lead_row("hessian_coevolution.weights_lead_hessian_residuals", "residuals", prim, summary, ll, rp))
    tested = table[table.p_value.notna()]
    n_pairs = len(ll.pairs())
    per_view = {v: tested[tested.view == v].groupby("run")["significant_bonferroni"].any() for v in VIEWS}
    coupled = per_view["levels"]
    kinds = summary.set_index("run").kind
    by_kind = ", ".join(f"{k} {int(coupled[kinds[coupled.index] == k].sum())}/{int((kinds[coupled.index] == k).sum())}"
                        for k in ("stable", "marginal", "unstable"))
    res = per_view["residuals"]
    n_pts = float(tested[tested.view == "levels"].n.min()) if len(coupled) else 0.0
    rows.append(judged(
        "hessian_coevolution.spectra_coupled",
        f"levels: {int(coupled.sum())}/{len(coupled)} runs with ≥ 1 of {n_pairs} weight metrics coupled to λ_max "
        f"after Bonferroni (p < {ll.alpha}/{n_pairs}; {by_kind}); residuals: {int(res.sum())}/{len(res)} runs",
        bool(len(coupled) and coupled.sum() > len(coupled) / 2) if len(coupled) else None,
        "falsifier 1 tested on the levels (co-evolution); verdict: most runs coupled",
        [Budget("runs tested", len(coupled), ll.min_runs), Budget("points per analysed run (fewest)", n_pts, ll.min_points),
         surrogate_budget(ll, n_pairs)]))
    edge = _edge_runs(summary)
    allp = tested[(tested.view == "levels") & tested.run.isin(edge.run)]
    bonf = allp[allp.significant_bonferroni]
    wl, hl = int((bonf.best_lag > 0).sum()), int((bonf.best_lag < 0).sum())
    rows.append(judged(
        "hessian_coevolution.weights_lead_all_pairs",
        f"levels, runs at the edge: {len(bonf)}/{len(allp)} run×pair tests significant after Bonferroni over "
        f"{n_pairs} pairs: {wl} weights lead, {hl} λ_max leads, {len(bonf) - wl - hl} synchronous",
        (wl > len(bonf) / 2) if len(bonf) else None,
        "direction of the majority of significant tests" if len(bonf) else "no pair survives the correction",
        [Budget("approaching runs at the edge, tested", allp.run.nunique(), ll.min_runs),
         *lag_budgets(ll, rp.cadence_every), surrogate_budget(ll, n_pairs)]))
    return rows


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per regime: outcomes, edge summary medians, tracking cost and the primary pair's lead–lag
    medians in both views; the Hutchinson precision."""
    out = {}
    prim = a.lead_lag[a.lead_lag.primary]
    for name, g in a.summary.groupby("regime", sort=False):
        m = {"diverged_runs": float(_diverged(g).sum()), "diverged_at_median": float(g.diverged_at.median()),
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
