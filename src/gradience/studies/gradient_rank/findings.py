"""True-gradient effective rank (paper 86): one function per claim, its docstring the claim.

Every verdict goes through :func:`gradience.reporting.judged` (the verdict rule, by the claim's
registered kind) with the budgets the claim needs (seeds, the paper's steps measured, the trajectory
reaching the paper's window, the K grid, adaptation steps). The shapes (rise-fall, K per phase) are
events: shown, they are reproduced whatever the budget. The rest are comparisons: a short budget
makes either answer "not comparable", and since no test here states its power, a negative with
every budget met reads "inconclusive".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradience.reporting import Budget, judged, mean_spread
from gradience.studies.gradient_rank.analysis import Analysis, ReportParams
from gradience.studies.gradient_rank.paper_tables import K95, coverage_ratios, k_grid_for
from gradience.studies.gradient_rank.runs import PAPER_STEPS

Row = dict[str, str]


def _seed_budget(n: int, p: ReportParams) -> Budget:
    return Budget("seeds", n, p.min_seeds)


def _seeds(a: Analysis) -> int:
    return int(a.series.seed.nunique()) if len(a.series) else 0


def _steps_budget(a: Analysis, p: ReportParams) -> Budget:
    return Budget("trajectory steps vs the paper's window", a.runs.steps, p.window)


def _paper_steps_budget(a: Analysis) -> Budget:
    measured = set(a.series.step.unique())
    return Budget("paper steps (1, 5, 10, 20, 40) measured", sum(s in measured for s in PAPER_STEPS), len(PAPER_STEPS))


def _shaped(a: Analysis) -> pd.DataFrame:
    """The seeds whose trajectory measured step 1 (their rise/fall shape is defined)."""
    sh = a.shapes
    return sh[sh["shape"] != "not measured"] if "shape" in sh else sh


def _k_at(a: Analysis, step: int) -> tuple[list[float], str]:
    """Grid K for 95 % (ratio of means) per seed at ``step``, and the ratios as text."""
    g = a.series[a.series.step == step]
    out = [k_grid_for(coverage_ratios(r, a.runs.ks)) for _, r in g.iterrows()]
    return out, ", ".join(f"K{k} {100 * g[f'k{k}_er'].mean() / g.grad_er_mean.mean():.0f} %"
                          for k in a.runs.ks if f"k{k}_er" in g) if len(g) else "—"


def er_rise_fall(a: Analysis, p: ReportParams) -> list[Row]:
    """The true-gradient effective rank (mean over 2-D weight matrices) is dynamic: it rises, then falls, over the first 40 steps."""
    ok = _shaped(a)
    n_rf = int((ok["shape"] == "rise-fall").sum()) if len(ok) else 0
    n_fr = int((ok["shape"] == "fall-rise").sum()) if len(ok) else 0
    measured = (f"{n_rf}/{len(ok)} seeds rise then fall, {n_fr} fall then rise; ER mean at step 1 "
                f"{mean_spread(ok.get('er_step1', []), '{:.3g}')}, peak {mean_spread(ok.get('er_peak', []), '{:.3g}')} "
                f"at step {mean_spread(ok.get('peak_step', []), '{:.3g}')}, trough {mean_spread(ok.get('er_trough', []), '{:.3g}')} "
                f"at step {mean_spread(ok.get('trough_step', []), '{:.3g}')}, step {p.window} "
                f"{mean_spread(ok.get('er_last', []), '{:.3g}')}") if len(ok) else "no trajectory measured step 1"
    return [judged("gradient_rank.er_rise_fall", measured, bool(n_rf > len(ok) / 2) if len(ok) else None,
                   f"shape over steps 1..{p.window} of the mean over matrices (interior peak ≥ both ends "
                   f"by {p.margin:.0%} of the peak)",
                   [_seed_budget(len(ok), p), _paper_steps_budget(a), _steps_budget(a, p)])]


def k8_at_step1(a: Analysis, p: ReportParams) -> list[Row]:
    """At step 1 only ER ≈ 5.55 is needed: K = 8 achieves 98 % coverage (K ≈ 8 for 95 %)."""
    s = a.series
    k1, ratios1 = _k_at(a, 1)
    return [judged("gradient_rank.k8_at_step1",
                   f"grid K for 95 % at step 1: {mean_spread(k1, '{:.3g}')}; coverage {ratios1}; exact k95 "
                   f"{mean_spread(s[s.step == 1].get(K95, []), '{:.3g}')} (mean over matrices)",
                   bool(k1) and all(k == 8 for k in k1) if k1 else None,
                   "holds when every seed's smallest grid K with ER(K-constrained) ≥ 95 % of the true ER is 8",
                   [_seed_budget(len(k1), p), Budget("K grid contains 4, 8, 16", len({4, 8, 16} & set(a.runs.ks)), 3)])]


def k32_at_peak(a: Analysis, p: ReportParams) -> list[Row]:
    """At the peak of the true ER (step 20, ER 19.17) K = 32 is barely adequate (K ≈ 31 needed)."""
    s, ok, ks = a.series, _shaped(a), a.runs.ks
    kp = [k_grid_for(coverage_ratios(s[(s.seed == r.seed) & (s.step == r.peak_step)].iloc[0], ks))
          for r in ok.itertuples()] if len(ok) and "peak_step" in ok else []
    return [judged("gradient_rank.k32_at_peak",
                   f"grid K for 95 % at each seed's ER peak (steps {mean_spread(ok.get('peak_step', []), '{:.3g}')}): "
                   f"{mean_spread(kp, '{:.3g}')}", bool(kp) and all(k == 32 for k in kp) if kp else None,
                   "holds when the K needed at the peak of the true ER is 32 in every seed",
                   [_seed_budget(len(kp), p), Budget("K grid contains 16, 32, 64", len({16, 32, 64} & set(ks)), 3),
                    _steps_budget(a, p)])]


def k_per_phase(a: Analysis, p: ReportParams) -> list[Row]:
    """The K needed follows the phases of training: small at first, largest at the peak, smaller in refinement."""
    ph = a.phases
    kph = ph.k95_mean.to_numpy() if len(ph) else np.array([])
    interior = bool(len(kph) >= 3 and np.isfinite(kph).all() and 0 < int(np.argmax(kph)) < len(kph) - 1)
    return [judged("gradient_rank.k_per_phase",
                   "exact k95 per phase: " + "; ".join(f"{r.phase} ({r.steps}) {r.k95}" for r in ph.itertuples()),
                   interior if len(kph) >= 3 and np.isfinite(kph).all() else None,
                   "holds when the phase with the largest k95 (mean over seeds) is neither the first nor the last",
                   [_seed_budget(_seeds(a), p), _steps_budget(a, p),
                    Budget("phases with a measurement", int((ph.points > 0).sum()) if len(ph) else 0, max(len(ph), 3))])]


def early_layers_need_more_k(a: Analysis, p: ReportParams) -> list[Row]:
    """At step 40 the per-layer true ER is 7.74–9.88 (optimal K 12–16), and earlier layers (L0–L2) need slightly more K than later ones (L6–L7)."""
    t3 = a.table3
    n_layers = len(t3)
    if n_layers >= 5:
        early, late = t3.er_mean.iloc[:3].mean(), t3.er_mean.iloc[-2:].mean()
        ke, kl = t3.optimal_k_mean.iloc[:3].mean(), t3.optimal_k_mean.iloc[-2:].mean()
        m3 = (f"step {p.layer_step}: true ER per layer {t3.er_mean.min():.3g}–{t3.er_mean.max():.3g}, k95 "
              f"{t3.optimal_k_mean.min():.3g}–{t3.optimal_k_mean.max():.3g}; first three layers ER {early:.3g} "
              f"(k95 {ke:.3g}) vs last two {late:.3g} (k95 {kl:.3g})")
        holds3 = bool(ke > kl and early > late)
    else:
        m3, holds3 = f"{n_layers} decoder layers measured at step {p.layer_step}", None
    return [judged("gradient_rank.early_layers_need_more_k", m3, holds3,
                   "holds when the first three layers have both a higher mean true ER and a higher mean k95 "
                   "than the last two", [_seed_budget(_seeds(a), p), Budget("decoder layers", n_layers, 8)])]


def constrained_er_tracks_k(a: Analysis, p: ReportParams) -> list[Row]:
    """The ER of the K-constrained gradient grows with K whatever the true ER (it measures what K can express, not what the gradient needs); K = 64 exceeds the true ER many times."""
    t2 = a.table2
    if len(t2) >= 2:
        er_k = t2.er_k_mean.to_numpy()
        mono = bool(np.all(np.diff(er_k) > 0))
        top = t2.iloc[-1]
        holds5 = bool(mono and top.pct_mean > 100)
        m5 = ("step 1: ER(K-constrained) " + ", ".join(f"K{int(r.K)} {r.er_k_mean:.3g}" for r in t2.itertuples())
              + f"; K{int(top.K)} covers {top.pct_mean:.0f} % of the true ER")
    else:
        holds5, m5 = None, "fewer than two K measured"
    return [judged("gradient_rank.constrained_er_tracks_k", m5, holds5,
                   "holds when the K-constrained ER rises with every K and the largest K exceeds the true ER",
                   [_seed_budget(_seeds(a), p), Budget("K values", len(t2), 4)])]


def cosine_grows_with_k(a: Analysis, p: ReportParams) -> list[Row]:
    """K = 64's projection of ∂L/∂W onto its K basis has a higher cosine with the full gradient than K = 32's, even when the true ER < 32."""
    s = a.series
    c = a.cosines.set_index("K") if len(a.cosines) else pd.DataFrame()
    if 32 in c.index and 64 in c.index:
        g = s[(s.step >= 1) & (s.step <= p.window) & (s.grad_er_mean < 32)]
        per_seed = g.groupby("seed")[["k32_cos", "k64_cos"]].mean()
        holds6 = bool(len(per_seed) and (per_seed.k64_cos > per_seed.k32_cos).all())
        gain = (per_seed.k64_cos / per_seed.k32_cos - 1) * 100  # per seed, unguarded (not signals.relative_change)
        m6 = (f"steps 1..{p.window} with true ER < 32 ({int(c.loc[32, 'points'])} points): cos(G, P_K G) K32 "
              f"{c.loc[32, 'cos']}, K64 {c.loc[64, 'cos']} (gain {mean_spread(gain, '{:.3g}')} %); two-sided "
              f"subspace projection K32 {c.loc[32, 'cos_subspace']}, K64 {c.loc[64, 'cos_subspace']}")
    else:
        holds6, m6, per_seed = None, "K = 32 and 64 not both probed", pd.DataFrame()
    return [judged("gradient_rank.cosine_grows_with_k", m6, holds6,
                   "the K-basis directions are nested, so cos(G, P_64 G) ≥ cos(G, P_32 G) by construction: "
                   "the informative number is the size of the gain",
                   [_seed_budget(len(per_seed), p)])]


def k64_beats_k32(a: Analysis, p: ReportParams) -> list[Row]:
    """K-basis adaptation with K = 64 reaches a lower loss than K = 32."""
    ad, rp = a.adapt, a.runs
    if len(ad) and {"k32", "k64"} <= set(ad.arm):
        w = ad.pivot_table(index="seed", columns="arm", values="train_loss")
        diff = w["k32"] - w["k64"]
        holds7 = bool((diff > 0).all())
        order = a.arms.dropna(subset=["k"])
        m7 = (f"train loss after {rp.adapt.steps} steps from step {rp.adapt.from_step}: K32 − K64 "
              f"{mean_spread(diff, '{:.3g}')} (paired by seed); by K: "
              + ", ".join(f"K{int(r.k)} {r.train_loss_mean:.4g}" for r in order.itertuples())
              + (f"; full training {a.arms.set_index('arm').loc['full', 'train_loss_mean']:.4g}" if "full" in set(ad.arm) else "")
              + f"; checkpoint {ad.checkpoint_train_loss.mean():.4g}")
    else:
        holds7, m7, diff = None, "K = 32 and 64 not both adapted", pd.Series(dtype=float)
    return [judged("gradient_rank.k64_beats_k32", m7, holds7,
                   "holds when K = 64 reaches a lower training loss than K = 32 in every seed",
                   [_seed_budget(len(diff), p), Budget("adaptation steps", rp.adapt.steps, p.min_adapt_steps)])]


CLAIMS = (er_rise_fall, k8_at_step1, k32_at_peak, k_per_phase, early_layers_need_more_k, constrained_er_tracks_k,
          cosine_grows_with_k, k64_beats_k32)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows, one claim function after another."""
    return [row for claim in CLAIMS for row in claim(a, p)]
