"""Seed 002: the lifecycle of the spectral edge, from gradient learning to weight-decay compression: the runs.

Tasks (conditions ``wd<λ>`` and ``removal`` for Dyck-1, ``scan_wd<λ>`` for SCAN; each run records its
``task``):

* Dyck-1 (:mod:`gradience.tasks.dyck`): predict the nesting depth at every position (the known
  functional coordinate) with a GPT-2-style 2-layer causal pre-LN transformer with learned positions
  (:class:`gradience.models.gpt.TokenClassifierGPT`), full batches of a small training set; initial weight
  matrices × ``init_scale`` (:func:`scale_init`), which turns generalisation-with-the-fit into grokking.
* SCAN (:mod:`gradience.tasks.scan`, generated from the grammar; the seeded "simple" split, the first
  ``scan.n_train`` training commands): an encoder–decoder (:class:`gradience.models.seq2seq.Seq2SeqTransformer`);
  accuracy is per action token as for Dyck-1, with exact match of the whole sequence beside it
  (``seq_acc``); batches are trimmed to their longest target (:func:`scan.trim`).

Optimiser: AdamW (β = 0.9, 0.98), gradient-norm clip ``grad_clip``, in this study's own loop
(:func:`run_one` says why not :func:`gradience.training.train`).

Measurements (every ``every`` steps; the tracker window = the last ``window`` AdamW updates of the
attention matrices, ``edge_params``, split into the gradient part −η m̂/(√v̂+ε) and the decay part
−ηλθ): ``edge_*`` window metrics (:func:`gradience.telemetry.edge.window_metrics`), train/test loss
and accuracy; for Dyck-1 every ``probe_every`` steps the held-out R² of linear / quadratic / MLP probes
of the depth from the final hidden state. At the end of a run: loss change along the edge vs
``n_random`` random unit directions of the same subspace (``perturbation``), the ablation θ − ⟨θ,v̂⟩v̂
of the edge vs random directions (``ablation``) and, for Dyck-1, the Fourier analyses
(:mod:`gradience.telemetry.fourier`; ``fourier`` table; :mod:`.measures`): the positional power
spectrum of the final hidden state, each layer's attention KL from uniform backward attention, and
the depth-basis concentration of the hidden-state response to a step ``response_eps`` along the edge
and along a random direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from pydantic import Field, model_validator

from gradience.config import Section
from gradience.progress import bar
from gradience.studies.protocol import Job, RunOutput, unique_names
from gradience.studies.protocol import RunParams as BaseRunParams
from gradience.studies.spectral_edge.measures import fourier_rows, probe_rows, scores
from gradience.tasks import Split, dyck, scan
from gradience.telemetry import edge
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.training import IGNORE_INDEX, loss_and_accuracy, resolve_device


class ModelParams(Section):
    d_model: int = Field(default=64, ge=4)
    n_layers: int = Field(default=2, ge=1, description="blocks (SCAN: encoder layers, and as many decoder layers)")
    n_heads: int = Field(default=4, ge=1)


class ScanParams(Section):
    """The SCAN arm: an encoder–decoder on a subset of the simple split (conditions ``scan_wd<λ>``)."""

    steps: int = Field(default=2000, ge=0, description="0 = no SCAN arm")
    n_train: int = Field(default=1024, ge=8, le=16728, description="training commands (first n of the split)")
    n_test: int = Field(default=500, ge=8, le=4182, description="test commands scored (first n of the split)")
    split_seed: int = 0
    model: ModelParams = ModelParams(n_layers=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    weight_decays: list[float] = Field(default=[0.0, 1.0], min_length=1)
    main_decay: float = Field(default=1.0, ge=0)
    every: int = Field(default=25, ge=1)
    init_scale: float = Field(default=1.0, gt=0, description="initial weight matrices × this (see RunParams)")

    @model_validator(mode="after")
    def _check(self) -> ScanParams:
        _check_decays(self.weight_decays, self.main_decay, "scan.")
        if self.model.d_model % self.model.n_heads:
            raise ValueError(f"scan.model.d_model={self.model.d_model} must be a multiple of n_heads={self.model.n_heads}")
        return self


def _check_decays(decays: list[float], main: float, prefix: str = "") -> None:
    if any(w < 0 for w in decays):
        raise ValueError(f"{prefix}weight_decays must be ≥ 0, got {decays}")
    unique_names([str(w) for w in decays], f"{prefix}weight_decays")
    if main not in decays:
        raise ValueError(f"{prefix}main_decay={main} must be one of {prefix}weight_decays={decays}")


class RunParams(BaseRunParams):
    length: int = Field(default=24, ge=2, description="Dyck-1 word length (even; with variable_length the longest)")
    variable_length: bool = Field(default=False, description="words of 1 … length/2 pairs, padded (the seed's data)")
    n_train: int = Field(default=50, ge=8)
    n_test: int = Field(default=1000, ge=8)
    data_seed: int = 0
    model: ModelParams = ModelParams()
    init_scale: float = Field(default=1.0, gt=0, description=(
        "initial weight matrices and embeddings × this (scale_init); > 1 makes the model "
        "memorise first and decay then brings generalisation late: a grokking delay, and a λ = 0 control that "
        "memorises"))
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=50, ge=1)
    grad_clip: float = Field(default=1.0, ge=0, description="gradient-norm clip before each step (0 = none)")
    steps: int = Field(default=1000, ge=2)
    weight_decays: list[float] = Field(default=[0.0, 0.1, 1.0], min_length=1)
    main_decay: float = Field(default=1.0, ge=0)
    sweep_seeds: int = Field(default=1, ge=1, description="seeds (the first n) of the non-main decays")
    removal_at: int = Field(default=500, ge=0, description="removal arm: λ = 0 from this step; 0 = no arm")
    edge_params: Literal["attention", "all"] = Field(default="attention", description=(
        "parameters the edge is built from: the attention projection matrices (the seed's) or all"))
    window: int = Field(default=10, ge=2, description="edge window: last W updates")
    every: int = Field(default=10, ge=1, description="steps between edge/accuracy measurements")
    probe_every: int = Field(default=100, ge=1)
    probe_positions: int = Field(default=2000, ge=20, description="positions per probe fit (train and test)")
    eps: list[float] = Field(default=[-1.0, -0.3, -0.1, 0.1, 0.3, 1.0], min_length=1)
    response_eps: float = Field(default=0.3, gt=0, description="step along the edge for its depth-basis response")
    n_random: int = Field(default=8, ge=1)
    scan: ScanParams = ScanParams()

    @model_validator(mode="after")
    def _check(self) -> RunParams:
        if self.length % 2:
            raise ValueError(f"length={self.length} must be even (balanced Dyck-1 words)")
        available = (sum(dyck.n_sequences(2 * k) for k in range(1, self.length // 2 + 1)) if self.variable_length
                     else dyck.n_sequences(self.length, "balanced"))
        if self.n_train + self.n_test > available:
            raise ValueError(f"n_train + n_test = {self.n_train + self.n_test} exceeds the {available} distinct "
                             f"Dyck-1 words of length {self.length}")
        _check_decays(self.weight_decays, self.main_decay)
        if self.removal_at and not 0 < self.removal_at < self.steps:
            raise ValueError(f"removal_at={self.removal_at} must lie inside (0, steps={self.steps})")
        if self.removal_at and self.removal_at % self.probe_every:
            raise ValueError(f"removal_at={self.removal_at} must be a multiple of probe_every={self.probe_every}")
        if self.model.d_model % self.model.n_heads:
            raise ValueError(f"d_model={self.model.d_model} must be a multiple of n_heads={self.model.n_heads}")
        return self


DATA: tuple[str, ...] = ()
TABLES = ("telemetry", "perturbation", "ablation", "fourier")
TASKS = ("dyck", "scan")


@dataclass(frozen=True)
class Arm:
    task: str  # "dyck" or "scan"
    weight_decay: float
    removal_at: int = 0  # > 0: λ = 0 from this step on


def condition_name(wd: float, task: str = "dyck") -> str:
    return f"wd{wd:g}" if task == "dyck" else f"{task}_wd{wd:g}"


def jobs(p: RunParams, data_dir: str) -> list[Job[RunParams]]:
    """Per task, the main decay (and Dyck's removal arm) on every seed, the other decays on the first ``sweep_seeds``."""
    arms = [(condition_name(w), Arm("dyck", w), w == p.main_decay) for w in p.weight_decays]
    arms += [("removal", Arm("dyck", p.main_decay, p.removal_at), True)] if p.removal_at else []
    if p.scan.steps:
        arms += [(condition_name(w, "scan"), Arm("scan", w), w == p.scan.main_decay) for w in p.scan.weight_decays]
    return [Job(p, c, s, data_dir, spec=arm) for c, arm, main in arms
            for s in (p.seeds if main else p.seeds[: p.sweep_seeds])]


# ------------------------------------------------------------------------------------ one run


@dataclass
class _Setup:
    """What differs between the tasks inside the one training loop."""

    model: torch.nn.Module
    split: Split
    steps: int
    lr: float
    batch_size: int
    every: int
    trim: bool  # SCAN: cut batches to their longest target (padding beyond it is never scored)


@torch.no_grad()
def scale_init(model: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """Multiply every weight matrix and embedding (parameters of ≥ 2 dimensions) by ``alpha``, in place;
    biases and LayerNorm parameters are left. Large initial weights make a network fit its training set by
    memorising; weight decay then shrinks them towards the scale at which it generalises, so ``alpha`` > 1
    with decay gives a grokking delay on a task that otherwise generalises at once, and without decay a
    memorising control (the large-initialisation recipe of "Omnigrok"; two lines, no library does it)."""
    for q in model.parameters():
        if q.dim() >= 2:
            q.mul_(alpha)
    return model


def _setup(p: RunParams, arm: Arm, seed: int) -> _Setup:
    if arm.task == "dyck":
        from gradience.models.gpt import TokenClassifierGPT

        split = dyck.dyck_split(p.n_train, p.n_test, p.length, seed=p.data_seed, variable=p.variable_length)
        model = TokenClassifierGPT(dyck.N_TOKENS + p.variable_length, p.length // 2 + 1, p.length, p.model.d_model, p.model.n_layers,
                                   p.model.n_heads, seed=seed)
        return _Setup(scale_init(model, p.init_scale), split, p.steps, p.lr, p.batch_size, p.every, False)
    from gradience.models.seq2seq import Seq2SeqTransformer

    s = p.scan
    full = scan.simple_split(seed=s.split_seed, n_train=s.n_train)
    split = Split(full.x_train, full.y_train, full.x_test[: s.n_test], full.y_test[: s.n_test])
    model = Seq2SeqTransformer(len(scan.VOCAB), scan.SRC_LEN, scan.TGT_LEN, s.model.d_model, s.model.n_layers,
                               s.model.n_heads, pad=scan.PAD, seed=seed)
    return _Setup(scale_init(model, s.init_scale), split, s.steps, s.lr, s.batch_size, s.every, True)


def run_one(job: Job[RunParams]) -> RunOutput:
    """Train one (arm, seed) in this study's own loop: its telemetry, end-of-run tables and run record.

    Not :func:`gradience.training.train` (that would change the tables): it would need batches drawn with
    replacement (``torch.randint``; it shuffles epochs or takes the full batch) and SCAN's trimmed, λ set to 0
    mid-run in the same AdamW (it schedules only the lr), this study's scores instead of its evaluation and
    weight spectra, and the tracker read at the last step (its probes run only before an update). The
    gradient/decay split is no obstacle: the EdgeTracker's hooks see any optimiser's steps, ``train``'s too.
    """
    p = job.params
    arm: Arm = job.spec
    torch.manual_seed(job.seed)
    s = _setup(p, arm, job.seed)
    device = resolve_device(p.device)
    model, split = s.model.to(device), s.split.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.98), weight_decay=arm.weight_decay)
    include = edge.attention_weights if p.edge_params == "attention" else None
    tracker = edge.EdgeTracker(model, p.window, include=include)
    gen = torch.Generator().manual_seed(job.seed)
    rows: list[tuple[int, str, float]] = []
    n_train = split.x_train.shape[0]
    diverged_at: int | None = None
    with tracker.attach():
        for step in bar(range(s.steps + 1), desc=job.run_id, leave=False, mininterval=5):
            if step % s.every == 0 or step == s.steps:
                model.eval()
                with torch.no_grad():
                    for name, x, y in (("train", split.x_train, split.y_train), ("test", split.x_test, split.y_test)):
                        rows += [(step, f"{name}_{k}", v) for k, v in scores(model, x, y, s.trim).items()]
                rows += [(step, k, v) for k, v in tracker.metrics().items()]
                rows.append((step, "adamw_weight_decay", float(opt.param_groups[0]["weight_decay"])))
                if arm.task == "dyck" and (step % p.probe_every == 0 or step == s.steps):
                    rows += [(step, k, v) for k, v in probe_rows(model, split, p.probe_positions, job.seed).items()]
                model.train()
            if step == s.steps:
                break
            if arm.removal_at and step == arm.removal_at:
                for g in opt.param_groups:
                    g["weight_decay"] = 0.0
            idx = torch.randint(0, n_train, (s.batch_size,), generator=gen)
            x, y = split.x_train[idx], split.y_train[idx]
            x, y = scan.trim(x, y) if s.trim else (x, y)
            loss, _ = loss_and_accuracy(model(x), y)
            if not math.isfinite(float(loss.detach())):  # diverged: stop before the update (training.train's rule)
                diverged_at = step
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if p.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            opt.step()
    model.eval()
    ids = {"run": job.run_id, "condition": job.condition, "seed": job.seed}
    telemetry = pd.DataFrame(rows, columns=["step", "metric", "value"]).assign(scope=MODEL_SCOPE, **ids)
    record = {"task": arm.task, "weight_decay": arm.weight_decay, "n_params": sum(q.numel() for q in model.parameters()),
              "edge_params": tracker.n_params, "train_targets": int((split.y_train != IGNORE_INDEX).sum()),
              "final_train_acc": float(telemetry.query("metric == 'train_acc'").value.iloc[-1]),
              "outcome": "completed" if diverged_at is None else "diverged", "diverged_at": diverged_at}
    if diverged_at is not None:  # no trained model to perturb, ablate or read: those tables stay empty
        empty = {"perturbation": ["direction", "eps", "dloss"], "ablation": ["direction", "loss", "acc", "base_loss",
                 "base_acc"], "fourier": ["analysis", "index", "value"]}
        return RunOutput({"telemetry": telemetry} | {name: pd.DataFrame(columns=[*cols, *ids])
                                                     for name, cols in empty.items()}, record)
    xt, yt = scan.trim(split.x_test, split.y_test) if s.trim else (split.x_test, split.y_test)
    f, theta = tracker.restrict(*edge.flat_evaluator(model, xt, yt))
    v = tracker.direction()
    curve = edge.perturbation_curve(f, theta, v, p.eps, p.n_random, seed=job.seed)
    pert = pd.concat([pd.DataFrame({"direction": "edge", "eps": curve.eps, "dloss": curve.edge}),
                      *[pd.DataFrame({"direction": f"random{i}", "eps": curve.eps, "dloss": r})
                        for i, r in enumerate(curve.random)]], ignore_index=True).assign(**ids)
    ab = edge.ablation_impact(f, theta, v, p.n_random, seed=job.seed)
    abl = pd.DataFrame([{"direction": "edge", "loss": ab.edge[0], "acc": ab.edge[1]}]
                       + [{"direction": f"random{i}", "loss": r[0], "acc": r[1]} for i, r in enumerate(ab.random)]
                       ).assign(base_loss=ab.base[0], base_acc=ab.base[1], **ids)
    rnd = tracker.embed(edge.random_directions(1, tracker.n_params, job.seed + 1)[0])
    four = fourier_rows(model, split, tracker.embed(v), rnd, p.response_eps) if arm.task == "dyck" else []
    four_df = pd.DataFrame(four, columns=["analysis", "index", "value"]).assign(**ids)
    return RunOutput({"telemetry": telemetry, "perturbation": pert, "ablation": abl, "fourier": four_df}, record)
