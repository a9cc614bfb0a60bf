"""Seed 002: the lifecycle of the spectral edge, from gradient learning to weight-decay compression.

Task: Dyck-1 (:mod:`gradience.tasks.dyck`): predict the nesting depth at every position; the depth is
the known functional coordinate. Model: a GPT-2-style 2-layer causal pre-LN transformer with learned
positions (:class:`gradience.models.gpt.TokenClassifierGPT`; the repository's rotary ``tiny_llama``
stalled at 0.92 accuracy on this task in the pilot). Optimiser: AdamW (β = 0.9, 0.98), minibatches.

Why a loop here and not :func:`gradience.training.train`: the weight-decay removal arm sets λ = 0
*in the same optimiser* mid-run (AdamW moments kept), and the final-step measurements (edge direction,
perturbation, ablation, probes) need the trained model and the tracker's last window; ``train`` builds
its own AdamW per call and runs no probe at the final step. The loop is 20 lines and uses the
library's pieces (:class:`gradience.telemetry.edge.EdgeTracker`, ``loss_and_accuracy``).

Measurements (every ``every`` steps; the tracker window = the last ``window`` AdamW updates, split
into the gradient part −η m̂/(√v̂+ε) and the decay part −ηλθ): ``edge_*`` window metrics
(:func:`gradience.telemetry.edge.window_metrics`), train/test loss and accuracy; every
``probe_every`` steps the held-out R² of linear / quadratic / MLP probes of the depth from the
final hidden state (``probe_r2_{linear,quadratic,mlp}``). At the end of the run: loss change along
the edge vs ``n_random`` random unit directions (``perturbation`` table) and the ablation
(θ − ⟨θ,v̂⟩v̂) of the edge vs random directions (``ablation`` table).

Conditions: one per weight decay of ``weight_decays`` (the sweep; ``main_decay`` is the main
condition) and, when ``removal_at`` > 0, ``removal``: ``main_decay`` until step ``removal_at``,
then λ = 0 for the rest of the run.

The fit is train accuracy ≥ ``fit_acc``. In this setup it is not delayed generalisation: in the
default-profile runs the λ = 0 control reaches test accuracy ≈ 1 too, with no grokking delay (the
notebook shows it per run), so the seed's "at grokking" reads "at the fit" here. The claims about
the phases around grokking need a grokking delay (test-fit step ÷ train-fit step ≥
``min_grok_delay``), and the removal claim a linear probe with headroom (1 − R² ≥ ``recover_min``
at the removal); without them the runs cannot show the effect ("not comparable").

Budgets (:func:`gradience.reporting.judged`): the claims about the post-fit weight-decay
compression phase (two phases, perturbation-flat, re-encoded probes, classes) need, besides seeds
and steps after the fit, the decay clock lr·λ·(steps after the fit) ≥ ``min_decay_clock`` on every
fitted main-condition seed (:func:`decay_clock`; decay alone shrinks θ by exp(−clock), so a shorter
run shows neither compression nor its absence); the removal claim needs that clock between the fit
and ``removal_at``, and ``min_post_steps`` after the removal. Short of a budget the verdict is "not
comparable", never "not reproduced".

Not done here (stated in the notebook): SCAN (the encoder–decoder arm), the gap-flow equation's
prediction of the classes, Fourier analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from gradience.config import Section
from gradience.reporting import Budget, judged, mean_spread
from gradience.studies import base
from gradience.tasks import dyck
from gradience.telemetry import edge
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.training import loss_and_accuracy

CLAIMS = ("spectral_edge.two_phases", "spectral_edge.edge_dominance", "spectral_edge.perturbation_flat",
          "spectral_edge.ablation_critical", "spectral_edge.probes_reencoded", "spectral_edge.wd_removal",
          "spectral_edge.classes")
CLASSES = ("functional", "mixed", "compression")


class ModelParams(Section):
    d_model: int = Field(default=64, ge=4)
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=4, ge=1)


class RunParams(base.RunParams):
    length: int = Field(default=24, ge=2, description="Dyck-1 word length (even)")
    n_train: int = Field(default=512, ge=8)
    n_test: int = Field(default=512, ge=8)
    data_seed: int = 0
    model: ModelParams = ModelParams()
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    steps: int = Field(default=1000, ge=2)
    weight_decays: list[float] = Field(default=[0.0, 0.1, 1.0], min_length=1)
    main_decay: float = Field(default=1.0, ge=0)
    sweep_seeds: int = Field(default=1, ge=1, description="seeds (the first n) of the non-main decays")
    removal_at: int = Field(default=500, ge=0, description="removal arm: λ = 0 from this step; 0 = no arm")
    window: int = Field(default=10, ge=2, description="edge window: last W updates")
    every: int = Field(default=10, ge=1, description="steps between edge/accuracy measurements")
    probe_every: int = Field(default=100, ge=1)
    probe_positions: int = Field(default=2000, ge=20, description="positions per probe fit (train and test)")
    eps: list[float] = Field(default=[-1.0, -0.3, -0.1, 0.1, 0.3, 1.0], min_length=1)
    n_random: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _check(self) -> RunParams:
        if self.length % 2:
            raise ValueError(f"length={self.length} must be even (balanced Dyck-1 words)")
        available = dyck.n_sequences(self.length, "balanced")
        if self.n_train + self.n_test > available:
            raise ValueError(f"n_train + n_test = {self.n_train + self.n_test} exceeds the {available} distinct "
                             f"Dyck-1 words of length {self.length}")
        if any(w < 0 for w in self.weight_decays):
            raise ValueError(f"weight_decays must be ≥ 0, got {self.weight_decays}")
        base.unique_names([str(w) for w in self.weight_decays], "weight_decays")
        if self.main_decay not in self.weight_decays:
            raise ValueError(f"main_decay={self.main_decay} must be one of weight_decays={self.weight_decays}")
        if self.removal_at and not 0 < self.removal_at < self.steps:
            raise ValueError(f"removal_at={self.removal_at} must lie inside (0, steps={self.steps})")
        if self.removal_at and self.removal_at % self.probe_every:
            raise ValueError(f"removal_at={self.removal_at} must be a multiple of probe_every={self.probe_every}")
        if self.model.d_model % self.model.n_heads:
            raise ValueError(f"d_model={self.model.d_model} must be a multiple of n_heads={self.model.n_heads}")
        return self


class ReportParams(base.ReportParams):
    fit_acc: float = Field(default=0.99, gt=0, le=1, description="train accuracy that marks the fit (the "
                         "seed's 'grokking' point)")
    gradient_driven: float = Field(default=0.5, gt=0, lt=1, description="edge_grad_energy above: gradient-driven")
    gap_min: float = Field(default=1.5, ge=1, description="edge dominance: median σ1/σ2 at least this")
    ablation_min: float = Field(default=4000.0, gt=1, description="the seed's ratio (> 4000×)")
    mlp_r2_min: float = Field(default=0.95, gt=0, le=1)
    linear_gap_min: float = Field(default=0.05, ge=0, description="MLP R² − linear R² at least this")
    recover_min: float = Field(default=0.05, ge=0, description="removal: linear R² gain at least this")
    acc_drop_max: float = Field(default=0.02, ge=0)
    class_bounds: tuple[float, float] = Field(default=(0.3, 0.7), description="edge_grad_energy after the fit: "
                                              "≤ lo compression, ≥ hi functional, else mixed")
    min_seeds: int = Field(default=3, ge=1)
    min_post_steps: int = Field(default=100, ge=1, description="steps after the fit a late-phase claim needs")
    min_grok_delay: float = Field(default=2.0, gt=1, description=(
        "test-fit step ÷ train-fit step (both at fit_acc) a claim about the phases around grokking needs: "
        "grokking is generalisation well after the training set is fitted; 2 reads it as at least twice as late"))
    min_decay_clock: float = Field(default=1.0, gt=0, description=(
        "lr·λ·(steps after the fit) a claim about the post-fit compression phase needs. AdamW's decoupled decay "
        "alone shrinks θ by exp(−lr·λ·t), so below 1 (one e-fold) decay has barely acted after the fit and a "
        "run cannot show compression, nor its absence; steps alone do not say this (at lr 1e-3, λ 1, 200 steps "
        "after the fit are a factor exp(−0.2))"))


DATA: tuple[str, ...] = ()
TABLES = ("telemetry", "perturbation", "ablation")


def condition_name(wd: float) -> str:
    return f"wd{wd:g}"


def jobs(p: RunParams, data_dir: str) -> list[base.Job]:
    """Main decay and the removal arm on every seed; the other decays of the sweep on the first ``sweep_seeds``."""
    conds = [(condition_name(w), w, w == p.main_decay) for w in p.weight_decays]
    conds += [("removal", p.main_decay, True)] if p.removal_at else []
    return [base.Job(p, c, s, data_dir, spec=w) for c, w, main in conds
            for s in (p.seeds if main else p.seeds[: p.sweep_seeds])]


def _probe_rows(model, split, n_pos: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)

    def feats(x, y):
        h = edge.residual_stream(model, x)[-1].reshape(-1, model.lm.config.n_embd).double().numpy()
        t = y.reshape(-1).double().numpy()
        i = rng.choice(len(t), size=min(n_pos, len(t)), replace=False)
        return h[i], t[i]

    Htr, ytr = feats(split.x_train, split.y_train)
    Hte, yte = feats(split.x_test, split.y_test)
    return edge.probe_scores(Htr, ytr, Hte, yte, seed=seed)


def run_one(job: base.Job) -> base.RunOutput:
    from gradience.models.gpt import TokenClassifierGPT

    p: RunParams = job.params  # type: ignore[assignment]
    torch.manual_seed(job.seed)
    split = dyck.dyck_split(p.n_train, p.n_test, p.length, seed=p.data_seed)
    n_classes = p.length // 2 + 1
    model = TokenClassifierGPT(dyck.N_TOKENS, n_classes, p.length, p.model.d_model, p.model.n_layers,
                               p.model.n_heads, seed=job.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=(0.9, 0.98), weight_decay=float(job.spec))
    tracker = edge.EdgeTracker(model, p.window)
    gen = torch.Generator().manual_seed(job.seed)
    rows: list[tuple[int, str, float]] = []
    removal = job.condition == "removal"
    with tracker.attach():
        for step in tqdm(range(p.steps + 1), desc=job.run_id, leave=False, mininterval=5):
            if step % p.every == 0 or step == p.steps:
                model.eval()
                with torch.no_grad():
                    for name, x, y in (("train", split.x_train, split.y_train), ("test", split.x_test, split.y_test)):
                        loss, acc = loss_and_accuracy(model(x), y)
                        rows += [(step, f"{name}_loss", float(loss)), (step, f"{name}_acc", float(acc))]
                rows += [(step, k, v) for k, v in tracker.metrics().items()]
                rows.append((step, "adamw_weight_decay", float(opt.param_groups[0]["weight_decay"])))
                if step % p.probe_every == 0 or step == p.steps:
                    rows += [(step, k, v) for k, v in _probe_rows(model, split, p.probe_positions, job.seed).items()]
                model.train()
            if step == p.steps:
                break
            if removal and step == p.removal_at:
                for g in opt.param_groups:
                    g["weight_decay"] = 0.0
            idx = torch.randint(0, p.n_train, (p.batch_size,), generator=gen)
            loss, _ = loss_and_accuracy(model(split.x_train[idx]), split.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    ids = {"run": job.run_id, "condition": job.condition, "seed": job.seed}
    telemetry = pd.DataFrame(rows, columns=["step", "metric", "value"]).assign(scope=MODEL_SCOPE, **ids)
    f, theta = edge.flat_evaluator(model, split.x_test, split.y_test)
    v = tracker.direction()
    curve = edge.perturbation_curve(f, theta, v, p.eps, p.n_random, seed=job.seed)
    pert = pd.concat([pd.DataFrame({"direction": "edge", "eps": curve.eps, "dloss": curve.edge}),
                      *[pd.DataFrame({"direction": f"random{i}", "eps": curve.eps, "dloss": r})
                        for i, r in enumerate(curve.random)]], ignore_index=True).assign(**ids)
    ab = edge.ablation_impact(f, theta, v, p.n_random, seed=job.seed)
    abl = pd.DataFrame([{"direction": "edge", "loss": ab.edge[0], "acc": ab.edge[1]}]
                       + [{"direction": f"random{i}", "loss": r[0], "acc": r[1]} for i, r in enumerate(ab.random)]
                       ).assign(base_loss=ab.base[0], base_acc=ab.base[1], **ids)
    record = {"weight_decay": float(job.spec), "n_params": tracker.n_params,
              "final_train_acc": rows and float(telemetry.query("metric == 'train_acc'").value.iloc[-1])}
    return base.RunOutput({"telemetry": telemetry, "perturbation": pert, "ablation": abl}, record)


# ------------------------------------------------------------------------------------ analysis


@dataclass
class Analysis:
    wide: pd.DataFrame  # run, condition, seed, step, one column per metric
    per_run: pd.DataFrame  # one row per run: fit step, phase medians, probes, ablation ratio, class
    perturbation: pd.DataFrame
    ablation: pd.DataFrame
    params: object  # the run params


def fit_step(g: pd.DataFrame, fit_acc: float, column: str = "train_acc") -> float:
    """First step whose ``column`` accuracy reaches ``fit_acc`` (NaN when never)."""
    hit = g.loc[g[column] >= fit_acc, "step"]
    return float(hit.iloc[0]) if len(hit) else float("nan")


def decay_clock(per_run: pd.DataFrame, lr: float, until: pd.Series | float) -> pd.Series:
    """lr · λ · (until − fit_step) per run (columns ``weight_decay``, ``fit_step``): the decoupled-decay exponent
    accumulated after the fit (decay alone shrinks θ by exp(−clock)); NaN where the run never fit, 0 when until ≤ fit."""
    return lr * per_run["weight_decay"] * (until - per_run["fit_step"]).clip(lower=0)


def classify(grad_energy: float, bounds: tuple[float, float]) -> str:
    lo, hi = bounds
    if not np.isfinite(grad_energy):
        return "none"
    return "compression" if grad_energy <= lo else "functional" if grad_energy >= hi else "mixed"


def analyse(tables: base.Tables, p: ReportParams) -> Analysis:
    t = tables.telemetry
    wide = t.pivot_table(index=["run", "condition", "seed", "step"], columns="metric", values="value").reset_index()
    rp: RunParams = tables.params  # type: ignore[assignment]
    rows = []
    for (run, cond, seed), g in wide.groupby(["run", "condition", "seed"]):
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
            "run": run, "condition": cond, "seed": seed, "fit_step": fs, "post_steps": g.step.max() - fs,
            "test_fit_step": fit_step(g, p.fit_acc, "test_acc"),
            "grad_energy_pre": pre["edge_grad_energy"].median(), "grad_energy_post": post["edge_grad_energy"].median(),
            "gap_median": g.loc[g.step >= rp.window, "edge_gap"].median(),
            "final_test_acc": last["test_acc"], "final_train_acc": last["train_acc"],
            "r2_linear": probes["probe_r2_linear"].iloc[-1] if len(probes) else np.nan,
            "r2_quadratic": probes["probe_r2_quadratic"].iloc[-1] if len(probes) else np.nan,
            "r2_mlp": probes["probe_r2_mlp"].iloc[-1] if len(probes) else np.nan,
            "r2_linear_at_removal": at_removal["probe_r2_linear"].iloc[0] if len(at_removal) else np.nan,
            "test_acc_at_removal": at_removal["test_acc"].iloc[0] if len(at_removal) else np.nan,
            "ablation_loss_ratio": edge._ratio(abs(e.loss - e.base_loss), float((r.loss - r.base_loss).abs().mean())),
        })
    per_run = pd.DataFrame(rows)
    per_run["grok_delay"] = per_run.test_fit_step / per_run.fit_step.where(per_run.fit_step > 0)
    decays = {condition_name(w): w for w in rp.weight_decays} | {"removal": rp.main_decay}
    per_run["weight_decay"] = per_run.condition.map(decays)
    removal, last = per_run.condition == "removal", per_run.fit_step + per_run.post_steps
    per_run["decay_clock_post"] = decay_clock(per_run, rp.lr, last.where(~removal, last.clip(upper=rp.removal_at)))
    per_run["decay_clock_at_removal"] = decay_clock(per_run, rp.lr, rp.removal_at).where(removal)
    per_run["edge_class"] = [classify(x, p.class_bounds) for x in per_run["grad_energy_post"]]
    return Analysis(wide, per_run, tables.perturbation, tables.ablation, rp)


def _fmt(values: pd.Series, digits: int = 2) -> str:
    return mean_spread(values.dropna().to_numpy(), f"{{:,.{digits}f}}")


def findings(a: Analysis, p: ReportParams) -> list[dict]:
    rp = a.params
    main = a.per_run[a.per_run.condition == condition_name(rp.main_decay)]  # type: ignore[attr-defined]
    fitted = main[main.fit_step.notna()]
    n_fit = len(fitted)
    post_ok = float(fitted.post_steps.min()) if n_fit else 0.0
    seeds = [Budget("main-condition seeds that fit", n_fit, p.min_seeds),
             Budget("steps after the fit", post_ok, p.min_post_steps)]
    clock = Budget("lr·wd·steps after the fit", float(fitted.decay_clock_post.min()) if n_fit else 0.0,
                   p.min_decay_clock)
    grok = Budget("grokking delay: test-fit ÷ train-fit step (fewest seeds)",
                  float(fitted.grok_delay.fillna(0).min()) if n_fit else 0.0, p.min_grok_delay)
    out = []
    two = (fitted.grad_energy_pre > p.gradient_driven) & (fitted.grad_energy_post < p.gradient_driven)
    out.append(judged("spectral_edge.two_phases",
                      f"gradient share of the edge's energy before fit {_fmt(fitted.grad_energy_pre)}, "
                      f"late after fit {_fmt(fitted.grad_energy_post)}; {int(two.sum())}/{n_fit} seeds switch",
                      bool(two.mean() > 0.5) if n_fit else None,
                      f"holds when most fitted seeds are > {p.gradient_driven} before and < after", [*seeds, clock, grok]))
    out.append(judged("spectral_edge.edge_dominance", f"median σ1/σ2 of the update Gram {_fmt(main.gap_median)}",
                      bool(main.gap_median.median() >= p.gap_min) if len(main) else None,
                      f"holds when the median over seeds is ≥ {p.gap_min}", seeds[:1]))
    pert = a.perturbation[a.perturbation.run.isin(main.run)]
    big = pert[pert.eps.abs() == pert.eps.abs().max()]
    e = big[big.direction == "edge"].dloss.abs().mean()
    r = big[big.direction != "edge"].dloss.abs().mean()
    out.append(judged("spectral_edge.perturbation_flat",
                      f"|ΔL| at ‖δθ‖={big.eps.abs().max():g}: edge {e:.3g}, random {r:.3g}",
                      bool(e <= r) if len(big) else None, "holds when the edge's |ΔL| ≤ the random mean", [*seeds, clock, grok]))
    out.append(judged("spectral_edge.ablation_critical",
                      f"ablation loss ratio edge/random {_fmt(main.ablation_loss_ratio, 0)}",
                      bool(main.ablation_loss_ratio.median() > p.ablation_min) if len(main) else None,
                      f"holds when the median ratio > {p.ablation_min:g}", seeds))
    out.append(judged("spectral_edge.probes_reencoded",
                      f"final R²: linear {_fmt(main.r2_linear)}, quadratic {_fmt(main.r2_quadratic)}, MLP {_fmt(main.r2_mlp)}",
                      bool((main.r2_mlp.median() >= p.mlp_r2_min)
                           and (main.r2_mlp - main.r2_linear).median() >= p.linear_gap_min) if len(main) else None,
                      f"holds when MLP R² ≥ {p.mlp_r2_min} and exceeds linear by ≥ {p.linear_gap_min}", [*seeds, clock, grok]))
    rem = a.per_run[a.per_run.condition == "removal"]
    gain = rem.r2_linear - rem.r2_linear_at_removal
    drop = rem.test_acc_at_removal - rem.final_test_acc
    rem_clock = rem.decay_clock_at_removal.dropna()
    out.append(judged("spectral_edge.wd_removal",
                      f"linear R² {_fmt(rem.r2_linear_at_removal)} → {_fmt(rem.r2_linear)}; "
                      f"test acc {_fmt(rem.test_acc_at_removal)} → {_fmt(rem.final_test_acc)}",
                      bool(gain.median() >= p.recover_min and drop.median() <= p.acc_drop_max) if len(rem) else None,
                      f"holds when the gain ≥ {p.recover_min} and the accuracy drop ≤ {p.acc_drop_max}",
                      [Budget("removal-arm seeds", len(rem), p.min_seeds),
                       Budget("removal after the fit (seeds)", int((rem.fit_step < rp.removal_at).sum()), p.min_seeds),
                       Budget("lr·wd·steps from the fit to the removal", float(rem_clock.min()) if len(rem_clock) else 0.0,
                              p.min_decay_clock),
                       Budget("steps after the removal", rp.steps - rp.removal_at, p.min_post_steps),
                       Budget("linear-probe headroom at the removal, 1 − R² (fewest seeds)",
                              float((1 - rem.r2_linear_at_removal).min()) if len(rem) else 0.0, p.recover_min),
                       grok]))
    by = a.per_run.groupby("condition").edge_class.agg(lambda s: s.mode().iloc[0])
    main_class = by.get(condition_name(rp.main_decay), "none")
    out.append(judged("spectral_edge.classes",
                      "; ".join(f"{c}: {k}" for c, k in by.items()),
                      main_class in ("functional", "mixed") if main_class != "none" else None,
                      "Dyck-1 (low redundancy) should be functional or mixed at the main decay; SCAN and the "
                      "gap-flow prediction not run", [*seeds, clock, Budget("tasks (SCAN not run)", 1, 2)]))
    return out


def metrics(a: Analysis, p: ReportParams) -> dict:
    out = {}
    for cond, g in a.per_run.groupby("condition"):
        out[cond] = {k: float(g[k].median()) for k in ("fit_step", "grok_delay", "decay_clock_post", "grad_energy_pre", "grad_energy_post", "gap_median",
                                                        "final_test_acc", "r2_linear", "r2_mlp", "ablation_loss_ratio")
                     if np.isfinite(g[k].median())}
    return out


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    return base.step_curves(a.wide, "condition", {"test_acc": "mean", "edge_grad_energy": "mean", "edge_gap": "mean",
                                                  "probe_r2_linear": "mean", "probe_r2_mlp": "mean"})
