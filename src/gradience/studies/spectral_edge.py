"""Seed 002: the lifecycle of the spectral edge, from gradient learning to weight-decay compression.

Tasks (conditions ``wd<λ>`` and ``removal`` for Dyck-1, ``scan_wd<λ>`` for SCAN):

* Dyck-1 (:mod:`gradience.tasks.dyck`): predict the nesting depth at every position (the known
  functional coordinate) with a GPT-2-style 2-layer causal pre-LN transformer with learned positions
  (:class:`gradience.models.gpt.TokenClassifierGPT`), full batches of a small training set; initial weight
  matrices × ``init_scale`` (:func:`scale_init`), which turns generalisation-with-the-fit into grokking.
* SCAN (:mod:`gradience.tasks.scan`, generated from the grammar; the seeded "simple" split, the first
  ``scan.n_train`` training commands): an encoder–decoder (:class:`gradience.models.seq2seq.Seq2SeqTransformer`);
  accuracy is per action token as for Dyck-1, with exact match of the whole sequence beside it
  (``seq_acc``); batches are trimmed to their longest target (:func:`scan.trim`).

Optimiser: AdamW (β = 0.9, 0.98), gradient-norm clip ``grad_clip``. Why a loop here and not
:func:`gradience.training.train`: the removal arm sets λ = 0 *in the same optimiser* mid-run (AdamW
moments kept), and the final-step measurements need the trained model and the tracker's last window.

Measurements (every ``every`` steps; the tracker window = the last ``window`` AdamW updates of the
attention matrices, ``edge_params``, split into the gradient part −η m̂/(√v̂+ε) and the decay part
−ηλθ): ``edge_*`` window metrics (:func:`gradience.telemetry.edge.window_metrics`), train/test loss
and accuracy; for Dyck-1 every ``probe_every`` steps the held-out R² of linear / quadratic / MLP probes
of the depth from the final hidden state. At the end of a run: loss change along the edge vs
``n_random`` random unit directions of the same subspace (``perturbation``), the ablation θ − ⟨θ,v̂⟩v̂
of the edge vs random directions (``ablation``) and, for Dyck-1, the Fourier analyses
(:mod:`gradience.telemetry.fourier`; ``fourier`` table): the positional power spectrum of the final
hidden state, each layer's attention KL from uniform backward attention, and the depth-basis
concentration of the hidden-state response to a step ``response_eps`` along the edge and along a
random direction.

Budgets (:func:`gradience.reporting.judged`; short of one the verdict is "not comparable", never "not
reproduced"): seeds that fit, steps after the fit, the decay clock lr·λ·(steps after the fit) ≥
``min_decay_clock`` (decay alone shrinks θ by exp(−clock)), a grokking delay (test-fit step ÷
train-fit step ≥ ``min_grok_delay``), for the removal claim the clock up to the removal, steps after it
and linear-probe headroom, for the claims that contrast grokked and memorised models a λ = 0 control
that memorises, and for the classes both tasks. A claim made for both tasks is judged on each task's
own runs and budgets (:func:`_per_task`). Controls: the removal arm against the same seeds with the
decay kept; the edge's depth response against a random direction's.

Classes: the late gradient share along the edge (the seed's Term 3, gradient driving, against Term 2,
decay damping, of its gap flow) with our bounds ``class_bounds``; the seed's prediction of the class
from redundancy is tested with parameters per scored training target as the redundancy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from gradience.config import Section
from gradience.reporting import Budget, finding, judge, judged, mean_spread
from gradience.studies import base
from gradience.tasks import Split, dyck, scan
from gradience.telemetry import edge, fourier
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.training import IGNORE_INDEX, loss_and_accuracy, resolve_device

CLAIMS = ("spectral_edge.two_phases", "spectral_edge.edge_dominance", "spectral_edge.perturbation_flat",
          "spectral_edge.ablation_critical", "spectral_edge.probes_reencoded", "spectral_edge.wd_removal",
          "spectral_edge.fourier_positional", "spectral_edge.attention_uniform", "spectral_edge.fourier_depth",
          "spectral_edge.classes", "spectral_edge.classes_predicted")
CLASSES = ("functional", "mixed", "compression")


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
    base.unique_names([str(w) for w in decays], f"{prefix}weight_decays")
    if main not in decays:
        raise ValueError(f"{prefix}main_decay={main} must be one of {prefix}weight_decays={decays}")


class RunParams(base.RunParams):
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


class ReportParams(base.ReportParams):
    fit_acc: float = Field(default=0.99, gt=0, le=1, description="per-token train accuracy that marks the fit")
    test_fit_acc: float = Field(default=0.97, gt=0, le=1, description=(
        "per-token test accuracy that marks generalisation (grokking); below it at the end a run has memorised"))
    gradient_driven: float = Field(default=0.5, gt=0, lt=1, description="edge_grad_energy above: gradient-driven")
    gap_min: float = Field(default=1.5, ge=1, description="edge dominance: median σ1/σ2 at least this")
    ablation_min: float = Field(default=4000.0, gt=1, description="the seed's ratio (> 4000×)")
    mlp_r2_min: float = Field(default=0.95, gt=0, le=1)
    linear_gap_min: float = Field(default=0.05, ge=0, description="MLP R² − linear R² at least this")
    recover_min: float = Field(default=0.05, ge=0, description="removal: linear R² gain at least this")
    acc_drop_max: float = Field(default=0.02, ge=0)
    class_bounds: tuple[float, float] = Field(default=(0.3, 0.7), description="edge_grad_energy late after the fit: "
                                              "≤ lo compression, ≥ hi functional, else mixed")
    uniform_kl_max: float = Field(default=0.01, gt=0, description="layer-0 attention 'uniform backward': mean KL "
                                  "from uniform below this (nats; the seed reports < 0.001)")
    depth_elevation_min: float = Field(default=3.0, ge=1, description="depth-basis Fourier concentration of the "
                                       "edge's response, × uniform, at least this (the seed: 5.2 at grokking, "
                                       "4.1 ± 0.7 over seeds)")
    min_seeds: int = Field(default=3, ge=1)
    min_post_steps: int = Field(default=100, ge=1, description="steps after the fit a late-phase claim needs")
    min_grok_delay: float = Field(default=2.0, gt=1, description=(
        "test-fit step (at test_fit_acc) ÷ train-fit step (at fit_acc) a claim about the phases around grokking needs: "
        "grokking is generalisation well after the training set is fitted; 2 reads it as at least twice as late"))
    min_decay_clock: float = Field(default=1.0, gt=0, description=(
        "lr·λ·(steps after the fit) a claim about the post-fit compression phase needs. AdamW's decoupled decay "
        "alone shrinks θ by exp(−lr·λ·t), so below 1 (one e-fold) decay has barely acted after the fit and a "
        "run cannot show compression, nor its absence; steps alone do not say this (at lr 1e-3, λ 1, 200 steps "
        "after the fit are a factor exp(−0.2))"))


DATA: tuple[str, ...] = ()
TABLES = ("telemetry", "perturbation", "ablation", "fourier")
TASKS = ("dyck", "scan")
TASK_LABEL = {"dyck": "Dyck-1", "scan": "SCAN"}


@dataclass(frozen=True)
class Arm:
    task: str  # "dyck" or "scan"
    weight_decay: float
    removal_at: int = 0  # > 0: λ = 0 from this step on


def condition_name(wd: float, task: str = "dyck") -> str:
    return f"wd{wd:g}" if task == "dyck" else f"{task}_wd{wd:g}"


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    """Per task, the main decay (and Dyck's removal arm) on every seed, the other decays on the first ``sweep_seeds``."""
    arms = [(condition_name(w), Arm("dyck", w), w == p.main_decay) for w in p.weight_decays]
    arms += [("removal", Arm("dyck", p.main_decay, p.removal_at), True)] if p.removal_at else []
    if p.scan.steps:
        arms += [(condition_name(w, "scan"), Arm("scan", w), w == p.scan.main_decay) for w in p.scan.weight_decays]
    return [base.Job(p, c, s, data_dir, spec=arm) for c, arm, main in arms
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


def _scores(model, x, y, trim: bool) -> dict[str, float]:
    """Loss and per-token accuracy; for SCAN also ``seq_acc``, exact match of the whole action sequence
    (teacher-forced argmax right at every target, which is the same as greedy decoding being exact)."""
    if trim:
        x, y = scan.trim(x, y)
    logits = model(x)
    loss, acc = loss_and_accuracy(logits, y)
    if not trim:
        return {"loss": float(loss), "acc": float(acc)}
    exact = ((logits.argmax(-1) == y) | (y == IGNORE_INDEX)).all(1).float().mean()
    return {"loss": float(loss), "acc": float(acc), "seq_acc": float(exact)}


def _probe_rows(model, split, n_pos: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)

    def feats(x, y):
        h = edge.residual_stream(model, x)[-1].reshape(-1, model.lm.config.n_embd).double().cpu().numpy()
        t = y.reshape(-1).double().cpu().numpy()
        h, t = h[t != IGNORE_INDEX], t[t != IGNORE_INDEX]  # padding of variable-length words
        i = rng.choice(len(t), size=min(n_pos, len(t)), replace=False)
        return h[i], t[i]

    Htr, ytr = feats(split.x_train, split.y_train)
    Hte, yte = feats(split.x_test, split.y_test)
    return edge.probe_scores(Htr, ytr, Hte, yte, seed=seed)


@torch.no_grad()
def _fourier_rows(model, split: Split, v_full: torch.Tensor, v_random: torch.Tensor, eps: float,
                  n_seq: int = 1000) -> list[tuple]:
    """Dyck-1 at the end of a run: positional power of the final hidden state, layer-wise attention KL from
    uniform, and the depth-basis concentration of the response ‖Δh‖² to θ + eps·v̂ on test words, for the edge
    and for a random unit direction of the same subspace (the control)."""
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    x, depth = split.x_test[:n_seq], split.y_test[:n_seq]
    full = (depth != IGNORE_INDEX).all(1)  # words without padding: the positional analyses need every position
    h0 = edge.residual_stream(model, x)[-1]
    rows = [("positional", k, float(s)) for k, s in enumerate(fourier.positional_power(h0[full].cpu().numpy()))]
    model.lm.set_attn_implementation("eager")
    att = model.lm(input_ids=x[full], output_attentions=True).attentions
    model.lm.set_attn_implementation("sdpa")
    rows += [("attention_kl", layer, float(fourier.attention_uniformity(a.cpu().numpy()).mean()))
             for layer, a in enumerate(att)]
    params = [q for q in model.parameters() if q.requires_grad]
    theta = parameters_to_vector(params).clone()
    for name, v in (("depth", v_full), ("depth_random", v_random)):
        vector_to_parameters(theta + eps * v.to(theta), params)
        h1 = edge.residual_stream(model, x)[-1]
        vector_to_parameters(theta, params)
        valid = depth != IGNORE_INDEX
        response = ((h1 - h0) ** 2).sum(-1)[valid].cpu().numpy()
        c = fourier.group_concentration(response, depth[valid].cpu().numpy(), int(depth.max()) + 1)
        rows += [(f"{name}_share", k + 1, float(s)) for k, s in enumerate(c.shares)]
        rows += [(f"{name}_elevation", c.peak, c.elevation)]
    return rows


def run_one(job: base.Job) -> base.RunOutput:
    p: RunParams = job.params  # type: ignore[assignment]
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
    with tracker.attach():
        for step in tqdm(range(s.steps + 1), desc=job.run_id, leave=False, mininterval=5):
            if step % s.every == 0 or step == s.steps:
                model.eval()
                with torch.no_grad():
                    for name, x, y in (("train", split.x_train, split.y_train), ("test", split.x_test, split.y_test)):
                        rows += [(step, f"{name}_{k}", v) for k, v in _scores(model, x, y, s.trim).items()]
                rows += [(step, k, v) for k, v in tracker.metrics().items()]
                rows.append((step, "adamw_weight_decay", float(opt.param_groups[0]["weight_decay"])))
                if arm.task == "dyck" and (step % p.probe_every == 0 or step == s.steps):
                    rows += [(step, k, v) for k, v in _probe_rows(model, split, p.probe_positions, job.seed).items()]
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
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if p.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            opt.step()
    model.eval()
    ids = {"run": job.run_id, "condition": job.condition, "seed": job.seed}
    telemetry = pd.DataFrame(rows, columns=["step", "metric", "value"]).assign(scope=MODEL_SCOPE, **ids)
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
    four = _fourier_rows(model, split, tracker.embed(v), rnd, p.response_eps) if arm.task == "dyck" else []
    four_df = pd.DataFrame(four, columns=["analysis", "index", "value"]).assign(**ids)
    targets = int((split.y_train != IGNORE_INDEX).sum())
    record = {"task": arm.task, "weight_decay": arm.weight_decay, "n_params": sum(q.numel() for q in model.parameters()),
              "edge_params": tracker.n_params, "train_targets": targets,
              "final_train_acc": float(telemetry.query("metric == 'train_acc'").value.iloc[-1])}
    return base.RunOutput({"telemetry": telemetry, "perturbation": pert, "ablation": abl, "fourier": four_df}, record)


# ------------------------------------------------------------------------------------ analysis


@dataclass
class Analysis:
    wide: pd.DataFrame  # run, condition, seed, step, one column per metric
    per_run: pd.DataFrame  # one row per run: task, fit step, phase medians, probes, ablation ratio, Fourier, class
    perturbation: pd.DataFrame
    ablation: pd.DataFrame
    fourier: pd.DataFrame
    params: object  # the run params


def task_of(condition: pd.Series) -> pd.Series:
    """The task of each condition name (``scan_…`` conditions are SCAN's, the others Dyck-1's)."""
    return condition.where(~condition.str.startswith("scan_"), "scan").where(condition.str.startswith("scan_"), "dyck")


def fit_step(g: pd.DataFrame, fit_acc: float, column: str = "train_acc") -> float:
    """First step whose ``column`` accuracy reaches ``fit_acc`` (NaN when never)."""
    hit = g.loc[g[column] >= fit_acc, "step"]
    return float(hit.iloc[0]) if len(hit) else float("nan")


def decay_clock(per_run: pd.DataFrame, lr: float | pd.Series, until: pd.Series | float) -> pd.Series:
    """lr · λ · (until − fit_step) per run (columns ``weight_decay``, ``fit_step``): the decoupled-decay exponent
    accumulated after the fit (decay alone shrinks θ by exp(−clock)); NaN where the run never fit, 0 when until ≤ fit."""
    return lr * per_run["weight_decay"] * (until - per_run["fit_step"]).clip(lower=0)


def classify(grad_energy: float, bounds: tuple[float, float]) -> str:
    lo, hi = bounds
    if not np.isfinite(grad_energy):
        return "none"
    return "compression" if grad_energy <= lo else "functional" if grad_energy >= hi else "mixed"


def _fourier_summary(fr: pd.DataFrame) -> dict[str, float]:
    if fr.empty:
        return {}
    pos = fr[fr.analysis == "positional"].sort_values("index")
    att = fr[fr.analysis == "attention_kl"].sort_values("index")
    el = fr[fr.analysis == "depth_elevation"]
    el_random = fr[fr.analysis == "depth_random_elevation"]
    return {"positional_peak": float(pos["index"].iloc[int(pos.value.argmax())]),
            "positional_dc_share": float(pos.value.iloc[0]), "positional_nyquist_share": float(pos.value.iloc[-1]),
            "attention_kl_layer0": float(att.value.iloc[0]),
            "depth_elevation": float(el.value.iloc[0]), "depth_peak": float(el["index"].iloc[0]),
            "depth_elevation_random": float(el_random.value.iloc[0]) if len(el_random) else np.nan}


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    t = tables.telemetry
    wide = t.pivot_table(index=["run", "condition", "seed", "step"], columns="metric", values="value").reset_index()
    wide.insert(2, "task", task_of(wide.condition))
    rp: RunParams = tables.params  # type: ignore[assignment]
    four = tables.frames.get("fourier", pd.DataFrame(columns=["run", "analysis", "index", "value"]))
    rows = []
    for (run, cond, seed, task), g in wide.groupby(["run", "condition", "seed", "task"]):
        g = g.sort_values("step")
        fs = fit_step(g, p.fit_acc)
        last = g.iloc[-1]
        pre = g[(g.step < fs) & (g.step >= rp.window)] if np.isfinite(fs) else g.iloc[0:0]
        post = g[g.step >= fs + (g.step.max() - fs) / 2] if np.isfinite(fs) else g.iloc[0:0]
        probes = g.dropna(subset=["probe_r2_linear"]) if "probe_r2_linear" in g else g.iloc[0:0]
        at_removal = probes[probes.step == rp.removal_at]
        a = tables.ablation.query("run == @run")
        e, r = a[a.direction == "edge"].iloc[0], a[a.direction != "edge"]
        rows.append({
            "run": run, "condition": cond, "seed": seed, "task": task,
            "fit_step": fs, "post_steps": g.step.max() - fs, "test_fit_step": fit_step(g, p.test_fit_acc, "test_acc"),
            "grad_energy_pre": pre["edge_grad_energy"].median(), "grad_energy_post": post["edge_grad_energy"].median(),
            "rotation_post": post["edge_rotation"].median() if "edge_rotation" in post else np.nan,
            "gap_median": g.loc[g.step >= rp.window, "edge_gap"].median(),
            "final_test_acc": last["test_acc"], "final_train_acc": last["train_acc"],
            "final_test_seq_acc": last.get("test_seq_acc", np.nan),
            "r2_linear": probes["probe_r2_linear"].iloc[-1] if len(probes) else np.nan,
            "r2_quadratic": probes["probe_r2_quadratic"].iloc[-1] if len(probes) else np.nan,
            "r2_mlp": probes["probe_r2_mlp"].iloc[-1] if len(probes) else np.nan,
            "r2_linear_at_removal": at_removal["probe_r2_linear"].iloc[0] if len(at_removal) else np.nan,
            "test_acc_at_removal": at_removal["test_acc"].iloc[0] if len(at_removal) else np.nan,
            "ablation_loss_ratio": edge._ratio(abs(e.loss - e.base_loss), float((r.loss - r.base_loss).abs().mean())),
            **_fourier_summary(four[four.run == run]),
        })
    per_run = pd.DataFrame(rows)
    per_run["grok_delay"] = per_run.test_fit_step / per_run.fit_step.where(per_run.fit_step > 0)
    decays = ({condition_name(w): w for w in rp.weight_decays} | {"removal": rp.main_decay}
              | {condition_name(w, "scan"): w for w in rp.scan.weight_decays})
    per_run["weight_decay"] = per_run.condition.map(decays)
    runs = tables.runs.set_index("run") if "run" in tables.runs else pd.DataFrame()
    for col in ("n_params", "edge_params", "train_targets"):
        per_run[col] = per_run.run.map(runs[col]) if col in runs else np.nan
    per_run["params_per_target"] = per_run.n_params / per_run.train_targets
    lr = per_run.task.map({"dyck": rp.lr, "scan": rp.scan.lr})
    removal, last = per_run.condition == "removal", per_run.fit_step + per_run.post_steps
    per_run["decay_clock_post"] = decay_clock(per_run, lr, last.where(~removal, last.clip(upper=rp.removal_at)))
    per_run["decay_clock_at_removal"] = decay_clock(per_run, lr, rp.removal_at).where(removal)
    per_run["edge_class"] = [classify(x, p.class_bounds) for x in per_run["grad_energy_post"]]
    return Analysis(wide, per_run, tables.perturbation, tables.ablation, four, rp)


def _fmt(values: pd.Series, digits: int = 2) -> str:
    return mean_spread(values.dropna().to_numpy(), f"{{:,.{digits}f}}")


def _main(a: Analysis, task: str) -> pd.DataFrame:
    rp = a.params
    main = rp.main_decay if task == "dyck" else rp.scan.main_decay  # type: ignore[attr-defined]
    return a.per_run[a.per_run.condition == condition_name(main, task)]


def _phase_budgets(main: pd.DataFrame, p: ReportParams, label: str) -> tuple[list[Budget], Budget, Budget]:
    """Seeds-and-steps budgets, the decay clock and the grokking delay of one task's main condition."""
    fitted = main[main.fit_step.notna()]
    n = len(fitted)
    seeds = [Budget(f"{label}: main-condition seeds that fit", n, p.min_seeds),
             Budget(f"{label}: steps after the fit", float(fitted.post_steps.min()) if n else 0.0, p.min_post_steps)]
    clock = Budget(f"{label}: lr·wd·steps after the fit", float(fitted.decay_clock_post.min()) if n else 0.0,
                   p.min_decay_clock)
    grok = Budget(f"{label}: grokking delay, test-fit ÷ train-fit step (fewest seeds)",
                  float(fitted.grok_delay.fillna(0).min()) if n else 0.0, p.min_grok_delay)
    return seeds, clock, grok


def _per_task(claim_id: str, results: dict[str, tuple[bool | None, str, list[Budget]]], why: str) -> dict:
    """One Findings row for a claim made for every task: each task judged on its own runs and budgets; the row
    is "not reproduced" when any task is, "reproduced" when every task is, else "not comparable" (or
    "inconclusive" when no task could be judged). The measured text gives each task's verdict."""
    verdicts = {t: judge(h, b) for t, (h, _, b) in results.items()}
    got = {v for v, _ in verdicts.values()}
    verdict = ("not reproduced" if "not reproduced" in got else "reproduced" if got == {"reproduced"}
               else "inconclusive" if got <= {"inconclusive"} else "not comparable")
    measured = "; ".join(f"{TASK_LABEL[t]}: {text} ({verdicts[t][0]})" for t, (_, text, _) in results.items())
    budgets = "; ".join(verdicts[t][1] for t in results if verdicts[t][1])  # budget names carry the task
    return finding(claim_id, measured, verdict, "; ".join(x for x in (why, budgets) if x))


def findings(a: Analysis, p: ReportParams) -> list[dict]:
    rp = a.params
    tasks = [t for t in TASKS if len(_main(a, t))]
    main = {t: _main(a, t) for t in tasks}
    fitted = {t: m[m.fit_step.notna()] for t, m in main.items()}
    bud = {t: _phase_budgets(main[t], p, TASK_LABEL[t]) for t in tasks}
    phase = {t: [*bud[t][0], bud[t][1], bud[t][2]] for t in tasks}  # the budgets of a claim about the phases
    everywhere = [b for t in tasks for b in phase[t]]
    dy_seeds, dy_clock, dy_grok = bud.get("dyck", ([Budget("Dyck-1 runs", 0, 1)], Budget("", 0, 1), Budget("", 0, 1)))
    out = []

    def two(t):
        f = fitted[t]
        switch = (f.grad_energy_pre > p.gradient_driven) & (f.grad_energy_post < p.gradient_driven)
        return (bool(switch.mean() > 0.5) if len(f) else None,
                f"gradient share of the edge's energy before fit {_fmt(f.grad_energy_pre)}, late after fit "
                f"{_fmt(f.grad_energy_post)}, {int(switch.sum())}/{len(f)} seeds switch", phase[t])
    out.append(_per_task("spectral_edge.two_phases", {t: two(t) for t in tasks},
                         f"holds when, in each task, most fitted seeds are > {p.gradient_driven} before and < after"))

    def dominance(t):
        m = main[t]
        return (bool(m.gap_median.median() >= p.gap_min) if len(m) else None, f"median σ1/σ2 {_fmt(m.gap_median)}",
                bud[t][0][:1])
    out.append(_per_task("spectral_edge.edge_dominance", {t: dominance(t) for t in tasks},
                         f"holds when the median over seeds is ≥ {p.gap_min} in each task"))

    def flat(t):
        pert = a.perturbation[a.perturbation.run.isin(main[t].run)]
        big = pert[pert.eps.abs() == pert.eps.abs().max()]
        e, r = big[big.direction == "edge"].dloss.abs().mean(), big[big.direction != "edge"].dloss.abs().mean()
        return (bool(e <= r) if len(big) else None,
                f"|ΔL| at ‖δθ‖={big.eps.abs().max():g}: edge {e:.3g}, random {r:.3g}", phase[t])
    out.append(_per_task("spectral_edge.perturbation_flat", {t: flat(t) for t in tasks},
                         "holds when the edge's |ΔL| ≤ the random mean in each task"))

    def critical(t):
        m = main[t]
        return (bool(m.ablation_loss_ratio.median() > p.ablation_min) if len(m) else None,
                f"ablation loss ratio edge/random {_fmt(m.ablation_loss_ratio, 0)}", bud[t][0][:1])
    out.append(_per_task("spectral_edge.ablation_critical", {t: critical(t) for t in tasks},
                         f"holds when the median ratio > {p.ablation_min:g} in each task"))

    dm = main.get("dyck", a.per_run.iloc[0:0])
    out.append(judged("spectral_edge.probes_reencoded",
                      f"Dyck-1 final R²: linear {_fmt(dm.r2_linear)}, quadratic {_fmt(dm.r2_quadratic)}, MLP {_fmt(dm.r2_mlp)}",
                      bool((dm.r2_mlp.median() >= p.mlp_r2_min)
                           and (dm.r2_mlp - dm.r2_linear).median() >= p.linear_gap_min) if len(dm) else None,
                      f"holds when MLP R² ≥ {p.mlp_r2_min} and exceeds linear by ≥ {p.linear_gap_min}",
                      [*dy_seeds, dy_clock, dy_grok]))
    rem = a.per_run[a.per_run.condition == "removal"].set_index("seed")
    kept = dm.set_index("seed")  # the same seeds kept at the main decay: what the probe does without the removal
    gain = (rem.r2_linear - rem.r2_linear_at_removal) - (kept.r2_linear - kept.r2_linear_at_removal).reindex(rem.index)
    drop = rem.test_acc_at_removal - rem.final_test_acc
    rem_clock = rem.decay_clock_at_removal.dropna()
    out.append(judged("spectral_edge.wd_removal",
                      f"linear R² {_fmt(rem.r2_linear_at_removal)} → {_fmt(rem.r2_linear)} after the removal, "
                      f"{_fmt(kept.r2_linear_at_removal)} → {_fmt(kept.r2_linear)} with the decay kept (gain over it "
                      f"{_fmt(gain, 3)}); test acc {_fmt(rem.test_acc_at_removal)} → {_fmt(rem.final_test_acc)}",
                      bool(gain.median() >= p.recover_min and drop.median() <= p.acc_drop_max) if len(gain.dropna()) else None,
                      f"holds when the linear R² gained after the removal exceeds the same seeds' gain with the decay kept "
                      f"by ≥ {p.recover_min} and the accuracy drop ≤ {p.acc_drop_max}",
                      [Budget("removal-arm seeds", len(rem), p.min_seeds),
                       Budget("removal after the fit (seeds)", int((rem.fit_step < rp.removal_at).sum()), p.min_seeds),
                       Budget("lr·wd·steps from the fit to the removal", float(rem_clock.min()) if len(rem_clock) else 0.0,
                              p.min_decay_clock),
                       Budget("steps after the removal", rp.steps - rp.removal_at, p.min_post_steps),
                       Budget("linear-probe headroom at the removal, 1 − R² (fewest seeds)",
                              float((1 - rem.r2_linear_at_removal).min()) if len(rem) else 0.0, p.recover_min),
                       dy_grok]))
    out += _fourier_findings(a, p, dm, [*dy_seeds, dy_grok])
    out += _class_findings(a, p, main, tasks, everywhere)
    return out


def _fourier_findings(a: Analysis, p: ReportParams, dm: pd.DataFrame, budgets: list[Budget]) -> list[dict]:
    rp = a.params
    half = rp.length // 2  # type: ignore[attr-defined]
    ctrl = a.per_run[(a.per_run.task == "dyck") & (a.per_run.weight_decay == 0)]
    memorised = int((ctrl.final_test_acc < p.test_fit_acc).sum())
    have = len(dm) and "positional_peak" in dm
    out = [judged("spectral_edge.fourier_positional",
                  f"positional power of the final hidden state: main decay peaks at ω = "
                  f"{dm.positional_peak.tolist() if have else '–'} (Nyquist {half}; share {_fmt(dm.get('positional_nyquist_share', pd.Series(dtype=float)))}), "
                  f"DC share {_fmt(dm.get('positional_dc_share', pd.Series(dtype=float)))}; λ = 0 control DC share "
                  f"{_fmt(ctrl.get('positional_dc_share', pd.Series(dtype=float)))} (final test acc {_fmt(ctrl.final_test_acc)})",
                  bool((dm.positional_peak == half).mean() > 0.5
                       and (ctrl.positional_dc_share > 0.5).all()) if have and len(ctrl) else None,
                  "holds when most main-decay seeds peak at the Nyquist frequency and every λ = 0 control puts > half "
                  "its power in the DC mode", [*budgets, Budget("λ = 0 controls that memorise (test acc < test_fit_acc)",
                                                               memorised, 1)])]
    kl_main = dm.get("attention_kl_layer0", pd.Series(dtype=float))
    kl_ctrl = ctrl.get("attention_kl_layer0", pd.Series(dtype=float))
    out.append(judged("spectral_edge.attention_uniform",
                      f"layer-0 attention KL from uniform backward: main decay {_fmt(kl_main, 4)} nats, λ = 0 control "
                      f"{_fmt(kl_ctrl, 4)} (final test acc {_fmt(ctrl.final_test_acc)})",
                      bool(kl_main.median() < p.uniform_kl_max and (kl_ctrl >= p.uniform_kl_max).all())
                      if len(kl_main.dropna()) and len(kl_ctrl.dropna()) else None,
                      f"holds when the main decay's median is < {p.uniform_kl_max:g} nats and every memorising λ = 0 "
                      f"control's is not (attention at initialisation is near uniform too: the contrast is the test)",
                      [*budgets, Budget("λ = 0 controls that memorise (test acc < test_fit_acc)", memorised, 1)]))
    el, el_rnd = (dm.get(k, pd.Series(dtype=float)) for k in ("depth_elevation", "depth_elevation_random"))
    out.append(judged("spectral_edge.fourier_depth",
                      f"response ‖Δh‖² by depth, concentration × uniform: edge {_fmt(el)} (peak frequency "
                      f"{dm.depth_peak.tolist() if have else '–'}), random direction {_fmt(el_rnd)}",
                      bool(el.median() >= p.depth_elevation_min and el.median() > el_rnd.median())
                      if len(el.dropna()) else None,
                      f"holds when the edge's median is ≥ {p.depth_elevation_min:g}× uniform and above a random "
                      f"direction's (measured at the end of the run; the seed's at grokking)", budgets))
    return out


def _class_findings(a: Analysis, p: ReportParams, main: dict[str, pd.DataFrame], tasks: list[str],
                    budgets: list[Budget]) -> list[dict]:
    cls = {t: (main[t].edge_class.mode().iloc[0] if len(main[t]) else "none") for t in tasks}
    share = {t: float(main[t].grad_energy_post.median()) for t in tasks}
    redundancy = {t: float(main[t].params_per_target.median()) for t in tasks}
    both = Budget("tasks run (Dyck-1 and SCAN)", len(tasks), 2)
    measured = "; ".join(f"{t}: late gradient share {share[t]:.2f} → {cls[t]}, rotation "
                         f"{main[t].rotation_post.median():.0f}°, {redundancy[t]:.1f} params per training target"
                         for t in tasks)
    known = all(c != "none" for c in cls.values()) and len(tasks) == 2
    one_task = False if len(tasks) < 2 else None  # a task not run: the budget says so ("not comparable")
    out = [judged("spectral_edge.classes", measured,
                  (cls["scan"] == "compression" and cls["dyck"] in ("functional", "mixed")) if known else one_task,
                  f"holds when SCAN's main decay is a compression edge and Dyck-1's functional or mixed (late gradient "
                  f"share ≤ {p.class_bounds[0]} compression, ≥ {p.class_bounds[1]} functional)", [*budgets, both])]
    more = max(redundancy, key=redundancy.get) if known else None
    out.append(judged("spectral_edge.classes_predicted",
                      "; ".join(f"{t}: {redundancy[t]:.1f} params per training target, late gradient share {share[t]:.2f}"
                                for t in tasks),
                      (share[more] == min(share.values()) and share[more] != max(share.values())) if more else one_task,
                      "holds when the more redundant task (more parameters per training target) has the lower late "
                      "gradient share, i.e. sits nearer the compression class", [*budgets, both]))
    return out


def metrics(a: Analysis, p: ReportParams) -> dict:
    out = {}
    keys = ("fit_step", "grok_delay", "decay_clock_post", "grad_energy_pre", "grad_energy_post", "gap_median",
            "final_test_acc", "r2_linear", "r2_mlp", "ablation_loss_ratio", "depth_elevation", "attention_kl_layer0")
    for cond, g in a.per_run.groupby("condition"):
        out[cond] = {k: float(g[k].median()) for k in keys if k in g and np.isfinite(g[k].median())}
    return out


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    return base.step_curves(a.wide, "condition", {"test_acc": "mean", "edge_grad_energy": "mean", "edge_gap": "mean",
                                                  "probe_r2_linear": "mean", "probe_r2_mlp": "mean"})
