"""LoRA on SST-2: one function per claim, its docstring the claim.

Beyond the shared analyses (judged by :mod:`gradience.studies.lora_family.findings`), the seed's SST-2
table (appendix) says: every configuration works on an easy task (94–96 %), the lower learning rate
ranks first, and attention-only r = 8 at 5e-5 is within half a point of the best with 12× fewer
parameters.
"""

from __future__ import annotations

import pandas as pd

from gradience.reporting import Budget, judged, mean_spread
from gradience.studies.lora_family import findings as family
from gradience.studies.lora_family.analysis import better, comparison
from gradience.studies.lora_sst2.analysis import Analysis, ReportParams

Row = dict[str, str]
#: The seed's SST-2 table: configuration → published accuracy.
SEED_SST2 = {"baseline_lr5e5": 0.960, "attn_r8_lr5e5": 0.956, "baseline": 0.950, "low_alpha": 0.940}
#: The accuracy gains (points, a − b) the seed published for SST-2, read from each claim's ``published``
#: in the registry (seed appendix, SST-2 table); a negative of a comparison needs the runs to be able to
#: see them (:func:`~gradience.studies.lora_family.findings.power`). Only one is stated for SST-2 as a
#: gain the claim predicts: α/r's published SST-2 difference runs the other way (95.0 % at α/r 1 vs
#: 94.0 % at 0.25), restraint's levers are +1.0 / −1.0 / unpublished, attention-only and the monitor
#: are published for GSM8K only, and the absence claims publish differences the seed calls a match.
CLAIMED: family.Claimed = {
    # "SST-2: baseline_lr5e5 96.0 % vs baseline 95.0 % …"
    "lora_sst2.lr_dominates_alpha": {("baseline_lr5e5", "baseline"): 1.0},
}


def _seed_table(a: Analysis, p: ReportParams) -> tuple[pd.DataFrame, list[str], list[Budget], str]:
    """Per configuration means, the seed's configurations run, their budgets and their accuracies."""
    c = a.configs.set_index("config")
    have = [k for k in SEED_SST2 if k in c.index]
    budgets = [Budget("seed SST-2 configurations run", len(have), len(SEED_SST2)),
               Budget("seeds per configuration (fewest)", float(c.loc[have, "seeds"].min()) if have else 0, p.min_seeds),
               Budget("scored test examples per run", float(a.tuned.n_test.min()) if len(a.tuned) else 0,
                      p.min_test_examples), family.learned_budget(a, have, p.z)]
    acc = "; ".join(f"{k} {mean_spread(a.tuned[a.tuned.condition == k].accuracy * 100, '{:.1f}')} %" for k in have)
    return c, have, budgets, acc


def any_config_works(a: Analysis, p: ReportParams) -> list[Row]:
    """An easy classification task: any reasonable configuration works (accuracies within a few points:
    every configuration of the seed's table within ``easy_spread``)."""
    c, have, budgets, acc = _seed_table(a, p)
    seed4 = c.loc[have]
    spread = float(seed4.accuracy.max() - seed4.accuracy.min()) if len(seed4) else float("nan")
    return [judged("lora_sst2.any_config_works",
                   f"{acc}; best − worst of the seed's {len(seed4)} configurations {100 * spread:.1f} pt",
                   bool(spread <= p.easy_spread) if len(seed4) > 1 else None,
                   f"every configuration within {100 * p.easy_spread:.0f} pt of the best", budgets)]


def low_lr_best(a: Analysis, p: ReportParams) -> list[Row]:
    """The low learning rate (baseline_lr5e5) is the best SST-2 configuration."""
    c, have, budgets, acc = _seed_table(a, p)
    top = None
    if "baseline_lr5e5" in c.index and len(have) > 1:
        others = [k for k in have if k != "baseline_lr5e5"]
        top = not any(better(comparison(a.tuned, k, "baseline_lr5e5"), p.z) for k in others)
    return [judged("lora_sst2.low_lr_best", f"{acc}", top,
                   f"no seed configuration beats baseline_lr5e5 by > {p.z:g} SE", budgets)]


def attn_r8_efficient(a: Analysis, p: ReportParams) -> list[Row]:
    """Attention-only r = 8 at LR 5e-5 matches the best configuration with 12x fewer parameters."""
    cmp = comparison(a.tuned, "baseline_lr5e5", "attn_r8_lr5e5")
    return [judged("lora_sst2.attn_r8_efficient", cmp.text(a.tuned),
                   (not better(cmp, p.z)) if cmp.present else None,
                   f"attn_r8_lr5e5 within {p.z:g} SE of baseline_lr5e5", family.budgets(a, cmp, rp=p))]


def alpha_controls_generalisation(a: Analysis, p: ReportParams) -> list[Row]:
    """α/r controls generalisation: at LR 2e-4 (all targets) α/r 0.25 beats α/r 1.0, at r = 32 and at r = 8."""
    return [family.find_alpha(a, p, "lora_sst2.alpha_controls_generalisation", CLAIMED)]


def lr_dominates_alpha(a: Analysis, p: ReportParams) -> list[Row]:
    """Lowering the learning rate (2e-4 → 5e-5) helps at least as much as lowering α/r."""
    return [family.find_lr(a, p, "lora_sst2.lr_dominates_alpha", CLAIMED)]


def alpha_irrelevant_at_low_lr(a: Analysis, p: ReportParams) -> list[Row]:
    """At LR 5e-5, attention-only r = 8 gives the same accuracy with α/r 1.0 and 0.25."""
    return [family.find_alpha_at_low_lr(a, p, "lora_sst2.alpha_irrelevant_at_low_lr", CLAIMED)]


def stable_rank_tracks_concentration(a: Analysis, p: ReportParams) -> list[Row]:
    """Stable rank of ΔW falls from high α/r to low α/r to low LR, and lower stable rank goes with better
    generalisation."""
    return [family.find_stable_rank(a, p, "lora_sst2.stable_rank_tracks_concentration")]


def attention_beats_all(a: Analysis, p: ReportParams) -> list[Row]:
    """Attention-only adapters beat all modules, and MLP-only is the worst target set."""
    return [family.find_attention(a, p, "lora_sst2.attention_beats_all", CLAIMED)]


def r8_enough(a: Analysis, p: ReportParams) -> list[Row]:
    """r = 8 is sufficient: r 8 is not worse than r 32 at either α/r."""
    return [family.find_r8(a, p, "lora_sst2.r8_enough", CLAIMED)]


def ppl_ratio_monitor(a: Analysis, p: ReportParams) -> list[Row]:
    """Test/train perplexity > 1.5 flags memorisation: the runs it flags generalise worse than those it passes."""
    return [family.find_monitor(a, p, "lora_sst2.ppl_ratio_monitor")]


def restraint(a: Analysis, p: ReportParams) -> list[Row]:
    """Restraint helps: lower LR, lower α/r and attention-only each improve on the baseline."""
    return [family.find_restraint(a, p, "lora_sst2.restraint", CLAIMED)]


CLAIMS = (any_config_works, low_lr_best, attn_r8_efficient, alpha_controls_generalisation, lr_dominates_alpha,
          alpha_irrelevant_at_low_lr, stable_rank_tracks_concentration, attention_beats_all, r8_enough,
          ppl_ratio_monitor, restraint)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows, one claim function after another."""
    return [row for claim in CLAIMS for row in claim(a, p)]
