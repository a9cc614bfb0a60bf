"""Rank survey (Protocol D): the report's analysis of the tables — per run, layer and matrix.

Report side: :func:`analyse` reads the tables the training stage (:mod:`.runs`) wrote and applies
the criteria of :mod:`.trajectories`; :mod:`.findings` judges the claims on the result.

- *plateau and stability* per run (:func:`run_stability`): loss-plateau progress, setback,
  *destabilised* (setback ≥ ``setback_min`` or diverged), and the W rank jump across the spike
  window ``[t_s, t_e]`` (the largest ``|Δ log r_eff(W)|`` over layers) with its null: the largest
  such change the same run shows over any window of that length on the even grid after the burn-in.
- *shapes* (:func:`shapes`): the hypothesis-4 criterion and label of every (run, layer, matrix)
  effective-rank trajectory of a completed run.
- *between-seed agreement* (:func:`seed_agreement`, falsifier 4): per family, layer and matrix, R²
  over the healthy runs beside its time-permuted null (mean, 1 − α quantile, p-value); layers whose seed-mean trajectory moves less than ``plateau_tol`` of its
  mean are *flat* (left out of the claim).
- *layers* (:func:`layer_table`): per (run, layer) W₀'s numerical rank ``r_max``, its effective
  rank ``r0``, *room to expand* (``r0 ≤ r_max / (1 + expand_min)``) and *moved* (``‖W_T − W₀‖_F /
  ‖W₀‖_F``).
- *matched kicks* (:func:`kick_pairs`): per seed, the W rank jump of a spike run beside that of the
  run kicked at ``t_s`` by a random matrix of the spike's window-update norm, trained at the healthy lr.
- *rank response* (:func:`rank_response`): a matrix's effective rank in the spike run over the
  healthy run (same seed, layer), minus one, at ``t_e`` (right after the spike) and at ``T``; the
  dose–response (:func:`dose_response`) takes its median over layers per family × size × seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
import pandas as pd
from pydantic import Field

from gradience.studies.notebook import step_curves
from gradience.studies.protocol import ReportParams as BaseReportParams
from gradience.studies.protocol import Tables
from gradience.studies.rank_survey.runs import RunParams
from gradience.studies.rank_survey.trajectories import (
    SHAPES,
    Criterion,
    Plateau,
    between_seed_r2,
    loss_plateau,
    max_window_change,
    permutation_p,
    permuted_r2_null,
    setback,
    trajectory_shape,
    window_change,
)
from gradience.telemetry.recorder import MODEL_SCOPE
from gradience.telemetry.signals import relative_change

MATRICES = ("weight", "change", "gradient")  # W, W − W₀, ∂L/∂W (mini-batch)
LABELS = {"weight": "W", "change": "W − W₀", "gradient": "∂L/∂W"}


class ReportParams(BaseReportParams):
    criterion: Criterion = Criterion()
    plateau: Plateau = Plateau()
    move_min: float = Field(default=0.1, gt=0, description="‖W_T − W₀‖_F / ‖W₀‖_F a layer needs to count as moved")
    burn_in_fraction: float = Field(default=0.1, ge=0, lt=1)
    setback_min: float = Field(default=0.1, gt=0)
    r2_min: float = Field(default=0.8, gt=0, le=1)
    holds_fraction: float = Field(default=0.5, gt=0, le=1)
    min_seeds: int = Field(default=3, ge=2, description="seeds a spread over seeds needs")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="level of the permutation and paired tests")
    null_permutations: int = Field(default=199, ge=19, description="time permutations of the R² null")


def short_name(scope: str) -> str:
    """``lm.model.layers.0.self_attn.q_proj.weight`` → ``layers.0.q_proj`` (for figure labels)."""
    for prefix in ("lm.model.", "lm."):
        scope = scope.removeprefix(prefix)
    return scope.replace("self_attn.", "").replace("mlp.", "").removesuffix(".weight")


def rank_frame(telemetry: pd.DataFrame, changes: pd.DataFrame, runs: pd.DataFrame,
               metric: str = "effective_rank") -> pd.DataFrame:
    """One metric of every weight matrix, of W, W − W₀ and the gradient: ``run, step, scope, matrix,
    value`` plus the run's family, arm, spike size and seed."""
    w = telemetry[(telemetry["metric"] == metric) & (telemetry["scope"] != MODEL_SCOPE)]
    w = w[["run", "step", "scope", "value"]].assign(matrix="weight")
    c = changes[changes["metric"] == metric][["run", "step", "scope", "matrix", "value"]] if len(changes) else None
    frame = pd.concat([w, c], ignore_index=True) if c is not None else w
    frame["matrix"] = frame["matrix"].astype(str)
    return frame.merge(runs[["run", "family", "arm", "lr_spike", "role", "seed"]], on="run")


def layer_table(telemetry: pd.DataFrame, changes: pd.DataFrame, runs: pd.DataFrame, expand_min: float) -> pd.DataFrame:
    """Per (run, layer): ``r_max`` (W₀'s numerical rank), ``r0`` (W₀'s effective rank), ``room``
    (``r0 ≤ r_max / (1 + expand_min)``) and ``moved`` = ‖W_T − W₀‖_F / ‖W₀‖_F."""
    tel = telemetry[telemetry["scope"] != MODEL_SCOPE]
    at0 = tel[tel["step"] == 0].pivot_table(index=["run", "scope"], columns="metric", values="value")
    out = pd.DataFrame({"r_max": at0["numerical_rank"], "r0": at0["effective_rank"], "w0_norm": at0["frobenius_norm"]})
    out["room"] = out["r0"] <= out["r_max"] / (1 + expand_min)
    last = pd.Series(dtype=float)
    if len(changes):
        ch = changes[(changes["matrix"] == "change") & (changes["metric"] == "frobenius_norm")]
        last = ch.sort_values("step").groupby(["run", "scope"])["value"].last()
    out["moved"] = last.reindex(out.index) / out["w0_norm"]
    return out.reset_index()


def shapes(ranks: pd.DataFrame, runs: pd.DataFrame, c: Criterion) -> pd.DataFrame:
    """The criterion and label of every (run, layer, matrix) effective-rank trajectory of completed runs."""
    done = runs[runs["outcome"] == "completed"]
    rows = []
    for (run, scope, matrix), g in ranks[ranks["run"].isin(done["run"])].groupby(["run", "scope", "matrix"], sort=False):
        g = g.sort_values("step")
        rows.append({"run": run, "scope": scope, "matrix": matrix,
                     **trajectory_shape(g["step"].to_numpy(), g["value"].to_numpy(), c)})
    found = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["run", "scope", "matrix"])  # none: all diverged
    return done[["run", "family", "arm", "lr_spike", "role", "seed"]].merge(found, on="run")


def seed_agreement(ranks: pd.DataFrame, runs: pd.DataFrame, c: Criterion, n_null: int = 199,
                   alpha: float = 0.05) -> pd.DataFrame:
    """Per (family, layer, matrix) of the healthy runs: between-seed R², whether it is flat, seeds used,
    and its time-permuted null (:func:`.trajectories.permuted_r2_null`): mean, (1 − α) quantile, p-value."""
    healthy = runs[(runs["role"] == "healthy") & (runs["outcome"] == "completed")]
    rows = []
    for (family, scope, matrix), g in ranks[ranks["run"].isin(healthy["run"])].groupby(
            ["family", "scope", "matrix"], sort=False):
        m = g.pivot_table(index="seed", columns="step", values="value").dropna(axis=1).to_numpy()
        mean = m.mean(axis=0)
        flat = bool(mean.max() - mean.min() < c.plateau_tol * mean.mean())
        r2 = between_seed_r2(m)
        null = permuted_r2_null(m, n_null, seed=len(rows))
        rows.append({"family": family, "scope": scope, "matrix": matrix, "r2": r2, "flat": flat, "n_seeds": len(m),
                     "r2_null_mean": float(null.mean()), "r2_null_q": float(np.quantile(null, 1 - alpha)),
                     "p_null": permutation_p(r2, null)})
    return pd.DataFrame(rows)


def run_stability(telemetry: pd.DataFrame, ranks: pd.DataFrame, runs: pd.DataFrame, p: ReportParams) -> pd.DataFrame:
    """Per run: plateau progress (and whether it reached the loss plateau), setback, destabilised,
    the W rank jump across the spike window and the largest jump over any window of that length."""
    w = ranks[ranks["matrix"] == "weight"]
    rows = []
    for rec in runs.itertuples():
        tel = telemetry[telemetry["run"] == rec.run]
        burn = p.burn_in_fraction * rec.steps
        loss = tel[(tel["scope"] == MODEL_SCOPE) & (tel["metric"] == "train_loss")].sort_values("step")
        t, ell = loss["step"].to_numpy(), loss["value"].to_numpy()
        diverged = rec.outcome == "diverged"
        progress = math.nan if diverged else loss_plateau(t, ell, rec.cadence_every, p.criterion.smoothing_window,
                                                          p.plateau)
        sb = math.inf if diverged else setback(t, ell, burn)
        jumps, nulls = [], []
        for _, g in w[w["run"] == rec.run].sort_values("step").groupby("scope"):
            gs, gv = g["step"].to_numpy(), g["value"].to_numpy()
            jumps.append(window_change(gs, gv, rec.event_start, rec.event_end))
            nulls.append(max_window_change(gs, gv, rec.cadence_every, rec.event_end - rec.event_start, burn))
        rows.append({"run": rec.run, "plateau_progress": progress,
                     "plateau_reached": bool(progress <= p.plateau.max_progress), "setback": sb,
                     "destabilised": sb >= p.setback_min,
                     "rank_jump": float(np.nanmax(jumps)) if np.isfinite(jumps).any() else math.nan,
                     "rank_jump_null": float(np.nanmax(nulls)) if np.isfinite(nulls).any() else math.nan})
    return runs.merge(pd.DataFrame(rows), on="run")


def rank_response(ranks: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per completed spike run, layer and matrix: effective rank before the spike (``t_s``), right
    after it (``t_e``) and at the end (the last step measured in both runs: the gradient has none at
    ``T``), the healthy run's (same family and seed) at ``t_e`` and at the end, and the responses
    spike / healthy − 1."""
    wide = ranks.pivot_table(index=["run", "scope", "matrix"], columns="step", values="value")
    healthy = runs[runs["role"] == "healthy"].set_index(["family", "seed"])["run"]
    rows = []
    for rec in runs[runs["role"].isin(["spike", "kick"]) & (runs["outcome"] == "completed")].itertuples():
        h_run = healthy.get((rec.family, rec.seed))
        if h_run is None or h_run not in wide.index.get_level_values("run"):
            continue
        u, h = wide.loc[rec.run], wide.loc[h_run]
        for (scope, matrix), row in u.iterrows():
            if (scope, matrix) not in h.index:
                continue
            hr = h.loc[(scope, matrix)]
            last = row.index[row.notna() & hr.notna()].max()  # T, or the last gradient step before it
            vals = {"before": row[rec.event_start], "after": row[rec.event_end], "end": row[last],
                    "healthy_after": hr[rec.event_end], "healthy_end": hr[last]}
            rows.append({"run": rec.run, "family": rec.family, "arm": rec.arm, "lr_spike": rec.lr_spike,
                         "role": rec.role, "seed": rec.seed, "destabilised": rec.destabilised, "scope": scope, "matrix": matrix, **vals,
                         "response_after": relative_change(vals["after"], vals["healthy_after"]),
                         "response_end": relative_change(vals["end"], vals["healthy_end"])})
    return pd.DataFrame(rows)


def dose_response(runs: pd.DataFrame, response: pd.DataFrame) -> pd.DataFrame:
    """Per family × spike size × seed: setback, destabilised, plateau, rank jump, and per matrix the
    median over layers of the rank response right after the spike (``response_<matrix>``, 0 for ×1)."""
    out = runs.loc[runs["role"] != "kick", ["family", "arm", "lr_spike", "seed", "outcome", "setback", "destabilised",
                                            "plateau_reached", "rank_jump", "rank_jump_null"]].reset_index(drop=True)
    if len(response):
        response = response[response["role"] == "spike"]
    for matrix in MATRICES:
        med = (response[response["matrix"] == matrix].groupby(["family", "lr_spike", "seed"])["response_after"]
               .median() if len(response) else pd.Series(dtype=float))
        col = out.set_index(["family", "lr_spike", "seed"]).index.map(lambda k, m=med: m.get(k, math.nan))
        out[f"response_{matrix}"] = np.where(out["lr_spike"] == 1, 0.0, np.asarray(col, dtype=float))
    return out


def kick_pairs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per family × kick size × seed: the spike run of that size beside its matched-norm kick run (same
    seed): W rank jump across the window, destabilised, setback, and the healthy run's rank-jump null."""
    key = ["family", "seed"]
    if "kick" not in runs:  # tables from before the kick arm
        return pd.DataFrame()
    kicks = runs[runs["role"] == "kick"]
    spikes = runs[runs["role"] == "spike"][key + ["lr_spike", "rank_jump", "destabilised", "setback"]]
    healthy = runs[runs["role"] == "healthy"][key + ["rank_jump_null"]]
    out = kicks[key + ["kick", "kicked", "kick_relative", "rank_jump", "destabilised", "setback"]].rename(
        columns={"rank_jump": "kick_jump", "destabilised": "kick_destabilised", "setback": "kick_setback"})
    out = out.merge(spikes.rename(columns={"lr_spike": "kick", "rank_jump": "spike_jump",
                                           "destabilised": "spike_destabilised", "setback": "spike_setback"}),
                    on=[*key, "kick"], how="left")
    return out.merge(healthy, on=key, how="left").reset_index(drop=True)


@dataclass
class Analysis:
    params: RunParams  # the runs' params, saved with the tables
    telemetry: pd.DataFrame
    runs: pd.DataFrame  # one row per run, with plateau and stability columns
    ranks: pd.DataFrame  # effective rank of W, W − W₀ and ∂L/∂W per run, layer and step
    layers: pd.DataFrame  # per (run, layer): r_max, r0, room, moved
    shapes: pd.DataFrame  # one row per (run, layer, matrix) trajectory
    agreement: pd.DataFrame
    response: pd.DataFrame  # per spike or kick run, layer and matrix
    dose: pd.DataFrame  # per family × size × seed
    kicks: pd.DataFrame  # per family × kick size × seed: spike run beside its matched kick


def analyse(tables: Tables[RunParams], p: ReportParams) -> Analysis:
    """Plateau and stability of every run, shapes of every trajectory, between-seed agreement, the
    rank response to each spike size, the spike runs beside their matched kicks. Runs are put back in grid
    order (families, arms, seeds), read from their recorded ``family``, ``arm`` and ``seed``."""
    rp, tele = tables.params, tables.telemetry
    grid = {key: i for i, key in enumerate(product(rp.families, [arm.name for arm in rp.arms], rp.seeds))}
    position = [grid[key] for key in zip(tables.runs["family"], tables.runs["arm"], tables.runs["seed"],
                                         strict=True)]
    runs = tables.runs.iloc[np.argsort(position, kind="stable")].reset_index(drop=True)
    ranks = rank_frame(tele, tables.changes, runs)
    runs = run_stability(tele, ranks, runs, p)
    response = rank_response(ranks, runs)
    return Analysis(rp, tele, runs, ranks, layer_table(tele, tables.changes, runs, p.criterion.expand_min),
                    shapes(ranks, runs, p.criterion),
                    seed_agreement(ranks, runs, p.criterion, p.null_permutations, p.alpha), response,
                    dose_response(runs, response), kick_pairs(runs))


def curves(a: Analysis, p: ReportParams) -> pd.DataFrame:
    """Mean effective rank of W, W − W₀ and ∂L/∂W (over layers and seeds) and mean train loss, per
    family × spike size, against step."""
    tele = a.telemetry
    loss = tele[(tele["scope"] == MODEL_SCOPE) & (tele["metric"] == "train_loss")].merge(a.runs[["run", "family", "arm"]])
    parts = [step_curves(loss.rename(columns={"value": "train_loss"}), ["family", "arm"], {"train_loss": "mean"})]
    for matrix in MATRICES:
        r = a.ranks[a.ranks["matrix"] == matrix].rename(columns={"value": f"effective_rank_{matrix}"})
        parts.append(step_curves(r, ["family", "arm"], {f"effective_rank_{matrix}": "mean"}))
    return pd.concat(parts, ignore_index=True)


def metrics(a: Analysis, p: ReportParams) -> dict:
    """Numbers for ``metrics.json`` (``dvc metrics diff``): run outcomes, plateau and stability per
    family × size; healthy shape fractions per family × matrix; the dose–response; layer movement;
    median between-seed R² per matrix."""
    out: dict = {"runs": {}, "shapes": {}, "dose": {}, "layers": {}, "seed_agreement_r2_median": {}}
    for (family, arm), g in a.runs.groupby(["family", "arm"], sort=False):
        out["runs"].setdefault(family, {})[arm] = {
            "final_test_acc_mean": float(g["final_test_acc"].mean()) if "final_test_acc" in g else math.nan,
            "final_train_loss_mean": float(g["final_train_loss"].mean()) if "final_train_loss" in g else math.nan,
            "plateau_progress_mean": float(g["plateau_progress"].mean()),
            "plateau_reached_runs": int(g["plateau_reached"].sum()),
            "setback_mean": float(g["setback"].replace(math.inf, np.nan).mean()),
            "destabilised_runs": int(g["destabilised"].sum()), "diverged_runs": int((g["outcome"] == "diverged").sum()),
            "rank_jump_mean": float(g["rank_jump"].mean())}
    healthy = a.shapes[a.shapes["role"] == "healthy"]
    for (family, matrix), g in healthy.groupby(["family", "matrix"], sort=False):
        out["shapes"].setdefault(family, {})[matrix] = {
            "hypothesis4_fraction": float(g["hypothesis4"].mean()), "monotone_fraction": float(g["monotone"].mean()),
            **{"n_" + label.replace("→", "_to_").replace(" ", "_"): int((g["label"] == label).sum())
               for label in SHAPES}}
    for (family, arm), g in a.dose.groupby(["family", "arm"], sort=False):
        out["dose"].setdefault(family, {})[arm] = {f"response_{m}_mean": float(g[f"response_{m}"].mean())
                                                   for m in MATRICES}
    lay = a.layers.merge(a.runs[a.runs["role"] == "healthy"][["run", "family"]], on="run")
    for family, g in lay.groupby("family", sort=False):
        out["layers"][family] = {"moved_median": float(g["moved"].median()), "room_fraction": float(g["room"].mean()),
                                 "r0_over_rmax_median": float((g["r0"] / g["r_max"]).median())}
    for matrix, g in a.agreement.groupby("matrix", sort=False) if len(a.agreement) else ():
        moving = g[~g["flat"]]
        out["seed_agreement_r2_median"][matrix] = float(moving["r2"].median())
        out.setdefault("seed_agreement_null", {})[matrix] = {
            "r2_null_mean_median": float(moving["r2_null_mean"].median()),
            "r2_null_q_median": float(moving["r2_null_q"].median()),
            "beyond_null_layers": int((moving["p_null"] <= p.alpha).sum()), "moving_layers": len(moving)}
    for (family, size), g in a.kicks.groupby(["family", "kick"], sort=False) if len(a.kicks) else ():
        out.setdefault("kicks", {}).setdefault(family, {})[f"x{size:g}"] = {
            "kick_jump_mean": float(g["kick_jump"].mean()), "spike_jump_mean": float(g["spike_jump"].mean()),
            "kick_destabilised_runs": int(g["kick_destabilised"].sum()),
            "kick_relative_mean": float(g["kick_relative"].mean())}
    return out
