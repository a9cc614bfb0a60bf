"""The LoRA fine-tuning family (synthesis, Part II): the runs ``lora_gsm8k`` and ``lora_sst2`` share.

Both studies fine-tune a pretrained model with PEFT LoRA adapters over a grid of the seed's named
configurations (:data:`CONFIGS`: the appendix's eight plus one control, each r, α/r, learning rate
and target set) × seeds, and measure per run:

* task accuracy on the first ``data.test_examples`` test examples (the task's own scoring);
* train and test perplexity on ``data.eval_examples`` examples of each split, and their ratio —
  the seed's monitor: ``ppl_ratio > 1.5`` → "memorisation" (:class:`gradience.lora.flight.FlightRecorder`,
  every ``eval_every`` steps and at the end). For a classifier the "perplexity" is exp of the label
  cross-entropy;
* adapter geometry over training (every ``geometry_every`` steps, every adapted module and the
  ``model`` aggregates): stable rank, utilization = stable rank / r, dominance = ‖ΔW‖₂ / ‖W‖₂,
  κ and effective rank of ΔW from its r × r core (:mod:`gradience.lora.geometry`); gradient norms;
* trainable parameters (PEFT's count on the model trained) and CPU time (in ``runs.parquet``).

A ``zero_shot`` run (``zero_shot: true``: the base model without an adapter, first seed only) is
the untrained reference, so every table shows what fine-tuning changed.

``lr_scale`` multiplies every configuration's learning rate (1 in the paper profile): the default
profile's runs are a few dozen steps, not the seed's epochs, and the seed's 2e-4 barely moves
them; the 4× ratio between the seed's two learning rates is kept.

A study of the family supplies a :class:`Task` (model family, loading, encoding, scoring) and calls
:func:`jobs` and :func:`run_family`; the analyses are in ``lora_family.analysis``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from gradience.config import Section
from gradience.lora import adapters as ad
from gradience.lora.flight import FlightRecorder
from gradience.studies.protocol import Job, RunOutput, RunParams, unique_names
from gradience.telemetry.recorder import MODEL_SCOPE

#: The seed's named configurations (appendix) and one control of its finding 3 (attn_r8 at LR 5e-5
#: with α/r 0.25, quoted in Part II but not in the appendix).
CONFIGS: dict[str, ad.LoraSpec] = ad.SEED_CONFIGS | {"attn_r8_low_alpha_lr5e5": ad.LoraSpec(8, 0.25, 5e-5, "attention")}
ZERO_SHOT = "zero_shot"
RUN_COLUMNS = ("accuracy", "train_ppl", "test_ppl", "ppl_ratio", "lora_stable_rank", "utilization", "dominance",
               "lora_effective_rank")


class DataParams(Section):
    source: Literal["local", "hub"] = Field(default="local", description="local: JSONL under data/<folder>; "
                                            "hub: the real dataset through `datasets` at `revision`")
    folder: str = Field(min_length=1, description="folder under data/ (local source)")
    revision: str | None = Field(default=None, description="the hub dataset's pinned revision (hub source)")
    train_split: str = "train"
    test_split: str = "test"
    train_examples: int = Field(default=0, ge=0, description="first n training examples; 0: all")
    test_examples: int = Field(ge=1, description="first n test examples scored for accuracy")
    eval_examples: int = Field(ge=1, description="first n of each split for train/test perplexity")
    max_length: int = Field(ge=8, description="tokens per sequence at most")

    @model_validator(mode="after")
    def _revision_for_hub(self) -> DataParams:
        if self.source == "hub" and not self.revision:
            raise ValueError("source 'hub' needs a pinned revision (data.revision)")
        return self


class FamilyRunParams(RunParams):
    base_model: str = Field(min_length=1, description="local checkpoint folder (relative to the repository) "
                            "or a hub id (paper profile)")
    dtype: Literal["float32", "bfloat16"] = "float32"
    configs: list[str] = Field(min_length=1, description=f"named configurations run with every seed: "
                               f"{', '.join(CONFIGS)}")
    first_seed_configs: list[str] = Field(default=[], description="configurations run with the first seed only")
    zero_shot: bool = Field(default=True, description="also score the base model without an adapter (first seed)")
    lr_scale: float = Field(default=1.0, gt=0, description="multiplies every configuration's learning rate")
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    weight_decay: float = Field(default=0.0, ge=0)
    geometry_every: int = Field(ge=1, description="steps between adapter-geometry measurements")
    eval_every: int = Field(ge=1, description="steps between train/test perplexity evaluations (the monitor)")
    data: DataParams

    @field_validator("configs", "first_seed_configs")
    @classmethod
    def _known_configs(cls, value: list[str]) -> list[str]:
        bad = [c for c in value if c not in CONFIGS]
        if bad:
            raise ValueError(f"unknown configurations {bad}; known: {', '.join(CONFIGS)}")
        return value

    @model_validator(mode="after")
    def _each_config_once(self) -> FamilyRunParams:
        unique_names(self.configs + self.first_seed_configs, "configs + first_seed_configs")
        return self

    def spec(self, name: str) -> ad.LoraSpec:
        """The configuration ``name`` with its learning rate × ``lr_scale``."""
        s = CONFIGS[name]
        return ad.LoraSpec(s.r, s.alpha_over_r, s.lr * self.lr_scale, s.targets)


#: A study's run params (a :class:`FamilyRunParams` with its own keys).
R = TypeVar("R", bound=FamilyRunParams)


@dataclass(frozen=True)
class Task:
    """What a study of the family supplies: its model family and how to load, encode and score.

    ``load_model(p, device, dtype)`` → (model, tokenizer) without an adapter; ``records(p, data_dir,
    split)`` → the split's records; ``encode(tokenizer, records, max_length)`` → :class:`Encoded`;
    ``mean_loss(model, encoded)`` → mean cross-entropy; ``score(model, tokenizer, records, encoded)``
    → accuracy."""

    family: str  # "decoder" / "encoder" (adapters.target_modules), or "auto" (:func:`module_family`)
    task_type: str  # PEFT's "CAUSAL_LM" / "SEQ_CLS"
    load_model: Callable[..., tuple[Any, Any]]
    records: Callable[[FamilyRunParams, str, str], list[dict]]
    encode: Callable[[Any, Sequence[dict], int], Any]
    mean_loss: Callable[[Any, Any], float]
    score: Callable[[Any, Any, Sequence[dict], Any], float]


def jobs(p: R, data_dir: str) -> list[Job[R]]:
    """The zero-shot reference (first seed), every ``configs`` × seed, every ``first_seed_configs`` once."""
    out = [Job(p, ZERO_SHOT, p.seeds[0], data_dir)] if p.zero_shot else []
    out += [Job(p, c, s, data_dir, spec=p.spec(c)) for c in p.configs for s in p.seeds]
    return out + [Job(p, c, p.seeds[0], data_dir, spec=p.spec(c)) for c in p.first_seed_configs]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def module_family(model: torch.nn.Module) -> str:
    """``decoder`` when the model has Llama/Mistral projections (``q_proj``), else ``encoder`` (BERT names)."""
    return "decoder" if any(n.endswith(".q_proj") for n, _ in model.named_modules()) else "encoder"


def _split(p: FamilyRunParams, task: Task, data_dir: str, split: str, n: int) -> list[dict]:
    records = task.records(p, data_dir, split)
    if n and len(records) < n:
        raise ValueError(f"{split}: {len(records)} examples, the params ask for {n}")
    return records[:n] if n else records


def run_family(job: Job[R], task: Task) -> RunOutput:
    """Train one configuration × seed (or score the zero-shot base) and measure it (module docstring).

    The loop is :func:`gradience.lora.finetune.train`, not :func:`gradience.training.train`, which
    cannot run it: that loop indexes a tensor ``Split`` and takes the cross-entropy of ``model(x)``'s
    logits (its cadence evaluation too), while this model is a PEFT-wrapped ``transformers`` model fed
    dict batches of token ids, attention mask and labels (``Encoded.batch``, padding columns trimmed)
    that computes its own loss, ``model(**batch).loss`` (the LM: shifted answer tokens, prompt -100;
    the classifier: the class label). ``training.train`` also creates its optimizer inside, so the
    ``FlightRecorder`` cannot attach its step hooks (gradient norms before each update, ΔW geometry
    after it); it has no call after each update for the perplexity monitor; and its default betas are
    (0.9, 0.98), not torch's (0.9, 0.999) used here."""
    from gradience.lora import finetune as ft
    from gradience.training import resolve_device

    p = job.params
    d = p.data
    seed_everything(job.seed)
    device = resolve_device(p.device)
    model, tok = task.load_model(p, device, torch_dtype(p.dtype))
    train_rec = _split(p, task, job.data_dir, d.train_split, d.train_examples)
    test_rec = _split(p, task, job.data_dir, d.test_split, max(d.test_examples, d.eval_examples))
    train = task.encode(tok, train_rec, d.max_length)
    test_scored = test_rec[:d.test_examples]
    enc_test = task.encode(tok, test_scored, d.max_length)
    ev_train = task.encode(tok, train_rec[:d.eval_examples], d.max_length)
    ev_test = task.encode(tok, test_rec[:d.eval_examples], d.max_length)
    rec = FlightRecorder(job.run_id, every=p.geometry_every)
    spec: ad.LoraSpec | None = job.spec

    def evaluate(step: int) -> None:
        rec.evaluate(step, task.mean_loss(model, ev_train), task.mean_loss(model, ev_test))

    losses: list[float] = []
    if spec is None:
        trainable, total = 0, sum(p_.numel() for p_ in model.parameters())
        evaluate(0)
    else:
        family = module_family(model) if task.family == "auto" else task.family
        model = ad.apply_lora(model, spec, family, task.task_type, seed=job.seed)
        trainable, total = model.get_nb_trainable_parameters()
        evaluate(0)
        losses = ft.train(model, train, p.steps, p.batch_size, spec.lr, seed=job.seed, weight_decay=p.weight_decay,
                          recorder=rec, after_step=lambda s: evaluate(s) if s % p.eval_every == 0 else None)
    at = ft.diverged_at(losses)  # a diverged run stops before its non-finite update and is scored there
    end = (p.steps if at is None else at) if spec is not None else 0
    if spec is not None and end % p.eval_every:
        evaluate(end)
    scoring = time.process_time()
    acc = task.score(model, tok, test_scored, enc_test)
    scoring = time.process_time() - scoring
    for step, loss in enumerate(losses):
        rec.recorder.log(step, MODEL_SCOPE, "batch_loss", loss)
    rec.recorder.log(end, MODEL_SCOPE, "test_acc", acc)
    telemetry = rec.frame()
    last = telemetry[(telemetry.scope == MODEL_SCOPE) & (telemetry.step == end)].set_index("metric")["value"]
    record = {"accuracy": acc, "trainable_params": int(trainable), "total_params": int(total), "steps": end,
              "n_test": len(test_scored), "memorisation_warnings": len(rec.warnings), "scoring_cpu_seconds": scoring,
              "outcome": "completed" if at is None else "diverged", "diverged_at": at}
    record |= {k: float(last.get(k, math.nan)) for k in RUN_COLUMNS[1:]}
    labels = getattr(enc_test, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.ndim == 1:  # a classifier: the majority-class baseline
        record["majority_share"] = float(torch.bincount(labels).max() / len(labels))
    if spec is not None:
        base_spec = CONFIGS[job.condition]
        record |= {"r": spec.r, "alpha_over_r": spec.alpha_over_r, "alpha": spec.alpha, "lr": spec.lr,
                   "seed_lr": base_spec.lr, "targets": spec.targets}
    return RunOutput({"telemetry": telemetry}, record)
