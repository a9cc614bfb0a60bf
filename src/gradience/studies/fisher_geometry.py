"""Protocol C of seed 001: information geometry (Fisher) against the weight spectra over training.

The character LM of :mod:`gradience.studies.lm_regimes` is trained by full-batch GD in a stable
and an unstable regime. Every ``cadence_every`` steps, :func:`gradience.telemetry.probes.fisher_probe`
forms the per-sample gradients of a fixed measurement batch (the first ``measure_batch`` training
windows; one "sample" = one window) and measures the empirical and the sampled ("true") Fisher
through their n × n Gram matrix: top eigenvalues, tr F, tr F², the participation ratio
(tr F)²/tr F², the decay exponent of √λ_i, the overlap of F's top eigenvector with each weight
matrix's top singular directions, and the natural-gradient alignment cos(∇L, (F + λI)⁻¹∇L).

Definitions used by the verdicts (``report.analysis`` params):

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
from typing import Literal

import pandas as pd
from pydantic import Field, field_validator

from gradience.config import Section
from gradience.reporting import finding, mean_spread
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
from gradience.telemetry.probes import FISHER_KIND_PREFIX, fisher_probe
from gradience.telemetry.recorder import MODEL_SCOPE

FisherKind = Literal["empirical", "true"]
WEIGHT_METRICS = ("kappa", "spectral_norm_max", "stable_rank_mean", "effective_rank", "alpha_mean", "weight_norm")
FISHER_METRICS = ("fisher_top1", "fisher_trace", "fisher_eff_dim", "fisher_kappa_k", "fisher_alpha",
                  "fisher_overlap_enrichment", "fisher_share_enrichment")
THRESHOLD_CLAIMS = {"share": "fisher_geometry.alignment_threshold_share",
                    "overlap": "fisher_geometry.alignment_threshold_overlap"}
ALIGNMENTS = {"share": "fisher_share_enrichment", "overlap": "fisher_overlap_enrichment"}


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


DEFAULT_PAIRS = [("alpha_mean", "fisher_alpha"), ("kappa", "fisher_kappa_k"), ("spectral_norm_max", "fisher_top1"),
                 ("effective_rank", "fisher_eff_dim"), ("stable_rank_mean", "fisher_eff_dim")]


class AnalysisParams(CouplingParams):
    kind: FisherKind = Field(default="true", description="the Fisher that carries the verdicts")
    damping: float = Field(default=1e-2, gt=0, description="relative damping of the NG-alignment verdict")
    pairs: list[tuple[str, str]] = Field(default=DEFAULT_PAIRS, min_length=1, description="(weight metric, Fisher metric)")
    from_step: int = Field(default=1, ge=0, description="per-run statistics use steps ≥ this (θ₀ has no alignment to keep)")
    max_lag: int = Field(default=3, ge=0, description="cadence points")
    surrogates: int = Field(default=499, ge=19)

    @field_validator("pairs")
    @classmethod
    def _known(cls, v: list[tuple[str, str]]) -> list[tuple[str, str]]:
        bad = [a for a, _ in v if a not in WEIGHT_METRICS] + [b for _, b in v if b not in FISHER_METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}: weight {WEIGHT_METRICS}, Fisher {FISHER_METRICS}")
        return v


class RunParams(RegimeRunParams):
    fisher: FisherProbeParams = FisherProbeParams()


class ReportParams(base.ReportParams):
    analysis: AnalysisParams = AnalysisParams()


DATA = ("text",)
TABLES = ("telemetry", "spectra")


def check_measured(a: AnalysisParams, f: FisherProbeParams) -> None:
    """The analysed Fisher kind and damping must be among those the runs measured."""
    if a.kind not in f.kinds:
        raise ValueError(f"fisher_geometry.report.analysis.kind={a.kind!r} is not among the measured "
                         f"fisher_geometry.runs.fisher.kinds={f.kinds}: change one, or rerun the training stage")
    if a.damping not in f.dampings:
        raise ValueError(f"fisher_geometry.report.analysis.damping={a.damping} is not among the measured "
                         f"fisher_geometry.runs.fisher.dampings={f.dampings}: change one, or rerun the training stage")


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    return [base.Job(p, r.name, s, data_dir, spec=r) for r in p.regimes for s in p.seeds]


def run_one(job: base.Job) -> base.RunOutput:
    """Train one regime × seed with the Fisher probe."""
    p: RunParams = job.params  # type: ignore[assignment]
    f = p.fisher
    probe = fisher_probe(f.measure_batch, f.kinds, f.top_k, f.dampings, f.overlap_rank, f.seed)
    return train_regime(job, [probe], p.spectra_every)


def ng_key(damping: float) -> str:
    return f"ng_alignment@{damping:.0e}"


def series_table(telemetry: pd.DataFrame, a: AnalysisParams) -> pd.DataFrame:
    """:func:`lm_regimes.model_table`, plus the analysis kind's Fisher metrics without prefix
    (``fisher_top1``…, ``ng_alignment``) so the pairs and verdicts name them directly."""
    w = model_table(telemetry)
    prefix = FISHER_KIND_PREFIX[a.kind] + "_"
    for col in [c for c in w.columns if c.startswith(prefix)]:
        w[col[len(prefix):]] = w[col]
    w["ng_alignment"] = w.get(ng_key(a.damping))
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


def h3_sensitivity(series: pd.DataFrame, runs: pd.DataFrame, from_step: int, steps: int) -> pd.DataFrame:
    """:func:`alignment_threshold` for every measure when the window starts later: at
    ``from_step`` (``analysis.from_step``) and at :data:`SENSITIVITY_FRACTIONS` of the run's
    ``steps`` (alignment needs a few steps to form from a random θ₀; does the verdict hinge on
    where the window starts?)."""
    starts = sorted({from_step, *(int(f * steps) for f in SENSITIVITY_FRACTIONS)})
    rows = []
    for start in starts:
        summary = run_summary(series, runs, start)
        rows += [{"from_step": start, "measure": m, **alignment_threshold(summary, m)} for m in ALIGNMENTS]
    return pd.DataFrame(rows)


def per_matrix_share(telemetry: pd.DataFrame, runs: pd.DataFrame, a: AnalysisParams) -> pd.DataFrame:
    """The analysis kind's ``fisher_share`` of every weight matrix from ``from_step`` on:
    ``run, regime, step, matrix, value``."""
    t = telemetry
    per = t[(t.metric == f"{FISHER_KIND_PREFIX[a.kind]}_fisher_share") & (t.scope != MODEL_SCOPE) & (t.step >= a.from_step)]
    per = per.merge(runs[["run", "regime"]], on="run")
    matrix = per.scope.str.replace("lm.model.", "", regex=False).str.replace(".weight", "", regex=False)
    return per.assign(matrix=matrix)[["run", "regime", "step", "matrix", "value"]]


@dataclass
class Analysis:
    runs: RunParams
    telemetry: pd.DataFrame
    series: pd.DataFrame  # model-scope series, one row per (run, step), with regime and seed
    summary: pd.DataFrame  # one row per run: the run record and its alignment/NG/anisotropy summary
    coupling: pd.DataFrame  # every run × (weight, Fisher) pair
    sensitivity: pd.DataFrame  # the H3 threshold test for later window starts
    thresholds: dict[str, dict[str, float]]  # alignment measure → :func:`alignment_threshold`
    per_matrix: pd.DataFrame  # :func:`per_matrix_share`


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    """Series, per-run summaries, the co-variation tests, the H3 thresholds and their sensitivity.

    Raises ``ValueError`` when ``p.analysis`` names a Fisher kind or damping the runs did not measure.
    """
    rp: RunParams = tables.params  # type: ignore[assignment]
    a = p.analysis
    check_measured(a, rp.fisher)
    runs = regime_runs(tables.runs)
    series = series_table(tables.telemetry, a)
    summary = run_summary(series, runs, a.from_step)
    coupling = coupling_table(series, runs, a.pairs, a, rp.cadence_every)
    coupling = coupling.rename(columns={"x_metric": "weight_metric", "y_metric": "fisher_metric"})
    return Analysis(rp, tables.telemetry, series.merge(runs[["run", "regime", "seed"]], on="run"), summary, coupling,
                    h3_sensitivity(series, runs, a.from_step, rp.steps),
                    {m: alignment_threshold(summary, m) for m in ALIGNMENTS}, per_matrix_share(tables.telemetry, runs, a))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Median training loss and median NG alignment (analysis kind and damping) per regime, against step."""
    return base.step_curves(a.series, "regime", {"train_loss": "median", "ng_alignment": "median"})


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
        THRESHOLD_CLAIMS[measure],
        f"{kind} Fisher, A / chance: stable min {mean_spread(stable[f'{measure}_min'])}, median "
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


def findings(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    """The *Findings vs the seed* rows, each verdict a rule applied to the measured runs; the H3
    rows also report :func:`h3_sensitivity` (the verdict itself uses ``analysis.from_step``)."""
    ap, summary, coupling = p.analysis, a.summary, a.coupling
    stable, unstable = summary[summary.kind == "stable"], summary[summary.kind == "unstable"]
    div = unstable.outcome.isin(DIVERGED_OUTCOMES)
    rows = [finding("fisher_geometry.regimes_differ",
                    f"unstable: {int(div.sum())}/{len(unstable)} diverged (step {mean_spread(unstable.diverged_at)}); "
                    f"stable: {int(stable.outcome.isin(DIVERGED_OUTCOMES).sum())}/{len(stable)}",
                    "reproduced" if len(unstable) and div.all() and not stable.outcome.isin(DIVERGED_OUTCOMES).any()
                    else "not reproduced", "the regimes must differ for the comparisons below to mean anything")]
    for measure in ALIGNMENTS:
        rows.append(_h3_row(summary, measure, ap.kind, a.sensitivity))
    allc = coupling[coupling.p_value.notna()]
    bonf = allc[allc.significant_bonferroni]
    enrich = summary.share_median
    related = len(bonf) > len(allc) / 2 or bool(len(enrich) and (enrich > 1).all())
    unrelated = len(bonf) == 0 and bool(len(enrich) and (enrich <= 1).all())
    rows.append(finding(
        "fisher_geometry.spectra_related",
        f"{len(bonf)}/{len(allc)} run×pair co-variation tests significant after Bonferroni over {len(ap.pairs)} pairs; "
        f"median enrichment of tr F in the weights' top singular subspace per run {mean_spread(enrich)}",
        "reproduced" if related else ("not reproduced" if unrelated else "inconclusive"),
        "related = the Fisher concentrates in the weights' top directions above chance in every run, "
        "or most co-variation tests are significant"))
    kap = allc[(allc.weight_metric == "kappa") & (allc.fisher_metric == "fisher_kappa_k")]
    if len(kap):
        n_sig = int(kap.significant.sum())
        rows.append(finding(
            "fisher_geometry.kappa_correlation",
            f"{n_sig}/{len(kap)} runs significant (p < {ap.alpha}); r at best lag {mean_spread(kap.best_r)}",
            "reproduced" if n_sig > len(kap) / 2 else ("not reproduced" if n_sig == 0 else "inconclusive"),
            "detrended log series, surrogate-tested"))
    ng = f"relative damping δ = {ap.damping:g}"
    rows.append(finding(
        "fisher_geometry.ng_alignment_stability",
        f"median cos(∇L, (F+δλ₁I)⁻¹∇L): stable {mean_spread(stable.ng_alignment_median)}, unstable "
        f"{mean_spread(unstable.ng_alignment_median)} (last before divergence {mean_spread(unstable.ng_alignment_last)})",
        "not comparable" if not (len(stable) and len(unstable)) else
        ("reproduced" if _separates(stable.ng_alignment_median, unstable.ng_alignment_median) else "not reproduced"),
        f"{ap.kind} Fisher, {ng}; every stable run must be above every unstable run"))
    rows.append(finding(
        "fisher_geometry.anisotropy_instability",
        f"smallest participation ratio (tr F)²/tr F² before divergence: unstable {mean_spread(unstable.eff_dim_min)}, "
        f"stable {mean_spread(stable.eff_dim_min)}",
        "not comparable" if not (len(stable) and len(unstable)) else
        ("reproduced" if _separates(stable.eff_dim_min, unstable.eff_dim_min) else "not reproduced"),
        "lower participation ratio = more anisotropic; every unstable run must go below every stable run"))
    return rows


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per regime: outcomes, alignment, NG alignment, anisotropy, exponents, coupling counts; and
    the H3 thresholds."""
    out = {}
    for name, g in a.summary.groupby("regime", sort=False):
        c = a.coupling[a.coupling.regime == name]
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
    return {"regimes": out, "alignment_threshold": a.thresholds}
