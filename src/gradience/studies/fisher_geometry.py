"""Protocol C of seed 001: information geometry (Fisher) against the weight spectra over training.

The character LM of :mod:`gradience.studies.lm_regimes` is trained by full-batch GD in a stable
and an unstable regime. Every ``cadence_every`` steps, :func:`fisher_probe` forms the per-sample
gradients G of a fixed measurement batch (the first ``measure_batch`` training windows; one
"sample" = one window) and measures the empirical and the sampled ("true") Fisher F = GᵀG/n
through their n × n Gram matrix (:mod:`gradience.telemetry.fisher`): top eigenvalues, tr F, tr F²,
the participation ratio (tr F)²/tr F², the decay exponent of √λ_i, the Fisher–weight alignment and
the natural-gradient alignment.

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
  surrogate p-value (:func:`lm_regimes.coupling_test`), Bonferroni over the pairs, and on A(t).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from scipy.stats import mannwhitneyu
from torch import Tensor, nn

from gradience.config import Section
from gradience.reporting import Budget, judged, mean_spread
from gradience.studies import base
from gradience.studies.lm_regimes import (
    DIVERGED_OUTCOMES,
    CouplingParams,
    RegimeRunParams,
    coupling_table,
    model_table,
    pre_divergence,
    regime_runs,
    train_regime,
)
from gradience.telemetry import fisher
from gradience.telemetry.probes import FISHER_KIND_PREFIX, fisher_eigensystem, measurement_batch
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.telemetry.spectral import power_law_alpha
from gradience.training import Probe, StepContext

FisherKind = Literal["empirical", "true"]
WEIGHT_METRICS = ("kappa", "spectral_norm_max", "stable_rank_mean", "effective_rank", "alpha_mean", "weight_norm")
FISHER_METRICS = ("fisher_top1", "fisher_trace", "fisher_eff_dim", "fisher_kappa_k", "fisher_alpha",
                  "fisher_overlap_w0_enrichment", "fisher_share_w0_enrichment")
THRESHOLD_CLAIMS = {"share": "fisher_geometry.alignment_threshold_share",
                    "overlap": "fisher_geometry.alignment_threshold_overlap"}
ALIGNMENTS = {"share": "fisher_share_w0_enrichment", "overlap": "fisher_overlap_w0_enrichment"}
MIN_MW_RUNS = 4  # runs per regime a one-sided Mann–Whitney test needs to reach p < 0.05 (1/70)


class FisherProbeParams(Section):
    top_k: int = Field(default=10, ge=2)
    kinds: list[FisherKind] = Field(default=["empirical", "true"], min_length=1)
    dampings: list[float] = Field(default=[1e-3, 1e-2, 1e-1], min_length=1,
                                  description="relative: λ = δ·λ₁(F); the in-span alignment also uses δ = 0 (F⁺)")
    overlap_rank: int = Field(default=1, ge=1, description="top-r singular pairs of each weight matrix")
    measure_batch: int = Field(default=0, ge=0, description="first n training windows; 0: all")
    seed: int = 0

    @field_validator("dampings")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not d > 0 for d in v):
            raise ValueError(f"every damping must be > 0, got {v}")
        return v


DEFAULT_PAIRS = [("alpha_mean", "fisher_alpha"), ("kappa", "fisher_kappa_k"), ("spectral_norm_max", "fisher_top1"),
                 ("effective_rank", "fisher_eff_dim"), ("stable_rank_mean", "fisher_eff_dim")]


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


class RunParams(RegimeRunParams):
    fisher: FisherProbeParams = FisherProbeParams()


class ReportParams(base.ReportParams):
    analysis: AnalysisParams = AnalysisParams()


DATA = ("text",)
TABLES = ("telemetry", "spectra")


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


# ------------------------------------------------------------------------------------ the probe


def _ratios(parts: dict[str, tuple[float, float, float]]) -> tuple[float, float, float]:
    inside, energy, chance = (sum(v[i] for v in parts.values()) for i in range(3))
    return inside, energy, chance


def alignment_values(G: Tensor, v: Tensor, layout: list[tuple[str, torch.Size]], now: dict[str, Tensor],
                     w0: dict[str, Tensor], rank: int) -> tuple[dict[str, float], list[tuple[str, str, float]]]:
    """Model-level Fisher–weight alignment of G (``share``) and of F's top eigenvector v
    (``overlap``) with the current weights and with W₀ (:func:`fisher.subspace_share`):
    ``fisher_{m}`` (share of energy inside the current top-r subspaces), ``fisher_{m}_chance``,
    ``fisher_{m}_enrichment`` (over a random direction), ``fisher_{m}_w0`` (share inside W₀'s) and
    ``fisher_{m}_w0_enrichment`` = inside(W_t) / inside(W₀); and per-matrix ``fisher_share``,
    ``fisher_share_w0`` triples (scope = parameter name)."""
    values, per = {}, []
    for m, rows in (("share", G), ("overlap", v[None])):
        cur, ref = fisher.subspace_share(rows, layout, now, rank), fisher.subspace_share(rows, layout, w0, rank)
        (inside, energy, chance), (inside0, _, _) = _ratios(cur), _ratios(ref)
        if energy > 0:
            values |= {f"fisher_{m}": inside / energy, f"fisher_{m}_chance": chance / energy,
                       f"fisher_{m}_enrichment": inside / chance, f"fisher_{m}_w0": inside0 / energy,
                       f"fisher_{m}_w0_enrichment": inside / inside0 if inside0 > 0 else math.nan}
        if m == "share":
            per += [(name, "fisher_share", c[0] / c[1] if c[1] > 0 else math.nan) for name, c in cur.items()]
            per += [(name, "fisher_share_w0", c[0] / c[1] if c[1] > 0 else math.nan) for name, c in ref.items()]
    return values, per


def ng_span_key(damping: float) -> str:
    return f"ng_span@{damping:.0e}" if damping else "ng_span@pinv"


def fisher_triples(model: nn.Module, batch: tuple[Tensor, Tensor], kind: str, f: FisherProbeParams,
                   w0: dict[str, Tensor], seed: int) -> list[tuple[str, str, float]]:
    """One kind of Fisher on ``batch``: spectrum and shape, NG alignment (full space and inside the
    span), Fisher–weight alignment against the current weights and W₀; names prefixed ``emp_``/``true_``."""
    G = fisher.fisher_gradients(model, batch, kind, seed)  # type: ignore[arg-type]
    grad = fisher.batch_grad(model, batch)
    spectrum = fisher.fisher_spectrum(G, f.top_k)
    s, V = fisher_eigensystem(G)
    lam1 = float(s[0])
    full = fisher.natural_gradient_alignment(G, grad, [d * lam1 for d in f.dampings])
    span = list(fisher.span_alignment(G, grad, [d * lam1 for d in (0.0, *f.dampings)]).values())
    layout = [(n, p.shape) for n, p in model.named_parameters() if p.requires_grad]
    now = {n: p.detach() for n, p in model.named_parameters() if n in w0}
    align, per = alignment_values(G, V[:, 0], layout, now, w0, f.overlap_rank)
    values = (spectrum
              | {"fisher_eff_dim": spectrum["fisher_trace"] ** 2 / spectrum["fisher_trace_sq"],
                 "fisher_kappa_k": float(s[0] / s[min(f.top_k, s.size) - 1]), "fisher_alpha": power_law_alpha(np.sqrt(s))}
              | {f"ng_alignment@{d:.0e}": a for d, a in zip(f.dampings, full.values(), strict=True)}
              | {"grad_span_fraction": span[0]}
              | {ng_span_key(d): a for d, a in zip((0.0, *f.dampings), span[1:], strict=True)}
              | align)
    prefix = FISHER_KIND_PREFIX[kind]
    return ([(MODEL_SCOPE, f"{prefix}_{m}", float(x)) for m, x in values.items()]
            + [(scope, f"{prefix}_{m}", x) for scope, m, x in per])


def fisher_probe(f: FisherProbeParams) -> Probe:
    """A probe logging :func:`fisher_triples` for each Fisher kind on the fixed batch
    :func:`~gradience.telemetry.probes.measurement_batch`; it keeps the weight matrices it sees at
    its first call (step 0: W₀) as the null of the alignment. Sampled labels use seed ``seed + step``."""
    w0: dict[str, Tensor] = {}

    def probe(ctx: StepContext) -> Iterable[tuple[str, str, float]]:
        if not w0:
            w0.update({n: p.detach().clone() for n, p in ctx.model.named_parameters() if p.requires_grad and p.ndim == 2})
        batch = measurement_batch(ctx.split, f.measure_batch)
        out: list[tuple[str, str, float]] = []
        for kind in f.kinds:
            out += fisher_triples(ctx.model, batch, kind, f, w0, f.seed + ctx.step)
        return out

    return probe


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    return [base.Job(p, r.name, s, data_dir, spec=r) for r in p.regimes for s in p.seeds]


def run_one(job: base.Job) -> base.RunOutput:
    """Train one regime × seed with the Fisher probe."""
    p: RunParams = job.params  # type: ignore[assignment]
    return train_regime(job, [fisher_probe(p.fisher)], p.spectra_every)


# ------------------------------------------------------------------------------------ analysis


def series_table(telemetry: pd.DataFrame, a: AnalysisParams) -> pd.DataFrame:
    """:func:`lm_regimes.model_table`, plus the analysis kind's Fisher metrics without prefix
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
    """The first step of one run's (pre-divergence) rows with train loss ≤ ``level``; NaN if none."""
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


MATCHED_OFFSETS = (0.2, 0.1, 0.0, -0.1)  # nats above L*: the sensitivity of H3 to the matched level


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


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    """Series, per-run summaries at matched loss, the co-variation tests, the held-out H3 test and
    its sensitivity to the matched level.

    Raises ``ValueError`` when ``p.analysis`` names a Fisher kind, damping or calibration seeds the
    runs did not measure.
    """
    rp: RunParams = tables.params  # type: ignore[assignment]
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
    return base.step_curves(a.series, "regime", {"train_loss": "median", "ng_alignment": "median"})


# ------------------------------------------------------------------------------------ verdicts


def one_sided_mw(high: pd.Series, low: pd.Series) -> float:
    """p of the one-sided Mann–Whitney test that ``high`` is stochastically larger than ``low``."""
    high, low = high.dropna(), low.dropna()
    if not (len(high) and len(low)):
        return math.nan
    return float(mannwhitneyu(high, low, alternative="greater").pvalue)


def _budgets(summary: pd.DataFrame, a: AnalysisParams, per_regime: tuple[str, int] | None = None) -> list[Budget]:
    """What every regime comparison needs: every run at L* before divergence, the unstable runs
    diverged (the instability the claim is about happened), and optionally runs per regime at L*."""
    unstable = summary[summary.kind == "unstable"]
    out = [Budget(f"runs reaching L* = {a.matched_loss:g} nats before divergence",
                  float(summary.matched_step.notna().sum()), float(len(summary))),
           Budget("unstable runs that diverged", float(unstable.outcome.isin(DIVERGED_OUTCOMES).sum()),
                  float(max(1, len(unstable))))]
    if per_regime:
        name, need = per_regime
        reached = summary[summary.matched_step.notna()].groupby("kind").size()
        out.append(Budget(name, float(min(reached.get("stable", 0), reached.get("unstable", 0))), float(need)))
    return out


def _unmeasured(budgets: list[Budget]) -> bool | None:
    """``holds`` for a claim nothing could be measured on: "inconclusive" (None) when every budget
    was met, else False, which :func:`judged` turns into "not comparable" naming the short budget."""
    return None if all(b.met for b in budgets) else False


def _h3_row(a: Analysis, ap: AnalysisParams, measure: str) -> dict[str, str]:
    h, summary = a.h3[measure], a.summary
    stable, unstable = summary[summary.kind == "stable"], summary[summary.kind == "unstable"]
    cal = sorted(set(ap.calibration_seeds))
    held = sorted(set(summary.seed) - set(cal))
    sens = a.sensitivity[a.sensitivity.measure == measure] if len(a.sensitivity) else a.sensitivity
    measured = (f"{ap.kind} Fisher, A = alignment over W₀'s, min over the loss range {ap.start_loss:g}→L* nats: stable "
                f"{mean_spread(stable[f'{measure}_min'])}, unstable {mean_spread(unstable[f'{measure}_min'])}; "
                f"T = {h['threshold']:.3g} from seeds {cal} (calibration balanced accuracy {h['calibration_accuracy']:.2f}); "
                f"held-out seeds {held}: {h['heldout_stable_above']:.0f}/{h['heldout_stable']:.0f} stable above T, "
                f"{h['heldout_unstable_below']:.0f}/{h['heldout_unstable']:.0f} unstable at or below T")
    measured += (f"; points per window: stable {mean_spread(stable.n_points, '{:.3g}')}, unstable "
                 f"{mean_spread(unstable.n_points, '{:.3g}')}; min over every step > 0 before divergence (unmatched): "
                 f"stable {mean_spread(stable[f'{measure}_min_all'])}, unstable {mean_spread(unstable[f'{measure}_min_all'])}")
    if len(sens):
        measured += "; held-out accuracy at L* = " + ", ".join(
            f"{r.matched_loss:g}: {r.heldout_accuracy:.2f}" for r in sens.itertuples())
    windows = summary.n_points[summary.matched_step.notna()]
    budgets = [Budget("held-out seeds per regime at L*", min(h["heldout_stable"], h["heldout_unstable"]), 2.0),
               Budget("cadence points in the shortest H3 window", float(windows.min()) if len(windows) else 0.0, 2.0),
               *_budgets(summary, ap)]
    holds = _unmeasured(budgets) if math.isnan(h["threshold"]) else bool(
        h["heldout_stable_above"] == h["heldout_stable"] and h["heldout_unstable_below"] == h["heldout_unstable"])
    return judged(THRESHOLD_CLAIMS[measure], measured, holds,
                  "holds if T chosen on the calibration seeds puts every held-out stable run above and every "
                  "held-out unstable run at or below it; matched loss range, A relative to W₀", budgets)


def findings(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    """The *Findings vs the seed* rows: each verdict a rule applied to the measured runs, judged
    against the budgets it needs (:func:`gradience.reporting.judged`)."""
    ap, summary, coupling = p.analysis, a.summary, a.coupling
    stable, unstable = summary[summary.kind == "stable"], summary[summary.kind == "unstable"]
    div = unstable.outcome.isin(DIVERGED_OUTCOMES)
    steps = float(a.runs.steps) if a.runs is not None else math.nan
    rows = [judged("fisher_geometry.regimes_differ",
                   f"unstable: {int(div.sum())}/{len(unstable)} diverged (step {mean_spread(unstable.diverged_at)}); "
                   f"stable: {int(stable.outcome.isin(DIVERGED_OUTCOMES).sum())}/{len(stable)}",
                   bool(len(unstable) and div.all() and not stable.outcome.isin(DIVERGED_OUTCOMES).any()),
                   "the regimes must differ for the comparisons below to mean anything",
                   [Budget("steps of the stable runs vs the last unstable divergence step", steps,
                           float(unstable.diverged_at.max()) if div.any() else 0.0)])]
    rows += [_h3_row(a, ap, m) for m in ALIGNMENTS]

    allc = coupling[coupling.p_value.notna()]
    bonf = allc[allc.significant_bonferroni]
    enrich = summary.share_median
    related = len(bonf) > len(allc) / 2 or bool(len(enrich) and (enrich > 1).all())
    unrelated = len(bonf) == 0 and bool(len(enrich) and (enrich <= 1).all())
    rows.append(judged(
        "fisher_geometry.spectra_related",
        f"{len(bonf)}/{len(allc)} run×pair co-variation tests significant after Bonferroni over {len(ap.pairs)} pairs; "
        f"median A (share of tr F in the weights' top singular subspace over W₀'s) up to L*, per run: "
        f"{mean_spread(enrich)} (over a random direction: {mean_spread(summary.share_chance_median)})",
        True if related else (False if unrelated else None),
        "related = most co-variation tests significant, or the Fisher concentrates in the learned top directions "
        "beyond W₀ (A > 1) in every run", [Budget(f"run×pair series with ≥ {ap.min_points} points", len(allc),
                                                   len(coupling))]))
    kap = coupling[(coupling.weight_metric == "kappa") & (coupling.fisher_metric == "fisher_kappa_k")]
    if len(kap):
        tested = kap[kap.p_value.notna()]
        n_sig = int(tested.significant.sum())
        rows.append(judged(
            "fisher_geometry.kappa_correlation",
            f"{n_sig}/{len(tested)} runs significant (p < {ap.alpha}); r at best lag {mean_spread(tested.best_r)}",
            True if n_sig > len(tested) / 2 else (False if n_sig == 0 else None),
            "detrended log series, phase-surrogate test", [Budget(f"runs with ≥ {ap.min_points} points", len(tested), len(kap))]))
    at = f"at L* = {ap.matched_loss:g} nats (steps: stable {mean_spread(stable.matched_step)}, unstable " \
         f"{mean_spread(unstable.matched_step)})"
    reach = ("runs per regime at L*", MIN_MW_RUNS)
    p_ng = one_sided_mw(stable.ng_alignment_at_match, unstable.ng_alignment_at_match)
    budgets = _budgets(summary, ap, reach)
    damp = "F⁺" if not ap.damping else f"(F + {ap.damping:g}λ₁I)⁻¹"
    delta = full_damping(ap, a.runs) if a.runs is not None else ap.damping
    full = (f"; for contrast, full-space cos(∇L, (F+{delta:g}λ₁I)⁻¹∇L), dominated by ∇L outside the span: stable "
            f"{mean_spread(stable.ng_alignment_full_at_match)}, unstable {mean_spread(unstable.ng_alignment_full_at_match)}")
    rows.append(judged(
        "fisher_geometry.ng_alignment_stability",
        f"cos(∇L_F, {damp}∇L_F) inside span(F) {at}: stable {mean_spread(stable.ng_alignment_at_match)}, unstable "
        f"{mean_spread(unstable.ng_alignment_at_match)} (one-sided Mann–Whitney p = {p_ng:.3g}); share of ‖∇L‖² in the "
        f"span: stable {mean_spread(stable.span_fraction_at_match)}, unstable {mean_spread(unstable.span_fraction_at_match)}"
        + full,
        _unmeasured(budgets) if math.isnan(p_ng) else bool(p_ng < ap.alpha),
        f"{ap.kind} Fisher; holds if stable > unstable at p < {ap.alpha}", budgets))
    p_an = one_sided_mw(stable.fisher_eff_dim_at_match, unstable.fisher_eff_dim_at_match)
    rows.append(judged(
        "fisher_geometry.anisotropy_instability",
        f"participation ratio (tr F)²/tr F² {at}: stable {mean_spread(stable.fisher_eff_dim_at_match)}, unstable "
        f"{mean_spread(unstable.fisher_eff_dim_at_match)} (one-sided Mann–Whitney p = {p_an:.3g}); smallest before "
        f"divergence: stable {mean_spread(stable.eff_dim_min)}, unstable {mean_spread(unstable.eff_dim_min)}",
        _unmeasured(budgets) if math.isnan(p_an) else bool(p_an < ap.alpha),
        f"lower = more anisotropic; holds if unstable < stable at p < {ap.alpha}", budgets))
    return rows


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
