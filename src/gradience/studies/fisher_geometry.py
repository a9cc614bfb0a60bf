"""Protocol C of seed 001: information geometry (Fisher) against the weight spectra over training.

The character LM of :mod:`gradience.studies.lm_regimes` is trained by full-batch GD in a stable
and an unstable regime. Every ``cadence_every`` steps, :func:`gradience.telemetry.probes.fisher_probe`
forms the per-sample gradients of a fixed measurement batch (the first ``measure_batch`` training
windows; one "sample" = one window) and measures the empirical and the sampled ("true") Fisher
through their n × n Gram matrix: top eigenvalues, tr F, tr F², the participation ratio
(tr F)²/tr F², the decay exponent of √λ_i, the overlap of F's top eigenvector with each weight
matrix's top singular directions, and the natural-gradient alignment cos(∇L, (F + λI)⁻¹∇L).

Definitions used by the verdicts (``analysis`` params):

- Dampings are *relative*: λ = δ·λ₁(F) for δ in ``fisher.dampings``, so the alignment means the
  same thing while the Fisher's scale changes by decades over training.
- Fisher–weight spectral alignment A(t) (hypothesis 3), measured two ways, each relative to its
  value for a random direction (1 = chance): ``share`` = the share of tr F lying in the span of the
  weights' top-r singular pairs (``fisher_share_enrichment``; uses all of F), and ``overlap`` = the
  same for F's top eigenvector alone (``fisher_overlap_enrichment``; it jumps when near-degenerate
  top eigenvalues swap). H3 holds for a measure if every stable run keeps A(t) > 1 at every
  cadence point from ``analysis.from_step`` on (the initial point is excluded: a random θ₀ has no
  alignment to maintain), and a threshold T separates the regimes: every unstable run's minimum
  before divergence is below T = the smallest A(t) of any stable run.
- Falsifier 3 ("Fisher and weight spectra are unrelated in practice") is tested on
  ``analysis.pairs`` of (weight metric, Fisher metric) series: detrended cross-correlation with a
  surrogate p-value (:func:`lm_regimes.coupling_test`), Bonferroni over the pairs.
- "Instability ≈ low alignment" (Protocol C, step 4) compares the median NG alignment at
  ``analysis.damping`` between the regimes; "instability ≈ extreme anisotropy" compares the
  smallest participation ratio before divergence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, field_validator, model_validator

from gradience.config import Section, StageParams
from gradience.parallel import map_runs
from gradience.reporting import finding, mean_spread
from gradience.studies.lm_regimes import (
    DIVERGED_OUTCOMES,
    CouplingParams,
    LMData,
    LMModel,
    Regime,
    RegimeRun,
    coupling_table,
    model_table,
    pre_divergence,
    train_regime,
    unique_regimes,
)
from gradience.telemetry.probes import FISHER_KIND_PREFIX, fisher_probe
from gradience.telemetry.recorder import write_parquet

FisherKind = Literal["empirical", "true"]
WEIGHT_METRICS = ("kappa", "spectral_norm_max", "stable_rank_mean", "effective_rank", "alpha_mean", "weight_norm")
FISHER_METRICS = ("fisher_top1", "fisher_trace", "fisher_eff_dim", "fisher_kappa_k", "fisher_alpha",
                  "fisher_overlap_enrichment", "fisher_share_enrichment")
ALIGNMENTS = {"share": "fisher_share_enrichment", "overlap": "fisher_overlap_enrichment"}
ALIGNMENT_NAMES = {"share": "share of tr F in the weights' top singular subspace",
                   "overlap": "overlap of F's top eigenvector with the weights' top singular directions"}


class FisherProbeParams(Section):
    top_k: int = Field(default=10, ge=2)
    kinds: list[FisherKind] = Field(default=["empirical", "true"], min_length=1)
    dampings: list[float] = Field(default=[1e-3, 1e-2, 1e-1], min_length=1,
                                  description="relative: λ = δ·λ₁(F)")
    overlap_rank: int = Field(default=1, ge=1, description="top-r singular pairs of each weight matrix")
    measure_batch: int = Field(default=0, ge=0, description="first n training windows; 0: all")
    seed: int = 0

    @field_validator("dampings")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not d > 0 for d in v):
            raise ValueError(f"every damping must be > 0, got {v}")
        return v


class AnalysisParams(CouplingParams):
    kind: FisherKind = Field(default="true", description="the Fisher that carries the verdicts")
    damping: float = Field(default=1e-2, gt=0, description="relative damping of the NG-alignment verdict")
    pairs: list[tuple[str, str]] = Field(min_length=1, description="(weight metric, Fisher metric)")
    from_step: int = Field(default=1, ge=0, description="per-run statistics use steps ≥ this (θ₀ has no alignment to keep)")

    @field_validator("pairs")
    @classmethod
    def _known(cls, v: list[tuple[str, str]]) -> list[tuple[str, str]]:
        bad = [a for a, _ in v if a not in WEIGHT_METRICS] + [b for _, b in v if b not in FISHER_METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}: weight {WEIGHT_METRICS}, Fisher {FISHER_METRICS}")
        return v


class Params(StageParams):
    data: LMData
    model: LMModel
    regimes: list[Regime] = Field(min_length=1)
    steps: int = Field(gt=0)
    cadence_every: int = Field(gt=0)
    blowup_factor: float = Field(default=1.5, gt=1)
    spectra_every: int = Field(default=0, ge=0)
    fisher: FisherProbeParams = FisherProbeParams()
    analysis: AnalysisParams

    @field_validator("regimes")
    @classmethod
    def _unique(cls, v: list[Regime]) -> list[Regime]:
        return unique_regimes(v)

    @model_validator(mode="after")
    def _analysis_is_measured(self) -> Params:
        if self.analysis.kind not in self.fisher.kinds:
            raise ValueError(f"analysis.kind={self.analysis.kind!r} is not among fisher.kinds={self.fisher.kinds}")
        if self.analysis.damping not in self.fisher.dampings:
            raise ValueError(f"analysis.damping={self.analysis.damping} is not among fisher.dampings={self.fisher.dampings}")
        return self


def run_one(job: RegimeRun) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    p: Params = job.params  # type: ignore[assignment]
    f = p.fisher
    probe = fisher_probe(f.measure_batch, f.kinds, f.top_k, f.dampings, f.overlap_rank, f.seed)
    return train_regime(job, [probe], p.spectra_every)


def ng_key(damping: float) -> str:
    return f"ng_alignment@{damping:.0e}"


def series_table(telemetry: pd.DataFrame, p: Params) -> pd.DataFrame:
    """:func:`lm_regimes.model_table`, plus the analysis kind's Fisher metrics without prefix
    (``fisher_top1``…, ``ng_alignment``) so the pairs and verdicts name them directly."""
    w = model_table(telemetry)
    prefix = FISHER_KIND_PREFIX[p.analysis.kind] + "_"
    for col in [c for c in w.columns if c.startswith(prefix)]:
        w[col[len(prefix):]] = w[col]
    w["ng_alignment"] = w.get(ng_key(p.analysis.damping))
    return w


def run_summary(series: pd.DataFrame, runs: pd.DataFrame, from_step: int = 0) -> pd.DataFrame:
    """Per run, over the cadence points from ``from_step`` to before divergence: alignment A(t)
    (min, median, share above chance), NG alignment (median, last), participation ratio (min,
    median), decay exponents (median)."""
    rows = []
    for rec in runs.itertuples():
        w = pre_divergence(series[series.run == rec.run], rec.diverged_at).dropna(subset=["fisher_top1"])
        w = w[w.step >= from_step]
        align = {}
        for short, col in ALIGNMENTS.items():
            a = w[col]
            align |= {f"{short}_min": float(a.min()), f"{short}_median": float(a.median()),
                      f"{short}_above_chance": float((a > 1).mean())}
        rows.append({
            "run": rec.run, "n_points": len(w), **align,
            "ng_alignment_median": float(w["ng_alignment"].median()),
            "ng_alignment_last": float(w["ng_alignment"].iloc[-1]) if len(w) else math.nan,
            "eff_dim_min": float(w["fisher_eff_dim"].min()), "eff_dim_median": float(w["fisher_eff_dim"].median()),
            "fisher_alpha_median": float(w["fisher_alpha"].median()),
            "weight_alpha_median": float(w["alpha_mean"].median()),
            "final_train_loss": float(w["train_loss"].iloc[-1]) if len(w) else math.nan,
        })
    return runs.merge(pd.DataFrame(rows), on="run")


def alignment_threshold(summary: pd.DataFrame, measure: str = "share") -> dict[str, float]:
    """For one alignment ``measure`` (a key of :data:`ALIGNMENTS`): T = the smallest A(t) over
    stable runs, whether stable runs stay above chance, and how many unstable runs dip below T."""
    stable, unstable = summary[summary.kind == "stable"], summary[summary.kind == "unstable"]
    t = float(stable[f"{measure}_min"].min()) if len(stable) else math.nan
    above = bool(len(stable)) and bool((stable[f"{measure}_above_chance"] == 1).all())
    return {"threshold": t, "stable_runs": float(len(stable)), "unstable_runs": float(len(unstable)),
            "stable_always_above_chance": float(above),
            "unstable_below_threshold": float((unstable[f"{measure}_min"] < t).sum())}


SENSITIVITY_FRACTIONS = (0.05, 0.1, 0.2, 0.3)


def h3_sensitivity(series: pd.DataFrame, runs: pd.DataFrame, p: Params) -> pd.DataFrame:
    """:func:`alignment_threshold` for every measure when the window starts later: at
    ``analysis.from_step`` and at :data:`SENSITIVITY_FRACTIONS` of the run (alignment needs a few
    steps to form from a random θ₀; does the verdict hinge on where the window starts?)."""
    starts = sorted({p.analysis.from_step, *(int(f * p.steps) for f in SENSITIVITY_FRACTIONS)})
    rows = []
    for start in starts:
        summary = run_summary(series, runs, start)
        rows += [{"from_step": start, "measure": m, **alignment_threshold(summary, m)} for m in ALIGNMENTS]
    return pd.DataFrame(rows)


@dataclass
class Results:
    telemetry: pd.DataFrame
    spectra: pd.DataFrame
    series: pd.DataFrame
    summary: pd.DataFrame
    coupling: pd.DataFrame
    sensitivity: pd.DataFrame


def run(p: Params, out_dir: str | Path, data_dir: str | Path = "data") -> Results:
    """Train every regime × seed; write ``telemetry``, ``spectra``, ``runs`` and ``coupling`` parquet."""
    jobs = [RegimeRun(p, r, s, str(data_dir)) for r in p.regimes for s in p.seeds]
    outputs = map_runs(run_one, jobs, workers=p.workers, desc="fisher_geometry runs")
    telemetry = pd.concat([o[0] for o in outputs], ignore_index=True)
    spectra = pd.concat([o[1] for o in outputs], ignore_index=True)
    runs = pd.DataFrame([o[2] for o in outputs])
    series = series_table(telemetry, p)
    summary = run_summary(series, runs, p.analysis.from_step)
    coupling = coupling_table(series, runs, p.analysis.pairs, p.analysis, p.cadence_every)
    coupling = coupling.rename(columns={"x_metric": "weight_metric", "y_metric": "fisher_metric"})
    sensitivity = h3_sensitivity(series, runs, p)
    out = Path(out_dir)
    write_parquet(telemetry, out / "telemetry.parquet")
    write_parquet(spectra, out / "spectra.parquet")
    write_parquet(summary, out / "runs.parquet")
    write_parquet(coupling, out / "coupling.parquet")
    return Results(telemetry, spectra, series, summary, coupling, sensitivity)


def _separates(high: pd.Series, low: pd.Series) -> bool:
    """Every value of ``high`` above every value of ``low`` (both non-empty)."""
    return bool(len(high) and len(low) and high.min() > low.max())


def _h3_row(summary: pd.DataFrame, measure: str, kind: str, sensitivity: pd.DataFrame | None) -> dict[str, str]:
    stable, unstable = summary[summary.kind == "stable"], summary[summary.kind == "unstable"]
    th = alignment_threshold(summary, measure)
    if not (len(stable) and len(unstable)):
        verdict, why = "not comparable", "needs both a stable and an unstable regime"
    elif not th["stable_always_above_chance"]:
        verdict, why = "not reproduced", "a stable run falls to chance alignment (A ≤ 1) at some point"
    elif th["unstable_below_threshold"] == len(unstable):
        verdict, why = "reproduced", "stable runs stay above T; every unstable run dips below it before diverging"
    else:
        verdict, why = "not reproduced", "unstable runs keep the alignment as high as stable ones: no T separates them"
    return finding(
        f"H3: stable training maintains Fisher–weight spectral alignment above a threshold T "
        f"(A = {ALIGNMENT_NAMES[measure]}, {kind} Fisher)",
        "T (hypothesis, no number)",
        f"A / chance: stable min {mean_spread(stable[f'{measure}_min'])}, median "
        f"{mean_spread(stable[f'{measure}_median'])}, share of points above chance "
        f"{mean_spread(stable[f'{measure}_above_chance'], '{:.2f}')}; unstable min "
        f"{mean_spread(unstable[f'{measure}_min'])}; T = {th['threshold']:.3g}; "
        f"{int(th['unstable_below_threshold'])}/{len(unstable)} unstable runs below T" + _robustness(sensitivity, measure),
        verdict, why)


def _robustness(sensitivity: pd.DataFrame | None, measure: str) -> str:
    if sensitivity is None or sensitivity.empty:
        return ""
    g = sensitivity[sensitivity.measure == measure]
    ok = g[(g.stable_always_above_chance == 1) & (g.unstable_below_threshold == g.unstable_runs)]
    return (f"; window starting at steps {g.from_step.tolist()}: stable always above chance from "
            f"{g[g.stable_always_above_chance == 1].from_step.min() if (g.stable_always_above_chance == 1).any() else '—'}, "
            f"at most {int(g.unstable_below_threshold.max())}/{int(g.unstable_runs.max())} unstable below T, "
            f"separated at {ok.from_step.tolist() or 'no start'}")


def findings(summary: pd.DataFrame, coupling: pd.DataFrame, p: Params,
             sensitivity: pd.DataFrame | None = None) -> list[dict[str, str]]:
    """The *Findings vs the seed* rows, each verdict a rule applied to the measured runs; the H3
    rows also report :func:`h3_sensitivity` (the verdict itself uses ``analysis.from_step``)."""
    a = p.analysis
    stable, unstable = summary[summary.kind == "stable"], summary[summary.kind == "unstable"]
    div = unstable.outcome.isin(DIVERGED_OUTCOMES)
    rows = [finding("The unstable regime is unstable (diverges), the stable one is not", "Protocol C: stable vs unstable",
                    f"unstable: {int(div.sum())}/{len(unstable)} diverged (step {mean_spread(unstable.diverged_at)}); "
                    f"stable: {int(stable.outcome.isin(DIVERGED_OUTCOMES).sum())}/{len(stable)}",
                    "reproduced" if len(unstable) and div.all() and not stable.outcome.isin(DIVERGED_OUTCOMES).any()
                    else "not reproduced", "the regimes must differ for the comparisons below to mean anything")]
    for measure in ALIGNMENTS:
        rows.append(_h3_row(summary, measure, a.kind, sensitivity))
    allc = coupling[coupling.p_value.notna()]
    bonf = allc[allc.significant_bonferroni]
    enrich = summary.share_median
    related = len(bonf) > len(allc) / 2 or bool(len(enrich) and (enrich > 1).all())
    unrelated = len(bonf) == 0 and bool(len(enrich) and (enrich <= 1).all())
    rows.append(finding(
        "Falsifier 3 is not met: Fisher and weight spectra are related in practice",
        "falsified if Fisher and weight spectra are unrelated",
        f"{len(bonf)}/{len(allc)} run×pair co-variation tests significant after Bonferroni over {len(a.pairs)} pairs; "
        f"median enrichment of tr F in the weights' top singular subspace per run {mean_spread(enrich)}",
        "reproduced" if related else ("not reproduced" if unrelated else "inconclusive"),
        "related = the Fisher concentrates in the weights' top directions above chance in every run, "
        "or most co-variation tests are significant"))
    kap = allc[(allc.weight_metric == "kappa") & (allc.fisher_metric == "fisher_kappa_k")]
    if len(kap):
        n_sig = int(kap.significant.sum())
        rows.append(finding(
            "κ of the weights correlates with κ of the Fisher (λ₁/λ_k) over training", "open question of the seed",
            f"{n_sig}/{len(kap)} runs significant (p < {a.alpha}); r at best lag {mean_spread(kap.best_r)}",
            "reproduced" if n_sig > len(kap) / 2 else ("not reproduced" if n_sig == 0 else "inconclusive"),
            "detrended log series, surrogate-tested"))
    ng = f"relative damping δ = {a.damping:g}"
    rows.append(finding(
        "Stable training ≈ high natural-gradient alignment, instability ≈ low", "Protocol C, step 4 (hypothesis)",
        f"median cos(∇L, (F+δλ₁I)⁻¹∇L): stable {mean_spread(stable.ng_alignment_median)}, unstable "
        f"{mean_spread(unstable.ng_alignment_median)} (last before divergence {mean_spread(unstable.ng_alignment_last)})",
        "not comparable" if not (len(stable) and len(unstable)) else
        ("reproduced" if _separates(stable.ng_alignment_median, unstable.ng_alignment_median) else "not reproduced"),
        f"{a.kind} Fisher, {ng}; every stable run must be above every unstable run"))
    rows.append(finding(
        "Instability corresponds to extreme anisotropy of the Fisher", "open question of the seed",
        f"smallest participation ratio (tr F)²/tr F² before divergence: unstable {mean_spread(unstable.eff_dim_min)}, "
        f"stable {mean_spread(stable.eff_dim_min)}",
        "not comparable" if not (len(stable) and len(unstable)) else
        ("reproduced" if _separates(stable.eff_dim_min, unstable.eff_dim_min) else "not reproduced"),
        "lower participation ratio = more anisotropic; every unstable run must go below every stable run"))
    return rows


def regime_metrics(summary: pd.DataFrame, coupling: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per regime: outcomes, alignment, NG alignment, anisotropy, exponents, coupling counts."""
    out = {}
    for name, g in summary.groupby("regime", sort=False):
        c = coupling[coupling.regime == name]
        out[str(name)] = {
            "diverged_runs": float(g.outcome.isin(DIVERGED_OUTCOMES).sum()),
            "diverged_at_median": float(g.diverged_at.median()),
            "share_min_median": float(g.share_min.median()),
            "share_median_median": float(g.share_median.median()),
            "overlap_min_median": float(g.overlap_min.median()),
            "overlap_median_median": float(g.overlap_median.median()),
            "ng_alignment_median": float(g.ng_alignment_median.median()),
            "eff_dim_min_median": float(g.eff_dim_min.median()),
            "fisher_alpha_median": float(g.fisher_alpha_median.median()),
            "weight_alpha_median": float(g.weight_alpha_median.median()),
            "coupling_significant_bonferroni": float(c.significant_bonferroni.sum()),
            "coupling_tests": float(c.p_value.notna().sum()),
        }
    return out
