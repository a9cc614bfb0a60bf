# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Protocol D — Rank evolution survey: MLP, CNN and transformer, and a learning-rate spike dose–response
#
# **Question** (seed 001, research question 4 and Protocol D). How does the effective rank of each
# weight matrix evolve during training? Does it follow the agenda's characteristic trajectory
# *expansion → compression → plateau* (success criterion 4), or the "smooth, monotonically
# decreasing" effective rank of its §4 hypothesis — or is it noisy and unstructured (falsifier 4)?
# And does an induced instability show up as rank inflation or a sudden spectral change?
#
# **What is measured.** Three families — an MLP on the flattened 8×8 digits, a CNN on the digit
# images (BatchNorm), a decoder-only transformer (Llama block) on character-level Shakespeare —
# trained with AdamW over three seeds. For every weight matrix (conv kernels matricised) and every
# cadence step, the effective rank exp(H(σ/Σσ)) of three matrices:
# **W** (the weights), **W − W₀** (the change since initialisation) and **∂L/∂W** (the gradient of
# the mini-batch that makes the next update). W starts near its largest possible effective rank at
# a random initialisation, so an "expansion" of W has almost no room; W − W₀ and the gradient show
# the structure that training adds.
#
# **Plateau.** Whether a run trained to a loss plateau is checked per run: the least-squares trend
# of the smoothed train loss over the last `window_fraction` of the steps changes it by at most
# `max_progress` of its total decrease (report keys; a trend, so mini-batch noise does not count as
# progress; the table below lists every run). The shape claims count it as a budget.
#
# **Instability as a dose–response.** Each seed is also trained with the learning rate multiplied by
# each spike size for 4 % of the run from mid-run; ×1 is the healthy run, which the spiked runs
# follow exactly until the spike starts. Per spike size: the loss setback (the share of the progress
# so far that is lost) and the effective-rank response of W, W − W₀ and ∂L/∂W right after the spike
# relative to the healthy run of the same seed — with the spread over seeds.
#
# **Matched kick.** A large update moves W, and moving W changes its spectrum whether or not training
# is destabilised. The control arm `kick_x<k>` gets, at the spike's start, a Gaussian random matrix
# added to each weight matrix with the Frobenius norm of the ×k spike's update over its window (same
# seed, measured by retraining that spike run up to the window's end), then trains at the healthy
# learning rate. The sudden-change claim needs the destabilised spike's rank jump to exceed its
# non-destabilising kick's (paired over seeds).
#
# **Structured, not random.** The between-seed R² of each layer's trajectory is set against a null:
# the same R² after putting each seed's values in an independent random time order (199
# permutations); a layer counts as structured when it beats that null at α and reaches `r2_min`.
#
# **Free choices** (the seed fixes none of these): the datasets and model sizes; AdamW with weight
# decay 0.01 (lr 3·10⁻³ for the digit models, 10⁻² for the transformer); batch 128 (digits) and 16
# windows of 32 characters (text); run lengths and schedules (the digit models reach the loss plateau
# at a constant learning rate well before the spike; the character-level transformer's loss still
# falls at a constant rate far beyond the 2-core budget, so it is trained as language models are:
# constant, then decayed linearly to a tenth between 60 % and 80 % of the run, its plateau read on the
# last 20 %, where its rank dynamics are slowed by the low rate too); the spike window (from 50 % of
# the run for 4 % of it), sizes and the kick's size, Gaussian direction and single step; the
# mini-batch gradient rather than the full-batch one; every threshold of the criteria below and the
# tests' level α (report keys). The definitions are in
# `gradience.studies.rank_survey.trajectories` (the criteria) and `gradience.studies.rank_survey.analysis`.

# %% tags=["parameters"]
stage = "rank_survey"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/rank_survey/

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import notebook
from gradience.studies.rank_survey import analysis as rank_survey
from gradience.studies.rank_survey import runs as survey_runs

ctx = notebook.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
plots.set_theme()
arms = [arm.name for arm in R.arms]  # healthy, spike sizes, matched kicks
matrices = [rank_survey.LABELS[m] for m in rank_survey.MATRICES]
print(f"profile={R.profile}  seeds={R.seeds}  families={R.families}  spike sizes={R.sizes}  "
      f"matched kicks={R.spike.kick_sizes}")
for f in R.families:
    fp = R.family(f)
    print(f"  {f}: steps={fp.steps:,} lr={fp.lr:g} batch={fp.batch_size} spike window={survey_runs.family_spike_window(R, f)}"
          f" cooldown={fp.cooldown.model_dump() if fp.cooldown else None}")
c, pl = P.criterion, P.plateau
print(f"loss plateau: the last {pl.window_fraction:.0%} of steps move ≤ {pl.max_progress:.1%} of the loss decrease")
print(f"shape criterion: smoothing {c.smoothing_window} points, expansion ≥ {c.expand_min:.0%}, "
      f"compression ≥ {c.compress_min:.0%}, rank plateau: last {c.plateau_fraction:.0%} within {c.plateau_tol:.0%}")

# %% [markdown]
# ## The runs: cost, plateau, setback
# One row per run: CPU seconds (one thread), `plateau_progress` (how far the smoothed train loss
# still moves over the last part of the run, as a share of its total decrease) and whether it
# reached the plateau, the setback and whether the run was destabilised.

# %%
results = rank_survey.analyse(ctx.tables, P)
runs = results.runs
cols = ["family", "arm", "seed", "outcome", "cpu_seconds", "final_train_loss", "final_test_acc", "plateau_progress",
        "plateau_reached", "setback", "destabilised"]
display(runs[[c for c in cols if c in runs]].round(4))
print(f"CPU seconds: {runs['cpu_seconds'].sum():.0f} in all; per family and run: "
      + ", ".join(f"{f} {g.mean():.1f}" for f, g in runs.groupby("family", sort=False)["cpu_seconds"]))
display(runs.groupby(["family", "arm"], sort=False)["plateau_reached"].agg(["sum", "count"])
        .rename(columns={"sum": "reached the plateau", "count": "runs"}).T)

# %%
model = results.telemetry[results.telemetry.scope == "model"].pivot_table(
    index=["run", "step"], columns="metric", values="value").reset_index().merge(runs[["run", "family", "arm", "seed"]])
fig, axes = plt.subplots(1, len(R.families), figsize=(4.4 * len(R.families), 3.5), squeeze=False)
for ax, family in zip(axes[0], R.families, strict=True):
    d = model[(model.family == family) & (model.step > 0)]
    sns.lineplot(data=d, x="step", y="train_loss", hue="arm", hue_order=arms, errorbar=("pi", 100), ax=ax)
    start, end = survey_runs.family_spike_window(R, family)
    steps = R.family(family).steps
    ax.axvspan(start, end, color="red", alpha=0.15, label="spike window")
    ax.axvspan((1 - pl.window_fraction) * steps, steps, color="grey", alpha=0.15, label="plateau check")
    ax.set(yscale="log", title=f"{family}: train loss (mean, range over seeds)", ylabel="train loss (log)")
    ax.legend(fontsize=8, title="spike size")
fig.tight_layout()
plots.save(fig, out_dir, "loss_by_spike_size")

# %% [markdown]
# ## Healthy training: effective rank of W, W − W₀ and the gradient
# Effective rank divided by its largest possible value `r_max` (W₀'s numerical rank, min(m, n)),
# one line per weight matrix (mean over seeds), log step axis. W starts close to 1 (random
# initialisation is nearly isotropic); W − W₀ starts from the first updates.

# %%
ranks = results.ranks.merge(results.layers[["run", "scope", "r_max"]], on=["run", "scope"])
ranks["relative"] = ranks["value"] / ranks["r_max"]
ranks["layer"] = ranks["scope"].map(rank_survey.short_name)
ranks["of"] = ranks["matrix"].map(rank_survey.LABELS)
healthy = ranks[(ranks.role == "healthy") & (ranks.step > 0)]
fig, axes = plt.subplots(3, len(R.families), figsize=(4.6 * len(R.families), 9.5), squeeze=False, sharex="col")
for j, family in enumerate(R.families):
    for i, of in enumerate(matrices):
        ax = axes[i, j]
        d = healthy[(healthy.family == family) & (healthy.of == of)]
        sns.lineplot(data=d, x="step", y="relative", hue="layer", errorbar=None, ax=ax, legend=(i == 0))
        ax.set(xscale="log", title=f"{family}: {of}", ylabel="r_eff / r_max")
        if i == 0:
            ax.legend(fontsize=6, ncol=2)
fig.suptitle("Effective rank per weight matrix, healthy runs (mean over seeds)", y=1.0)
fig.tight_layout()
plots.save(fig, out_dir, "effective_rank_trajectories")

# %% [markdown]
# ## Trajectory shapes and between-seed agreement (healthy runs)
# Each healthy layer × seed trajectory gets one shape label (criterion in `rank_survey.trajectories`); the
# between-seed R² asks whether seeds trace the same per-layer curve (falsifier 4). The layer table
# gives how far each W moved (‖W_T − W₀‖_F / ‖W₀‖_F) and where it started (r_eff(W₀) / r_max).

# %%
sh = results.shapes[results.shapes.role == "healthy"].copy()
sh["of"] = sh["matrix"].map(rank_survey.LABELS)
counts = sh.groupby(["family", "of", "label"]).size().rename("trajectories").reset_index()
g = sns.catplot(data=counts, y="label", x="trajectories", hue="of", col="family", kind="bar",
                order=list(rank_survey.SHAPES), hue_order=matrices, col_order=R.families, height=3.2, aspect=1.1)
g.set_axis_labels("layer × seed trajectories", "shape")
g.figure.suptitle("Effective-rank trajectory shapes, healthy runs", y=1.04)
plots.save(g.figure, out_dir, "shape_counts")
lay = results.layers.merge(runs[runs.role == "healthy"][["run", "family"]])
lay["r0 / r_max"] = lay["r0"] / lay["r_max"]
lay["layer"] = lay["scope"].map(rank_survey.short_name)
display(lay.groupby(["family", "layer"], sort=False)[["r_max", "r0 / r_max", "moved"]].mean().round(3))
display(results.agreement.assign(of=lambda d: d["matrix"].map(rank_survey.LABELS))
        .pivot_table(index=["family", "scope"], columns="of", values=["r2", "r2_null_q", "p_null"], sort=False)
        .round(3))

# %% [markdown]
# ## Learning-rate spike: dose–response
# Per spike size (×1 = healthy): the loss setback, and the effective-rank response (spike run over
# the healthy run of the same seed, minus one; median over layers) of W, W − W₀ and ∂L/∂W right
# after the spike. One point per seed; the line joins the seed means. The dashed line is the
# setback that counts as destabilised (setback axis: linear below 0.01, logarithmic above).

# %%
dose = results.dose.copy()
panels = [("setback", "loss setback")] + [(f"response_{m}", f"r_eff response of {rank_survey.LABELS[m]}")
                                          for m in rank_survey.MATRICES]
fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
for ax, (col, title) in zip(axes[0], panels, strict=True):
    d = dose.replace([np.inf, -np.inf], np.nan)
    sns.lineplot(data=d, x="lr_spike", y=col, hue="family", hue_order=R.families, errorbar=None, ax=ax,
                 legend=(col == "setback"))
    sns.scatterplot(data=d, x="lr_spike", y=col, hue="family", hue_order=R.families, ax=ax, legend=False,
                    alpha=0.6, s=20)
    ax.set(xscale="log", xlabel="learning-rate spike size (×)", title=title,
           ylabel="share of progress lost" if col == "setback" else "spike / healthy − 1")
    ax.set_xticks(R.sizes, [f"×{z:g}" for z in R.sizes])
    ax.axhline(P.setback_min if col == "setback" else 0, color="grey", lw=1, ls="--" if col == "setback" else "-")
    if col == "setback":
        ax.set_yscale("symlog", linthresh=0.01)  # a blown-up BatchNorm CNN loses hundreds of times its progress
fig.tight_layout()
plots.save(fig, out_dir, "dose_response")
display(dose.groupby(["family", "arm"], sort=False)[["setback", "destabilised", "response_weight", "response_change",
                                                     "response_gradient", "rank_jump"]]
        .agg(["mean", "std"]).round(3))

# %% [markdown]
# ## Spike against a random kick of the same norm
# Per family and seed: the largest |Δ log r_eff(W)| over layers across the spike window, in the spike
# run and in the run kicked by a random matrix of the spike's window-update norm (trained at the
# healthy learning rate), with both runs' setbacks. The dashed line is the healthy runs' largest
# change over any window of that length (their null).

# %%
kicks = results.kicks
display(kicks.round(3))
if len(kicks):
    long = pd.concat([kicks.assign(arm="spike", jump=kicks["spike_jump"]),
                      kicks.assign(arm="matched kick", jump=kicks["kick_jump"])])
    long["condition"] = long["family"] + " ×" + long["kick"].map("{:g}".format)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sns.stripplot(data=long, x="condition", y="jump", hue="arm", dodge=True, ax=ax, size=6)
    for i, (_, g) in enumerate(long.groupby("condition", sort=False)):
        ax.hlines(g["rank_jump_null"].mean(), i - 0.4, i + 0.4, color="grey", ls="--", lw=1)
    ax.set(yscale="log", ylabel="max over layers |Δ log r_eff(W)|", xlabel="", title="rank jump across the window")
    fig.tight_layout()
    plots.save(fig, out_dir, "spike_vs_kick")

# %% [markdown]
# ## Rank around the spike
# Effective rank (mean over layers and seeds) against step for each spike size; the spike window is
# shaded.

# %%
fig, axes = plt.subplots(3, len(R.families), figsize=(4.6 * len(R.families), 9.0), squeeze=False, sharex="col")
for j, family in enumerate(R.families):
    start, end = survey_runs.family_spike_window(R, family)
    for i, of in enumerate(matrices):
        ax = axes[i, j]
        d = ranks[(ranks.family == family) & (ranks.of == of) & (ranks.step > 0)]
        d = d.groupby(["arm", "seed", "step"], as_index=False)["relative"].mean()
        sns.lineplot(data=d, x="step", y="relative", hue="arm", hue_order=arms, errorbar=None, ax=ax, legend=(i == 0))
        ax.axvspan(start, end, color="red", alpha=0.15)
        ax.set(title=f"{family}: {of}", ylabel="mean r_eff / r_max")
fig.suptitle("Effective rank by spike size (mean over layers and seeds)", y=1.0)
fig.tight_layout()
plots.save(fig, out_dir, "rank_by_spike_size")

# %% [markdown]
# ## Findings vs the seed
# Verdicts are computed by `gradience.studies.rank_survey.findings` from the runs above through
# `gradience.reporting.judged`: "not reproduced" only where every budget the claim needs is met
# (healthy runs at the loss plateau; for W, layers that moved and had room to expand; three seeds;
# a spike size that destabilised training, with its healthy control and its non-destabilising
# matched kick), otherwise "not comparable" with the budget in the reason. The seed column comes from the repository's claim registry. The
# shape and agreement claims get one row per matrix (W, W − W₀, ∂L/∂W); the spike claims one row per
# family, with the dose–response in the measured column. `write_report` also writes `metrics.json`
# and the curves for `dvc plots`.
#
# Each claim's kind (event, comparison or absence, in the registry) sets what the verdict needs: an
# event the runs show is reproduced whatever the budget; a comparison or an absence needs every budget
# for either answer; and a comparison's negative also needs the power to have seen the claimed effect
# (the smallest detectable effect, stated), otherwise it is "inconclusive": for agreement, the
# permutation null's 95 % quantile against `r2_min`; for the sudden change, the smallest mean
# log(spike jump / kick jump) the paired test detects against the spike's log jump over the healthy
# null.

# %%
table = notebook.write_report(stage, results, P, out_dir)
display(Markdown(plots.markdown_table(table.drop(columns="id"))))
