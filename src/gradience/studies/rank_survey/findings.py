"""Rank survey (Protocol D): one function per claim, its docstring the claim.

Every verdict goes through :func:`gradience.reporting.judged` with the budgets the claim needs; the
claim's registered kind decides what a short budget blocks (the shape claims are events, the
agreement and LR-spike claims comparisons, whose negative needs a stated power: none is computed
here, so it reads "inconclusive").
A claim "holds in a family" when at least ``holds_fraction`` of its healthy layer × seed
trajectories satisfy it. Budgets, per family: every healthy run reached the loss plateau; for W
also ≥ ``holds_fraction`` of the trajectories *moved* (``‖W_T − W₀‖_F / ‖W₀‖_F ≥ move_min``) and
had *room to expand* (``r_0 ≤ r_max / (1 + x)``, ``r_max`` = W₀'s numerical rank, min(m, n) at a
random initialisation). The shape claims must hold in every family, so one family that had its
budgets and fails refutes them; they get one row per matrix (W, W − W₀, ∂L/∂W), as does the
agreement claim (structured: R² ≥ ``r2_min`` in ≥ ``holds_fraction`` of the moving layers).

LR spike, dose–response (one row per family, the dose–response over spike sizes in ``measured``):
a spike size *destabilises* a family when at least ``holds_fraction`` of its seeds are
destabilised. Inflation holds in a family when ≥ ``holds_fraction`` of the layer × run pairs of
destabilised runs at destabilising sizes have a W response ≥ ``expand_min``; a sudden change, when
≥ ``holds_fraction`` of those runs jump beyond their healthy null.
"""

from __future__ import annotations

import math

import pandas as pd

from gradience.reporting import Budget, judged, mean_spread
from gradience.studies.rank_survey.analysis import LABELS, MATRICES, Analysis, ReportParams

Row = dict[str, str]


def _per_family(frame: pd.DataFrame, column: str) -> tuple[str, dict[str, float]]:
    """``"mlp 3/9, cnn 0/12"`` and the fractions, for a boolean column."""
    parts, fractions = [], {}
    for family, g in frame.groupby("family", sort=False):
        parts.append(f"{family} {int(g[column].sum())}/{len(g)}")
        fractions[str(family)] = float(g[column].mean())
    return ", ".join(parts), fractions


def _dominant_shapes(frame: pd.DataFrame) -> str:
    """``"mlp flat (6/9), cnn …"``: each family's most common shape label."""
    parts = []
    for family, g in frame.groupby("family", sort=False):
        top = g["label"].value_counts()
        parts.append(f"{family} {top.index[0]} ({top.iloc[0]}/{len(g)})")
    return ", ".join(parts)


def _pct(values: pd.Series) -> str:
    return mean_spread(100 * values, "{:+.1f}") + " %"


def healthy_budgets(a: Analysis, p: ReportParams, matrix: str, family: str) -> list[Budget]:
    """What a healthy-trajectory claim needs in ``family``: every healthy run at the loss plateau; for
    W also ≥ ``holds_fraction`` of the trajectories moved and had room to expand."""
    healthy = a.runs[(a.runs["role"] == "healthy") & (a.runs["family"] == family)]
    pl = p.plateau
    budgets = [Budget(f"{family} healthy runs at the loss plateau (≤ {pl.max_progress:.1%} of the loss decrease in "
                      f"the last {pl.window_fraction:.0%} of steps)", int(healthy["plateau_reached"].sum()), len(healthy))]
    if matrix == "weight":
        lay = a.layers[a.layers["run"].isin(healthy["run"])]
        need = math.ceil(p.holds_fraction * len(lay))
        budgets += [Budget(f"{family} healthy W that moved ‖W_T − W₀‖/‖W₀‖ ≥ {p.move_min:g}",
                           int((lay["moved"] >= p.move_min).sum()), need),
                    Budget(f"{family} healthy W₀ with room to expand {p.criterion.expand_min:.0%} "
                           f"(r_eff(W₀) ≤ r_max / {1 + p.criterion.expand_min:g})", int(lay["room"].sum()), need)]
    return budgets


def _shape_claim(a: Analysis, p: ReportParams, claim: str, column: str) -> list[Row]:
    """One row per matrix. A claim that must hold in every family is refuted by one family that had
    every budget and fails; it is reproduced when it holds everywhere; otherwise the short budgets decide."""
    rows = []
    for matrix in MATRICES:
        h = a.shapes[(a.shapes["role"] == "healthy") & (a.shapes["matrix"] == matrix)]
        if h.empty:
            rows.append(judged(claim, f"{LABELS[matrix]}: no completed healthy run", None, "nothing to classify"))
            continue
        counts, fractions = _per_family(h, column)
        budgets = {f: healthy_budgets(a, p, matrix, f) for f in fractions}
        held = [f for f, v in fractions.items() if v >= p.holds_fraction]
        decisive = [f for f, v in fractions.items() if v < p.holds_fraction and all(b.met for b in budgets[f])]
        why = (f"holds (≥ {p.holds_fraction:.0%} of layer × seed trajectories) in "
               + (", ".join(held) if held else "no family") + f" of {len(fractions)}")
        measured = (f"{LABELS[matrix]}: {int(h[column].sum())}/{len(h)} trajectories ({counts}); "
                    f"most common shape: {_dominant_shapes(h)}")
        if decisive:
            short = [str(b) for f in fractions if f not in decisive for b in budgets[f] if not b.met]
            why += (f"; fails in {', '.join(decisive)} with every budget met"
                    + (f" (short elsewhere: {'; '.join(short)})" if short else ""))
            rows.append(judged(claim, measured, False, why, [b for f in decisive for b in budgets[f]]))
        else:
            rows.append(judged(claim, measured, len(held) == len(fractions), why,
                               [b for f in fractions for b in budgets[f]]))
    return rows


def expansion_compression_plateau(a: Analysis, p: ReportParams) -> list[Row]:
    """In healthy training the effective rank of each layer follows expansion → compression → plateau."""
    return _shape_claim(a, p, "rank_survey.expansion_compression_plateau", "hypothesis4")


def monotone_decrease(a: Analysis, p: ReportParams) -> list[Row]:
    """Stable training shows a smooth, monotonically decreasing effective rank."""
    return _shape_claim(a, p, "rank_survey.monotone_decrease", "monotone")


def structured_dynamics(a: Analysis, p: ReportParams) -> list[Row]:
    """Rank dynamics are structured (reproducible across seeds), not noisy or random."""
    rows = []
    for matrix in MATRICES:
        ag = a.agreement[a.agreement["matrix"] == matrix] if len(a.agreement) else a.agreement
        moving = ag[~ag["flat"]] if len(ag) else ag
        seeds = int(ag["n_seeds"].min()) if len(ag) else 0
        budgets = [Budget("seeds (healthy runs)", seeds, p.min_seeds),
                   Budget(f"layers whose seed-mean trajectory moves ≥ {p.criterion.plateau_tol:.0%}", len(moving), 1)]
        if moving.empty or seeds < 2:
            rows.append(judged("rank_survey.structured_dynamics", f"{LABELS[matrix]}: no moving layer or < 2 seeds",
                               None, "between-seed agreement needs ≥ 2 seeds and a trajectory that moves", budgets))
            continue
        ok = moving["r2"] >= p.r2_min
        holds = float(ok.mean()) >= p.holds_fraction
        rows.append(judged(
            "rank_survey.structured_dynamics",
            f"{LABELS[matrix]}: between-seed R² median {moving['r2'].median():.3f}; {int(ok.sum())}/{len(moving)} "
            f"moving layers ≥ {p.r2_min:g} ({int(ag['flat'].sum())} flat layers left out)",
            holds, "seeds trace the same per-layer curve" if holds else
            "per-layer trajectories differ between seeds more than they move", budgets))
    return rows


def destabilising_sizes(a: Analysis, family: str, p: ReportParams) -> list[float]:
    """Spike sizes > 1 that destabilised at least ``holds_fraction`` of the family's seeds."""
    d = a.dose[(a.dose["family"] == family) & (a.dose["lr_spike"] > 1)]
    frac = d.groupby("lr_spike")["destabilised"].mean()
    return [float(z) for z, f in frac.items() if f >= p.holds_fraction]


def _spike_budgets(a: Analysis, family: str, p: ReportParams, sizes: list[float]) -> list[Budget]:
    d = a.dose[a.dose["family"] == family]
    healthy = d[(d["lr_spike"] == 1) & (d["outcome"] == "completed")]
    return [Budget(f"spike sizes that destabilised ≥ {p.holds_fraction:.0%} of seeds (setback ≥ {p.setback_min:g})",
                   len(sizes), 1),
            Budget("seeds per spike size", int(d.groupby("lr_spike").size().min()), p.min_seeds),
            Budget("healthy ×1 control runs (same seeds)", len(healthy), len(a.params.seeds))]


def _sizes_text(sizes: list[float]) -> str:
    return ", ".join(f"×{z:g}" for z in sizes) or "none"


def _inflation_row(a: Analysis, p: ReportParams, family: str) -> Row:
    d = a.dose[a.dose["family"] == family]
    sizes = destabilising_sizes(a, family, p)
    parts = []
    for size, g in d.groupby("lr_spike", sort=True):
        text = (f"×{size:g}: setback {mean_spread(g['setback'], '{:.3f}')}, "
                f"destabilised {int(g['destabilised'].sum())}/{len(g)}")
        if size > 1:
            text += ", r_eff vs ×1 after the spike: " + ", ".join(
                f"{LABELS[m]} {_pct(g[f'response_{m}'])}" for m in MATRICES)
        parts.append(text)
    w = a.response[(a.response["family"] == family) & (a.response["matrix"] == "weight")
                   & a.response["lr_spike"].isin(sizes) & a.response["destabilised"]] if len(a.response) else []
    inflated = float((w["response_after"] >= p.criterion.expand_min).mean()) if len(w) else math.nan
    collapsed = float((w["response_after"] <= -p.criterion.compress_min).mean()) if len(w) else math.nan
    why = (f"destabilising sizes: {_sizes_text(sizes)}; W r_eff inflated (≥ +{p.criterion.expand_min:.0%}) in "
           f"{inflated:.0%}, collapsed (≤ −{p.criterion.compress_min:.0%}) in {collapsed:.0%} of their layer × run "
           "pairs" if len(w) else "no destabilised run to read a rank response from")
    return judged("rank_survey.instability_rank_inflation", f"{family}: " + "; ".join(parts),
                  bool(len(w)) and inflated >= p.holds_fraction, why, _spike_budgets(a, family, p, sizes))


def _sudden_change_row(a: Analysis, p: ReportParams, family: str) -> Row:
    d = a.dose[a.dose["family"] == family]
    sizes = destabilising_sizes(a, family, p)
    null = d[d["lr_spike"] == 1].set_index("seed")["rank_jump_null"]
    spiked = d[d["lr_spike"] > 1].copy()
    spiked["beyond"] = spiked["rank_jump"] > spiked["seed"].map(null)
    hit = spiked[spiked["lr_spike"].isin(sizes) & spiked["destabilised"] & spiked["rank_jump"].notna()]
    calm = spiked[~spiked["destabilised"]]
    jumps = "; ".join(f"×{z:g} {mean_spread(g['rank_jump'], '{:.3f}')}" for z, g in d.groupby("lr_spike", sort=True))
    measured = (f"{family}: |Δ log r_eff(W)| across the spike window, max over layers: {jumps}; healthy runs' "
                f"largest change over any window of that length: {mean_spread(null, '{:.3f}')}; beyond it in "
                f"{int(hit['beyond'].sum())}/{len(hit)} destabilised and {int(calm['beyond'].sum())}/{len(calm)} "
                "non-destabilised spike runs")
    frac = float(hit["beyond"].mean()) if len(hit) else math.nan
    why = (f"destabilising sizes: {_sizes_text(sizes)}; {frac:.0%} of their destabilised runs jump beyond the "
           "healthy null" if len(hit) else "no destabilised run to read a jump from")
    return judged("rank_survey.instability_sudden_change", measured,
                  bool(len(hit)) and frac >= p.holds_fraction, why, _spike_budgets(a, family, p, sizes))


def instability_rank_inflation(a: Analysis, p: ReportParams) -> list[Row]:
    """A training instability shows up as rank inflation of the weight matrices."""
    return [_inflation_row(a, p, family) for family in a.params.families]


def instability_sudden_change(a: Analysis, p: ReportParams) -> list[Row]:
    """Instabilities coincide with rank spikes or sudden spectral changes."""
    return [_sudden_change_row(a, p, family) for family in a.params.families]


CLAIMS = (expansion_compression_plateau, monotone_decrease, structured_dynamics, instability_rank_inflation,
          instability_sudden_change)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows, one claim function after another."""
    return [row for claim in CLAIMS for row in claim(a, p)]
