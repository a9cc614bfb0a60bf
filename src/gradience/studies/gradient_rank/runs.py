"""True-gradient effective rank over training and K-basis adaptation (paper 86 of the K series): the runs.

**Model and data.** The repository's character LM (:mod:`gradience.studies.lm_regimes.runs`): a
Llama-block decoder (:func:`gradience.models.transformer.tiny_llama`, 8 layers, d_model 64 in the
default profile, as the paper's 8-layer model) on random windows of Shakespeare
(``data/text/shakespeare.txt``; the paper profile loads TinyShakespeare through ``datasets``). The
paper's model is a word LM (loss 7.84 at step 1, so a vocabulary of a few thousand words); ours has
a vocabulary of ~75 characters, so losses are on another scale (ln 75 ≈ 4.3 at initialisation).

**Trajectory runs** (condition ``trajectory``, one per seed). :func:`gradience.training.train`
(the repository's loop, unchanged) trains every parameter with the stated optimiser (AdamW in the
default profile; the paper says "SGD", which at this scale either barely moves or blows up) on
mini-batches. At the measured steps — every step or every ``schedule.dense_every`` steps up to
``schedule.dense_until``, the paper's steps 1, 5, 10, 20, 40 always, then every
``schedule.sparse_every`` to the end, to see what follows — :class:`gradience.telemetry.kbasis.GradientRankProbe`
takes the true gradient ∂L/∂W of every 2-D weight on the batch of that step (the batch that makes
the next update; "step t" = after t updates, the loop's convention) and logs its Roy–Vetterli
effective rank ``grad_er`` (mean and max over matrices, per decoder layer), and, for each K of
``ks`` with the basis of the *current* weight (its top-K singular pairs), the K-constrained
gradient's ER ``k<K>_er``, its ``coverage`` (% of the true ER), the cosines ``k<K>_cos`` (true
gradient vs its projection on what K-basis adaptation can express) and ``k<K>_cos_subspace``
(vs its two-sided projection on the top-K singular subspaces), and ``k95`` (the smallest K whose
K-constrained ER reaches 95 % of the true ER, per matrix). Definitions: :mod:`gradience.telemetry.kbasis`.

**Adaptation runs** (condition ``adapt``, one per seed). The seed's model is retrained to the
checkpoint at step ``adapt.from_step`` (same seed, same batches: the checkpoint is the trajectory
run's weights at that step), then for each K of ``adapt.ks`` a copy gets W + U_K diag(a) V_Kᵀ on
every 2-D weight (U_K, V_K the checkpoint weight's top-K singular vectors, frozen; a = 0 at start,
the only trainable parameters, AdamW at ``adapt.lr``) and is trained for ``adapt.steps`` steps on
the same seeded batch order for every K (a paired comparison). ``adapt.full_control`` adds the same
continuation with every parameter trainable at the trajectory's optimiser settings: what the model
reaches unconstrained. The loss reached is the mean cross-entropy over the whole training split
after the last step (``train_loss``; ``test_loss`` beside). At d_model 64 every weight has
min(m, n) = 64, so K = 64 is the full singular basis (still only 64 coefficients per matrix: the
diagonal of UᵀΔW V, not a full-rank update). Each arm's telemetry is recorded under
:func:`arm_run` (its row of the ``adapt`` table names the run and the arm).

A custom loop is not needed: the probe mechanism of :func:`gradience.training.train` gives the
gradient at a cadence step, and an explicit step set (:class:`StepSet`) stands in for its cadence.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Literal

import pandas as pd
from pydantic import Field, field_validator, model_validator

from gradience.config import Section
from gradience.studies.lm_regimes.runs import LMData, LMModel, build_model, lm_split
from gradience.studies.protocol import Job, RunOutput, unique_names
from gradience.studies.protocol import RunParams as BaseRunParams
from gradience.telemetry import kbasis as kb
from gradience.telemetry.recorder import Cadence, Recorder, concat
from gradience.training import TrainConfig, evaluate, resolve_device, train

DATA = ("text",)
TABLES = ("telemetry", "adapt")
PAPER_STEPS = (1, 5, 10, 20, 40)
PAPER_KS = (2, 4, 8, 16, 32, 64)
TARGET = 95.0  # % coverage that defines k95 (the paper's "K needed for 95 % true ER coverage")


def _check_ks(v: list[int]) -> list[int]:
    unique_names([str(k) for k in v], "ks")
    if any(k < 1 for k in v):
        raise ValueError(f"every K must be ≥ 1, got {v}")
    return sorted(v)


class Optim(Section):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(gt=0)
    batch_size: int = Field(ge=1, description="windows per step")
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.0, ge=0, lt=1, description="SGD only")
    grad_clip: float = Field(default=0.0, ge=0, description="global-norm clipping; 0: none")


class Schedule(Section):
    """Measured steps: step 0, every ``dense_every`` steps up to ``dense_until``, the paper's steps
    1, 5, 10, 20, 40 (where ≤ ``steps``), every ``sparse_every`` steps after, and the last step."""

    dense_until: int = Field(default=40, ge=0)
    dense_every: int = Field(default=1, ge=1)
    sparse_every: int = Field(default=10, ge=1)

    def steps(self, total: int) -> list[int]:
        s = set(range(0, min(self.dense_until, total) + 1, self.dense_every))
        s |= {t for t in PAPER_STEPS if t <= total} | set(range(0, total + 1, self.sparse_every)) | {total}
        return sorted(s)


class Adapt(Section):
    ks: list[int] = Field(default=list(PAPER_KS), description="K of each K-basis adaptation arm; [] skips them")
    from_step: int = Field(default=40, ge=0, description="the checkpoint: the trajectory's weights after this many steps")
    steps: int = Field(default=50, ge=1, description="steps of training only the K-basis coefficients a")
    lr: float = Field(default=1e-2, gt=0, description="AdamW learning rate of a")
    full_control: bool = Field(default=True, description="also continue with every parameter trainable")

    @field_validator("ks")
    @classmethod
    def _valid_ks(cls, v: list[int]) -> list[int]:
        return _check_ks(v) if v else v


class RunParams(BaseRunParams):
    data: LMData
    model: LMModel
    train: Optim
    steps: int = Field(gt=0, description="trajectory length")
    schedule: Schedule = Schedule()
    ks: list[int] = Field(default=list(PAPER_KS), min_length=1, description="K grid of the coverage probe")
    eval_max_examples: int = Field(default=32, ge=1, description="windows per split for the losses at measured steps")
    adapt: Adapt = Adapt()

    @field_validator("ks")
    @classmethod
    def _valid_ks(cls, v: list[int]) -> list[int]:
        return _check_ks(v)

    @model_validator(mode="after")
    def _fits(self) -> RunParams:
        if self.data.n_train < self.train.batch_size:
            raise ValueError(f"train.batch_size={self.train.batch_size} exceeds data.n_train={self.data.n_train}")
        return self


class StepSet(Cadence):
    """An explicit set of measured steps, in the shape :func:`gradience.training.train` expects."""

    def __init__(self, steps: Iterable[int]) -> None:
        steps = sorted({int(s) for s in steps})
        if not steps or steps[0] < 0:
            raise ValueError(f"steps must be non-empty and ≥ 0, got {steps}")
        super().__init__(every=max(steps) + 1, total_steps=max(steps))
        self.steps = frozenset(steps)


def jobs(p: RunParams, data_dir: str) -> list[Job[RunParams]]:
    out = [Job(p, "trajectory", s, data_dir) for s in p.seeds]
    if p.adapt.ks or p.adapt.full_control:
        out += [Job(p, "adapt", s, data_dir) for s in p.seeds]
    return out


def arm_run(run_id: str, arm: str) -> str:
    """The telemetry run id of one adaptation arm of the run ``run_id`` (the analysis joins the
    ``adapt`` table's ``run`` and ``arm`` to the telemetry through it)."""
    return f"{run_id}/{arm}"


def _config(p: RunParams, steps: int, seed: int, lr: float | None = None, optimizer: str | None = None) -> TrainConfig:
    o = p.train
    return TrainConfig(steps=steps, lr=lr or o.lr, weight_decay=o.weight_decay if lr is None else 0.0,
                       batch_size=o.batch_size, grad_clip=o.grad_clip if lr is None else 0.0, seed=seed,
                       eval_max_examples=p.eval_max_examples, optimizer=optimizer or o.optimizer,
                       momentum=o.momentum if lr is None else 0.0)


def run_one(job: Job[RunParams]) -> RunOutput:
    """``trajectory``: the model trained from scratch with the gradient-rank probe at the measured
    steps. ``adapt``: the checkpoint at ``adapt.from_step``, then each K-basis arm (and the
    full-training control) for ``adapt.steps`` steps; one ``adapt`` row per arm."""
    p = job.params
    device = resolve_device(p.device)
    split, vocab = lm_split(job.data_dir, p.data, job.seed)
    model = build_model(vocab, p.model, p.data.context, job.seed).to(device)
    record = {"vocab": vocab, "n_params": sum(q.numel() for q in model.parameters())}
    if job.condition == "trajectory":
        recorder = Recorder(job.run_id)
        steps = p.schedule.steps(p.steps)
        result = train(model, split, _config(p, p.steps, job.seed), recorder=recorder, cadence=StepSet(steps),
                       probes=[kb.GradientRankProbe(p.ks, TARGET)], device=p.device, progress=True)
        record |= {"outcome": result.outcome, "steps_run": result.steps_run, "measured_steps": len(steps),
                   **{f"final_{k}": v for k, v in result.final.items()}}
        return RunOutput({"telemetry": recorder.frame(), "adapt": pd.DataFrame()}, record)
    if job.condition != "adapt":
        raise ValueError(f"unknown condition {job.condition!r}")
    if p.adapt.from_step:
        train(model, split, _config(p, p.adapt.from_step, job.seed), device=p.device)
    split = split.to(device)
    ck_train, _ = evaluate(model, split.x_train, split.y_train)
    ck_test, _ = evaluate(model, split.x_test, split.y_test)
    arms: list[tuple[str, int | None]] = [(f"k{k}", k) for k in p.adapt.ks]
    if p.adapt.full_control:
        arms.append(("full", None))
    rows, frames = [], []
    for arm, k in arms:
        m = copy.deepcopy(model)
        if k is None:
            cfg, probe_ks = _config(p, p.adapt.steps, job.seed), tuple(p.adapt.ks or p.ks)
            trainable = sum(q.numel() for q in m.parameters())
        else:
            a = kb.apply_kbasis(m, k)
            cfg, probe_ks = _config(p, p.adapt.steps, job.seed, lr=p.adapt.lr, optimizer="adamw"), (k,)
            trainable = sum(x.numel() for x in a.values())
        recorder = Recorder(arm_run(job.run_id, arm))
        result = train(m, split, cfg, recorder=recorder, cadence=StepSet({0, p.adapt.steps}),
                       probes=[kb.GradientRankProbe(probe_ks, TARGET)], device=p.device)
        frames.append(recorder.frame())
        rows.append({"run": job.run_id, "seed": job.seed, "arm": arm, "k": float(k) if k else math.nan,
                     "trainable": trainable, "outcome": result.outcome, "checkpoint_step": p.adapt.from_step,
                     "checkpoint_train_loss": ck_train, "checkpoint_test_loss": ck_test,
                     "train_loss": result.final.get("train_loss", math.nan),
                     "test_loss": result.final.get("test_loss", math.nan)})
    record |= {"outcome": "completed", "arms": len(arms), "checkpoint_train_loss": ck_train}
    return RunOutput({"telemetry": concat(frames), "adapt": pd.DataFrame(rows)}, record)
