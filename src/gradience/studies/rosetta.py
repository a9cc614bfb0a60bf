"""Protocol ``rosetta``: do the Rosetta Stone's geometric hyperparameters replace tuned ones?

The same tasks are trained with (a) conventional tuned hyperparameters and (b) arms in which one
group of the document's rules replaces its conventional counterpart (:mod:`gradience.rosetta.protocol`):

- ``modular``: modular addition grokking, :class:`~gradience.models.mlp.TokenPairMLP`; conventional =
  AdamW at the repository's tuned grokking values (lr 0.01, β (0.9, 0.98), wd 1, batch 256) plus
  the conventional 10 % warm-up and clip 1.0, ε 1e-8.
- ``digits``: :class:`~gradience.models.cnn.DigitsCNN` without batch norm (the MASS Hessian is
  measured by ``torch.func``), the rank-survey's tuned values (lr 0.003, wd 0.01, batch 128).
- ``reviews``: LoRA on all-MiniLM-L6-v2, fine-food reviews (SST-2 schema); conventional = r 8,
  α/r 2, query + value, dropout 0.1, zero-B init, AdamW lr 5e-4; geometric = rules 10–14.

Arms of the small tasks (``arms``): ``mass`` (rules 1, 3, 6, 7), ``adam_epsilon`` (2), ``decay`` (4),
``no_clip``/``no_warmup`` (5, 6). Each run also yields the rule-8 critical batch size (conventional
arm, at initialisation and at the end) and the step where the rule-9 stopping rule fires on the
full training loss at the evaluation cadence. The LoRA runs yield rule 10's excess factor s/bound of
every trained adapter (the document's checkable claim: common scales are 22–2700× over the bound)
and the budget ratio ‖ΔW‖₂/σ_k at the end.

A rule "holds" on a task when its arm's final test accuracy (mean over seeds) is at least the
conventional arm's minus ``report.acc_tolerance``; budgets: ``min_seeds`` seeds per arm and a
conventional arm that learns the task (test accuracy ≥ ``report.learned_acc[task]``). Rules 3
(Cayley–Stiefel, NB-LoRA only) and 15 (residual scaling; the models here have no residual stream
except MiniLM, whose post-LN blocks the library's Llama hooks do not cover) are not trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from gradience.config import Section
from gradience.reporting import Budget, judged, mean_spread
from gradience.rosetta.protocol import LORA_RULES, OPTIMIZER_RULES
from gradience.studies import base

TASKS = ("modular", "digits", "reviews")
CLAIMS = {"mass": "rosetta.lr_mass", "adam_epsilon": "rosetta.adam_epsilon", "decay": "rosetta.weight_decay",
          "no_clip": "rosetta.no_clipping", "no_warmup": "rosetta.no_warmup", "lora": "rosetta.lora_geometric"}
SCALE_CLAIM = "rosetta.lora_scale_excess"
STOP_CLAIM = "rosetta.early_stopping"
BATCH_CLAIM = "rosetta.critical_batch"
CONVENTIONAL = "conventional"


class Arm(Section):
    name: str
    rules: list[str] = Field(default_factory=list, description="geometric rules replacing conventional ones")


class SmallTask(Section):
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    steps: int = Field(gt=0)
    batch_size: int = Field(ge=0, description="0: full batch")
    betas: tuple[float, float] = (0.9, 0.98)
    train_fraction: float = Field(gt=0, lt=1)
    eval_every: int = Field(gt=0)


class ModularTask(SmallTask):
    modulus: int = 97
    op: Literal["add", "sub", "mul", "div"] = "add"
    d_embed: int = Field(default=64, ge=1)
    d_hidden: int = Field(default=160, ge=1)


class DigitsTask(SmallTask):
    channels: list[int] = Field(default_factory=lambda: [8, 16], min_length=1)
    d_hidden: int = Field(default=32, ge=1)


class ReviewsTask(Section):
    n_train: int = Field(ge=16, description="first n training reviews")
    n_test: int = Field(ge=16, description="first n test reviews")
    max_length: int = Field(ge=8, le=512)
    steps: int = Field(gt=0)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    r: int = Field(default=8, ge=1)
    alpha_over_r: float = Field(default=2.0, gt=0)
    targets: str = r".*attention\.self\.(query|value)"
    dropout: float = Field(default=0.1, ge=0, lt=1)
    r_max: int = Field(default=32, ge=0, description="cap on the rule-11 rank (0: none)")


class RunParams(base.RunParams):
    tasks: list[Literal["modular", "digits", "reviews"]] = Field(min_length=1)
    modular: ModularTask
    digits: DigitsTask
    reviews: ReviewsTask
    arms: list[Arm] = Field(min_length=1, description="arms of modular and digits; the first is conventional")
    lora_arms: list[Arm] = Field(min_length=1, description="arms of reviews; the first is conventional")
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, ge=0)
    adam_eps: float = Field(default=1e-8, gt=0)
    mass_every: int = Field(default=50, ge=1, description="updates between MASS step-size measurements")
    measure_batch: int = Field(default=256, ge=1, description="examples of the MASS / B_crit measurement batch")
    lanczos_tol: float = Field(default=1e-3, gt=0, lt=1)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[str]) -> list[str]:
        base.unique_names(v, "tasks")
        return v

    @model_validator(mode="after")
    def _arms(self) -> RunParams:
        for arms, known in ((self.arms, OPTIMIZER_RULES), (self.lora_arms, LORA_RULES)):
            base.unique_names([a.name for a in arms], "arm names")
            if arms[0].name != CONVENTIONAL or arms[0].rules:
                raise ValueError(f"the first arm must be {CONVENTIONAL!r} with no rules, got {arms[0]}")
            for a in arms:
                bad = sorted(set(a.rules) - set(known))
                if bad:
                    raise ValueError(f"arm {a.name!r}: unknown rules {bad}; known: {known}")
        return self


class ReportParams(base.ReportParams):
    acc_tolerance: float = Field(default=0.02, ge=0, lt=1, description="a rule holds within this accuracy")
    min_seeds: int = Field(default=3, ge=1)
    learned_acc: dict[str, float] = Field(default_factory=lambda: {"modular": 0.9, "digits": 0.9, "reviews": 0.6},
                                          description="test accuracy a conventional arm must reach to count as "
                                          "having learned its task; for a classifier also at least the majority-"
                                          "class share + 2 binomial SE (:func:`learned_needed`)")
    scale_range: tuple[float, float] = (22.0, 2700.0)
    lora_steps_needed: int = Field(default=30, ge=1, description=(
        "LoRA updates the scale-excess claim needs (‖BA‖₂ grows with training; a free choice)"))


DATA = ("modular", "digits", "reviews")
TABLES = ("history", "rules", "lora")


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    out = []
    for task in p.tasks:
        for arm in (p.lora_arms if task == "reviews" else p.arms):
            out += [base.Job(p, f"{task}.{arm.name}", s, data_dir, spec=(task, arm)) for s in p.seeds]
    return out


def _small(job: base.Job, task: str, arm: Arm) -> base.RunOutput:
    import torch

    from gradience.models.cnn import DigitsCNN
    from gradience.models.mlp import TokenPairMLP
    from gradience.rosetta.optimizer import critical_batch_size
    from gradience.rosetta.protocol import Conventional, stop_step, train_arm
    from gradience.tasks.digits import digits_split
    from gradience.tasks.modular import modular_split
    from gradience.training import resolve_device

    p: RunParams = job.params  # type: ignore[assignment]
    t = p.modular if task == "modular" else p.digits
    torch.manual_seed(job.seed)
    if task == "modular":
        split = modular_split(Path(job.data_dir), t.modulus, t.op, t.train_fraction, job.seed)
        model = TokenPairMLP(t.modulus, t.modulus, t.d_embed, t.d_hidden)
    else:
        split = digits_split(Path(job.data_dir), t.train_fraction, job.seed)
        model = DigitsCNN(tuple(t.channels), t.d_hidden, norm="none")
    conv = Conventional(lr=t.lr, weight_decay=t.weight_decay, steps=t.steps, batch_size=t.batch_size, betas=t.betas,
                        eps=p.adam_eps, grad_clip=p.grad_clip, warmup_fraction=p.warmup_fraction)
    dev = resolve_device(p.device)
    model.to(dev)
    n = min(p.measure_batch, split.x_train.shape[0])
    xs, ys = split.x_train[:n].to(dev), split.y_train[:n].to(dev)
    bcrit0 = critical_batch_size(model=model, x=xs, y=ys) if not arm.rules else math.nan
    res = train_arm(model, split, conv, arm.rules, job.seed, t.eval_every, p.mass_every, p.measure_batch, p.lanczos_tol,
                    p.device)
    bcrit1 = critical_batch_size(model=model, x=xs, y=ys) if not arm.rules and res.outcome == "completed" else math.nan
    stop, why = stop_step(res.history)
    at_stop = res.history[res.history.step == stop]
    hist = res.history.melt(id_vars="step", var_name="metric", value_name="value").assign(run=job.run_id, scope="model")
    record = {"task": task, "arm": arm.name, "rules": ",".join(arm.rules), "outcome": res.outcome,
              "lr": t.lr, "weight_decay": t.weight_decay, "batch_size": t.batch_size, "steps": t.steps,
              **{f"final_{k}": v for k, v in res.final.items()},
              "stop_step": stop, "stop_reason": why,
              "stop_test_acc": float(at_stop.test_acc.iloc[0]) if len(at_stop) else math.nan,
              "b_crit_init": bcrit0, "b_crit_final": bcrit1}
    return base.RunOutput({"history": hist[["run", "step", "scope", "metric", "value"]],
                           "rules": res.rules.assign(run=job.run_id), "lora": pd.DataFrame()}, record)


def _reviews(job: base.Job, arm: Arm) -> base.RunOutput:
    import torch

    from gradience.lora import finetune
    from gradience.lora.base_models import load_classifier, minilm_folder
    from gradience.rosetta.lora import peft_scale_excess
    from gradience.rosetta.protocol import BudgetMonitor, LoraArm, lora_budget_ratios, lora_model
    from gradience.tasks.reviews import read_jsonl
    from gradience.training import resolve_device

    p: RunParams = job.params  # type: ignore[assignment]
    t = p.reviews
    folder = Path(job.data_dir) / "reviews"
    tr, te = read_jsonl(folder / "train.jsonl")[:t.n_train], read_jsonl(folder / "test.jsonl")[:t.n_test]
    torch.manual_seed(job.seed)
    model, tok = load_classifier(minilm_folder())
    dev = resolve_device(p.device)
    dtr, dte = (finetune.Encoded(*(x.to(dev) for x in (e.input_ids, e.attention_mask, e.labels)))
                for e in (finetune.encode_classification(tok, recs, t.max_length) for recs in (tr, te)))
    la = LoraArm(tuple(arm.rules), t.r, t.alpha_over_r, t.targets, t.dropout, r_max=t.r_max)
    pm, chosen = lora_model(model, la, job.seed)  # rules 11–14 read the base weights on the CPU
    pm.to(dev)
    acc0 = finetune.classification_accuracy(pm, dte)
    monitor = BudgetMonitor()
    losses = finetune.train(pm, dtr, t.steps, t.batch_size, t.lr, seed=job.seed, recorder=monitor)
    acc = finetune.classification_accuracy(pm, dte)
    majority = float(torch.bincount(dte.labels.cpu()).max() / len(dte.labels))
    excess = peft_scale_excess(pm).merge(lora_budget_ratios(pm), on="module").assign(run=job.run_id)
    hist = pd.DataFrame({"run": job.run_id, "step": np.arange(1, len(losses) + 1), "scope": "model",
                         "metric": "batch_loss", "value": losses})
    hist = pd.concat([hist, pd.DataFrame({"run": job.run_id, "step": [0, t.steps], "scope": "model",
                                          "metric": "test_acc", "value": [acc0, acc]}),
                      pd.DataFrame({"run": job.run_id, "step": np.arange(len(monitor.ratios)), "scope": "model",
                                    "metric": "budget_ratio_max", "value": monitor.ratios})], ignore_index=True)
    tail = losses[-max(1, len(losses) // 5):]
    record = {"task": "reviews", "arm": arm.name, "rules": ",".join(arm.rules), "outcome": "completed",
              "lr": t.lr, "batch_size": t.batch_size, "steps": t.steps, "final_test_acc": acc, "initial_test_acc": acc0,
              "majority_share": majority, "n_test": len(te),
              "final_train_loss": float(np.mean(tail)), "n_targets": float(len(excess)),
              "excess_median": float(excess.excess.median()), "budget_ratio_max": float(excess.budget_ratio.max()),
              "budget_halt_step": monitor.halt_step}
    return base.RunOutput({"history": hist, "rules": chosen.assign(run=job.run_id, step=0), "lora": excess}, record)


def run_one(job: base.Job) -> base.RunOutput:
    task, arm = job.spec
    return _reviews(job, arm) if task == "reviews" else _small(job, task, arm)


# ------------------------------------------------------------------------------------ report


@dataclass
class Analysis:
    runs: RunParams
    summary: pd.DataFrame  # one row per run (the run record)
    arms: pd.DataFrame  # per task × arm: final accuracy mean, sd, n, and its gap to the conventional arm
    history: pd.DataFrame
    rules: pd.DataFrame
    lora: pd.DataFrame
    chosen: pd.DataFrame  # per task × rule metric: the value the rule chose (median) vs the conventional one


def arm_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task × arm: final test accuracy and train loss (mean, sd, n), diverged runs, and the gap
    of the mean accuracy to the conventional arm of the same task."""
    g = summary.groupby(["task", "arm"], sort=False)
    t = g.agg(acc_mean=("final_test_acc", "mean"), acc_sd=("final_test_acc", "std"), n=("final_test_acc", "count"),
              loss_mean=("final_train_loss", "mean"), runs=("run", "count"),
              diverged=("outcome", lambda s: int((s != "completed").sum()))).reset_index()
    conv = t[t.arm == CONVENTIONAL].set_index("task").acc_mean
    t["acc_gap"] = t.acc_mean - t.task.map(conv)
    return t


def chosen_values(rules: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per task × metric of the rules table: the median value the geometric rules chose, its range."""
    if rules.empty:
        return pd.DataFrame(columns=["task", "arm", "metric", "median", "min", "max"])
    r = rules.merge(summary[["run", "task", "arm"]], on="run")
    r = r[np.isfinite(r.value.astype(float))]
    return (r.groupby(["task", "arm", "metric"]).value.agg(["median", "min", "max"]).reset_index())


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    s = tables.runs.copy()
    for col in ("final_test_acc", "final_train_loss"):
        if col not in s:
            s[col] = math.nan
    return Analysis(tables.params, s, arm_table(s), tables.history, tables.rules, tables.lora,
                    chosen_values(tables.rules, s))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean test accuracy per task and arm against step (the small tasks' evaluation cadence)."""
    h = a.history[a.history.metric == "test_acc"].merge(a.summary[["run", "task", "arm"]], on="run")
    h = h[h.task != "reviews"].pivot_table(index=["task", "arm", "step", "run"], columns="metric", values="value").reset_index()
    if h.empty:
        return pd.DataFrame(columns=["curve", "step", "value"])
    return base.step_curves(h, ["task", "arm"], {"test_acc": "mean"})


def learned_needed(summary: pd.DataFrame, task: str, p: ReportParams) -> float:
    """Test accuracy that counts as having learned ``task``: ``learned_acc[task]``, and for a classifier
    at least the majority-class share m of the scored examples + 2·√(m(1−m)/n) (its trivial answer)."""
    need = p.learned_acc.get(task, 0.0)
    rows = summary[summary.task == task]
    if "majority_share" in rows and rows.majority_share.notna().any():
        m, n = float(rows.majority_share.dropna().iloc[0]), float(rows.n_test.dropna().iloc[0])
        need = max(need, m + 2 * math.sqrt(m * (1 - m) / n))
    return need


def _budgets(arm: pd.Series, conv: pd.Series, p: ReportParams, summary: pd.DataFrame) -> list[Budget]:
    return [Budget(f"seeds per arm (fewest of the two, {arm.task})", float(min(arm.runs, conv.runs)), p.min_seeds),
            Budget(f"conventional {arm.task} test accuracy (the task is learned)", float(conv.acc_mean),
                   learned_needed(summary, arm.task, p))]


#: the chosen values a Findings row shows for each rule
SHOWN = {"mass": ("eta_step",), "adam_epsilon": ("adam_eps",), "decay": ("weight_decay",),
         "rank": ("lora_rank",), "scale": ("lora_scale",), "dropout": ("lora_dropout",), "targets": ("n_targets",)}


def _value_text(a: Analysis, task: str, arm: str, rules: list[str]) -> str:
    c = a.chosen[(a.chosen.task == task) & (a.chosen.arm == arm)]
    c = c[c.metric.isin({m for r in rules for m in SHOWN.get(r, ())})]
    return "; ".join(f"{r.metric} {r['median']:.3g} [{r['min']:.3g}, {r['max']:.3g}]" for _, r in c.iterrows())


def findings(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    """One row per geometric arm and task (rules 1–7, 10–14), then rules 8, 9 and the scale claim."""
    rows = []
    t = a.arms
    rp = a.runs
    for _, arm in t[t.arm != CONVENTIONAL].iterrows():
        conv = t[(t.task == arm.task) & (t.arm == CONVENTIONAL)]
        if conv.empty:
            continue
        conv = conv.iloc[0]
        rules = (rp.lora_arms if arm.task == "reviews" else rp.arms)
        rule_list = next(x.rules for x in rules if x.name == arm.arm)
        claim = CLAIMS["lora"] if arm.task == "reviews" else CLAIMS[rule_list[0]] if len(rule_list) == 1 else None
        if claim is None:
            continue
        if arm.task == "reviews":
            tuned = f"; conventional r {rp.reviews.r}, α/r {rp.reviews.alpha_over_r}, dropout {rp.reviews.dropout}"
        else:
            tt = rp.modular if arm.task == "modular" else rp.digits
            tuned = f"; tuned lr {tt.lr:g}, wd {tt.weight_decay:g}, ε {rp.adam_eps:g}"
        runs = a.summary[(a.summary.task == arm.task) & (a.summary.arm == arm.arm)]
        convruns = a.summary[(a.summary.task == arm.task) & (a.summary.arm == CONVENTIONAL)]
        holds = bool(arm.acc_mean >= conv.acc_mean - p.acc_tolerance) if math.isfinite(arm.acc_mean) else False
        gap = f"gap {arm.acc_gap:+.3f}" if math.isfinite(arm.acc_gap) else "no gap: no run completed"
        rows.append(judged(
            claim,
            f"{arm.task}, arm {arm.arm} ({'+'.join(rule_list)}): test acc {mean_spread(runs.final_test_acc)} vs "
            f"conventional {mean_spread(convruns.final_test_acc)} ({gap}); "
            f"{int(arm.diverged)} diverged; "
            f"chosen: {_value_text(a, arm.task, arm.arm, rule_list) or '—'}{tuned}",
            holds, f"holds when the arm's mean test accuracy ≥ conventional − {p.acc_tolerance}",
            _budgets(arm, conv, p, a.summary), absence=True))
    rows += _stop_rows(a, p) + _batch_rows(a, p) + _scale_rows(a, p)
    return rows


def _stop_rows(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    s = a.summary[(a.summary.arm == CONVENTIONAL) & (a.summary.task != "reviews")]
    if s.empty or "stop_step" not in s:
        return []
    fired = s.stop_step.notna()
    lost = (s.final_test_acc - s.stop_test_acc)[fired]
    holds = bool(fired.any() and (lost <= p.acc_tolerance).all())
    reasons = ", ".join(sorted(set(s.stop_reason[fired]))) or "—"
    learned = s.final_test_acc >= s.task.map(p.learned_acc).fillna(0.0)
    return [judged(STOP_CLAIM,
                   f"conventional runs: rule fired in {int(fired.sum())}/{len(s)} (step {mean_spread(s.stop_step)}; "
                   f"{reasons}); test accuracy lost by stopping there {mean_spread(lost)}",
                   holds, "holds when the rule fires and stopping there loses ≤ acc_tolerance test accuracy "
                   "(budget part not applicable: no base weight)",
                   [Budget("conventional runs that learned their task (a point to stop at exists)",
                           int(learned.sum()), p.min_seeds)], absence=False)]


def _batch_rows(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    s = a.summary[(a.summary.arm == CONVENTIONAL) & (a.summary.task != "reviews")]
    if s.empty or "b_crit_init" not in s:
        return []
    parts = [f"{task}: B_crit {mean_spread(g.b_crit_init)} at init, {mean_spread(g.b_crit_final)} at the end "
             f"vs the tuned batch {int(g.batch_size.iloc[0])}" for task, g in s.groupby("task")]
    return [judged(BATCH_CLAIM, "; ".join(parts), None,
                   "measured only: the claim (linear speed-up below B_crit) needs a batch-size sweep, not run")]


def _scale_rows(a: Analysis, p: ReportParams) -> list[dict[str, str]]:
    if a.lora.empty:
        return []
    lo, hi = p.scale_range
    rows = []
    for arm, g in a.lora.merge(a.summary[["run", "arm"]], on="run").groupby("arm", sort=False):
        e = g.excess[np.isfinite(g.excess)]
        if arm == CONVENTIONAL:
            share = float((e >= lo).mean()) if len(e) else math.nan
            rows.append(judged(
                SCALE_CLAIM,
                f"trained conventional adapters (s = {g.scale.iloc[0]:.3g}): excess s·‖BA‖₂/σ_k median {e.median():.3g}, "
                f"range {e.min():.3g}–{e.max():.3g} over {len(e)} modules; {share:.0%} ≥ {lo:g}",
                bool(len(e) and share >= 0.5), f"holds when most modules exceed the bound by ≥ {lo:g}× "
                f"(the document's range {lo:g}–{hi:g}×)",
                [Budget("LoRA runs", g.run.nunique(), p.min_seeds),
                 Budget("LoRA updates", a.runs.reviews.steps, p.lora_steps_needed)]))
        else:
            over = float((g.budget_ratio > 0.9).mean())
            halt = a.summary[a.summary.arm == arm].get("budget_halt_step", pd.Series(dtype=float))
            h = a.history[(a.history.metric == "budget_ratio_max") & (a.history.step == 0) & a.history.run.isin(g.run)]
            rows.append(judged(
                "rosetta.lora_budget_held",
                f"arm {arm}: budget ratio ‖s·BA‖₂/σ_k after training median {g.budget_ratio.median():.3g}, "
                f"max {g.budget_ratio.max():.3g}; {over:.0%} of modules past 0.9; the 0.9 monitor would halt "
                f"after update {mean_spread(halt)} of {a.runs.reviews.steps} (ratio at initialisation "
                f"{mean_spread(h.value)}: rule 14 starts at the bound, above rule 9's 0.9)",
                bool(over == 0), "holds when every trained geometric adapter stays within 0.9 of its budget",
                [Budget("LoRA runs", g.run.nunique(), p.min_seeds)]))
    return rows


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Per task × arm: final test accuracy mean and sd, gap to conventional, diverged runs; LoRA excess."""
    out: dict = {}
    for _, r in a.arms.iterrows():
        out.setdefault(r.task, {})[r.arm] = {"test_acc_mean": float(r.acc_mean), "test_acc_sd": float(r.acc_sd),
                                             "acc_gap": float(r.acc_gap), "diverged": float(r.diverged),
                                             "train_loss_mean": float(r.loss_mean)}
    if not a.lora.empty:
        g = a.lora.merge(a.summary[["run", "arm"]], on="run")
        out["lora_excess_median"] = {arm: float(x.excess.median()) for arm, x in g.groupby("arm")}
    return out
