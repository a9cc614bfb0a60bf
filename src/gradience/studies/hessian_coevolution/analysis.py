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

The seed's hypothesis is about *ill-conditioning* ("weight matrix ill-conditioning (high κ) may
precede Hessian ill-conditioning"), so the Hessian's conditioning is tested too, at the cold
measurements (every ``hessian.full_every`` steps, the only steps with λ₁₀ and tr H):
``hessian_condition`` = λ₁/λ_k (k = ``hessian.top_k``, where λ_k > 0) and ``hessian_concentration``
= λ₁·P/tr H (P parameters; where the Hutchinson trace exceeds 2 standard errors), against κ at
the same steps (:func:`conditioning_lead_lag`, lags in cold points). At the default cadence (20
steps, ~10 points per run) a lead of 1–30 steps cannot be resolved, and the verdict says so
through its budgets; conditioning every 4 steps cost 2.9× the CPU per run in a pilot (60 marginal
steps: 58 s at ``full_every`` 20, 170 s at 4), beyond this stage's budget.

Phase surrogates keep a series' spectrum, not its trend, and every run of a regime shares its
trends (sharpening, the η schedule): two trending levels beat surrogates whether or not they are
coupled within a run. The **cross-seed pairing null** (:func:`pairing_null`) asks the question the
surrogates cannot: the coupling statistic (max_k |r(k)|, as the surrogate test) of the matched pairs
(x of run i, y of run i) against the pairings of x of run i with y of run j of the same regime
(runs of a regime cut to their common pre-divergence window). The p-value is exact over all
within-regime pairings (∏ n_r! of them, the matched one included) when they are at most
``pairing.draws`` + 1, else from ``pairing.draws`` random ones; its smallest value is
1/∏ n_r!: 3 seeds per regime give 6 pairings per regime (1/6), 72 over regimes of 3, 3 and 2
runs (1/72), 216 over three regimes of 3 (1/216). One matched pair against its regime's 6
mismatched ordered pairs alone could reach only 1/7, so no verdict is taken per run.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from gradience.config import Section
from gradience.studies.hessian_coevolution.runs import RunParams
from gradience.studies.lm_regimes.analysis import (
    CouplingParams,
    coupling_table,
    cross_correlations,
    max_abs_cross_correlation,
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
CONDITIONING = ("hessian_condition", "hessian_concentration")  # λ₁/λ_k and λ₁·P/tr H, at the cold steps


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


class PairingParams(Section):
    """The cross-seed pairing null (:func:`pairing_null`) and the cold-step conditioning series."""

    draws: int = Field(default=9999, ge=19, description="random pairings when the exact count is larger")
    min_cold_points: int = Field(default=6, ge=4, description="cold measurements a run needs for the conditioning tests")
    seed: int = 0


class ReportParams(BaseReportParams):
    lead_lag: LeadLagParams = LeadLagParams()
    pairing: PairingParams = PairingParams()


def conditioning(series: pd.DataFrame, n_params: pd.Series, top_k: int) -> pd.DataFrame:
    """``series`` with the Hessian's conditioning at the cold steps: ``hessian_condition`` = λ₁/λ_k
    (where λ_k > 0) and ``hessian_concentration`` = λ₁·P/tr H (``n_params`` per run; where the
    Hutchinson trace exceeds 2 standard errors); NaN elsewhere."""
    out = series.copy()
    top1, topk = out.get("hessian_top1"), out.get(f"hessian_top{top_k}")
    if top1 is None or topk is None or "hessian_trace" not in out:
        return out.assign(**{c: math.nan for c in CONDITIONING})
    out["hessian_condition"] = (top1 / topk).where(topk > 0)
    trace, se = out["hessian_trace"], out["hessian_trace_stderr"]
    out["hessian_concentration"] = (top1 * out.run.map(n_params) / trace).where((trace > 2 * se) & (top1 > 0))
    return out


def cold_coupling(ll: LeadLagParams, pairing: PairingParams, full_every: int, cadence_every: int) -> CouplingParams:
    """The levels coupling test at the cold steps: ``ll``'s lag range in cold points (rounded up),
    ``pairing.min_cold_points`` points at least."""
    lag = max(1, math.ceil(ll.max_lag * cadence_every / full_every))
    return CouplingParams(max_lag=lag, detrend="none", surrogates=ll.surrogates, surrogate_kind=ll.surrogate_kind,
                          alpha=ll.alpha, min_points=max(2 * lag + 3, pairing.min_cold_points))


def cold_series(series: pd.DataFrame) -> pd.DataFrame:
    """The rows of the cold measurements (``hessian_top1`` measured)."""
    return series.dropna(subset=["hessian_top1"]) if "hessian_top1" in series else series.iloc[:0]


def conditioning_lead_lag(series: pd.DataFrame, runs: pd.DataFrame, ll: LeadLagParams, c: CouplingParams,
                          full_every: int) -> pd.DataFrame:
    """Every run × (κ, Hessian conditioning metric) at the cold steps (levels):
    :func:`lm_regimes.analysis.coupling_test`; ``lead_steps`` in steps (lags × ``full_every``)."""
    t = coupling_table(cold_series(series), runs, [(ll.primary, m) for m in CONDITIONING], c, full_every)
    t = t.rename(columns={"x_metric": "weight_metric", "y_metric": "hessian_metric"})
    t["direction"] = t["direction"].replace({"x leads": "weights lead", "y leads": "Hessian leads"})
    return t


def _exact_or_drawn(per_regime: list[np.ndarray], draws: int, seed: int) -> tuple[float, float, int]:
    """p of the matched total among all within-regime pairings, its smallest value and the number of
    pairings: exact when ∏ n_r! ≤ draws + 1, else over ``draws`` random pairings (+ the matched one)."""
    observed = float(sum(np.trace(S) for S in per_regime))
    count = math.prod(math.factorial(len(S)) for S in per_regime)
    if count <= draws + 1:
        total = np.zeros(1)
        for S in per_regime:
            sums = np.array([S[np.arange(len(S)), list(perm)].sum() for perm in itertools.permutations(range(len(S)))])
            total = np.add.outer(total, sums).ravel()
        return float(np.mean(total >= observed - 1e-12)), 1 / count, count
    rng = np.random.default_rng(seed)
    total = np.zeros(draws)
    for S in per_regime:
        perms = np.argsort(rng.random((draws, len(S))), axis=1)
        total += S[np.arange(len(S)), perms].sum(axis=1)
    return float((1 + np.sum(total >= observed - 1e-12)) / (1 + draws)), 1 / (1 + draws), draws + 1


def pairing_null(series: pd.DataFrame, runs: pd.DataFrame, x: str, y: str, c: CouplingParams,
                 pairing: PairingParams) -> tuple[dict[str, float], pd.DataFrame]:
    """Cross-seed pairing null of the coupling of ``x`` and ``y``.

    Per regime, the runs with ≥ ``c.min_points`` finite pre-divergence points, cut to the steps they
    all have; S[i, j] = max_k |r(k)| (|k| ≤ ``c.max_lag``) of prepared x of run
    i against y of run j (a regime whose common window is shorter than ``c.min_points`` is left
    out). Returns the summary (``matched`` and ``mismatched`` mean S, ``p_value`` of
    the matched total among the within-regime pairings, ``min_p``, ``pairings``, ``runs``,
    ``regimes``) and every ordered pair (``regime, x_run, y_run, matched, n, stat``).
    """
    rows, per_regime = [], []
    for regime, g in runs.groupby("regime", sort=False):
        prepared = {}
        for rec in g.itertuples():
            w = pre_divergence(series[series.run == rec.run], rec.diverged_at).sort_values("step")
            if x in w and y in w:
                w = w[np.isfinite(w[x]) & np.isfinite(w[y])]
                if len(w) >= c.min_points and np.ptp(w[x]) > 0 and np.ptp(w[y]) > 0:
                    prepared[rec.run] = w
        common = set.intersection(*(set(w.step) for w in prepared.values())) if prepared else set()
        if len(prepared) < 2 or len(common) < c.min_points:
            continue
        cut = {r: w[w.step.isin(common)] for r, w in prepared.items()}
        n = len(common)
        xs = {r: c.prepare(w[x].to_numpy()) for r, w in cut.items()}
        ys = {r: c.prepare(w[y].to_numpy()) for r, w in cut.items()}
        names = list(cut)
        S = np.array([[max_abs_cross_correlation(xs[i][None], ys[j], c.max_lag)[0] for j in names] for i in names])
        per_regime.append(S)
        rows += [{"regime": regime, "x_run": i, "y_run": j, "matched": i == j, "n": n, "stat": float(S[a, b])}
                 for a, i in enumerate(names) for b, j in enumerate(names)]
    pairs = pd.DataFrame(rows, columns=["regime", "x_run", "y_run", "matched", "n", "stat"])
    if not per_regime:
        return {"matched": math.nan, "mismatched": math.nan, "p_value": math.nan, "min_p": 1.0, "pairings": 1,
                "runs": 0, "regimes": 0}, pairs
    p, min_p, count = _exact_or_drawn(per_regime, pairing.draws, pairing.seed)
    return {"matched": float(pairs[pairs.matched].stat.mean()), "mismatched": float(pairs[~pairs.matched].stat.mean()),
            "p_value": p, "min_p": min_p, "pairings": count, "runs": int(pairs.matched.sum()),
            "regimes": len(per_regime)}, pairs


ALL_WEIGHTS = "all weight metrics"  # the pairing test of the mean S over every weight metric


def mean_pairing(pairs: pd.DataFrame, pairing: PairingParams) -> dict[str, float]:
    """The pairing null of S averaged over several tests' ordered pairs (``pairs``: rows of
    :func:`pairing_null` for the same runs): one test of all of them, no Bonferroni."""
    mean = pairs.groupby(["regime", "x_run", "y_run"], sort=False).stat.mean().reset_index()
    per_regime = []
    for _, g in mean.groupby("regime", sort=False):
        names = list(dict.fromkeys(g.x_run))
        per_regime.append(g.pivot(index="x_run", columns="y_run", values="stat").loc[names, names].to_numpy())
    if not per_regime:
        return {"matched": math.nan, "mismatched": math.nan, "p_value": math.nan, "min_p": 1.0, "pairings": 1,
                "runs": 0, "regimes": 0}
    p, min_p, count = _exact_or_drawn(per_regime, pairing.draws, pairing.seed)
    matched = mean.x_run == mean.y_run
    return {"matched": float(mean[matched].stat.mean()), "mismatched": float(mean[~matched].stat.mean()),
            "p_value": p, "min_p": min_p, "pairings": count, "runs": int(matched.sum()), "regimes": len(per_regime)}


def pairing_tests(series: pd.DataFrame, cold: pd.DataFrame, runs: pd.DataFrame, ll: LeadLagParams,
                  pairing: PairingParams, cc: CouplingParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pairing null of κ (primary) × λ_max in both views (every step), of the mean over every
    weight metric × λ_max (levels; :func:`mean_pairing`) and of κ × each Hessian conditioning metric
    (cold steps, levels): one summary row per test, and every ordered pair."""
    specs = ([(v, ll.primary, HESSIAN_METRIC, series, ll.view(v)) for v in VIEWS]
             + [("levels", m, HESSIAN_METRIC, series, ll.view("levels")) for m, _ in ll.pairs() if m != ll.primary]
             + [("levels", ll.primary, m, cold, cc) for m in CONDITIONING])
    summary, pairs = [], []
    for view, x, y, frame, c in specs:
        s, t = pairing_null(frame, runs, x, y, c, pairing)
        summary.append({"view": view, "weight_metric": x, "hessian_metric": y, **s})
        pairs.append(t.assign(view=view, weight_metric=x, hessian_metric=y))
    pairs = pd.concat(pairs, ignore_index=True)
    every = pairs[(pairs.view == "levels") & (pairs.hessian_metric == HESSIAN_METRIC)]
    if every.weight_metric.nunique() == len(ll.pairs()) and every.groupby("weight_metric").size().nunique() == 1:
        summary.append({"view": "levels", "weight_metric": ALL_WEIGHTS, "hessian_metric": HESSIAN_METRIC,
                        **mean_pairing(every, pairing)})
    return pd.DataFrame(summary), pairs


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
    conditioning: pd.DataFrame = field(default_factory=pd.DataFrame)  # every run × (κ, conditioning), cold steps
    pairing: pd.DataFrame = field(default_factory=pd.DataFrame)  # pairing null, one row per (view, pair)
    pairing_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)  # its every ordered (x run, y run)


def analyse(tables: Tables[RunParams], p: ReportParams) -> Analysis:
    """Series (with the Hessian conditioning), edge summary per run, lead–lag tests of every pair in
    both views and of κ × conditioning at the cold steps, the pairing nulls, Hutchinson precision."""
    rp = tables.params
    runs = regime_runs(tables.runs)
    series = conditioning(model_table(tables.telemetry), runs.set_index("run").n_params, rp.hessian.top_k)
    summary = edge_summary(series, runs)
    table = lead_lag_table(series, summary, p.lead_lag, rp.cadence_every)
    cc_cold = cold_coupling(p.lead_lag, p.pairing, rp.hessian.full_every, rp.cadence_every)
    cond = conditioning_lead_lag(series, summary, p.lead_lag, cc_cold, rp.hessian.full_every)
    pairing, pairing_pairs = pairing_tests(series, cold_series(series), summary, p.lead_lag, p.pairing, cc_cold)
    ids = summary[["run", "regime", "seed"]]
    cc = pd.concat([cross_correlations(series, summary, p.lead_lag.primary, HESSIAN_METRIC, p.lead_lag.view(v))
                    .assign(view=v) for v in VIEWS], ignore_index=True).merge(ids, on="run")
    cc["lag_steps"] = cc.lag * rp.cadence_every
    return Analysis(rp, tables.telemetry, series.merge(ids, on="run"), summary, table, pair_summary(table), cc,
                    hutchinson_precision(series, rp.hessian.hutchinson_probes), cond, pairing, pairing_pairs)


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Median λ_max·η/2 and median κ per regime, against step."""
    return step_curves(a.series, "regime", {"sharpness_over_edge": "median", "kappa": "median"})


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per regime: outcomes, edge summary medians, tracking cost and the primary pair's lead–lag
    medians in both views; the Hutchinson precision; the pairing nulls."""
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
    pairing = {f"{r.view}_{r.weight_metric}_{r.hessian_metric}".replace(" ", "_"): {k: float(getattr(r, k)) for k in
               ("matched", "mismatched", "p_value", "min_p", "pairings", "runs")} for r in a.pairing.itertuples()}
    return {"regimes": out, "hutchinson": a.hutchinson, "pairing_null": pairing}
