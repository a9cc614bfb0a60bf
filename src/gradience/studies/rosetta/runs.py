"""Protocol ``rosetta``: do the Rosetta Stone's geometric hyperparameters replace tuned ones? The runs.

The same tasks are trained with (a) conventional tuned hyperparameters and (b) arms in which one
group of the document's rules replaces its conventional counterpart (:mod:`gradience.rosetta.protocol`):

- ``modular``: modular addition grokking, :class:`~gradience.models.mlp.TokenPairMLP`; conventional =
  AdamW at the repository's tuned grokking values (lr 0.01, β (0.9, 0.98), wd 1, batch 256) plus
  the conventional 10 % warm-up and clip 1.0, ε 1e-8.
- ``digits``: :class:`~gradience.models.cnn.DigitsCNN` without batch norm (the MASS Hessian is
  measured by ``torch.func``), the rank-survey's tuned values (lr 0.003, wd 0.01, batch 128).
- ``reviews``: LoRA on all-MiniLM-L6-v2, fine-food reviews (SST-2 schema); conventional = r 8,
  α/r 2, query + value, dropout 0.1, zero-B init, AdamW lr 5e-4; geometric = rules 10–14.

Arms of the small tasks (``arms``): ``mass`` (rules 1, 3, 6, 7), ``adam_epsilon`` (2), ``decay`` (4),
``no_clip``/``no_warmup`` (5, 6). Each run also yields the rule-8 critical batch size (conventional
arm, at initialisation and at the end) and the step where the rule-9 stopping rule fires on the
full training loss at the evaluation cadence. The LoRA runs yield rule 10's excess factor s/bound of
every trained adapter (the document's checkable claim: common scales are 22–2700× over the bound)
and the budget ratio ‖ΔW‖₂/σ_k at the end.

Rules 3 (Cayley–Stiefel, NB-LoRA only) and 15 (residual scaling; the models here have no residual
stream except MiniLM, whose post-LN blocks the library's Llama hooks do not cover) are not trained.
How a rule is judged is the report side's (:mod:`.analysis`, :mod:`.findings`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from gradience.config import Section
from gradience.rosetta.protocol import LORA_RULES, OPTIMIZER_RULES
from gradience.studies.protocol import Job, RunOutput, unique_names
from gradience.studies.protocol import RunParams as BaseRunParams

TASKS = ("modular", "digits", "reviews")
CONVENTIONAL = "conventional"


class Arm(Section):
    name: str
    rules: list[str] = Field(default_factory=list, description="geometric rules replacing conventional ones")


class SmallTask(Section):
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    steps: int = Field(gt=0)
    batch_size: int = Field(ge=0, description="0: full batch")
    betas: tuple[float, float] = (0.9, 0.98)
    train_fraction: float = Field(gt=0, lt=1)
    eval_every: int = Field(gt=0)


class ModularTask(SmallTask):
    modulus: int = Field(default=97, description="one of the moduli shipped in data/modular")
    op: Literal["add", "sub", "mul", "div"] = "add"
    d_embed: int = Field(default=64, ge=1)
    d_hidden: int = Field(default=160, ge=1)

    @field_validator("modulus")
    @classmethod
    def _shipped_modulus(cls, v: int) -> int:
        from gradience.tasks.modular import MODULI

        if v not in MODULI:
            raise ValueError(f"must be one of the moduli shipped in data/modular: {MODULI}")
        return v


class DigitsTask(SmallTask):
    channels: list[int] = Field(default_factory=lambda: [8, 16], min_length=1)
    d_hidden: int = Field(default=32, ge=1)


class ReviewsTask(Section):
    n_train: int = Field(ge=16, description="first n training reviews")
    n_test: int = Field(ge=16, description="first n test reviews")
    max_length: int = Field(ge=8, le=512)
    steps: int = Field(gt=0)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    r: int = Field(default=8, ge=1)
    alpha_over_r: float = Field(default=2.0, gt=0)
    targets: str = r".*attention\.self\.(query|value)"
    dropout: float = Field(default=0.1, ge=0, lt=1)
    r_max: int = Field(default=32, ge=0, description="cap on the rule-11 rank (0: none)")


class RunParams(BaseRunParams):
    tasks: list[Literal["modular", "digits", "reviews"]] = Field(min_length=1)
    modular: ModularTask
    digits: DigitsTask
    reviews: ReviewsTask
    arms: list[Arm] = Field(min_length=1, description="arms of modular and digits; the first is conventional")
    lora_arms: list[Arm] = Field(min_length=1, description="arms of reviews; the first is conventional")
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, ge=0)
    adam_eps: float = Field(default=1e-8, gt=0)
    mass_every: int = Field(default=50, ge=1, description="updates between MASS step-size measurements")
    measure_batch: int = Field(default=256, ge=1, description="examples of the MASS / B_crit measurement batch")
    lanczos_tol: float = Field(default=1e-3, gt=0, lt=1)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[str]) -> list[str]:
        unique_names(v, "tasks")
        return v

    @model_validator(mode="after")
    def _arms(self) -> RunParams:
        for arms, known in ((self.arms, OPTIMIZER_RULES), (self.lora_arms, LORA_RULES)):
            unique_names([a.name for a in arms], "arm names")
            if arms[0].name != CONVENTIONAL or arms[0].rules:
                raise ValueError(f"the first arm must be {CONVENTIONAL!r} with no rules, got {arms[0]}")
            for a in arms:
                bad = sorted(set(a.rules) - set(known))
                if bad:
                    raise ValueError(f"arm {a.name!r}: unknown rules {bad}; known: {known}")
        return self


DATA = ("modular", "digits", "reviews")
TABLES = ("history", "rules", "lora")


def jobs(p: RunParams, data_dir: str) -> list[Job[RunParams]]:
    out = []
    for task in p.tasks:
        for arm in (p.lora_arms if task == "reviews" else p.arms):
            out += [Job(p, f"{task}.{arm.name}", s, data_dir, spec=(task, arm)) for s in p.seeds]
    return out


def _small(job: Job[RunParams], task: str, arm: Arm) -> RunOutput:
    """One arm × seed of ``modular`` or ``digits``, trained by :func:`gradience.rosetta.protocol.train_arm`.

    :func:`gradience.training.train` cannot run these arms: it builds one AdamW/SGD parameter group
    with no ε setting, so it cannot hold rule 2's per-matrix ε or rule 4's per-matrix decay, and its
    lr is ``cfg.lr × lr_schedule(step)``, a function of the step alone, while the ``mass`` arm sets
    plain SGD's η to a step size re-measured on the current model (Lanczos λ_max, Polyak, Weyl) every
    ``mass_every`` updates. Every arm, the conventional one included, shares ``train_arm``, so the
    arms differ only by their rules.
    """
    import torch

    from gradience.models.cnn import DigitsCNN
    from gradience.models.mlp import TokenPairMLP
    from gradience.rosetta.optimizer import critical_batch_size
    from gradience.rosetta.protocol import Conventional, stop_step, train_arm
    from gradience.tasks.digits import digits_split
    from gradience.tasks.modular import modular_split
    from gradience.training import resolve_device

    p = job.params
    t = p.modular if task == "modular" else p.digits
    torch.manual_seed(job.seed)
    if task == "modular":
        split = modular_split(Path(job.data_dir), t.modulus, t.op, t.train_fraction, job.seed)
        model = TokenPairMLP(t.modulus, t.modulus, t.d_embed, t.d_hidden)
    else:
        split = digits_split(Path(job.data_dir), t.train_fraction, job.seed)
        model = DigitsCNN(tuple(t.channels), t.d_hidden, norm="none")
    conv = Conventional(lr=t.lr, weight_decay=t.weight_decay, steps=t.steps, batch_size=t.batch_size, betas=t.betas,
                        eps=p.adam_eps, grad_clip=p.grad_clip, warmup_fraction=p.warmup_fraction)
    dev = resolve_device(p.device)
    model.to(dev)
    n = min(p.measure_batch, split.x_train.shape[0])
    xs, ys = split.x_train[:n].to(dev), split.y_train[:n].to(dev)
    bcrit0 = critical_batch_size(model=model, x=xs, y=ys) if not arm.rules else math.nan
    res = train_arm(model, split, conv, arm.rules, job.seed, t.eval_every, p.mass_every, p.measure_batch, p.lanczos_tol,
                    p.device)
    bcrit1 = critical_batch_size(model=model, x=xs, y=ys) if not arm.rules and res.outcome == "completed" else math.nan
    stop, why = stop_step(res.history)
    at_stop = res.history[res.history.step == stop]
    hist = res.history.melt(id_vars="step", var_name="metric", value_name="value").assign(run=job.run_id, scope="model")
    record = {"task": task, "arm": arm.name, "rules": ",".join(arm.rules), "outcome": res.outcome,
              "lr": t.lr, "weight_decay": t.weight_decay, "batch_size": t.batch_size, "steps": t.steps,
              **{f"final_{k}": v for k, v in res.final.items()},
              "stop_step": stop, "stop_reason": why,
              "stop_test_acc": float(at_stop.test_acc.iloc[0]) if len(at_stop) else math.nan,
              "b_crit_init": bcrit0, "b_crit_final": bcrit1}
    return RunOutput({"history": hist[["run", "step", "scope", "metric", "value"]],
                      "rules": res.rules.assign(run=job.run_id), "lora": pd.DataFrame()}, record)


def _reviews(job: Job[RunParams], arm: Arm) -> RunOutput:
    """One LoRA arm × seed of ``reviews``, trained by :func:`gradience.lora.finetune.train`.

    :func:`gradience.training.train` cannot run it: it trains a ``model(x) → logits`` on a
    :class:`~gradience.tasks.Split` of tensors, while this is a PEFT-wrapped Hugging Face classifier
    fed tokenised batches (input ids, attention mask) whose loss comes from the model, with the
    rule-5/9 :class:`~gradience.rosetta.protocol.BudgetMonitor` hooked on every optimizer step.
    """
    import torch

    from gradience.lora import finetune
    from gradience.lora.base_models import load_classifier, minilm_folder
    from gradience.rosetta.lora import peft_scale_excess
    from gradience.rosetta.protocol import BudgetMonitor, LoraArm, lora_budget_ratios, lora_model
    from gradience.tasks.reviews import read_jsonl
    from gradience.training import resolve_device

    p = job.params
    t = p.reviews
    folder = Path(job.data_dir) / "reviews"
    tr, te = read_jsonl(folder / "train.jsonl")[:t.n_train], read_jsonl(folder / "test.jsonl")[:t.n_test]
    torch.manual_seed(job.seed)
    model, tok = load_classifier(minilm_folder())
    dev = resolve_device(p.device)
    dtr, dte = (finetune.Encoded(*(x.to(dev) for x in (e.input_ids, e.attention_mask, e.labels)))
                for e in (finetune.encode_classification(tok, recs, t.max_length) for recs in (tr, te)))
    la = LoraArm(tuple(arm.rules), t.r, t.alpha_over_r, t.targets, t.dropout, r_max=t.r_max)
    pm, chosen = lora_model(model, la, job.seed)  # rules 11–14 read the base weights on the CPU
    pm.to(dev)
    acc0 = finetune.classification_accuracy(pm, dte)
    monitor = BudgetMonitor()
    losses = finetune.train(pm, dtr, t.steps, t.batch_size, t.lr, seed=job.seed, recorder=monitor)
    acc = finetune.classification_accuracy(pm, dte)
    majority = float(torch.bincount(dte.labels.cpu()).max() / len(dte.labels))
    excess = peft_scale_excess(pm).merge(lora_budget_ratios(pm), on="module").assign(run=job.run_id)
    hist = pd.DataFrame({"run": job.run_id, "step": np.arange(1, len(losses) + 1), "scope": "model",
                         "metric": "batch_loss", "value": losses})
    hist = pd.concat([hist, pd.DataFrame({"run": job.run_id, "step": [0, t.steps], "scope": "model",
                                          "metric": "test_acc", "value": [acc0, acc]}),
                      pd.DataFrame({"run": job.run_id, "step": np.arange(len(monitor.ratios)), "scope": "model",
                                    "metric": "budget_ratio_max", "value": monitor.ratios})], ignore_index=True)
    tail = losses[-max(1, len(losses) // 5):]
    diverged = finetune.diverged_at(losses) is not None  # the loop stopped at a non-finite loss
    record = {"task": "reviews", "arm": arm.name, "rules": ",".join(arm.rules),
              "outcome": "diverged" if diverged else "completed",
              "lr": t.lr, "batch_size": t.batch_size, "steps": t.steps, "final_test_acc": acc, "initial_test_acc": acc0,
              "majority_share": majority, "n_test": len(te),
              "final_train_loss": float(np.mean(tail)), "n_targets": float(len(excess)),
              "excess_median": float(excess.excess.median()), "budget_ratio_max": float(excess.budget_ratio.max()),
              "budget_halt_step": monitor.halt_step}
    return RunOutput({"history": hist, "rules": chosen.assign(run=job.run_id, step=0), "lora": excess}, record)


def run_one(job: Job[RunParams]) -> RunOutput:
    """Train one (task, arm, seed) with its own loop (see :func:`_small` and :func:`_reviews` for why
    not :func:`gradience.training.train`): its history, the values its rules chose, its LoRA table."""
    task, arm = job.spec
    return _reviews(job, arm) if task == "reviews" else _small(job, task, arm)
