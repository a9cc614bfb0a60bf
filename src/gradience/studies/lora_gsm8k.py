"""Synthesis Part II, GSM8K: LoRA on a decoder LM, exact match of the number after ``####``.

The shared protocol (configurations × seeds, adapter geometry, the monitor, the analyses) is
:mod:`gradience.studies.lora_family`; this module supplies the task:

* paper profile: Mistral-7B (hub, bf16, ``device: auto``) on GSM8K (``datasets``, pinned revision;
  :func:`gradience.tasks.gsm.hub_gsm8k`), the answer with its chain of thought;
* default profile: SmolLM2-135M-Instruct (``reports/weights/smollm2``, prepared by the
  ``weights_smollm2`` stage) on a short arithmetic task of reasoning-gym in GSM8K's schema
  (``data/arithmetic``, :func:`gradience.tasks.gsm.build_arithmetic`; answer ``#### N`` only).
  SmolLM2 scores 0 zero-shot on ``gsm_symbolic`` and on this task (it never writes ``####``);
  a few dozen LoRA steps teach the format and move exact match on the short task, which
  ``gsm_symbolic`` (~93 tokens per problem, 7–8 s per step) cannot within the CPU budget.

Scoring: greedy decoding of up to ``max_new_tokens`` tokens after ``Question: …\\nAnswer:``,
exact match of the final number after ``####`` (:func:`gradience.tasks.gsm.exact_match`).
Loss and perplexity are on the answer tokens only.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from gradience.lora import finetune as ft
from gradience.reporting import judged
from gradience.studies import base
from gradience.studies import lora_family as lf
from gradience.tasks import gsm

BASE_MODELS = ("smollm2",)
DATA = ("arithmetic",)
TABLES = ("telemetry",)

#: The shared analyses (lora_family.SHARED) → this study's claim ids, in Findings order.
CLAIMS = {
    "alpha": "lora_gsm8k.alpha_controls_generalisation",
    "lr": "lora_gsm8k.lr_dominates_alpha",
    "alpha_at_low_lr": "lora_gsm8k.alpha_irrelevant_at_low_lr",
    "stable_rank": "lora_gsm8k.stable_rank_tracks_concentration",
    "attention": "lora_gsm8k.attention_beats_all",
    "r8": "lora_gsm8k.r8_enough",
    "monitor": "lora_gsm8k.ppl_ratio_monitor",
    "restraint": "lora_gsm8k.restraint",
}


class RunParams(lf.FamilyRunParams):
    max_new_tokens: int = Field(ge=1, description="greedy tokens decoded per test answer")
    score_batch: int = Field(default=16, ge=1, description="prompts decoded per batch")


class ReportParams(lf.FamilyReportParams):
    pass


def _records(p: lf.FamilyRunParams, data_dir: str, split: str) -> list[dict]:
    if p.data.source == "hub":
        return gsm.hub_gsm8k(split, p.data.revision)
    return gsm.read_jsonl(Path(data_dir) / p.data.folder / f"{split}.jsonl")


def _load(p: lf.FamilyRunParams, device, dtype):
    from gradience.lora.base_models import load_causal_lm

    return load_causal_lm(p.base_model, dtype, device)


def task(p: RunParams) -> lf.Task:
    """The GSM8K task of the family: causal LM, question/answer encoding, exact-match scoring."""
    def score(model, tok, records, _encoded) -> float:
        return ft.qa_accuracy(model, tok, records, p.max_new_tokens, p.score_batch)[0]

    return lf.Task("decoder", "CAUSAL_LM", _load, _records, ft.encode_qa, ft.mean_token_loss, score)


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    return lf.jobs(p, data_dir)


def run_one(job: base.Job) -> base.RunOutput:
    return lf.run_family(job, task(job.params))  # type: ignore[arg-type]


analyse = lf.analyse
curves = lf.curves


UNIVERSAL = "attn_r8_lr5e5"  # Part V's "universal efficient config" for a hard task


def find_universal(a: lf.Analysis, p: ReportParams) -> dict[str, str]:
    """Part V's decision tree for a hard task: attention-only, r 8, LR 5e-5 — no configuration beats it by
    more than z SE (an absence claim: a short or tiny run grants it vacuously, so its budgets must hold)."""
    others = [c for c in a.configs.config if c not in (UNIVERSAL, lf.ZERO_SHOT)]
    cs = [lf.comparison(a.tuned, c, UNIVERSAL) for c in others]
    present = [c for c in cs if c.present]
    beaten = [c.a for c in present if lf.better(c, p.z)]
    best = max(present, key=lambda c: c.diff) if present else None
    measured = (f"{UNIVERSAL} vs the best other ({best.text(a.tuned)}); beaten by > {p.z:g} SE: "
                f"{', '.join(beaten) or 'none'}" if best else f"{UNIVERSAL}: not run in this profile")
    return judged("lora_gsm8k.universal_config", measured, (not beaten) if best else None,
                  f"no configuration beats {UNIVERSAL} by > {p.z:g} SE", lf.budgets(a, *present, rp=p), absence=True)


def findings(a: lf.Analysis, p: ReportParams) -> list[dict[str, str]]:
    return lf.shared_findings(a, p, CLAIMS) + [find_universal(a, p)]


def metrics(a: lf.Analysis, p: ReportParams) -> dict:
    return lf.family_metrics(a, p)
