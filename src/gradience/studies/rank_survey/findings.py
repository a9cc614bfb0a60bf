"""Rank survey (Protocol D): one function per claim, its docstring the claim.

Every verdict goes through :func:`gradience.reporting.judged` with the budgets the claim needs; the
claim's registered kind decides what a short budget blocks (the shape claims are events, the
agreement and LR-spike claims comparisons, whose negative needs a stated power: the agreement and
sudden-change claims state it; inflation does not, so its negative reads "inconclusive").
A claim "holds in a family" when at least ``holds_fraction`` of its healthy layer × seed
trajectories satisfy it. Budgets, per family: every healthy run reached the loss plateau; for W
also ≥ ``holds_fraction`` of the trajectories *moved* (``‖W_T − W₀‖_F / ‖W₀‖_F ≥ move_min``) and
had *room to expand* (``r_0 ≤ r_max / (1 + x)``, ``r_max`` = W₀'s numerical rank, min(m, n) at a
random initialisation). The shape claims must hold in every family, so one family that had its
budgets and fails refutes them; they get one row per matrix (W, W − W₀, ∂L/∂W), as does the
agreement claim: structured when ≥ ``holds_fraction`` of the moving layers have R² ≥ ``r2_min`` and
beat their time-permuted null at ``alpha``; power: the null's (1 − α) quantile (median over layers),
the smallest R² the test can call structured, against ``r2_min``.

LR spike, dose–response (one row per family, the dose–response over spike sizes in ``measured``):
a spike size *destabilises* a family when at least ``holds_fraction`` of its seeds are
destabilised. Inflation holds in a family when ≥ ``holds_fraction`` of the layer × run pairs of
destabilised runs at destabilising sizes have a W response ≥ ``expand_min``. A sudden change holds
when ≥ ``holds_fraction`` of those runs jump beyond their healthy null (the largest W rank change the
healthy run shows over any window of that length) AND the jump is specific to the instability: over
the seeds where the spike destabilised, the mean of ``log(spike jump / kick jump)`` against its
matched-norm random kick exceeds what a one-sided paired t-test at ``alpha`` can detect. That
detectable mean is the power, against the claimed effect: the spike's mean log jump over the healthy
null (what a spike-specific change would show over a move that stays at the null). A kick that
destabilised too (in ≥ ``holds_fraction`` of the pairs) and is not exceeded decides nothing
("inconclusive"): its jump coincides with its own instability.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradience.reporting import Budget, Power, judged, mean_spread
from gradience.studies.rank_survey.analysis import LABELS, MATRICES, Analysis, ReportParams
from gradience.studies.rank_survey.trajectories import paired_log_ratio

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
        beyond = moving["p_null"] <= p.alpha
        ok = (moving["r2"] >= p.r2_min) & beyond
        holds = float(ok.mean()) >= p.holds_fraction
        power = Power(f"between-seed R² a layer needs to beat its time-permuted null at α = {p.alpha:g} (median "
                      "over moving layers)", float(moving["r2_null_q"].median()), p.r2_min)
        rows.append(judged(
            "rank_survey.structured_dynamics",
            f"{LABELS[matrix]}: between-seed R² median {moving['r2'].median():.3f} vs time-permuted null "
            f"{moving['r2_null_mean'].median():.3f} (its {1 - p.alpha:.0%} quantile {moving['r2_null_q'].median():.3f}, "
            f"{p.null_permutations} permutations); beyond the null in {int(beyond.sum())}/{len(moving)} moving layers, "
            f"{int(ok.sum())} of them with R² ≥ {p.r2_min:g} ({int(ag['flat'].sum())} flat layers left out)",
            holds, "seeds trace the same per-layer curve, beyond what the same values in random time order give"
            if holds else "per-layer trajectories agree across seeds no better than time-permuted ones, or below r2_min",
            budgets, power))
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
    k = a.kicks[a.kicks["family"] == family] if len(a.kicks) else a.kicks
    pairs = k[k["kick"].isin(sizes) & k["kicked"] & k["spike_destabilised"].astype(bool)] if len(k) else k
    kicks_destabilised = bool(len(pairs)) and float(pairs["kick_destabilised"].mean()) >= p.holds_fraction
    mean_d, detectable, n = (paired_log_ratio(pairs["spike_jump"], pairs["kick_jump"], p.alpha) if len(pairs)
                             else (math.nan, math.inf, 0))
    claimed = float(np.log(pairs["spike_jump"] / pairs["rank_jump_null"]).mean()) if len(pairs) else math.nan
    kick_text = "; ".join(
        f"matched kick ×{z:g} (‖kick‖/‖W₀‖ {mean_spread(g['kick_relative'], '{:.2f}')}): jump "
        f"{mean_spread(g['kick_jump'], '{:.3f}')}, destabilised {int(g['kick_destabilised'].sum())}/{len(g)}"
        for z, g in k.groupby("kick", sort=True)) if len(k) else "no matched kick"
    measured = (f"{family}: |Δ log r_eff(W)| across the spike window, max over layers: {jumps}; healthy runs' "
                f"largest change over any window of that length: {mean_spread(null, '{:.3f}')}; beyond it in "
                f"{int(hit['beyond'].sum())}/{len(hit)} destabilised and {int(calm['beyond'].sum())}/{len(calm)} "
                f"non-destabilised spike runs; {kick_text}; mean log(spike jump / kick jump) over {n} paired seeds "
                f"{mean_d:+.2f}")
    frac = float(hit["beyond"].mean()) if len(hit) else math.nan
    beyond_null = bool(len(hit)) and frac >= p.holds_fraction
    specific = n >= 2 and mean_d > detectable
    why = (f"destabilising sizes: {_sizes_text(sizes)}; {frac:.0%} of their destabilised runs jump beyond the "
           "healthy null" if len(hit) else "no destabilised run to read a jump from")
    if specific:
        why += (f"; the jump exceeds that of a random kick of the same norm (one-sided paired t at α = {p.alpha:g}): "
                "it is not just the size of the move")
    elif kicks_destabilised:
        why += ("; not shown to exceed the matched-norm random kick's jump, but that kick destabilised training "
                "too, so its jump does not separate a large move from an instability")
    else:
        why += "; not shown to exceed the jump of a matched-norm random kick that did not destabilise"
    budgets = [*_spike_budgets(a, family, p, sizes),
               Budget("seeds with a destabilised spike and its matched-norm kick (same seed, a destabilising size)",
                      len(pairs), p.min_seeds)]
    # holds: beyond the null and specific; no verdict when a kick that destabilised too is not exceeded
    holds = (beyond_null and specific) if (specific or not beyond_null or not kicks_destabilised) else None
    # the stated power is the specificity test's: a negative read from the healthy null alone gets none
    power = (Power("mean log(spike jump / matched-kick jump), one-sided paired t (claimed: the spike's log jump "
                   "over the healthy null)", detectable, claimed) if beyond_null else None)
    return judged("rank_survey.instability_sudden_change", measured, holds, why, budgets, power)


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
