"""Grokking on modular arithmetic (synthesis Parts I and V): the runs.

Conditions (op, weight decay, run length, seeds, random labels) × seeds of a small MLP or
transformer on ``a ∘ b mod p``; each run records its telemetry and singular-value snapshots.

Free choices (the seed does not fix them), with the measurement behind each:

- lr 1e-2 with AdamW (β 0.9, 0.98), no warm-up: multiplication and addition at wd 0.1 grok near
  clock 4–6 at lr 1e-2 as at lr 3e-3.
- mini-batch 256: per run and step on one thread, 2.0 ms vs 3.7 ms (batch 512) and 19.6 ms (full
  batch); stacking 15 runs into one ``torch.func.vmap`` model measured 0.72× the batch-512 step
  (1.4× faster) but needs a second, stacked training loop (per-run weight decay, divergence,
  telemetry); it is not used (``benchmarks/grokking_cost.py``, ``benchmarks/results/grokking_cost.json``).
- telemetry: one cadence point (evaluation on both splits + three SVDs) costs ≈ 20 ms ≈ 10 steps;
  each condition sets its own cadence (``cadence_every``) so long runs stay cheap.
- width (embed 64, hidden 160), train fraction 0.4, p = 97.
- the outcome condition (the report's ``outcome_condition``, where only the outcome varies): addition
  wd 1, 24 seeds (0–23) run to clock 2C = 14.4 (1,440 steps), cadence every 36 steps (C on the
  grid), 4–5 CPU s per run. Chosen by a pilot on seeds 100–107 (not scored; cadence 20): grok steps
  660, 680, 680, 720, 720, 735, 740, 820 (clock 6.6–8.2, median 7.2; 6.4 CPU s per 1,600-step
  run), so C = 7.2 (720 steps) splits the seeds about in half. Training is deterministic per seed
  and the lr constant, so one run to 2C contains the run to C: the outcome is "grokked by C", and
  the rest of the run confirms each non-grokker (a late grokker, or not grokked by 2C). Cheaper
  than wd 0.03 (outcome mixed near 12.5k steps, clock 3.75) or wd 0.1 (4/4 grok near 4.2k steps)
  at 24 seeds × 2C.
- the seed's conditions at two seeds each on their long clocks: addition wd 0.01 to clock 10
  (100k steps, cadence 1,000 plus 80 log-spaced points for the early probe), addition wd 0.1 to
  clock 30 (30k steps, cadence 250: κ after its grok near 4k), multiplication wd 0.1 for 8k steps
  (it groks near 5–5.7k and sets the relative clock); addition wd 0 for 6.5k steps (past the
  slowest wd-0.1 grok, 5.7k) on three seeds; random labels at wd 1 for 1.5k steps (clock 15) on
  two. Measured 2.0–2.3 ms per step on one core at batch 256 (333k steps in all: ≈ 720 CPU s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from gradience.config import Section
from gradience.models.mlp import TokenPairMLP
from gradience.models.transformer import LastTokenClassifier, tiny_llama
from gradience.studies.protocol import Job, RunOutput, unique_names
from gradience.studies.protocol import RunParams as BaseRunParams
from gradience.tasks.modular import MODULI, modular_split
from gradience.telemetry.recorder import Cadence, Recorder
from gradience.telemetry.signals import decay_clock
from gradience.training import TrainConfig, train


class Condition(Section):
    name: str
    op: Literal["add", "sub", "mul", "div"]
    weight_decay: float = Field(ge=0)
    role: Literal["seed", "control"] = "control"
    steps: int = Field(default=0, ge=0, description="this condition's run length; 0: the study's steps")
    shuffle_labels: bool = Field(default=False, description="random labels: memorisable, never generalisable")

    def run_steps(self, default: int) -> int:
        return self.steps or default


class GrokCondition(Condition):
    """A condition of this study: it may name its own seeds and cadence (long runs measure sparsely)."""

    seeds: list[int] = Field(default_factory=list, description="this condition's seeds; empty: the study's")
    cadence_every: int = Field(default=0, ge=0, description="steps between measurements; 0: the study's")
    cadence_log_points: int = Field(default=-1, ge=-1, description="log-spaced extra points; -1: the study's")


class ModelParams(Section):
    kind: Literal["mlp", "transformer"] = "mlp"
    d_embed: int = Field(default=64, ge=1)
    d_hidden: int = Field(default=160, ge=1, description="MLP hidden width, or transformer MLP width")
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=4, ge=1)


class ModularRunParams(BaseRunParams):
    """The runs keys of every modular-arithmetic study (this one and grokking_transition)."""

    modulus: int = 97
    train_fraction: float = Field(gt=0, lt=1)
    steps: int = Field(gt=0)
    lr: float = Field(gt=0)
    batch_size: int = Field(default=0, ge=0, description="0: full batch")
    betas: tuple[float, float] = (0.9, 0.98)
    model: ModelParams = ModelParams()
    conditions: list[Condition] = Field(min_length=1)
    cadence_every: int = Field(gt=0, description="steps between measurements")

    @field_validator("modulus")
    @classmethod
    def _shipped_modulus(cls, v: int) -> int:
        if v not in MODULI:
            raise ValueError(f"must be one of the moduli shipped in data/modular: {MODULI}")
        return v

    @field_validator("conditions")
    @classmethod
    def _unique_names(cls, v: list[Condition]) -> list[Condition]:
        unique_names([c.name for c in v], "condition names")
        return v


class RunParams(ModularRunParams):
    conditions: list[GrokCondition] = Field(min_length=1)
    cadence_log_points: int = Field(default=0, ge=0)
    spectra_every: int = Field(default=0, ge=0)

    def condition_seeds(self, c: Condition) -> list[int]:
        return list(getattr(c, "seeds", None) or self.seeds)


DATA = ("modular",)
TABLES = ("telemetry", "spectra")


def jobs(p: RunParams, data_dir: str) -> list[Job[RunParams]]:
    return [Job(p, c.name, s, data_dir, spec=c) for c in p.conditions for s in p.condition_seeds(c)]


def build_model(p: RunParams):
    m = p.model
    if m.kind == "mlp":
        return TokenPairMLP(p.modulus, p.modulus, m.d_embed, m.d_hidden)
    lm = tiny_llama(p.modulus + 1, m.d_embed, m.n_layers, m.n_heads, m.d_hidden, max_len=3)
    return LastTokenClassifier(lm, p.modulus)


def run_one(job: Job[RunParams]) -> RunOutput:
    """Train one (condition, seed): its telemetry, singular-value snapshots and run record."""
    import torch

    p, c = job.params, job.spec
    split = modular_split(Path(job.data_dir), p.modulus, c.op, p.train_fraction, job.seed,
                          equals_token=p.model.kind == "transformer", shuffle_labels=c.shuffle_labels)
    torch.manual_seed(job.seed)
    model = build_model(p)
    steps = c.run_steps(p.steps)
    cfg = TrainConfig(steps=steps, lr=p.lr, weight_decay=c.weight_decay, batch_size=p.batch_size,
                      betas=p.betas, seed=job.seed)
    recorder = Recorder(job.run_id)
    every = getattr(c, "cadence_every", 0) or p.cadence_every
    log_points = getattr(c, "cadence_log_points", -1)
    cadence = Cadence(every, steps, p.cadence_log_points if log_points < 0 else log_points)
    result = train(model, split, cfg, recorder=recorder, cadence=cadence, spectra_every=p.spectra_every,
                   device=p.device)
    record = {
        "role": c.role, "op": c.op, "weight_decay": c.weight_decay,
        "task": f"modular_{c.op}_{p.modulus}", "model": p.model.model_dump_json(),
        "optimizer": "AdamW", "lr": p.lr, "betas": str(p.betas), "batch_size": p.batch_size,
        "train_fraction": p.train_fraction, "steps": steps, "shuffle_labels": c.shuffle_labels,
        "clock": decay_clock(p.lr, c.weight_decay, steps), "cadence_every": every, "outcome": result.outcome,
        "diverged_at": result.diverged_at,
    }
    return RunOutput({"telemetry": recorder.frame(), "spectra": recorder.spectra_frame()}, record)

