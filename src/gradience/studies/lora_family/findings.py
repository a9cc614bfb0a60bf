"""The LoRA family's shared verdicts: one function per analysis of the seed's Part II, each judged
for the claim id a study passes (``lora_gsm8k.findings``, ``lora_sst2.findings`` name them).

Every verdict goes through :func:`gradience.reporting.judged` with :func:`budgets`: seeds per
configuration, scored test examples, and configurations that :func:`~.analysis.learned`; a verdict
resting on :func:`~.analysis.better` tests also gets their :func:`power` against the accuracy
differences the seed published, which a study passes as ``claimed`` (its ``CLAIMED``: claim id →
{(a, b): points}).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from gradience.reporting import Budget, Power, judged, mean_spread
from gradience.studies.lora_family.analysis import (
    Analysis,
    Comparison,
    FamilyReportParams,
    better,
    comparison,
    learned,
    monitor_table,
    reference,
    same,
    stable_rank_association,
)
from gradience.studies.lora_family.runs import ZERO_SHOT

Row = dict[str, str]
#: Per claim id: the accuracy difference (points) the seed published for a pair (a, b) of configurations.
Claimed = Mapping[str, Mapping[tuple[str, str], float]]


def _sr(a: Analysis, name: str) -> str:
    g = a.tuned[a.tuned.condition == name]
    return f"{name} {mean_spread(g.lora_stable_rank)}" if len(g) else f"{name} —"


def _combine(*values: bool | None) -> bool | None:
    return None if any(v is None for v in values) else all(values)


def learned_budget(a: Analysis, names: Sequence[str], z: float) -> Budget:
    """A comparison of configurations means something only when each of them learned the task: a run
    stuck at the untrained answer cannot show which configuration generalises better."""
    kind, ref = reference(a)
    names = list(dict.fromkeys(names))
    return Budget(f"compared configurations that learned (> {kind} {100 * ref:.1f} % by {z:g} SE)",
                  sum(learned(a, n, z) for n in names), len(names))


def budgets(a: Analysis, *cs: Comparison, rp: FamilyReportParams) -> list[Budget]:
    """Seeds, scored examples and :func:`learned_budget` of the configurations the comparisons ran."""
    present = [c for c in cs if c.present]
    if not present:
        return []
    return [Budget("seeds per configuration (fewest)", min(c.seeds for c in present), rp.min_seeds),
            Budget("scored test examples per run", min(c.n_test for c in present), rp.min_test_examples),
            learned_budget(a, [n for c in present for n in (c.a, c.b)], rp.z)]


def power(cs: Sequence[Comparison], claimed: Mapping[tuple[str, str], float] | None, z: float) -> Power | None:
    """The power of a negative that rests on :func:`better` tests of ``cs``: the smallest accuracy
    difference each could detect at its n, z·SE (the threshold :func:`better` applies; a true
    difference of exactly z·SE clears it half the time), beside the difference the seed published for
    that pair, in points. The pair with the largest detectable/claimed ratio speaks for the claim (a
    negative needs every test it rests on to have the power). None when the seed states no difference
    for one of the pairs, or one was not run."""
    if not claimed:
        return None
    if unknown := set(claimed) - {(c.a, c.b) for c in cs}:
        raise ValueError(f"claimed differences for pairs the claim does not test: {sorted(unknown)}")
    if not cs or any(not c.present or (c.a, c.b) not in claimed for c in cs):
        return None
    weakest = max(cs, key=lambda c: z * c.se / abs(claimed[(c.a, c.b)]))
    return Power(f"accuracy difference {weakest.a} − {weakest.b} (points, {z:g} SE)", 100 * z * weakest.se,
                 claimed[(weakest.a, weakest.b)])


def find_alpha(a: Analysis, rp: FamilyReportParams, claim: str, claimed: Claimed | None = None) -> Row:
    """Lower α/r (0.25 vs 1) improves accuracy at r = 32 and r = 8 (LR 2e-4, all targets)."""
    c32, c8 = comparison(a.tuned, "low_alpha", "baseline"), comparison(a.tuned, "low_alpha_r8", "small_r8")
    holds = _combine(better(c32, rp.z), better(c8, rp.z))
    gap = {n: mean_spread(a.tuned[a.tuned.condition == n].ppl_ratio) for n in ("baseline", "low_alpha")}
    return judged(claim, f"{c32.text(a.tuned)}; {c8.text(a.tuned)}; ppl ratio baseline {gap['baseline']}, "
                  f"low_alpha {gap['low_alpha']}; stable rank {_sr(a, 'baseline')}, {_sr(a, 'low_alpha')}",
                  holds, f"both r: low α/r better by > {rp.z:g} SE", budgets(a, c32, c8, rp=rp),
                  power([c32, c8], (claimed or {}).get(claim), rp.z))


def find_lr(a: Analysis, rp: FamilyReportParams, claim: str, claimed: Claimed | None = None) -> Row:
    """Lowering the LR (2e-4 → 5e-5) helps at least as much as lowering α/r (1 → 0.25). Power is that of
    the lower LR's gain over the baseline (low α/r beating the lower LR beyond z SE is a difference seen)."""
    lr, alpha = comparison(a.tuned, "baseline_lr5e5", "baseline"), comparison(a.tuned, "low_alpha", "baseline")
    vs = comparison(a.tuned, "baseline_lr5e5", "low_alpha")
    holds = _combine(better(lr, rp.z), (not better(comparison(a.tuned, "low_alpha", "baseline_lr5e5"), rp.z))
                     if vs.present else None)
    return judged(claim, f"{lr.text(a.tuned)}; {vs.text(a.tuned)}", holds,
                  f"lower LR better than baseline by > {rp.z:g} SE and not worse than low α/r",
                  budgets(a, lr, alpha, vs, rp=rp), power([lr], (claimed or {}).get(claim), rp.z))


def find_alpha_at_low_lr(a: Analysis, rp: FamilyReportParams, claim: str, claimed: Claimed | None = None) -> Row:
    """At LR 5e-5, attention r = 8 with α/r 1.0 and 0.25 agree."""
    c = comparison(a.tuned, "attn_r8_lr5e5", "attn_r8_low_alpha_lr5e5")
    return judged(claim, c.text(a.tuned), same(c, rp.z), f"|Δ| within {rp.z:g} SE", budgets(a, c, rp=rp),
                  power([c], (claimed or {}).get(claim), rp.z))


def find_stable_rank(a: Analysis, rp: FamilyReportParams, claim: str) -> Row:
    """Stable rank falls from baseline to low α/r to low LR, and lower stable rank goes with higher accuracy."""
    sr = a.configs.set_index("config").lora_stable_rank
    need = ("baseline", "low_alpha", "baseline_lr5e5")
    assoc = stable_rank_association(a)
    if not all(n in sr for n in need):
        holds = None
    else:
        holds = bool(sr["baseline"] > sr["low_alpha"] > sr["baseline_lr5e5"] and assoc["rho_accuracy"] < 0)
    seeds = int(a.tuned.groupby("condition").size().min()) if len(a.tuned) else 0
    ranked = a.configs[a.configs.config != ZERO_SHOT].config
    needs = [Budget("configurations ranked", assoc["configs"], 4),
             Budget("seeds per configuration (fewest)", seeds, rp.min_seeds), learned_budget(a, ranked, rp.z)]
    return judged(claim, f"stable rank {_sr(a, 'baseline')}, {_sr(a, 'low_alpha')}, {_sr(a, 'baseline_lr5e5')}; "
                  f"Spearman ρ(stable rank, accuracy) over {assoc['configs']:.0f} configurations "
                  f"{assoc['rho_accuracy']:.2f}, ρ(stable rank, ppl ratio) {assoc['rho_ppl_ratio']:.2f}",
                  holds, "order baseline > low α/r > low LR and ρ(stable rank, accuracy) < 0", needs)


def find_attention(a: Analysis, rp: FamilyReportParams, claim: str, claimed: Claimed | None = None) -> Row:
    """Attention-only (r 32, α/r 0.25) beats all modules (baseline) and MLP-only is the worst of the three.
    Power is that of attention-only's gain (MLP-only beating all modules beyond z SE is a difference seen)."""
    att, mlp = comparison(a.tuned, "attn_only", "baseline"), comparison(a.tuned, "baseline", "mlp_only")
    mlp_worst = (not better(comparison(a.tuned, "mlp_only", "baseline"), rp.z)) if mlp.present else None
    return judged(claim, f"{att.text(a.tuned)}; {mlp.text(a.tuned)}", _combine(better(att, rp.z), mlp_worst),
                  f"attention-only better than all by > {rp.z:g} SE, MLP-only not better than all",
                  budgets(a, att, mlp, rp=rp), power([att], (claimed or {}).get(claim), rp.z))


def find_r8(a: Analysis, rp: FamilyReportParams, claim: str, claimed: Claimed | None = None) -> Row:
    """r = 8 is enough: r 8 not worse than r 32 at either α/r, and r 32's utilization low (seed: 14 %)."""
    c1, c2 = comparison(a.tuned, "small_r8", "baseline"), comparison(a.tuned, "low_alpha_r8", "low_alpha")
    worse = [better(comparison(a.tuned, y, x), rp.z) if c.present else None
             for c, (x, y) in ((c1, ("small_r8", "baseline")), (c2, ("low_alpha_r8", "low_alpha")))]
    holds = None if any(w is None for w in worse) else not any(worse)
    u = a.tuned[a.tuned.r == 32].utilization if "r" in a.tuned else pd.Series(dtype=float)
    return judged(claim, f"{c1.text(a.tuned)}; {c2.text(a.tuned)}; utilization of r 32 adapters "
                  f"{mean_spread(u * 100, '{:.1f}')} %", holds, f"r 8 not worse than r 32 by > {rp.z:g} SE",
                  budgets(a, c1, c2, rp=rp), power([c1, c2], (claimed or {}).get(claim), rp.z))


def find_monitor(a: Analysis, rp: FamilyReportParams, claim: str) -> Row:
    """Runs the monitor flags (ppl ratio > threshold) are less accurate than runs it passes."""
    m = monitor_table(a.tuned, rp.memorisation_ratio)
    f, ok = m[m.flagged], m[~m.flagged]
    holds = bool(f.accuracy.mean() < ok.accuracy.mean()) if len(f) and len(ok) else None
    why = ("flagged runs less accurate on average" if holds is not None
           else "the monitor flagged every run or none: nothing to separate")
    return judged(claim, f"{len(f)}/{len(m)} runs flagged (ppl ratio > {rp.memorisation_ratio:g}; ratios "
                  f"{mean_spread(m.ppl_ratio)}); accuracy flagged {mean_spread(f.accuracy * 100, '{:.1f}')} %, "
                  f"passed {mean_spread(ok.accuracy * 100, '{:.1f}')} %", holds, why,
                  [Budget("runs flagged", len(f), 1), Budget("runs passed", len(ok), 1)])


def find_restraint(a: Analysis, rp: FamilyReportParams, claim: str, claimed: Claimed | None = None) -> Row:
    """Each restraint lever (lower LR, lower α/r, attention-only) is not worse than the baseline, and at
    least one is better beyond z SE. Power is the weakest lever's (a lever worse beyond z SE is a
    difference seen)."""
    levers = {"lower LR": "baseline_lr5e5", "lower α/r": "low_alpha", "attention-only": "attn_only"}
    cs = {k: comparison(a.tuned, v, "baseline") for k, v in levers.items()}
    if not all(c.present for c in cs.values()):
        holds = None
    else:
        worse = any(better(comparison(a.tuned, "baseline", v), rp.z) for v in levers.values())
        holds = bool(not worse and any(better(c, rp.z) for c in cs.values()))
    said = "; ".join(f"{k}: Δ {100 * c.diff:+.1f} ± {100 * c.se:.1f} pt" if c.present else f"{k}: not run"
                     for k, c in cs.items())
    return judged(claim, f"vs baseline — {said}", holds, f"no lever worse, ≥ 1 better by > {rp.z:g} SE",
                  budgets(a, *cs.values(), rp=rp), power(list(cs.values()), (claimed or {}).get(claim), rp.z))

