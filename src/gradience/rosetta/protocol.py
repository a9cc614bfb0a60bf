"""Training with conventional or geometric hyperparameters: the arms of the ``rosetta`` protocol.

An *arm* replaces a chosen set of conventional hyperparameters by the document's geometric rules
(:data:`OPTIMIZER_RULES` for the small models, :data:`LORA_RULES` for LoRA):

- ``mass`` (rules 1, 3, 6, 7): plain SGD (Adam/momentum removed) with η = :func:`mass_step_size`
  measured on a fixed measurement batch every ``mass_every`` updates, no warm-up, constant between
  measurements. The conventional arm uses AdamW with its tuned learning rate and warm-up.
- ``adam_epsilon`` (rule 2): AdamW's ε per 2-D weight = max(σ_k², √ε·σ_max²) of the initial weight
  (other parameters keep the conventional ε).
- ``decay`` (rule 4): weight decay per 2-D weight = λ₀·σ_k/σ_max of the initial weight; λ₀ is the
  conventional decay (other parameters keep λ₀).
- ``no_clip`` (rule 5), ``no_warmup`` (rule 6): the conventional arm's clipping / warm-up removed.

:func:`gradience.training.train` is not used for these arms: it builds one optimizer parameter group
(one ε, one decay) and cannot hold per-weight ε or decay (rules 2, 4). :func:`train_arm` is the same
loop shape (seeded batches, a cadence of full-split evaluations, non-finite loss = diverged).

LoRA (rules 10–14, :func:`lora_plan`): rank per module = tail_dims (rule 11, optionally capped),
targets with tail_dims > 0 among the candidate modules (rule 12), dropout = the mean of the rule-13
dropouts over the targets (PEFT has one dropout per adapter: a stated reading), spectrally normalised
initialisation (rule 14, :func:`apply_spectral_init`) and scale s = 1 (rule 10: with ‖BA‖₂ = σ_k at
initialisation the bound σ_k/‖BA‖₂ is exactly 1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradience.rosetta.lora import geometric_dropout, spectral_init, tail_dims
from gradience.rosetta.optimizer import (
    adam_epsilon,
    budget_ratio,
    decay_scale,
    mass_step_size,
    should_stop,
)
from gradience.tasks import Split
from gradience.training import evaluate, loss_and_accuracy, resolve_device

OPTIMIZER_RULES = ("mass", "adam_epsilon", "decay", "no_clip", "no_warmup")
LORA_RULES = ("rank", "targets", "dropout", "init", "scale")


@dataclass(frozen=True)
class Conventional:
    """The conventional (tuned) hyperparameters an arm starts from."""

    lr: float
    weight_decay: float
    steps: int
    batch_size: int
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup_fraction: float = 0.1


@dataclass
class ArmResult:
    history: pd.DataFrame  # step, train_loss, train_acc, test_loss, test_acc, lr
    rules: pd.DataFrame  # rule, scope, metric, value: the values the rules chose
    final: dict[str, float] = field(default_factory=dict)
    outcome: str = "completed"


def _matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable weights of ≥ 2 dims, matricised (conv kernels out × in·k·k) for the spectral rules."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]


def _mat(p: torch.Tensor) -> torch.Tensor:
    return p.detach().reshape(p.shape[0], -1)


def param_groups(model: nn.Module, conv: Conventional, rules: Sequence[str]) -> tuple[list[dict], pd.DataFrame]:
    """AdamW parameter groups with rule 2's ε and rule 4's decay per weight matrix (when in ``rules``),
    and the table of chosen values (``rule, scope, metric, value``)."""
    rows, groups, rest = [], [], []
    mats = dict(_matrices(model))
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name not in mats:
            rest.append(p)
            continue
        w = _mat(p)
        eps = adam_epsilon(w) if "adam_epsilon" in rules else conv.eps
        wd = conv.weight_decay * decay_scale(w) if "decay" in rules else conv.weight_decay
        groups.append({"params": [p], "eps": eps, "weight_decay": wd})
        rows += [{"rule": "adam_epsilon", "scope": name, "metric": "adam_eps", "value": eps},
                 {"rule": "decay", "scope": name, "metric": "weight_decay", "value": wd}]
    if rest:
        groups.append({"params": rest, "eps": conv.eps, "weight_decay": conv.weight_decay})
    return groups, pd.DataFrame(rows, columns=["rule", "scope", "metric", "value"])


def _batches(n: int, batch_size: int, generator: torch.Generator):
    if batch_size <= 0 or batch_size >= n:
        while True:
            yield torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


def train_arm(model: nn.Module, split: Split, conv: Conventional, rules: Sequence[str], seed: int,
              eval_every: int, mass_every: int = 50, measure_batch: int = 256, lanczos_tol: float = 1e-3,
              device: str = "cpu") -> ArmResult:
    """Train ``model`` in place with ``conv`` and the geometric ``rules`` replacing their conventional
    counterparts; evaluate both splits every ``eval_every`` updates (and at the end). ``device`` as in
    :func:`gradience.training.resolve_device` (``auto``: CUDA when present)."""
    bad = sorted(set(rules) - set(OPTIMIZER_RULES))
    if bad:
        raise ValueError(f"unknown rules {bad}; known: {OPTIMIZER_RULES}")
    if eval_every < 1 or mass_every < 1:
        raise ValueError(f"eval_every and mass_every must be ≥ 1, got {eval_every}, {mass_every}")
    torch.manual_seed(seed)
    dev = resolve_device(device)
    model.to(dev)
    split = split.to(dev)
    gen = torch.Generator().manual_seed(seed)
    mass = "mass" in rules
    groups, chosen = param_groups(model, conv, rules)
    if mass:  # rule 3: Adam/momentum removed, plain SGD with the rule-4 decay (if any) per group
        opt: torch.optim.Optimizer = torch.optim.SGD([{k: v for k, v in g.items() if k != "eps"} for g in groups], lr=1.0)
    else:
        opt = torch.optim.AdamW(groups, lr=conv.lr, betas=conv.betas)
    warm = 0 if (mass or "no_warmup" in rules) else int(round(conv.warmup_fraction * conv.steps))
    clip = 0.0 if (mass or "no_clip" in rules) else conv.grad_clip
    n = split.x_train.shape[0]
    measure = (split.x_train[:measure_batch], split.y_train[:measure_batch])
    batches = _batches(n, conv.batch_size, gen)
    params = [p for p in model.parameters() if p.requires_grad]
    hist, extra, lr, outcome = [], [], conv.lr, "completed"
    model.train()
    for step in range(conv.steps + 1):
        if step % eval_every == 0 or step == conv.steps:
            tr = evaluate(model, split.x_train, split.y_train)
            te = evaluate(model, split.x_test, split.y_test)
            hist.append({"step": step, "train_loss": tr[0], "train_acc": tr[1], "test_loss": te[0],
                         "test_acc": te[1], "lr": lr})
        if step == conv.steps:
            break
        if mass and step % mass_every == 0:
            model.eval()  # batch-norm layers: running statistics, no in-place update inside torch.func
            s = mass_step_size(model, measure, lanczos_tol=lanczos_tol)
            model.train()
            lr = s.step
            extra += [{"rule": "mass", "scope": "model", "metric": f"eta_{k}", "value": v, "step": step}
                      for k, v in (("ceiling", s.ceiling), ("sps", s.sps), ("weyl", s.weyl), ("step", s.step))]
            extra.append({"rule": "mass", "scope": "model", "metric": f"binding_{s.binding}", "value": 1.0, "step": step})
        elif not mass:
            lr = conv.lr * min(1.0, (step + 1) / warm) if warm else conv.lr
        for g in opt.param_groups:
            g["lr"] = lr
        idx = next(batches).to(dev)
        loss, _ = loss_and_accuracy(model(split.x_train[idx]), split.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not math.isfinite(float(loss.detach())):
            outcome = "diverged"
            break
        if clip > 0:
            nn.utils.clip_grad_norm_(params, clip)
        opt.step()
    model.eval()
    history = pd.DataFrame(hist)
    chosen = pd.concat([chosen.assign(step=0), pd.DataFrame(extra)], ignore_index=True) if extra else chosen.assign(step=0)
    final = history.iloc[-1].drop(["step", "lr"]).to_dict() if outcome == "completed" else {}
    return ArmResult(history, chosen, {k: float(v) for k, v in final.items()}, outcome)


def stop_step(history: pd.DataFrame, loss: str = "train_loss") -> tuple[float, str]:
    """Rule 9 on an evaluation history: the first evaluated step where :func:`should_stop` fires on
    the loss series up to it (``nan, ""`` when it never fires). No budget ratio is used here (the
    budget part needs a base weight; see :func:`lora_budget_ratios`)."""
    losses: list[float] = []
    for step, value in zip(history["step"], history[loss], strict=True):
        losses.append(float(value))
        stop, why = should_stop(losses)
        if stop:
            return float(step), why
    return math.nan, ""


# ------------------------------------------------------------------------------------ LoRA


@dataclass(frozen=True)
class LoraPlan:
    """Rules 11–13 on a base model: per target module its rank and dropout, and the one dropout used."""

    table: pd.DataFrame  # module, shape, effective rank, tail_dims, rank, dropout, target
    dropout: float

    @property
    def targets(self) -> list[str]:
        return self.table.loc[self.table.target, "module"].tolist()

    @property
    def ranks(self) -> dict[str, int]:
        t = self.table[self.table.target]
        return dict(zip(t.module, t["rank"].astype(int), strict=True))


def lora_plan(model: nn.Module, candidates: str, r_max: int = 0) -> LoraPlan:
    """Rules 11–13 on the linear modules whose name matches the regex ``candidates``: rank = tail_dims
    (capped at ``r_max`` when > 0), target when tail_dims > 0, dropout of each target (rule 13 at its
    rank) and their mean (PEFT's single dropout)."""
    if r_max < 0:
        raise ValueError(f"r_max must be ≥ 0 (0: no cap), got {r_max}")
    pat = re.compile(candidates)
    rows = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or not pat.fullmatch(name):
            continue
        w = mod.weight.detach()
        tail = tail_dims(w)
        r = min(tail, r_max) if r_max else tail
        rows.append({"module": name, "out": w.shape[0], "in": w.shape[1], "tail_dims": tail, "rank": r,
                     "dropout": geometric_dropout(w, r) if r else 0.0, "target": tail > 0})
    if not rows:
        raise ValueError(f"no linear module matches {candidates!r}")
    table = pd.DataFrame(rows)
    t = table[table.target]
    return LoraPlan(table, float(t.dropout.mean()) if len(t) else 0.0)


def apply_spectral_init(model: nn.Module, seed: int = 0) -> pd.DataFrame:
    """Rule 14 on every PEFT LoRA module of ``model``: A, B from :func:`spectral_init` of its base
    weight (‖BA‖₂ = σ_k). Returns per module σ_k-normalised ‖BA‖₂ (1 by construction)."""
    from peft.tuners.lora import LoraLayer

    from gradience.lora.geometry import delta_singular_values

    rows = []
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer) and "default" in m.lora_A]
    for i, (name, mod) in enumerate(layers):
        base = mod.get_base_layer().weight.detach()
        A, B = spectral_init(base, int(mod.r["default"]), seed=seed * 100_003 + i)
        with torch.no_grad():
            mod.lora_A["default"].weight.copy_(A)
            mod.lora_B["default"].weight.copy_(B)
        rows.append({"module": name, "r": int(mod.r["default"]), "ba_norm": float(delta_singular_values(A, B, 1.0)[0])})
    return pd.DataFrame(rows)


def lora_budget_ratios(model: nn.Module) -> pd.DataFrame:
    """Per PEFT LoRA module: the rule-5/9 budget ratio ‖s·BA‖₂/σ_k(W₀) of the current adapter."""
    from gradience.lora.geometry import lora_adapters

    rows = []
    for ad in lora_adapters(model):
        if ad.base is None:
            continue
        delta = ad.scaling * (ad.B.detach().double() @ ad.A.detach().double())
        rows.append({"module": ad.name, "budget_ratio": budget_ratio(ad.base, delta)})
    return pd.DataFrame(rows, columns=["module", "budget_ratio"])


def spread(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value) of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


@dataclass(frozen=True)
class LoraArm:
    """One LoRA arm: ``rules`` ⊆ :data:`LORA_RULES` replace the conventional r, targets, dropout,
    zero-B initialisation and α/r."""

    rules: tuple[str, ...] = ()
    r: int = 8
    alpha_over_r: float = 2.0
    targets: str = r".*attention\.self\.(query|value)"
    dropout: float = 0.1
    candidates: str = r".*(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|layer\.\d+\.output\.dense)"
    r_max: int = 0


def lora_model(model: nn.Module, arm: LoraArm, seed: int) -> tuple[nn.Module, pd.DataFrame]:
    """Wrap a sequence classifier with the arm's PEFT LoRA adapter; returns it and the chosen values
    (``rule, scope, metric, value``)."""
    from peft import LoraConfig, get_peft_model

    bad = sorted(set(arm.rules) - set(LORA_RULES))
    if bad:
        raise ValueError(f"unknown LoRA rules {bad}; known: {LORA_RULES}")
    plan = lora_plan(model, arm.candidates, arm.r_max)
    targets = plan.targets if "targets" in arm.rules else plan.table.module[
        plan.table.module.str.fullmatch(arm.targets)].tolist()
    if not targets:
        raise ValueError(f"no target module: targets {arm.targets!r} matches none of the candidates")
    ranks = {t: (plan.ranks.get(t, arm.r) if "rank" in arm.rules else arm.r) for t in targets}
    scale = {t: (1.0 if "scale" in arm.rules else arm.alpha_over_r) for t in targets}
    dropout = plan.dropout if "dropout" in arm.rules else arm.dropout
    r0 = next(iter(ranks.values()))
    cfg = LoraConfig(r=r0, lora_alpha=scale[targets[0]] * r0, target_modules=targets, lora_dropout=dropout,
                     bias="none", task_type="SEQ_CLS",
                     rank_pattern={re.escape(t): r for t, r in ranks.items()},
                     alpha_pattern={re.escape(t): scale[t] * ranks[t] for t in targets})
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, cfg)
    if "init" in arm.rules:
        apply_spectral_init(peft_model, seed)
    rows = [{"rule": "rank", "scope": t, "metric": "lora_rank", "value": float(ranks[t])} for t in targets]
    rows += [{"rule": "scale", "scope": t, "metric": "lora_scale", "value": scale[t]} for t in targets]
    rows += [{"rule": "targets", "scope": m, "metric": "tail_dims", "value": float(v)}
             for m, v in zip(plan.table.module, plan.table.tail_dims, strict=True)]
    rows += [{"rule": "dropout", "scope": "model", "metric": "lora_dropout", "value": dropout},
             {"rule": "targets", "scope": "model", "metric": "n_targets", "value": float(len(targets))}]
    return peft_model, pd.DataFrame(rows)


class BudgetMonitor:
    """Rules 5 and 9 for LoRA during training: after every optimizer step, the largest budget ratio
    ‖s·BA‖₂/σ_k(W₀) over the adapters (σ_k of each frozen base weight computed once); ``halt_step``
    is the first update after which it exceeds 0.9 (where the document's monitor halts training).
    Attaches to :func:`gradience.lora.finetune.train` as its ``recorder``."""

    def __init__(self) -> None:
        self.ratios: list[float] = []
        self.halt_step: float = math.nan
        self._handles: list = []
        self._adapters: list = []

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> BudgetMonitor:
        from gradience.lora.geometry import lora_adapters
        from gradience.rosetta.optimizer import BUDGET_THRESHOLD
        from gradience.rosetta.precision import sigma_k, spectrum

        self._adapters = [(ad, sigma_k(spectrum(ad.base))[1]) for ad in lora_adapters(model) if ad.base is not None]
        self.ratios.append(self.current())

        def post(_opt, _args, _kwargs):
            self.ratios.append(self.current())
            if math.isnan(self.halt_step) and self.ratios[-1] > BUDGET_THRESHOLD:
                self.halt_step = float(len(self.ratios) - 1)

        self._handles.append(optimizer.register_step_post_hook(post))
        return self

    def current(self) -> float:
        from gradience.lora.geometry import delta_singular_values

        out = 0.0
        for ad, sk in self._adapters:
            d = float(delta_singular_values(ad.A, ad.B, ad.scaling)[0])
            out = max(out, d / sk if sk > 0 else math.inf)
        return out

    def finish(self, model: nn.Module | None = None) -> None:
        return None

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
