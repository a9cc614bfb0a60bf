"""Protocol B of seed 001 (is grokking preceded by critical slowing down?): the runs.

- Runs: mini-batch AdamW (``batch_size`` ≥ 1 is required: full-batch dynamics have almost no
  fluctuations to slow down), the grokking study's model (:func:`gradience.studies.grokking.runs.build_model`).
  Telemetry every ``cadence_every`` steps (evenly spaced): train/test loss and accuracy on the first
  ``eval_examples`` examples of each split, the spectral metrics of every weight matrix, the
  mini-batch gradient norm and loss, and the probes of :mod:`gradience.telemetry.gradients`
  (per-matrix gradient norm, cosine with the gradient one cadence interval earlier, tr Σ of
  per-example gradients and B_simple on a fixed subsample). A run stops ``stop.hold_steps`` after
  its test accuracy stays ≥ ``stop.threshold`` (so grokking runs cost only what they need); a
  condition may cap its own steps (``steps``).
- Conditions: *tested* ones (expected to grok) and *reference* ones (``reference: true``, weight
  decay 0: the non-grokking controls). A condition may have its own ``seeds`` and ``stop``.
- Ensemble conditions (``ensemble: true``): many seeds of one fast-grokking condition and as many
  seeds of its reference (same op, same seeds: same data split and initialisation), with the same
  telemetry. The ensemble indicators (:mod:`.ensemble`) read them across seeds, aligned on each
  seed's transition, the reference run of the same seed at the same steps. A tested ensemble run
  only needs to reach its transition, so it may stop early (its own ``stop``); a reference run
  needs the steps of its pair's transition (its own ``steps``). The per-run analyses read the
  runs of ``runs.seeds`` of every condition.

Free choices the seed does not fix, and what the default profile's values rest on: lr, batch
size, train fraction, model (the grokking study's MLP: addition groks in ~1–2k steps at wd 0.3,
~4–6k at wd 0.1); the cadence (20 steps: ≥ 36 points between memorisation (~180 steps) and the
transition (~1.3k steps at wd 0.3) in a pilot); the evaluation subset and tr Σ subsample (128
examples, the per-step cost); the stop rules (a per-run condition stops 300 steps after grokking;
the ensemble's tested runs stop one cadence interval after they grok: in a pilot t* ≈ 1.1–1.5k
steps, ~5.7 ms per step, ~10.6 CPU-s per run to the grok); the ensemble size (36 seeds, so that ≥ 24 pairs
cover the aligned window) and its reference's length (2000 steps, past every pilot onset; ~10
CPU-s per run).
All are in the params.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from gradience.config import Section
from gradience.studies.grokking.runs import Condition, ModularRunParams, build_model
from gradience.studies.protocol import Job, RunOutput
from gradience.tasks.modular import modular_split
from gradience.telemetry.recorder import Cadence, Recorder
from gradience.telemetry.signals import decay_clock
from gradience.training import TrainConfig, evaluate, train


class GradientParams(Section):
    noise_examples: int = Field(default=256, ge=2, description="training examples for tr Σ and B_simple")
    chunk: int = Field(default=256, ge=1, description="per-example gradients computed at once")


class StopParams(Section):
    threshold: float = Field(default=0.95, gt=0, le=1)
    hold_steps: int = Field(default=300, ge=0, description="stop once test accuracy stayed ≥ threshold this long "
                                                            "(0: never stop early)")


class TransitionCondition(Condition):
    reference: bool = Field(default=False, description="a non-grokking reference (control) for every tested condition")
    steps: int | None = Field(default=None, gt=0, description="this condition's step cap (default: runs.steps)")
    seeds: list[int] | None = Field(default=None, min_length=1, description="this condition's seeds (default: runs.seeds)")
    ensemble: bool = Field(default=False, description="read by the ensemble indicators (aligned across seeds), "
                                                      "not by the per-run analyses")
    stop: StopParams | None = Field(default=None, description="this condition's stop rule (default: runs.stop)")


class RunParams(ModularRunParams):
    conditions: list[TransitionCondition] = Field(min_length=1)
    gradients: GradientParams = GradientParams()
    eval_examples: int = Field(default=0, ge=0, description="examples of each split evaluated per point (0: all)")
    stop: StopParams = StopParams()

    @field_validator("batch_size")
    @classmethod
    def _mini_batch(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be ≥ 1: critical slowing down needs fluctuations, and full-batch (0) training "
                             "has almost none")
        return v

    @field_validator("conditions")
    @classmethod
    def _tested_and_reference(cls, v: list[TransitionCondition]) -> list[TransitionCondition]:
        if not any(c.reference for c in v) or all(c.reference for c in v):
            raise ValueError("need at least one tested condition and one reference condition (reference: true)")
        for c in v:
            if c.ensemble and not any(r.ensemble and r.reference != c.reference and r.op == c.op for r in v):
                raise ValueError(f"ensemble condition {c.name!r} needs an ensemble "
                                 f"{'tested' if c.reference else 'reference'} condition of op {c.op!r}")
        return v


DATA = ("modular",)
TABLES = ("telemetry",)


def jobs(p: RunParams, data_dir: str) -> list[Job[RunParams]]:
    return [Job(p, c.name, s, data_dir, spec=c) for c in p.conditions for s in (c.seeds or p.seeds)]


class GrokStop:
    """``train``'s ``stop``: true once test accuracy (on the first ``eval_examples`` test examples)
    has stayed ≥ ``threshold`` for ``hold_steps`` steps at the measured steps."""

    def __init__(self, model, x_test, y_test, sp: StopParams) -> None:
        self.model, self.x, self.y, self.sp = model, x_test, y_test, sp
        self.since: int | None = None

    def __call__(self, recorder, step: int) -> bool:
        if self.sp.hold_steps == 0:
            return False
        dev = next(self.model.parameters()).device
        _, acc = evaluate(self.model, self.x.to(dev), self.y.to(dev))
        if acc < self.sp.threshold:
            self.since = None
            return False
        self.since = step if self.since is None else self.since
        return step - self.since >= self.sp.hold_steps


def run_one(job: Job[RunParams]) -> RunOutput:
    """Train one (condition, seed), mini-batch, with dense telemetry and the gradient probes; a
    grokking run stops ``stop.hold_steps`` after it groks."""
    import torch

    from gradience.telemetry.gradients import GradientProbe, NoiseScaleProbe

    p, c = job.params, job.spec
    split = modular_split(Path(job.data_dir), p.modulus, c.op, p.train_fraction, job.seed,
                          equals_token=p.model.kind == "transformer")
    torch.manual_seed(job.seed)
    model = build_model(p)
    steps = c.steps or p.steps
    cfg = TrainConfig(steps=steps, lr=p.lr, weight_decay=c.weight_decay, batch_size=p.batch_size,
                      betas=p.betas, seed=job.seed, eval_max_examples=p.eval_examples)
    recorder = Recorder(job.run_id)
    probes = [GradientProbe(), NoiseScaleProbe(p.gradients.noise_examples, job.seed, p.gradients.chunk)]
    n_eval = p.eval_examples or split.x_test.shape[0]
    stop = GrokStop(model, split.x_test[:n_eval], split.y_test[:n_eval], c.stop or p.stop)
    result = train(model, split, cfg, recorder=recorder, cadence=Cadence(p.cadence_every, steps),
                   probes=probes, device=p.device, stop=stop)
    record = {
        "role": c.role, "reference": c.reference, "ensemble": c.ensemble, "op": c.op, "weight_decay": c.weight_decay,
        "task": f"modular_{c.op}_{p.modulus}", "model": p.model.model_dump_json(), "optimizer": "AdamW",
        "lr": p.lr, "betas": str(p.betas), "batch_size": p.batch_size, "train_fraction": p.train_fraction,
        "steps": steps, "steps_run": result.steps_run, "clock": decay_clock(p.lr, c.weight_decay, result.steps_run),
        "cadence_every": p.cadence_every, "noise_examples": p.gradients.noise_examples,
        "eval_examples": p.eval_examples, "outcome": result.outcome, "diverged_at": result.diverged_at,
    }
    return RunOutput({"telemetry": recorder.frame()}, record)
