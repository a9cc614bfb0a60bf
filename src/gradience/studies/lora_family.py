"""The LoRA fine-tuning family (synthesis, Part II): what ``lora_gsm8k`` and ``lora_sst2`` share.

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

The analyses answer the seed's questions with numbers and spread over seeds
(:func:`comparison` per pair of configurations; :func:`shared_findings`): does α/r control
generalisation, does the learning rate dominate α/r, is α/r irrelevant at low LR, does stable
rank track concentration and accuracy, does attention-only beat all modules, is r = 8 enough,
does the ppl-ratio monitor separate the worse runs, and the "restraint" principle across the
three levers. A difference between two configurations counts when it exceeds
``report.z`` standard errors (seed spread and binomial test-set error combined); an equality
("irrelevant") when it stays within them — which a small test set grants vacuously, so every
verdict carries the budgets ``report.min_seeds`` seeds per configuration and
``report.min_test_examples`` scored examples.

``lr_scale`` multiplies every configuration's learning rate (1 in the paper profile): the default
profile's runs are a few dozen steps, not the seed's epochs, and the seed's 2e-4 barely moves
them; the 4× ratio between the seed's two learning rates is kept.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from scipy.stats import spearmanr

from gradience.config import Section
from gradience.lora import adapters as ad
from gradience.lora.flight import MEMORISATION_RATIO, FlightRecorder
from gradience.reporting import Budget, judged, mean_spread
from gradience.studies import base
from gradience.telemetry.recorder import MODEL_SCOPE

#: The seed's named configurations (appendix) and one control of its finding 3 (attn_r8 at LR 5e-5
#: with α/r 0.25, quoted in Part II but not in the appendix).
CONFIGS: dict[str, ad.LoraSpec] = ad.SEED_CONFIGS | {"attn_r8_low_alpha_lr5e5": ad.LoraSpec(8, 0.25, 5e-5, "attention")}
ZERO_SHOT = "zero_shot"
#: The r × α/r grid at LR 2e-4, all targets (Part II's 2 × 2 table).
GRID = {(32, 1.0): "baseline", (32, 0.25): "low_alpha", (8, 1.0): "small_r8", (8, 0.25): "low_alpha_r8"}
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


class FamilyRunParams(base.RunParams):
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
        base.unique_names(self.configs + self.first_seed_configs, "configs + first_seed_configs")
        return self

    def spec(self, name: str) -> ad.LoraSpec:
        """The configuration ``name`` with its learning rate × ``lr_scale``."""
        s = CONFIGS[name]
        return ad.LoraSpec(s.r, s.alpha_over_r, s.lr * self.lr_scale, s.targets)


class FamilyReportParams(base.ReportParams):
    z: float = Field(default=2.0, gt=0, description="a difference counts beyond z standard errors")
    min_seeds: int = Field(default=2, ge=1, description="seeds per compared configuration a verdict needs")
    min_test_examples: int = Field(default=200, ge=1, description="scored examples per run a verdict needs")
    memorisation_ratio: float = Field(default=MEMORISATION_RATIO, gt=1, description="the monitor's threshold")


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


def jobs(p: FamilyRunParams, data_dir: str) -> list[base.Job]:
    """The zero-shot reference (first seed), every ``configs`` × seed, every ``first_seed_configs`` once."""
    out = [base.Job(p, ZERO_SHOT, p.seeds[0], data_dir)] if p.zero_shot else []
    out += [base.Job(p, c, s, data_dir, spec=p.spec(c)) for c in p.configs for s in p.seeds]
    return out + [base.Job(p, c, p.seeds[0], data_dir, spec=p.spec(c)) for c in p.first_seed_configs]


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


def run_family(job: base.Job, task: Task) -> base.RunOutput:
    """Train one configuration × seed (or score the zero-shot base) and measure it (module docstring)."""
    from gradience.lora import finetune as ft
    from gradience.training import resolve_device

    p: FamilyRunParams = job.params  # type: ignore[assignment]
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
        if p.steps % p.eval_every:
            evaluate(p.steps)
    scoring = time.process_time()
    acc = task.score(model, tok, test_scored, enc_test)
    scoring = time.process_time() - scoring
    end = p.steps if spec is not None else 0
    for step, loss in enumerate(losses):
        rec.recorder.log(step, MODEL_SCOPE, "batch_loss", loss)
    rec.recorder.log(end, MODEL_SCOPE, "test_acc", acc)
    telemetry = rec.frame()
    last = telemetry[(telemetry.scope == MODEL_SCOPE) & (telemetry.step == end)].set_index("metric")["value"]
    record = {"accuracy": acc, "trainable_params": int(trainable), "total_params": int(total), "steps": end,
              "n_test": len(test_scored), "memorisation_warnings": len(rec.warnings), "scoring_cpu_seconds": scoring}
    record |= {k: float(last.get(k, math.nan)) for k in RUN_COLUMNS[1:]}
    labels = getattr(enc_test, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.ndim == 1:  # a classifier: the majority-class baseline
        record["majority_share"] = float(torch.bincount(labels).max() / len(labels))
    if spec is not None:
        base_spec = CONFIGS[job.condition]
        record |= {"r": spec.r, "alpha_over_r": spec.alpha_over_r, "alpha": spec.alpha, "lr": spec.lr,
                   "seed_lr": base_spec.lr, "targets": spec.targets}
    return base.RunOutput({"telemetry": telemetry}, record)


# ------------------------------------------------------------------------------------ analysis


def model_series(telemetry: pd.DataFrame) -> pd.DataFrame:
    """Model-scope telemetry, one row per (run, step), one column per metric."""
    m = telemetry[telemetry.scope == MODEL_SCOPE]
    return m.pivot_table(index=["run", "step"], columns="metric", values="value").reset_index()


def config_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: seeds, and mean and sd over seeds of accuracy, perplexities, geometry."""
    rows = []
    for name, g in runs.groupby("condition", sort=False):
        row: dict[str, Any] = {"config": name, "seeds": len(g)}
        for k in ("r", "alpha_over_r", "lr", "seed_lr", "targets", "trainable_params"):
            row[k] = g[k].iloc[0] if k in g else None
        for k in RUN_COLUMNS:
            row[k] = float(g[k].mean())
            row[f"{k}_sd"] = float(g[k].std(ddof=1)) if len(g) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Comparison:
    """Accuracy of configuration ``a`` minus ``b`` (mean over seeds), its standard error and budgets."""

    a: str
    b: str
    diff: float
    se: float
    seeds: int  # fewest seeds of the two
    n_test: int  # fewest scored examples per run
    present: bool

    def text(self, runs: pd.DataFrame) -> str:
        if not self.present:
            return f"{self.a} vs {self.b}: not run in this profile"
        acc = {c: mean_spread(runs[runs.condition == c].accuracy * 100, "{:.1f}") for c in (self.a, self.b)}
        return (f"{self.a} {acc[self.a]} % vs {self.b} {acc[self.b]} %: Δ {100 * self.diff:+.1f} ± "
                f"{100 * self.se:.1f} pt")


def accuracy_se(acc: pd.Series, n_test: float) -> float:
    """Standard error of a configuration's mean accuracy: the seed spread's (sd/√k, when k ≥ 2) and the
    test set's binomial error p(1−p)/(n·k), combined in quadrature."""
    k = len(acc)
    p_ = float(acc.mean())
    var = p_ * (1 - p_) / (n_test * k)
    if k > 1:
        var += float(acc.var(ddof=1)) / k
    return math.sqrt(var)


def comparison(runs: pd.DataFrame, a: str, b: str) -> Comparison:
    """Configuration ``a`` against ``b`` on ``runs`` (fine-tuned runs: condition, accuracy, n_test)."""
    if "condition" not in runs:
        return Comparison(a, b, math.nan, math.nan, 0, 0, False)
    ga, gb = runs[runs.condition == a], runs[runs.condition == b]
    if not len(ga) or not len(gb):
        return Comparison(a, b, math.nan, math.nan, 0, 0, False)
    n = int(min(ga.n_test.min(), gb.n_test.min()))
    se = math.hypot(accuracy_se(ga.accuracy, n), accuracy_se(gb.accuracy, n))
    return Comparison(a, b, float(ga.accuracy.mean() - gb.accuracy.mean()), se, min(len(ga), len(gb)), n, True)


def better(c: Comparison, z: float) -> bool | None:
    """``a`` beats ``b`` beyond ``z`` standard errors (None when one was not run)."""
    if not c.present:
        return None
    return bool(c.diff > z * max(c.se, 1e-12))


def same(c: Comparison, z: float) -> bool | None:
    """``a`` and ``b`` agree within ``z`` standard errors (None when one was not run)."""
    if not c.present:
        return None
    return bool(abs(c.diff) <= z * c.se)


@dataclass
class Analysis:
    runs: FamilyRunParams
    telemetry: pd.DataFrame
    summary: pd.DataFrame  # runs.parquet: one row per run (zero-shot included)
    tuned: pd.DataFrame  # the fine-tuned runs only
    configs: pd.DataFrame  # per configuration: mean ± sd over seeds (zero-shot included)
    series: pd.DataFrame  # model-scope telemetry with condition and seed
    modules: pd.DataFrame  # final geometry per adapted module (run, scope, metrics…)


def analyse(tables: base.Tables, p: FamilyReportParams) -> Analysis:
    rp: FamilyRunParams = tables.params  # type: ignore[assignment]
    runs = tables.runs
    series = model_series(tables.telemetry).merge(runs[["run", "condition", "seed"]], on="run")
    tuned = runs[runs.condition != ZERO_SHOT].reset_index(drop=True)
    t = tables.telemetry
    last = t.merge(runs[["run", "steps"]], on="run")
    last = last[(last.step == last.steps) & (last.scope != MODEL_SCOPE) & ~last.metric.isin(["grad_norm"])]
    modules = last.pivot_table(index=["run", "scope"], columns="metric", values="value").reset_index()
    if len(modules):
        modules = modules.merge(runs[["run", "condition", "seed"]], on="run")
        modules["kind"] = modules.scope.str.extract(r"\.([A-Za-z_]+(?:\.dense)?)$")[0]
    return Analysis(rp, t, runs, tuned, config_table(runs), series, modules)


def curves(a: Analysis, p: FamilyReportParams) -> pd.DataFrame:
    """Per configuration (mean over seeds): ppl ratio, stable rank and batch loss against step."""
    return base.step_curves(a.series, "condition", {"ppl_ratio": "mean", "lora_stable_rank": "mean",
                                                    "batch_loss": "mean"})


def grid_frame(configs: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """The r × α/r grid (rows r, columns α/r) of ``value`` (mean over seeds), from the GRID configurations."""
    rows = []
    for (r, ar), name in GRID.items():
        hit = configs[configs.config == name]
        rows.append({"r": r, "alpha_over_r": ar, value: float(hit[value].iloc[0]) if len(hit) else math.nan})
    return pd.DataFrame(rows).pivot(index="r", columns="alpha_over_r", values=value).sort_index(ascending=False)


def cost_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: runs, mean CPU seconds per run and of it the scoring (greedy decoding or
    arg-max), and the stage's total; from ``runs.parquet`` (timing is not a metric: it varies by machine)."""
    cols = [c for c in ("cpu_seconds", "scoring_cpu_seconds") if c in summary]
    t = summary.groupby("condition", sort=False)[cols].agg(["count", "mean"]) if cols else pd.DataFrame()
    if t.empty:
        return t
    out = pd.DataFrame({"runs": t[(cols[0], "count")]} | {f"{c} per run": t[(c, "mean")] for c in cols})
    total = summary[cols].sum()
    out.loc["all runs (sum)"] = [len(summary)] + [float(total[c]) for c in cols]
    return out.round(1)


def monitor_table(tuned: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per run: final ppl ratio, whether the monitor warns, accuracy."""
    t = tuned[["run", "condition", "seed", "ppl_ratio", "accuracy"]].copy()
    t["flagged"] = t.ppl_ratio > threshold
    return t


def stable_rank_association(a: Analysis) -> dict[str, float]:
    """Across configurations (means over seeds): Spearman ρ of final stable rank with accuracy and with ppl ratio."""
    c = a.configs[a.configs.config != ZERO_SHOT].dropna(subset=["lora_stable_rank", "accuracy"])
    if len(c) < 3:
        return {"rho_accuracy": math.nan, "rho_ppl_ratio": math.nan, "configs": float(len(c))}
    return {"rho_accuracy": float(spearmanr(c.lora_stable_rank, c.accuracy).statistic),
            "rho_ppl_ratio": float(spearmanr(c.lora_stable_rank, c.ppl_ratio).statistic), "configs": float(len(c))}


def _sr(a: Analysis, name: str) -> str:
    g = a.tuned[a.tuned.condition == name]
    return f"{name} {mean_spread(g.lora_stable_rank)}" if len(g) else f"{name} —"


def _combine(*values: bool | None) -> bool | None:
    return None if any(v is None for v in values) else all(values)


def reference(a: Analysis) -> tuple[str, float]:
    """What an untrained run scores: the better of the zero-shot accuracy and the majority-class share
    of the scored test examples (a classifier's trivial answer); ("none", nan) when neither was measured."""
    zs = a.summary[a.summary.condition == ZERO_SHOT].accuracy if "condition" in a.summary else pd.Series(dtype=float)
    refs = {"zero-shot": float(zs.mean()) if len(zs) else math.nan}
    if "majority_share" in a.summary and len(a.summary):
        refs["majority class"] = float(a.summary.majority_share.iloc[0])
    refs = {k: v for k, v in refs.items() if np.isfinite(v)}
    return max(refs.items(), key=lambda kv: kv[1]) if refs else ("none", math.nan)


def learned(a: Analysis, name: str, z: float) -> bool:
    """Every run of configuration ``name`` beats the untrained :func:`reference` by more than ``z`` binomial
    standard errors of the difference, √(p(1−p)/n + p₀(1−p₀)/n): each run left the untrained answer
    (the seed spread is for comparing configurations, not for this)."""
    g = a.tuned[a.tuned.condition == name] if "condition" in a.tuned else a.tuned.iloc[0:0]
    _, ref = reference(a)
    if not len(g) or not np.isfinite(ref):
        return False
    se = np.sqrt((g.accuracy * (1 - g.accuracy) + ref * (1 - ref)) / g.n_test)
    return bool(((g.accuracy - ref) > z * se).all())


def learned_budget(a: Analysis, names: Sequence[str], z: float) -> Budget:
    """A comparison of configurations means something only when each of them learned the task: a run
    stuck at the untrained answer cannot show which configuration generalises better."""
    kind, ref = reference(a)
    names = list(dict.fromkeys(names))
    return Budget(f"compared configurations that learned (> {kind} {100 * ref:.1f} % by {z:g} SE)",
                  sum(learned(a, n, z) for n in names), len(names))


def budgets(a: Analysis, *cs: Comparison, rp: FamilyReportParams) -> list[Budget]:
    """Seeds, scored examples and :func:`learned_budget` of the configurations the comparisons ran."""
    present = [c for c in cs if c.present]
    if not present:
        return []
    return [Budget("seeds per configuration (fewest)", min(c.seeds for c in present), rp.min_seeds),
            Budget("scored test examples per run", min(c.n_test for c in present), rp.min_test_examples),
            learned_budget(a, [n for c in present for n in (c.a, c.b)], rp.z)]


def find_alpha(a: Analysis, rp: FamilyReportParams, claim: str) -> dict[str, str]:
    """Lower α/r (0.25 vs 1) improves accuracy at r = 32 and r = 8 (LR 2e-4, all targets)."""
    c32, c8 = comparison(a.tuned, "low_alpha", "baseline"), comparison(a.tuned, "low_alpha_r8", "small_r8")
    holds = _combine(better(c32, rp.z), better(c8, rp.z))
    gap = {n: mean_spread(a.tuned[a.tuned.condition == n].ppl_ratio) for n in ("baseline", "low_alpha")}
    return judged(claim, f"{c32.text(a.tuned)}; {c8.text(a.tuned)}; ppl ratio baseline {gap['baseline']}, "
                  f"low_alpha {gap['low_alpha']}; stable rank {_sr(a, 'baseline')}, {_sr(a, 'low_alpha')}",
                  holds, f"both r: low α/r better by > {rp.z:g} SE", budgets(a, c32, c8, rp=rp))


def find_lr(a: Analysis, rp: FamilyReportParams, claim: str) -> dict[str, str]:
    """Lowering the LR (2e-4 → 5e-5) helps at least as much as lowering α/r (1 → 0.25)."""
    lr, alpha = comparison(a.tuned, "baseline_lr5e5", "baseline"), comparison(a.tuned, "low_alpha", "baseline")
    vs = comparison(a.tuned, "baseline_lr5e5", "low_alpha")
    holds = _combine(better(lr, rp.z), (not better(comparison(a.tuned, "low_alpha", "baseline_lr5e5"), rp.z))
                     if vs.present else None)
    return judged(claim, f"{lr.text(a.tuned)}; {vs.text(a.tuned)}", holds,
                  f"lower LR better than baseline by > {rp.z:g} SE and not worse than low α/r", budgets(a, lr, alpha, vs, rp=rp))


def find_alpha_at_low_lr(a: Analysis, rp: FamilyReportParams, claim: str) -> dict[str, str]:
    """At LR 5e-5, attention r = 8 with α/r 1.0 and 0.25 agree."""
    c = comparison(a.tuned, "attn_r8_lr5e5", "attn_r8_low_alpha_lr5e5")
    return judged(claim, c.text(a.tuned), same(c, rp.z), f"|Δ| within {rp.z:g} SE", budgets(a, c, rp=rp), absence=True)


def find_stable_rank(a: Analysis, rp: FamilyReportParams, claim: str) -> dict[str, str]:
    """Stable rank falls from baseline to low α/r to low LR, and lower stable rank goes with higher accuracy."""
    sr = a.configs.set_index("config").lora_stable_rank
    need = ("baseline", "low_alpha", "baseline_lr5e5")
    assoc = stable_rank_association(a)
    if not all(n in sr for n in need):
        holds = None
    else:
        holds = bool(sr["baseline"] > sr["low_alpha"] > sr["baseline_lr5e5"] and assoc["rho_accuracy"] < 0)
    seeds = int(a.tuned.groupby("condition").size().min()) if len(a.tuned) else 0
    ranked = a.configs[a.configs.config != ZERO_SHOT].config
    needs = [Budget("configurations ranked", assoc["configs"], 4),
             Budget("seeds per configuration (fewest)", seeds, rp.min_seeds), learned_budget(a, ranked, rp.z)]
    return judged(claim, f"stable rank {_sr(a, 'baseline')}, {_sr(a, 'low_alpha')}, {_sr(a, 'baseline_lr5e5')}; "
                  f"Spearman ρ(stable rank, accuracy) over {assoc['configs']:.0f} configurations "
                  f"{assoc['rho_accuracy']:.2f}, ρ(stable rank, ppl ratio) {assoc['rho_ppl_ratio']:.2f}",
                  holds, "order baseline > low α/r > low LR and ρ(stable rank, accuracy) < 0", needs)


def find_attention(a: Analysis, rp: FamilyReportParams, claim: str) -> dict[str, str]:
    """Attention-only (r 32, α/r 0.25) beats all modules (baseline) and MLP-only is the worst of the three."""
    att, mlp = comparison(a.tuned, "attn_only", "baseline"), comparison(a.tuned, "baseline", "mlp_only")
    mlp_worst = (not better(comparison(a.tuned, "mlp_only", "baseline"), rp.z)) if mlp.present else None
    return judged(claim, f"{att.text(a.tuned)}; {mlp.text(a.tuned)}", _combine(better(att, rp.z), mlp_worst),
                  f"attention-only better than all by > {rp.z:g} SE, MLP-only not better than all",
                  budgets(a, att, mlp, rp=rp))


def find_r8(a: Analysis, rp: FamilyReportParams, claim: str) -> dict[str, str]:
    """r = 8 is enough: r 8 not worse than r 32 at either α/r, and r 32's utilization low (seed: 14 %)."""
    c1, c2 = comparison(a.tuned, "small_r8", "baseline"), comparison(a.tuned, "low_alpha_r8", "low_alpha")
    worse = [better(comparison(a.tuned, y, x), rp.z) if c.present else None
             for c, (x, y) in ((c1, ("small_r8", "baseline")), (c2, ("low_alpha_r8", "low_alpha")))]
    holds = None if any(w is None for w in worse) else not any(worse)
    u = a.tuned[a.tuned.r == 32].utilization if "r" in a.tuned else pd.Series(dtype=float)
    return judged(claim, f"{c1.text(a.tuned)}; {c2.text(a.tuned)}; utilization of r 32 adapters "
                  f"{mean_spread(u * 100, '{:.1f}')} %", holds, f"r 8 not worse than r 32 by > {rp.z:g} SE",
                  budgets(a, c1, c2, rp=rp), absence=True)


def find_monitor(a: Analysis, rp: FamilyReportParams, claim: str) -> dict[str, str]:
    """Runs the monitor flags (ppl ratio > threshold) are less accurate than runs it passes."""
    m = monitor_table(a.tuned, rp.memorisation_ratio)
    f, ok = m[m.flagged], m[~m.flagged]
    holds = bool(f.accuracy.mean() < ok.accuracy.mean()) if len(f) and len(ok) else None
    why = ("flagged runs less accurate on average" if holds is not None
           else "the monitor flagged every run or none: nothing to separate")
    return judged(claim, f"{len(f)}/{len(m)} runs flagged (ppl ratio > {rp.memorisation_ratio:g}; ratios "
                  f"{mean_spread(m.ppl_ratio)}); accuracy flagged {mean_spread(f.accuracy * 100, '{:.1f}')} %, "
                  f"passed {mean_spread(ok.accuracy * 100, '{:.1f}')} %", holds, why,
                  [Budget("runs flagged", len(f), 1), Budget("runs passed", len(ok), 1)])


def find_restraint(a: Analysis, rp: FamilyReportParams, claim: str) -> dict[str, str]:
    """Each restraint lever (lower LR, lower α/r, attention-only) is not worse than the baseline, and at
    least one is better beyond z SE."""
    levers = {"lower LR": "baseline_lr5e5", "lower α/r": "low_alpha", "attention-only": "attn_only"}
    cs = {k: comparison(a.tuned, v, "baseline") for k, v in levers.items()}
    if not all(c.present for c in cs.values()):
        holds = None
    else:
        worse = any(better(comparison(a.tuned, "baseline", v), rp.z) for v in levers.values())
        holds = bool(not worse and any(better(c, rp.z) for c in cs.values()))
    said = "; ".join(f"{k}: Δ {100 * c.diff:+.1f} ± {100 * c.se:.1f} pt" if c.present else f"{k}: not run"
                     for k, c in cs.items())
    return judged(claim, f"vs baseline — {said}", holds, f"no lever worse, ≥ 1 better by > {rp.z:g} SE",
                  budgets(a, *cs.values(), rp=rp))


SHARED = {"alpha": find_alpha, "lr": find_lr, "alpha_at_low_lr": find_alpha_at_low_lr,
          "stable_rank": find_stable_rank, "attention": find_attention, "r8": find_r8, "monitor": find_monitor,
          "restraint": find_restraint}


def shared_findings(a: Analysis, rp: FamilyReportParams, claims: dict[str, str]) -> list[dict[str, str]]:
    """Rows of the shared analyses, in ``claims``'s order (key of :data:`SHARED` → the study's claim id)."""
    return [SHARED[key](a, rp, cid) for key, cid in claims.items()]


def family_metrics(a: Analysis, p: FamilyReportParams) -> dict:
    """Per configuration: mean accuracy, sd, ppl ratio, stable rank, utilization, dominance; the zero-shot
    accuracy; the monitor; the stable-rank association."""
    per = {}
    for row in a.configs.itertuples():
        per[row.config] = {k: getattr(row, k) for k in ("seeds", *RUN_COLUMNS, "accuracy_sd")}
    m = monitor_table(a.tuned, p.memorisation_ratio)
    zs = a.summary[a.summary.condition == ZERO_SHOT].accuracy
    maj = a.summary.majority_share.iloc[0] if "majority_share" in a.summary and len(a.summary) else None
    kind, ref = reference(a)
    return {"configs": per, "zero_shot_accuracy": float(zs.mean()) if len(zs) else None, "majority_share": maj,
            "reference": {"kind": kind, "accuracy": ref},
            "learned": {c: learned(a, c, p.z) for c in a.configs.config if c != ZERO_SHOT},
            "tuned_accuracy_max": float(a.configs[a.configs.config != ZERO_SHOT].accuracy.max()),
            "monitor": {"flagged_runs": int(m.flagged.sum()), "runs": len(m)},
            "stable_rank_association": stable_rank_association(a)}


def majority_share(tables: base.Tables) -> float:
    """Share of the most common label among the scored test examples (classifiers; nan otherwise)."""
    runs = tables.runs
    return float(runs.majority_share.iloc[0]) if "majority_share" in runs else math.nan


def mistral_param_counts(configs: Sequence[str] | None = None) -> pd.DataFrame:
    """PEFT's trainable parameters of each configuration on Mistral-7B (meta device) beside the seed's
    "Params" column (millions)."""
    rows, cache = [], {}
    for name in configs or list(ad.SEED_CONFIGS):
        spec = CONFIGS[name]
        key = (spec.r, spec.targets)
        if key not in cache:
            cache[key] = ad.trainable_parameters(spec)[0]
        rows.append({"config": name, "r": spec.r, "targets": spec.targets, "peft_params": cache[key],
                     "peft_params_M": round(cache[key] / 1e6, 1), "seed_params_M": ad.SEED_PARAMS_M.get(name)})
    return pd.DataFrame(rows)
