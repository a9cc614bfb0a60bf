"""Spectral edge: one function per claim, its docstring the claim.

Budgets (:func:`gradience.reporting.judge`, by the claim's registered kind: an event the runs show is
"reproduced" whatever the budget; else short of one the verdict is "not comparable", never "not
reproduced"): seeds that fit, steps after the fit, the decay clock lr·λ·(steps after the fit) ≥
``min_decay_clock`` (decay alone shrinks θ by exp(−clock)), a grokking delay (test-fit step ÷
train-fit step ≥ ``min_grok_delay``), for the removal claim the clock up to the removal, steps after it
and linear-probe headroom, for the claims that contrast grokked and memorised models a λ = 0 control
that memorises, and for the classes both tasks. A claim made for both tasks is judged on each task's
own runs and its one budget set (:func:`_task_budgets`, :func:`gradience.reporting.judged_per_task`). Controls: the removal arm against the same seeds with the
decay kept; the edge's depth response against a random direction's. No claim here computes the power
of its test (the smallest effect its seeds could detect), so a comparison that fails with every budget
met reads "inconclusive" (a negative needs stated power), not "not reproduced".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from gradience.reporting import (
    Budget,
    judged,
    judged_per_task,
    mean_spread,
)
from gradience.studies.spectral_edge.analysis import Analysis, ReportParams
from gradience.studies.spectral_edge.runs import TASKS, condition_name

Row = dict[str, str]
TaskResult = tuple[bool | None, str]  # holds, measured text: one task's part of a claim
TASK_LABEL = {"dyck": "Dyck-1", "scan": "SCAN"}


def _fmt(values: pd.Series, digits: int = 2) -> str:
    return mean_spread(values.dropna().to_numpy(), f"{{:,.{digits}f}}")


def _main(a: Analysis, task: str) -> pd.DataFrame:
    """The runs of ``task``'s main decay (not the removal arm)."""
    rp = a.params
    main = rp.main_decay if task == "dyck" else rp.scan.main_decay
    return a.per_run[a.per_run.condition == condition_name(main, task)]


def _tasks(a: Analysis) -> list[str]:
    """The tasks whose main decay was run."""
    return [t for t in TASKS if len(_main(a, t))]


def _fitted(main: pd.DataFrame) -> pd.DataFrame:
    return main[main.fit_step.notna()]


def _phase_budgets(main: pd.DataFrame, p: ReportParams, label: str) -> tuple[list[Budget], Budget, Budget]:
    """Seeds-and-steps budgets, the decay clock and the grokking delay of one task's main condition."""
    fitted = _fitted(main)
    n, pre = len(fitted), f"{label}: " if label else ""
    seeds = [Budget(f"{pre}main-condition seeds that fit", n, p.min_seeds),
             Budget(f"{pre}steps after the fit", float(fitted.post_steps.min()) if n else 0.0, p.min_post_steps)]
    clock = Budget(f"{pre}lr·wd·steps after the fit", float(fitted.decay_clock_post.min()) if n else 0.0,
                   p.min_decay_clock)
    grok = Budget(f"{pre}grokking delay, test-fit ÷ train-fit step (fewest seeds)",
                  float(fitted.grok_delay.fillna(0).min()) if n else 0.0, p.min_grok_delay)
    return seeds, clock, grok


def _phase(a: Analysis, p: ReportParams, task: str, label: str | None = None) -> list[Budget]:
    """The budgets of one task: its main condition's fitted seeds, steps and clock after the fit, and the
    grokking delay (budget names prefixed with the task's label unless ``label=""``)."""
    seeds, clock, grok = _phase_budgets(_main(a, task), p, TASK_LABEL[task] if label is None else label)
    return [*seeds, clock, grok]


def _task_budgets(a: Analysis, p: ReportParams) -> dict[str, list[Budget]]:
    """The one budget set of each task run, keyed by its label: every per-task row is judged on it, so the
    same missing headroom gets the same label on every row."""
    return {TASK_LABEL[t]: _phase(a, p, t, label="") for t in _tasks(a)}


def _dyck(a: Analysis, p: ReportParams) -> tuple[pd.DataFrame, list[Budget], Budget, Budget]:
    """Dyck-1's main-decay runs, and their seeds-and-steps budgets, decay clock and grokking delay."""
    if "dyck" not in _tasks(a):
        return a.per_run.iloc[0:0], [Budget("Dyck-1 runs", 0, 1)], Budget("", 0, 1), Budget("", 0, 1)
    dm = _main(a, "dyck")
    return (dm, *_phase_budgets(dm, p, TASK_LABEL["dyck"]))


def two_phases(a: Analysis, p: ReportParams) -> list[Row]:
    """Before grokking the spectral edge is gradient-driven; at grokking gradient and weight decay align along it."""

    def one(t: str) -> TaskResult:
        f = _fitted(_main(a, t))
        switch = (f.grad_energy_pre > p.gradient_driven) & (f.grad_energy_post < p.gradient_driven)
        return (bool(switch.mean() > 0.5) if len(f) else None,
                f"gradient share of the edge's energy before fit {_fmt(f.grad_energy_pre)}, late after fit "
                f"{_fmt(f.grad_energy_post)}, {int(switch.sum())}/{len(f)} seeds switch")
    return [judged_per_task("spectral_edge.two_phases", {TASK_LABEL[t]: one(t) for t in _tasks(a)}, _task_budgets(a, p),
                            f"holds when, in each task, most fitted seeds are > {p.gradient_driven} before and < after")]


def edge_dominance(a: Analysis, p: ReportParams) -> list[Row]:
    """The update Gram matrix has a dominant direction (a gap between its first two singular values)."""

    def one(t: str) -> TaskResult:
        m = _main(a, t)
        return (bool(m.gap_median.median() >= p.gap_min) if len(m) else None, f"median σ1/σ2 {_fmt(m.gap_median)}")
    return [judged_per_task("spectral_edge.edge_dominance", {TASK_LABEL[t]: one(t) for t in _tasks(a)}, _task_budgets(a, p),
                            f"holds when the median over seeds is ≥ {p.gap_min} in each task")]


def perturbation_flat(a: Analysis, p: ReportParams) -> list[Row]:
    """After grokking the edge is perturbation-flat (the loss changes no more along it than along random directions)."""

    def one(t: str) -> TaskResult:
        pert = a.perturbation[a.perturbation.run.isin(_main(a, t).run)]
        big = pert[pert.eps.abs() == pert.eps.abs().max()]
        e, r = big[big.direction == "edge"].dloss.abs().mean(), big[big.direction != "edge"].dloss.abs().mean()
        return (bool(e <= r) if len(big) else None,
                f"|ΔL| at ‖δθ‖={big.eps.abs().max():g}: edge {e:.3g}, random {r:.3g}")
    return [judged_per_task("spectral_edge.perturbation_flat", {TASK_LABEL[t]: one(t) for t in _tasks(a)}, _task_budgets(a, p),
                            "holds when the edge's |ΔL| ≤ the random mean in each task")]


def ablation_critical(a: Analysis, p: ReportParams) -> list[Row]:
    """Ablating the edge direction hurts far more than ablating random directions."""

    def one(t: str) -> TaskResult:
        m = _main(a, t)
        return (bool(m.ablation_loss_ratio.median() > p.ablation_min) if len(m) else None,
                f"ablation loss ratio edge/random {_fmt(m.ablation_loss_ratio, 0)}")
    return [judged_per_task("spectral_edge.ablation_critical", {TASK_LABEL[t]: one(t) for t in _tasks(a)}, _task_budgets(a, p),
                            f"holds when the median ratio > {p.ablation_min:g} in each task")]


def probes_reencoded(a: Analysis, p: ReportParams) -> list[Row]:
    """The depth coordinate is re-encoded, not lost (nonlinear probes read it, linear less well)."""
    dm, dy_seeds, dy_clock, dy_grok = _dyck(a, p)
    return [judged("spectral_edge.probes_reencoded",
                   f"Dyck-1 final R²: linear {_fmt(dm.r2_linear)}, quadratic {_fmt(dm.r2_quadratic)}, MLP {_fmt(dm.r2_mlp)}",
                   bool((dm.r2_mlp.median() >= p.mlp_r2_min)
                        and (dm.r2_mlp - dm.r2_linear).median() >= p.linear_gap_min) if len(dm) else None,
                   f"holds when MLP R² ≥ {p.mlp_r2_min} and exceeds linear by ≥ {p.linear_gap_min}",
                   [*dy_seeds, dy_clock, dy_grok])]


def wd_removal(a: Analysis, p: ReportParams) -> list[Row]:
    """Removing weight decay after grokking restores linear probe performance while preserving accuracy."""
    rp = a.params
    dm, _, _, dy_grok = _dyck(a, p)
    rem = a.per_run[a.per_run.condition == "removal"].set_index("seed")
    kept = dm.set_index("seed")  # the same seeds kept at the main decay: what the probe does without the removal
    gain = (rem.r2_linear - rem.r2_linear_at_removal) - (kept.r2_linear - kept.r2_linear_at_removal).reindex(rem.index)
    drop = rem.test_acc_at_removal - rem.final_test_acc
    rem_clock = rem.decay_clock_at_removal.dropna()
    return [judged("spectral_edge.wd_removal",
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
                    dy_grok])]


def _control(a: Analysis, p: ReportParams) -> tuple[pd.DataFrame, Budget]:
    """Dyck-1's λ = 0 runs, and the budget of those that memorise (the contrast of the Fourier claims)."""
    ctrl = a.per_run[(a.per_run.task == "dyck") & (a.per_run.weight_decay == 0)]
    memorised = int((ctrl.final_test_acc < p.test_fit_acc).sum())
    return ctrl, Budget("λ = 0 controls that memorise (test acc < test_fit_acc)", memorised, 1)


def _fourier_budgets(a: Analysis, p: ReportParams) -> list[Budget]:
    _, dy_seeds, _, dy_grok = _dyck(a, p)
    return [*dy_seeds, dy_grok]


def fourier_positional(a: Analysis, p: ReportParams) -> list[Row]:
    """The grokked Dyck-1 model's hidden states put their positional power at the Nyquist frequency (open/close
    alternation); a memorising λ = 0 model's collapse to the DC mode."""
    half = a.params.length // 2
    dm, ctrl, memorising = _dyck(a, p)[0], *_control(a, p)
    have = len(dm) and "positional_peak" in dm
    return [judged("spectral_edge.fourier_positional",
                   f"positional power of the final hidden state: main decay peaks at ω = "
                   f"{dm.positional_peak.tolist() if have else '–'} (Nyquist {half}; share {_fmt(dm.get('positional_nyquist_share', pd.Series(dtype=float)))}), "
                   f"DC share {_fmt(dm.get('positional_dc_share', pd.Series(dtype=float)))}; λ = 0 control DC share "
                   f"{_fmt(ctrl.get('positional_dc_share', pd.Series(dtype=float)))} (final test acc {_fmt(ctrl.final_test_acc)})",
                   bool((dm.positional_peak == half).mean() > 0.5
                        and (ctrl.positional_dc_share > 0.5).all()) if have and len(ctrl) else None,
                   "holds when most main-decay seeds peak at the Nyquist frequency and every λ = 0 control puts > half "
                   "its power in the DC mode", [*_fourier_budgets(a, p), memorising])]


def attention_uniform(a: Analysis, p: ReportParams) -> list[Row]:
    """The grokked Dyck-1 model's layer-0 heads attend uniformly backward (the counting algorithm, the ω = 0 mode
    of attention)."""
    dm, ctrl, memorising = _dyck(a, p)[0], *_control(a, p)
    kl_main = dm.get("attention_kl_layer0", pd.Series(dtype=float))
    kl_ctrl = ctrl.get("attention_kl_layer0", pd.Series(dtype=float))
    return [judged("spectral_edge.attention_uniform",
                   f"layer-0 attention KL from uniform backward: main decay {_fmt(kl_main, 4)} nats, λ = 0 control "
                   f"{_fmt(kl_ctrl, 4)} (final test acc {_fmt(ctrl.final_test_acc)})",
                   bool(kl_main.median() < p.uniform_kl_max and (kl_ctrl >= p.uniform_kl_max).all())
                   if len(kl_main.dropna()) and len(kl_ctrl.dropna()) else None,
                   f"holds when the main decay's median is < {p.uniform_kl_max:g} nats and every memorising λ = 0 "
                   f"control's is not (attention at initialisation is near uniform too: the contrast is the test)",
                   [*_fourier_budgets(a, p), memorising])]


def fourier_depth(a: Analysis, p: ReportParams) -> list[Row]:
    """The change of the hidden states when θ moves along the edge, averaged per nesting depth, concentrates in
    one Fourier mode of the depth."""
    dm = _dyck(a, p)[0]
    have = len(dm) and "positional_peak" in dm
    el, el_rnd = (dm.get(k, pd.Series(dtype=float)) for k in ("depth_elevation", "depth_elevation_random"))
    return [judged("spectral_edge.fourier_depth",
                   f"response ‖Δh‖² by depth, concentration × uniform: edge {_fmt(el)} (peak frequency "
                   f"{dm.depth_peak.tolist() if have else '–'}), random direction {_fmt(el_rnd)}",
                   bool(el.median() >= p.depth_elevation_min and el.median() > el_rnd.median())
                   if len(el.dropna()) else None,
                   f"holds when the edge's median is ≥ {p.depth_elevation_min:g}× uniform and above a random "
                   f"direction's (measured at the end of the run; the seed's at grokking)", _fourier_budgets(a, p))]


@dataclass(frozen=True)
class _Classes:
    """Per task at its main decay: the modal class, the late gradient share and the redundancy (parameters per
    training target); and the budgets of the class claims (every task's phase budgets, both tasks run)."""

    tasks: list[str]
    main: dict[str, pd.DataFrame]
    cls: dict[str, str]
    share: dict[str, float]
    redundancy: dict[str, float]
    budgets: list[Budget]

    @property
    def known(self) -> bool:
        return all(c != "none" for c in self.cls.values()) and len(self.tasks) == 2

    @property
    def one_task(self) -> bool | None:
        return False if len(self.tasks) < 2 else None  # a task not run: the budget says so ("not comparable")


def _classes(a: Analysis, p: ReportParams) -> _Classes:
    tasks = _tasks(a)
    main = {t: _main(a, t) for t in tasks}
    return _Classes(tasks, main, {t: (main[t].edge_class.mode().iloc[0] if len(main[t]) else "none") for t in tasks},
                    {t: float(main[t].grad_energy_post.median()) for t in tasks},
                    {t: float(main[t].params_per_target.median()) for t in tasks},
                    [*(b for t in tasks for b in _phase(a, p, t)), Budget("tasks run (Dyck-1 and SCAN)", len(tasks), 2)])


def classes(a: Analysis, p: ReportParams) -> list[Row]:
    """The edge falls into classes by the late balance of gradient driving and decay damping along it; Dyck-1 is
    functional or mixed, SCAN compression."""
    c = _classes(a, p)
    cls, share, redundancy = c.cls, c.share, c.redundancy
    measured = "; ".join(f"{t}: late gradient share {share[t]:.2f} → {cls[t]}, rotation "
                         f"{c.main[t].rotation_post.median():.0f}°, {redundancy[t]:.1f} params per training target"
                         for t in c.tasks)
    return [judged("spectral_edge.classes", measured,
                   (cls["scan"] == "compression" and cls["dyck"] in ("functional", "mixed")) if c.known else c.one_task,
                   f"holds when SCAN's main decay is a compression edge and Dyck-1's functional or mixed (late gradient "
                   f"share ≤ {p.class_bounds[0]} compression, ≥ {p.class_bounds[1]} functional)", c.budgets)]


def classes_predicted(a: Analysis, p: ReportParams) -> list[Row]:
    """The class is predicted by redundancy (capacity per task complexity); the more redundant task has the
    compression edge."""
    c = _classes(a, p)
    share, redundancy = c.share, c.redundancy
    more = max(redundancy, key=redundancy.__getitem__) if c.known else None
    return [judged("spectral_edge.classes_predicted",
                   "; ".join(f"{t}: {redundancy[t]:.1f} params per training target, late gradient share {share[t]:.2f}"
                             for t in c.tasks),
                   (share[more] == min(share.values()) and share[more] != max(share.values())) if more else c.one_task,
                   "holds when the more redundant task (more parameters per training target) has the lower late "
                   "gradient share, i.e. sits nearer the compression class", c.budgets)]


CLAIMS = (two_phases, edge_dominance, perturbation_flat, ablation_critical, probes_reencoded, wd_removal,
          fourier_positional, attention_uniform, fourier_depth, classes, classes_predicted)


def findings(a: Analysis, p: ReportParams) -> list[Row]:
    """The *Findings vs the seed* rows, one claim function after another."""
    return [row for claim in CLAIMS for row in claim(a, p)]
