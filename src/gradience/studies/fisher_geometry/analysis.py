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
- **Matched loss, on a fixed loss grid.** Each run's pre-divergence series is read at the same
  ``analysis.grid_points`` loss levels, evenly spaced from ``analysis.start_loss`` down to
  ``analysis.matched_loss`` = L* (nats): at each level ℓ, the first passage of the training loss
  below ℓ, linearly interpolated (in loss) between the last cadence point above ℓ and the first at
  or below it (:func:`loss_grid`). Every run so has the same number of points in the window,
  whatever its speed (a min over 22 raw points against one over 2 would bias the fast runs up).
  The H3 statistic of a run is min A over the grid; "at L*" values are the grid's last level.
  A run that never reaches L* counts against a budget.
- **The η-matched comparison.** Comparisons are judged between ``analysis.reference`` (a stable
  regime; by default the unstable arm's own ramp capped below the edge, :mod:`.runs`) and the
  unstable regime, so a difference is not just small η against large η; the slow stable arm's
  values are shown beside them.
- **H3 threshold on held-out seeds.** T is chosen on the runs of ``analysis.calibration_seeds`` (the
  midpoint of the gap that best separates stable from unstable min A, balanced accuracy) and
  scored on the other seeds: H3 holds if every held-out stable run stays above T and every held-out
  unstable run falls to or below it.
- "Instability ≈ low NG alignment" (Protocol C, step 4) and "instability ≈ extreme anisotropy"
  compare the regimes at matched loss with a one-sided Mann–Whitney test at ``analysis.alpha``
  (needs ≥ 4 runs per regime at L* to reach p < 0.05).
- Falsifier 3 ("Fisher and weight spectra are unrelated in practice") against a **cross-seed null**
  (:func:`cross_seed_table`): at L*, the share of the (top-``vector_k``) Fisher of run i inside the
  top-r singular subspaces of its own weights, against the same share with the weights of every
  other run j of the same regime at the same loss. If the Fisher were unrelated to its own weight
  spectra, W_i would be exchangeable with the W_j and the rank of the own share among the m + 1
  uniform; the test (:func:`cross_seed_test`) is the mean rank fraction against that null
  (exact distribution of a sum of independent uniform ranks). The W₀ ratio A(t) cannot fail this
  way (W_t − W₀ is written by the gradients whose span F is), so it is reported, not judged.
  The co-variation of (weight, Fisher) metric series (``analysis.pairs``: detrended
  cross-correlation, surrogate p, Bonferroni) is reported beside it.
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
    reference: str = Field(default="fast_stable", description="the stable regime compared with the unstable one")
    grid_points: int = Field(default=9, ge=2, description="loss levels from start_loss to L*, every run read at each")
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
    names = {r.name: r.kind for r in rp.regimes}
    if names.get(a.reference) != "stable":
        raise ValueError(f"fisher_geometry.report.analysis.reference={a.reference!r} must name a stable regime of "
                         f"fisher_geometry.runs.regimes ({names})")
    if f.vector_losses and (a.kind != f.vector_kind or not any(math.isclose(a.matched_loss, v) for v in f.vector_losses)):
        raise ValueError(f"the cross-seed null needs vectors of the {a.kind!r} Fisher at L* = {a.matched_loss}: runs store "
                         f"{f.vector_kind!r} at {f.vector_losses}; change one, or rerun the training stage")
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


def loss_grid(w: pd.DataFrame, columns: list[str], levels: np.ndarray) -> pd.DataFrame:
    """One run's rows (by step) read at each loss level ℓ of ``levels``: the first passage of
    ``train_loss`` to ≤ ℓ, linearly interpolated in loss between the point before it (loss > ℓ) and
    it; the value at the first point when that is already ≤ ℓ; NaN rows for levels never reached.
    Columns ``level``, ``step`` (interpolated too) and ``columns``."""
    w = w.sort_values("step")
    loss = w.train_loss.to_numpy(float)
    vals = w[["step", *columns]].to_numpy(float)
    out = np.full((len(levels), vals.shape[1]), np.nan)
    for i, lev in enumerate(levels):
        hit = np.flatnonzero(loss <= lev)
        if not len(hit):
            continue
        k = hit[0]
        if k == 0:
            out[i] = vals[0]
            continue
        frac = (loss[k - 1] - lev) / (loss[k - 1] - loss[k])
        out[i] = vals[k - 1] + frac * (vals[k] - vals[k - 1])
    return pd.DataFrame(out, columns=["step", *columns]).assign(level=levels)


def grid_levels(a: AnalysisParams, level: float | None = None) -> np.ndarray:
    """The loss grid: ``a.grid_points`` levels from ``a.start_loss`` down to ``level`` (default L*)."""
    return np.linspace(a.start_loss, a.matched_loss if level is None else level, a.grid_points)


def run_summary(series: pd.DataFrame, runs: pd.DataFrame, a: AnalysisParams, level: float | None = None) -> pd.DataFrame:
    """Per run, before divergence: the matched-loss step t* (first cadence step with train loss ≤
    ``level``, default ``a.matched_loss``); A over the loss grid (:func:`loss_grid`, ``start_loss`` →
    ``level``, the same levels in every run: min, median; NaN unless the run reaches ``level``),
    ``n_points`` = the raw cadence points in that window, and A over every step > 0 before divergence
    (``{m}_min_all``; A = 1 at step 0 by construction); NG alignment, span fraction, participation
    ratio at ``level`` (the grid's last level; and the participation ratio's pre-divergence minimum)."""
    level = a.matched_loss if level is None else level
    levels = grid_levels(a, level)
    cols = [*ALIGNMENTS.values(), "ng_alignment", "span_fraction", "fisher_eff_dim", "ng_alignment_full"]
    rows = []
    for rec in runs.itertuples():
        w = pre_divergence(series[series.run == rec.run], rec.diverged_at).dropna(subset=["fisher_top1"])
        t = matched_step(w, level)
        late = w[w.step > 0]
        start = matched_step(w, a.start_loss)
        raw = w[(w.step >= start) & (w.step <= t)] if np.isfinite(t) else w.iloc[:0]
        g = loss_grid(w, [c for c in cols if c in w], levels) if np.isfinite(t) else pd.DataFrame(columns=cols)
        at = g.iloc[-1] if len(g) else pd.Series(dtype=float)
        row = {"run": rec.run, "matched_step": t, "n_points": len(raw), "grid_points": float(g[cols[0]].notna().sum())}
        for short, col in ALIGNMENTS.items():
            win = g[col] if col in g else pd.Series(dtype=float)
            row |= {f"{short}_min": float(win.min()), f"{short}_median": float(win.median()),
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


def comparison_arms(summary: pd.DataFrame, reference: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs of the ``reference`` stable regime and of the unstable regime(s)."""
    return summary[summary.regime == reference], summary[summary.kind == "unstable"]


def h3_test(summary: pd.DataFrame, measure: str, calibration_seeds: list[int], reference: str) -> dict[str, float]:
    """Hypothesis 3 for one alignment ``measure`` on held-out seeds: T from the calibration seeds'
    per-run min A (loss grid; runs that reached L*) of the ``reference`` stable regime and the
    unstable one, then how many held-out stable runs stay above T and how many held-out unstable
    runs fall to or below it."""
    s = summary[summary.matched_step.notna() & summary[f"{measure}_min"].notna()]
    arms = dict(zip(("stable", "unstable"), comparison_arms(s, reference), strict=True))
    col = f"{measure}_min"
    part = {(k, c): arms[k][arms[k].seed.isin(calibration_seeds) == bool(c)][col].to_numpy()
            for k in ("stable", "unstable") for c in (1, 0)}
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
                  **h3_test(summary, m, a.calibration_seeds, a.reference)} for m in ALIGNMENTS]
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


def _top_subspaces(weights: pd.DataFrame, rank: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for rec in weights.itertuples():
        W = np.asarray(rec.values, float).reshape(rec.rows, rec.cols)
        U, _, Vh = np.linalg.svd(W, full_matrices=False)
        r = min(rank, *W.shape)
        out[rec.scope] = (U[:, :r], Vh[:r].T)
    return out


def fisher_share(fisher_rows: pd.DataFrame, subspaces: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """Share of the stored (top-k, √λ-scaled) Fisher inside the matrices' subspaces span{u_a v_bᵀ}:
    Σ ‖Uᵀ B V‖² / Σ ‖B‖² over eigenvectors and matrices (the :func:`fisher.subspace_share` ratio)."""
    inside = energy = 0.0
    for rec in fisher_rows.itertuples():
        B = np.asarray(rec.values, float).reshape(rec.rows, rec.cols)
        U, V = subspaces[rec.scope]
        inside += float(((U.T @ B @ V) ** 2).sum())
        energy += float((B * B).sum())
    return inside / energy if energy > 0 else math.nan


def cross_seed_table(vectors: pd.DataFrame, runs: pd.DataFrame, level: float, rank: int) -> pd.DataFrame:
    """At loss ``level``: for every run i and every run j of the same regime with vectors there, the
    share of F_i inside W_j's top-``rank`` singular subspaces (:func:`fisher_share`); ``own`` marks
    j = i. Columns ``run, partner, regime, own, share``."""
    cols = ["run", "partner", "regime", "own", "share"]
    if not len(vectors):
        return pd.DataFrame(columns=cols)
    v = vectors[np.isclose(vectors.level, level)]
    rows = []
    for regime, g in runs[runs.run.isin(v.run)].groupby("regime", sort=False):
        sub = {r: _top_subspaces(v[(v.run == r) & (v.item == "weight")], rank) for r in g.run}
        for i in g.run:
            fi = v[(v.run == i) & (v.item == "fisher")]
            rows += [{"run": i, "partner": j, "regime": regime, "own": i == j, "share": fisher_share(fi, sub[j])}
                     for j in g.run]
    return pd.DataFrame(rows, columns=cols)


def cross_seed_test(table: pd.DataFrame, draws: int = 20000, seed: int = 0) -> dict[str, float]:
    """Is each run's own share above its cross-seed shares? Per run i with m ≥ 1 partners, the rank
    fraction u_i = (#{j: cross < own} + ½ #{ties}) / m; the statistic is the mean u. Under the null
    (own weights exchangeable with the others') the own share's rank is uniform on 0…m, independently
    across runs (taken as such): p = P(mean u ≥ observed) by ``draws`` draws. ``min_p`` = Π 1/(m_i + 1),
    the p of every own share on top. ``ratio_median``: median over runs of own / median cross."""
    us, ms, ratios = [], [], []
    for _, g in table.groupby("run", sort=False):
        own, cross = g[g.own].share.to_numpy(), g[~g.own].share.dropna().to_numpy()
        if len(own) != 1 or not len(cross) or not np.isfinite(own[0]):
            continue
        us.append(((cross < own[0]).sum() + 0.5 * (cross == own[0]).sum()) / len(cross))
        ms.append(len(cross))
        ratios.append(own[0] / np.median(cross))
    if not us:
        return {"runs": 0.0, "mean_rank": math.nan, "p_value": math.nan, "min_p": math.nan, "ratio_median": math.nan,
                "own_on_top": math.nan}
    ms_a = np.asarray(ms)
    rng = np.random.default_rng(seed)
    null = (rng.integers(0, ms_a + 1, size=(draws, len(ms))) / ms_a).mean(1)
    obs = float(np.mean(us))
    return {"runs": float(len(us)), "mean_rank": obs, "p_value": float((1 + (null >= obs - 1e-12).sum()) / (1 + draws)),
            "min_p": float(np.prod(1.0 / (ms_a + 1))), "ratio_median": float(np.median(ratios)),
            "own_on_top": float((np.asarray(us) == 1).sum())}


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
    cross_seed: pd.DataFrame  # :func:`cross_seed_table` at L*
    cross_test: dict[str, float]  # :func:`cross_seed_test`


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
    vectors = tables.frames.get("vectors", pd.DataFrame())
    cross = cross_seed_table(vectors, runs, a.matched_loss, rp.fisher.overlap_rank)
    return Analysis(rp, tables.telemetry, series.merge(runs[["run", "regime", "seed"]], on="run"), summary, coupling,
                    {m: h3_test(summary, m, a.calibration_seeds, a.reference) for m in ALIGNMENTS},
                    h3_sensitivity(series, runs, a), per_matrix_enrichment(tables.telemetry, runs, a), cross,
                    cross_seed_test(cross))


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
            "sharpness_over_edge_max": float(a.series[a.series.run.isin(g.run)].get("sharpness_over_edge", pd.Series(dtype=float)).max()),
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
    return {"regimes": out, "h3": a.h3, "matched_loss": p.analysis.matched_loss, "cross_seed": a.cross_test}
