"""The one training loop: AdamW, full- or mini-batch, telemetry at a cadence, divergence as an outcome.

Measurements at step ``t`` describe the model after ``t`` optimiser updates; gradient quantities at
step ``t`` are those of the batch that produces update ``t + 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gradience.progress import bar as progress_bar
from gradience.tasks import Split
from gradience.telemetry.recorder import MODEL_SCOPE, Cadence, Recorder
from gradience.telemetry.spectral import (
    singular_values,
    spectral_metrics_from_sigma,
    weight_matrices,
)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float
    weight_decay: float = 0.0
    batch_size: int = 0  # 0: full batch
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 0.0  # 0: no clipping
    warmup_steps: int = 0
    seed: int = 0
    eval_max_examples: int = 0  # 0: evaluate on the whole split
    optimizer: str = "adamw"  # "adamw" | "sgd" (SGD: plain or heavy-ball; GD when full batch)
    momentum: float = 0.0  # SGD only


@dataclass
class StepContext:
    """What a probe sees at a cadence step: gradients are populated, the update is not yet applied."""

    step: int
    model: nn.Module
    batch: tuple[torch.Tensor, torch.Tensor]
    loss: float
    lr: float
    split: Split


Probe = Callable[[StepContext], Iterable[tuple[str, str, float]]]


@dataclass
class TrainResult:
    outcome: str  # "completed" | "diverged"
    steps_run: int
    diverged_at: int | None = None
    final: dict[str, float] = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} asked for, but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(device)


def loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy over targets ≠ -100 (works for classification and sequences)."""
    logits = logits.reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    mask = targets != IGNORE_INDEX
    acc = (logits.argmax(-1)[mask] == targets[mask]).float().mean()
    return loss, acc


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[float, float]:
    """Loss and accuracy over a whole split, in chunks."""
    was_training = model.training
    model.eval()
    total_loss = total_correct = total_n = 0.0
    for i in range(0, x.shape[0], chunk):
        logits = model(x[i : i + chunk])
        yt = y[i : i + chunk]
        n = float((yt != IGNORE_INDEX).sum())
        loss, acc = loss_and_accuracy(logits, yt)
        total_loss += float(loss) * n
        total_correct += float(acc) * n
        total_n += n
    model.train(was_training)
    return total_loss / total_n, total_correct / total_n


def global_norm(tensors: Sequence[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach()) for t in tensors])))


def record_weight_spectra(step: int, model: nn.Module, recorder: Recorder, snapshot: bool) -> None:
    """Per-matrix spectral metrics and, at model scope, κ = max over matrices, mean effective rank."""
    kappas, eff_ranks = [], []
    for name, w in weight_matrices(model):
        sigma = singular_values(w)
        metrics = spectral_metrics_from_sigma(sigma, tuple(w.shape))
        recorder.log_many(step, name, metrics)
        if snapshot:
            recorder.log_spectrum(step, name, sigma)
        kappas.append(metrics["kappa"])
        eff_ranks.append(metrics["effective_rank"])
    if kappas:
        recorder.log(step, MODEL_SCOPE, "kappa", max(kappas))
        recorder.log(step, MODEL_SCOPE, "effective_rank", sum(eff_ranks) / len(eff_ranks))


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def _batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Endless stream of index tensors: shuffled epochs, or the whole split when ``batch_size`` is 0."""
    if batch_size <= 0 or batch_size >= n:
        full = torch.arange(n, device=device)
        while True:
            yield full
    while True:
        perm = torch.randperm(n, generator=generator).to(device)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]


def train(
    model: nn.Module,
    split: Split,
    cfg: TrainConfig,
    *,
    recorder: Recorder | None = None,
    cadence: Cadence | None = None,
    probes: Sequence[Probe] = (),
    spectra_every: int = 0,
    device: str = "cpu",
    progress: bool = False,
    stop: Callable[[Recorder | None, int], bool] | None = None,
    lr_schedule: Callable[[int], float] | None = None,
) -> TrainResult:
    """Train ``model`` in place (AdamW, or SGD) and record telemetry at ``cadence`` steps.

    ``spectra_every``: store full singular-value snapshots at every n-th cadence point (0: never).
    ``stop(recorder, step)`` may end the run early (e.g. once a run has clearly converged).
    ``lr_schedule(step)`` multiplies the learning rate of update ``step + 1`` (after warm-up), e.g.
    a learning-rate spike; ``None`` keeps it constant.
    A non-finite loss or gradient ends the run with outcome ``diverged``, recorded as the
    ``diverged`` metric; it never raises.
    """
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    model.to(dev).train()
    split = split.to(dev)
    generator = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(params, cfg)
    batches = _batches(split.x_train.shape[0], cfg.batch_size, generator, dev)
    cadence = cadence or Cadence(every=max(1, cfg.steps // 100), total_steps=cfg.steps)
    cadence_index = 0
    result = TrainResult(outcome="completed", steps_run=cfg.steps)
    bar = progress_bar(total=cfg.steps, enabled=progress, mininterval=10.0, leave=False, desc="train")
    for step in range(cfg.steps + 1):
        measuring = recorder is not None and step in cadence
        if measuring:
            _record_state(step, model, split, recorder, cfg,
                          snapshot=bool(spectra_every) and cadence_index % spectra_every == 0)
            cadence_index += 1
        if step == cfg.steps or (stop is not None and measuring and stop(recorder, step)):
            result.steps_run = step
            break
        lr = _lr_at(step, cfg) * (lr_schedule(step) if lr_schedule is not None else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = next(batches)
        batch = (split.x_train[idx], split.y_train[idx])
        loss, _ = loss_and_accuracy(model(batch[0]), batch[1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        loss_value = float(loss.detach())
        grad_norm = global_norm([p.grad for p in params if p.grad is not None])
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            result = TrainResult(outcome="diverged", steps_run=step, diverged_at=step)
            if recorder is not None:
                recorder.log(step, MODEL_SCOPE, "diverged", 1.0)
            break
        if measuring:
            recorder.log_many(step, MODEL_SCOPE, {"grad_norm": grad_norm, "batch_loss": loss_value, "lr": lr})
            ctx = StepContext(step=step, model=model, batch=batch, loss=loss_value, lr=lr, split=split)
            for probe in probes:
                for scope, metric, value in probe(ctx):
                    recorder.log(step, scope, metric, value)
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        bar.update(1)
    bar.close()
    if result.outcome == "completed":
        train_loss, train_acc = evaluate(model, split.x_train, split.y_train)
        test_loss, test_acc = evaluate(model, split.x_test, split.y_test)
        result.final = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
    return result


def _record_state(step: int, model: nn.Module, split: Split, recorder: Recorder, cfg: TrainConfig, snapshot: bool) -> None:
    n_tr = cfg.eval_max_examples or split.x_train.shape[0]
    n_te = cfg.eval_max_examples or split.x_test.shape[0]
    train_loss, train_acc = evaluate(model, split.x_train[:n_tr], split.y_train[:n_tr])
    test_loss, test_acc = evaluate(model, split.x_test[:n_te], split.y_test[:n_te])
    recorder.log_many(step, MODEL_SCOPE, {
        "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
        "weight_norm": global_norm([p for p in model.parameters() if p.requires_grad]),
    })
    record_weight_spectra(step, model, recorder, snapshot)
