"""LoRA on GSM8K: one function per claim, its docstring the claim (the shared analyses are judged by
:mod:`gradience.studies.lora_family.findings`; Part V's universal configuration is this study's own)."""

from __future__ import annotations

from gradience.reporting import judged
from gradience.studies.lora_family import findings as family
from gradience.studies.lora_family.analysis import better, comparison
from gradience.studies.lora_family.runs import ZERO_SHOT
from gradience.studies.lora_gsm8k.analysis import Analysis, ReportParams

Row = dict[str, str]
UNIVERSAL = "attn_r8_lr5e5"  # Part V's "universal efficient config" for a hard task
#: The accuracy gains (points, a − b) the seed published, read from each claim's ``published`` in the
#: registry (seed appendix, GSM8K table); a negative of a comparison needs the runs to be able to see
#: them (:func:`~gradience.studies.lora_family.findings.power`). The absence claims (α/r irrelevant at
#: low LR, r 8 enough, the universal configuration) publish the differences the seed calls noise, not an
#: effect to detect: none here.
CLAIMED: family.Claimed = {
    # "r 32: 20 % → 36 % …; r 8: 24 % → 35 %"
    "lora_gsm8k.alpha_controls_generalisation": {("low_alpha", "baseline"): 16.0,
                                                 ("low_alpha_r8", "small_r8"): 11.0},
    # "baseline 20 %; baseline_lr5e5 38 %"
    "lora_gsm8k.lr_dominates_alpha": {("baseline_lr5e5", "baseline"): 18.0},
    # "attn_only 38 % vs baseline 20 %"
    "lora_gsm8k.attention_beats_all": {("attn_only", "baseline"): 18.0},
    # "38 % / 36 % / 38 % vs 20 %" (lower LR / lower α/r / attention-only vs the baseline)
    "lora_gsm8k.restraint": {("baseline_lr5e5", "baseline"): 18.0, ("low_alpha", "baseline"): 16.0,
                             ("attn_only", "baseline"): 18.0},
}


def alpha_controls_generalisation(a: Analysis, p: ReportParams) -> list[Row]:
    """α/r controls generalisation: at LR 2e-4 (all targets) α/r 0.25 beats α/r 1.0, at r = 32 and at r = 8."""
    return [family.find_alpha(a, p, "lora_gsm8k.alpha_controls_generalisation", CLAIMED)]


def lr_dominates_alpha(a: Analysis, p: ReportParams) -> list[Row]:
    """Lowering the learning rate (2e-4 → 5e-5) helps at least as much as lowering α/r."""
    return [family.find_lr(a, p, "lora_gsm8k.lr_dominates_alpha", CLAIMED)]


def alpha_irrelevant_at_low_lr(a: Analysis, p: ReportParams) -> list[Row]:
    """At LR 5e-5, attention-only r = 8 gives the same accuracy with α/r 1.0 and 0.25."""
    return [family.find_alpha_at_low_lr(a, p, "lora_gsm8k.alpha_irrelevant_at_low_lr", CLAIMED)]


def stable_rank_tracks_concentration(a: Analysis, p: ReportParams) -> list[Row]:
    """Stable rank of ΔW falls from high α/r to low α/r to low LR, and lower stable rank goes with better
    generalisation."""
    return [family.find_stable_rank(a, p, "lora_gsm8k.stable_rank_tracks_concentration")]


def attention_beats_all(a: Analysis, p: ReportParams) -> list[Row]:
    """Attention-only adapters beat all modules, and MLP-only is the worst target set."""
    return [family.find_attention(a, p, "lora_gsm8k.attention_beats_all", CLAIMED)]


def r8_enough(a: Analysis, p: ReportParams) -> list[Row]:
    """r = 8 is sufficient: r 8 is not worse than r 32 at either α/r."""
    return [family.find_r8(a, p, "lora_gsm8k.r8_enough", CLAIMED)]


def ppl_ratio_monitor(a: Analysis, p: ReportParams) -> list[Row]:
    """Test/train perplexity > 1.5 flags memorisation: the runs it flags generalise worse than those it passes."""
    return [family.find_monitor(a, p, "lora_gsm8k.ppl_ratio_monitor")]


def restraint(a: Analysis, p: ReportParams) -> list[Row]:
    """Restraint helps: lower LR, lower α/r and attention-only each improve on the baseline."""
    return [family.find_restraint(a, p, "lora_gsm8k.restraint", CLAIMED)]


def universal_config(a: Analysis, p: ReportParams) -> list[Row]:
    """For a hard task (math) the universal efficient configuration, attention-only r = 8 at LR 5e-5, is as
    good as any configuration: no configuration beats it by more than z SE (an absence claim: a short or
    tiny run grants it vacuously, so its budgets must hold)."""
    others = [c for c in a.configs.config if c not in (UNIVERSAL, ZERO_SHOT)]
    cs = [comparison(a.tuned, c, UNIVERSAL) for c in others]
    present = [c for c in cs if c.present]
    beaten = [c.a for c in present if better(c, p.z)]
    best = max(present, key=lambda c: c.diff) if present else None
    measured = (f"{UNIVERSAL} vs the best other ({best.text(a.tuned)}); beaten by > {p.z:g} SE: "
                f"{', '.join(beaten) or 'none'}" if best else f"{UNIVERSAL}: not run in this profile")
    return [judged("lora_gsm8k.universal_config", measured, (not beaten) if best else None,
                   f"no configuration beats {UNIVERSAL} by > {p.z:g} SE", family.budgets(a, *present, rp=p))]


CLAIMS = (alpha_controls_generalisation, lr_dominates_alpha, alpha_irrelevant_at_low_lr,
          stable_rank_tracks_concentration, attention_beats_all, r8_enough, ppl_ratio_monitor, restraint,
          universal_config)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows, one claim function after another."""
    return [row for claim in CLAIMS for row in claim(a, p)]
