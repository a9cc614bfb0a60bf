"""The LoRA family's analyses: per-configuration tables, comparisons with their standard errors.

The analyses answer the seed's questions with numbers and spread over seeds (:func:`comparison` per
pair of configurations; the verdicts are in ``lora_family.findings``): does α/r control
generalisation, does the learning rate dominate α/r, is α/r irrelevant at low LR, does stable rank
track concentration and accuracy, does attention-only beat all modules, is r = 8 enough, does the
ppl-ratio monitor separate the worse runs, and the "restraint" principle across the three levers.
A difference between two configurations counts when it exceeds ``report.z`` standard errors (seed
spread and binomial test-set error combined); an equality ("irrelevant") when it stays within them —
which a small test set grants vacuously, so every verdict carries the budgets ``report.min_seeds``
seeds per configuration and ``report.min_test_examples`` scored examples, and the configurations
compared must have :func:`learned` (left the untrained :func:`reference`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from scipy.stats import spearmanr

from gradience.lora import adapters as ad
from gradience.lora.flight import MEMORISATION_RATIO
from gradience.reporting import mean_spread
from gradience.studies.lora_family.runs import CONFIGS, RUN_COLUMNS, ZERO_SHOT, FamilyRunParams, R
from gradience.studies.notebook import step_curves
from gradience.studies.protocol import ReportParams, Tables
from gradience.telemetry.recorder import MODEL_SCOPE

#: The r × α/r grid at LR 2e-4, all targets (Part II's 2 × 2 table).
GRID = {(32, 1.0): "baseline", (32, 0.25): "low_alpha", (8, 1.0): "small_r8", (8, 0.25): "low_alpha_r8"}


class FamilyReportParams(ReportParams):
    z: float = Field(default=2.0, gt=0, description="a difference counts beyond z standard errors")
    min_seeds: int = Field(default=2, ge=1, description="seeds per compared configuration a verdict needs")
    min_test_examples: int = Field(default=200, ge=1, description="scored examples per run a verdict needs")
    memorisation_ratio: float = Field(default=MEMORISATION_RATIO, gt=1, description="the monitor's threshold")


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


def analyse(tables: Tables[R], p: FamilyReportParams) -> Analysis:
    """Per-configuration tables, the model-scope series and the final geometry per adapted module."""
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
    return Analysis(tables.params, t, runs, tuned, config_table(runs), series, modules)


def curves(a: Analysis, p: FamilyReportParams) -> pd.DataFrame:
    """Per configuration (mean over seeds): ppl ratio, stable rank and batch loss against step."""
    return step_curves(a.series, "condition", {"ppl_ratio": "mean", "lora_stable_rank": "mean",
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


def metrics(a: Analysis, p: FamilyReportParams) -> dict:
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


def majority_share(tables: Tables) -> float:
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
            with warnings.catch_warnings():
                # get_peft_model reads the base model's deprecated `is_gradient_checkpointing`, whose
                # transformers property warns (FutureWarning "... Use `is_activation_checkpointing`"):
                # harmless here (a meta-device count, checkpointing off), and the warning put a
                # machine path into the executed notebooks.
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                        category=FutureWarning)
                cache[key] = ad.trainable_parameters(spec)[0]
        rows.append({"config": name, "r": spec.r, "targets": spec.targets, "peft_params": cache[key],
                     "peft_params_M": round(cache[key] / 1e6, 1), "seed_params_M": ad.SEED_PARAMS_M.get(name)})
    return pd.DataFrame(rows)
