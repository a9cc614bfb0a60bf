"""The flight recorder: Gradience telemetry from any Hugging Face / PyTorch fine-tuning run.

Records, into the tidy table ``run, step, scope, metric, value`` (:mod:`gradience.telemetry.recorder`):

* adapter geometry of every LoRA module (:mod:`gradience.lora.geometry`) at the cadence steps,
  step 0 being the state before the first update;
* gradient norms: ``grad_norm`` per trainable LoRA factor (scope = its parameter name) and over
  all trainable parameters (scope ``model``), of the batch that produces the next update — with
  the ``Trainer`` these are read after its gradient clipping (its own pre-clip norm is in its log);
* evaluations: ``train_ppl``, ``test_ppl`` and ``ppl_ratio`` = test/train perplexity, and the
  seed's monitor rule: ``ppl_ratio > threshold`` (1.5) logs the warning "memorisation" (Python
  ``logging``, logger ``gradience.lora``) and the row ``memorisation`` = 1 (0 when the rule holds).

Two ways in. A plain PyTorch loop attaches to its optimizer (step pre/post hooks, nothing else to
call)::

    rec = FlightRecorder("run0", every=10)
    rec.attach(model, optimizer)          # step 0 recorded now
    for batch in loader:                  # ... loss.backward(); optimizer.step(); ...
        ...
    rec.evaluate(step, train_loss=..., test_loss=...)   # mean token cross-entropies
    rec.write("telemetry.parquet")

and a ``transformers.Trainer`` takes :class:`GradienceCallback` (``callbacks=[GradienceCallback(rec)]``);
its evaluations with ``eval_dataset={"train": ..., "test": ...}`` feed the monitor (otherwise
``eval_loss`` is the test side and the latest logged training ``loss`` the train side).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from gradience.lora.geometry import AdapterGeometry
from gradience.telemetry.recorder import MODEL_SCOPE, Recorder, write_parquet

log = logging.getLogger("gradience.lora")
MEMORISATION_RATIO = 1.5


class FlightRecorder:
    """Collects one run's adapter geometry, gradient norms and monitor warnings (see the module docstring)."""

    def __init__(self, run: str, every: int = 1, adapter_name: str = "default",
                 memorisation_ratio: float = MEMORISATION_RATIO) -> None:
        if every < 1:
            raise ValueError(f"every must be ≥ 1, got {every}")
        self.run, self.every, self.memorisation_ratio = run, every, memorisation_ratio
        self.recorder = Recorder(run)
        self.geometry = AdapterGeometry(adapter_name)
        self.warnings: list[dict] = []
        self.step = 0
        self._handles: list = []
        self._model: nn.Module | None = None

    # -- measurements -------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return step % self.every == 0

    def record_geometry(self, model: nn.Module, step: int) -> None:
        for scope, metrics in self.geometry.measure(model).items():
            self.recorder.log_many(step, scope, metrics)

    @torch.no_grad()
    def record_gradients(self, model: nn.Module, step: int) -> None:
        total = 0.0
        for name, p in model.named_parameters():
            if not p.requires_grad or p.grad is None:
                continue
            sq = float(torch.linalg.vector_norm(p.grad.detach().double())) ** 2
            total += sq
            if "lora_" in name:
                self.recorder.log(step, name.removeprefix("base_model.model."), "grad_norm", math.sqrt(sq))
        self.recorder.log(step, MODEL_SCOPE, "grad_norm", math.sqrt(total))

    def evaluate(self, step: int, train_loss: float, test_loss: float, **extra: float) -> bool:
        """Log perplexities from mean cross-entropies and apply the monitor rule; True if it warned."""
        train_ppl, test_ppl = _exp(train_loss), _exp(test_loss)
        ratio = test_ppl / train_ppl
        warned = bool(ratio > self.memorisation_ratio)
        self.recorder.log_many(step, MODEL_SCOPE, {"train_ppl": train_ppl, "test_ppl": test_ppl,
                                                   "ppl_ratio": ratio, "memorisation": float(warned)} | extra)
        if warned:
            message = (f"Memorisation detected: test/train perplexity {ratio:.2f} > "
                       f"{self.memorisation_ratio} at step {step} (run {self.run})")
            log.warning(message)
            self.warnings.append({"run": self.run, "step": step, "rule": "memorisation", "message": message})
        return warned

    # -- plain PyTorch loop ------------------------------------------------------------------
    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> FlightRecorder:
        """Record through ``optimizer``'s step hooks: gradients before each update at a cadence step,
        geometry after it. Records step 0 now. :meth:`detach` removes the hooks."""
        self._model, self.step = model, 0
        self.record_geometry(model, 0)

        def pre(_opt, _args, _kwargs):
            if self.due(self.step):
                self.record_gradients(model, self.step)

        def post(_opt, _args, _kwargs):
            self.step += 1
            if self.due(self.step):
                self.record_geometry(model, self.step)

        self._handles = [optimizer.register_step_pre_hook(pre), optimizer.register_step_post_hook(post)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def finish(self, model: nn.Module | None = None) -> None:
        """Record the final state's geometry if the cadence skipped it."""
        model = model if model is not None else self._model
        if model is not None and not self.due(self.step):
            self.record_geometry(model, self.step)

    # -- output -------------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        return self.recorder.frame()

    def warnings_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.warnings, columns=["run", "step", "rule", "message"])

    def write(self, path: str | Path) -> Path:
        return write_parquet(self.frame(), path)


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class GradienceCallback(_trainer_callback_base()):
    """``transformers`` callback feeding a :class:`FlightRecorder` (step = ``state.global_step``).

    ``path``: where :meth:`on_train_end` writes the telemetry parquet (optional).
    """

    def __init__(self, recorder: FlightRecorder, path: str | Path | None = None) -> None:
        self.recorder, self.path = recorder, path
        self._last_train_loss: float | None = None
        self._eval: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.recorder.record_geometry(model, state.global_step)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.recorder.due(state.global_step):
            self.recorder.record_gradients(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.recorder.step = state.global_step
        if self.recorder.due(state.global_step):
            self.recorder.record_geometry(model, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._last_train_loss = float(logs["loss"])
            self.recorder.recorder.log(state.global_step, MODEL_SCOPE, "batch_loss", float(logs["loss"]))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # With eval_dataset={"train": ..., "test": ...} the Trainer evaluates each split in its own call.
        metrics = metrics or {}
        self._eval.update({k: float(v) for k, v in metrics.items() if k in ("eval_train_loss", "eval_test_loss")})
        if {"eval_train_loss", "eval_test_loss"} <= self._eval.keys():
            train, test = self._eval.pop("eval_train_loss"), self._eval.pop("eval_test_loss")
        elif "eval_loss" in metrics and self._last_train_loss is not None:
            train, test = self._last_train_loss, float(metrics["eval_loss"])
        else:
            return
        self.recorder.evaluate(state.global_step, train, test)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.recorder.due(state.global_step):
            self.recorder.record_geometry(model, state.global_step)
        if self.path is not None:
            self.recorder.write(self.path)


def _exp(loss: float) -> float:
    """``exp(loss)``, ``inf`` past float range (a diverging run's perplexity, not an OverflowError)."""
    return math.exp(loss) if loss < 709.0 else math.inf
