"""Synthesis Part II, GSM8K: LoRA on a decoder LM, exact match of the number after ``####`` (the runs).

The shared protocol (configurations × seeds, adapter geometry, the monitor, the analyses) is
:mod:`gradience.studies.lora_family`; this module supplies the task (the report keys are in
``analysis``, the claims in ``findings``):

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
from gradience.studies.lora_family import runs as family
from gradience.studies.protocol import Job, RunOutput
from gradience.tasks import gsm

BASE_MODELS = ("smollm2",)
DATA = ("arithmetic",)
TABLES = ("telemetry",)


class RunParams(family.FamilyRunParams):
    max_new_tokens: int = Field(ge=1, description="greedy tokens decoded per test answer")
    score_batch: int = Field(default=16, ge=1, description="prompts decoded per batch")


def _records(p: family.FamilyRunParams, data_dir: str, split: str) -> list[dict]:
    if p.data.source == "hub":
        return gsm.hub_gsm8k(split, p.data.revision)
    return gsm.read_jsonl(Path(data_dir) / p.data.folder / f"{split}.jsonl")


def _load(p: family.FamilyRunParams, device, dtype):
    from gradience.lora.base_models import load_causal_lm

    return load_causal_lm(p.base_model, dtype, device)


def task(p: RunParams) -> family.Task:
    """The GSM8K task of the family: causal LM, question/answer encoding, exact-match scoring."""
    def score(model, tok, records, _encoded) -> float:
        return ft.qa_accuracy(model, tok, records, p.max_new_tokens, p.score_batch)[0]

    return family.Task("decoder", "CAUSAL_LM", _load, _records, ft.encode_qa, ft.mean_token_loss, score)


def jobs(p: RunParams, data_dir: str) -> list[Job[RunParams]]:
    return family.jobs(p, data_dir)


def run_one(job: Job[RunParams]) -> RunOutput:
    """One configuration × seed of the family (:func:`gradience.studies.lora_family.runs.run_family`,
    whose docstring says why its loop is not ``gradience.training.train``)."""
    return family.run_family(job, task(job.params))
