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
# # Protocol D — Rank evolution survey: MLP, CNN and transformer, healthy and unstable
#
# **Question** (seed 001, research question 4 and Protocol D). How does the effective rank of each
# weight matrix evolve during training? Does it follow the agenda's characteristic trajectory
# *expansion → compression → plateau* (success criterion 4), or the "smooth, monotonically
# decreasing" effective rank of its §4 hypothesis — or is it noisy and unstructured (falsifier 4)?
# And what does an induced instability look like in the spectrum: rank inflation, as §4 suggests?
#
# **Protocol.** Three families — an MLP on the flattened 8×8 digits, a CNN on the digit images
# (BatchNorm), and a decoder-only transformer (Llama block, RMSNorm) on character-level
# Shakespeare — each trained with AdamW over several seeds in three arms: *healthy*; *lr_spike*
# (learning rate multiplied for a short window in mid-run; identical to the healthy run before
# it); *no_norm* (normalisation layers removed). Every weight matrix (conv kernels matricised) is
# measured at a cadence: effective rank, stable rank, nuclear norm, power-law exponent α, κ.
# The hypothesis-4 criterion, the shape labels, the between-seed agreement, the setback and the
# rank signature are defined precisely in `gradience.studies.rank_survey`; this notebook reads the
# runs of the training stage `rank_survey_runs`, plots and compares.

# %% tags=["parameters"]
stage = "rank_survey"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/rank_survey/

# %%
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import base, rank_survey

ctx = base.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
plots.set_theme()
arm_order = [a.name for a in R.arms]
print(f"profile={R.profile}  seeds={R.seeds}  families={R.families}  arms={arm_order}")
for f in R.families:
    fp = R.family(f)
    print(f"  {f}: steps={fp.steps:,} lr={fp.lr:g} batch={fp.batch_size}")
c = P.criterion
print(f"criterion: smoothing {c.smoothing_window} points, expansion ≥ {c.expand_min:.0%}, "
      f"compression ≥ {c.compress_min:.0%}, plateau: last {c.plateau_fraction:.0%} within {c.plateau_tol:.0%}")

# %% [markdown]
# ## The runs
# The training stage wrote the telemetry (tidy parquet: `run, step, scope, metric, value`) and one
# row per run to `reports/rank_survey/tables/`. The analysis adds each run's setback and largest
# rank jump, the shape of every per-layer trajectory, the between-seed agreement and the rank
# signatures of the unstable arms.

# %%
results = rank_survey.analyse(ctx.tables, P)
runs = results.runs
cols = ["family", "arm", "seed", "outcome", "final_train_loss", "final_test_loss", "final_test_acc",
        "setback", "destabilised", "rank_jump"]
runs[[c for c in cols if c in runs]].round(3)

# %%
layers = rank_survey.layer_frame(results.telemetry, runs)
layers["layer"] = layers["scope"].map(rank_survey.short_name)
layers = layers.merge(results.shapes[["run", "scope", "label"]], on=["run", "scope"], how="left")
layers["step_frac"] = layers["step"] / layers["family"].map({f: R.family(f).steps for f in R.families})
model = results.telemetry[results.telemetry.scope == "model"].pivot_table(
    index=["run", "step"], columns="metric", values="value").reset_index().merge(runs[["run", "family", "arm", "seed"]], on="run")

# %% [markdown]
# ## Healthy training: per-layer effective-rank trajectories
# Small multiples, one panel per weight matrix, one line per seed; the colour is the shape label the
# criterion assigns to that trajectory (the first of: expansion→compression→plateau,
# expansion→compression, monotone compression, compression→expansion, expansion, compression, flat).

# %%
healthy = layers[layers.arm == R.healthy_arm]
for family in R.families:
    d = healthy[(healthy.family == family) & (healthy.step > 0)]
    g = sns.relplot(data=d, x="step", y="value", hue="label", col="layer", units="run", estimator=None,
                    kind="line", col_wrap=4, height=2.4, aspect=1.2, hue_order=list(rank_survey.SHAPES),
                    facet_kws={"sharey": False})
    g.set(xscale="log")
    g.set_axis_labels("step", "effective rank")
    g.figure.suptitle(f"{family}: effective rank per layer, healthy arm (one line per seed)", y=1.03)
    plots.save(g.figure, out_dir, f"effective_rank_{family}")

# %% [markdown]
# ## All tracked metrics, per layer (healthy arm, relative to initialisation)
# Effective rank, stable rank, nuclear norm, power-law exponent α and κ, each divided by its value
# at step 0 (mean over seeds); one line per weight matrix. κ = σ_max/σ_min jitters with σ_min,
# so its panel is noisy by construction.

# %%
metrics = list(rank_survey.SIGNATURE_METRICS)
tel = results.telemetry[(results.telemetry.scope != "model") & results.telemetry.metric.isin(metrics)]
tel = tel.merge(runs[["run", "family", "arm"]], on="run")
tel = tel[tel.arm == R.healthy_arm].copy()
tel["relative"] = tel["value"] / tel.groupby(["run", "scope", "metric"])["value"].transform("first")
tel["layer"] = tel["scope"].map(rank_survey.short_name)
for family in R.families:
    d = tel[(tel.family == family) & (tel.step > 0)]
    g = sns.relplot(data=d, x="step", y="relative", hue="layer", col="metric", col_order=metrics, kind="line",
                    errorbar=None, height=2.6, aspect=1.1, facet_kws={"sharey": False})
    g.set(xscale="log", yscale="log")
    g.set_axis_labels("step", "value / value at step 0 (log)")
    g.figure.suptitle(f"{family}: spectral metrics per layer, healthy arm (mean over seeds)", y=1.04)
    plots.save(g.figure, out_dir, f"metrics_{family}")

# %% [markdown]
# ## Healthy vs unstable: loss and effective-rank overlays
# The spike window is shaded. Until the spike starts, the spike arm *is* the healthy run (same seed,
# data and initialisation), so any difference after it is the spike's doing.

# %%
fig, axes = plt.subplots(1, len(R.families), figsize=(4.2 * len(R.families), 3.4), squeeze=False)
for ax, family in zip(axes[0], R.families, strict=True):
    d = model[(model.family == family) & (model.step > 0)]
    sns.lineplot(data=d, x="step", y="train_loss", hue="arm", hue_order=arm_order, errorbar=("pi", 100), ax=ax)
    start, end = rank_survey.family_spike_window(R, family)
    ax.axvspan(start, end, color="grey", alpha=0.2, label="spike window")
    ax.set(yscale="log", title=f"{family}: train loss", ylabel="train loss (log)")
fig.tight_layout()
plots.save(fig, out_dir, "loss_by_arm")

for family in R.families:
    d = layers[(layers.family == family) & (layers.step > 0)]
    g = sns.relplot(data=d, x="step", y="value", hue="arm", col="layer", kind="line", errorbar=("pi", 100),
                    col_wrap=4, height=2.4, aspect=1.2, hue_order=arm_order, facet_kws={"sharey": False})
    g.set_axis_labels("step", "effective rank")
    g.figure.suptitle(f"{family}: effective rank per layer, healthy vs unstable arms (mean and range over seeds)",
                      y=1.03)
    start, end = rank_survey.family_spike_window(R, family)
    for ax in g.axes.flat:
        ax.axvspan(start, end, color="grey", alpha=0.2)
    plots.save(g.figure, out_dir, f"overlay_{family}")

# %% [markdown]
# ## The rank signature of each unstable arm
# Each metric of the unstable run over the same metric of the healthy run (same seed and layer), on a
# log₂ scale (−1: halved, +1: doubled): right after the spike (for arms without a spike: at the end),
# and at the end of the run. One point per layer × seed; the table gives the medians of ratio − 1.

# %%
sig = results.signature.melt(id_vars=["family", "arm", "seed", "scope", "metric"],
                             value_vars=["excess_after", "excess_end"], var_name="when", value_name="excess")
sig["when"] = sig["when"].map({"excess_after": "after the event", "excess_end": "end of run"})
sig["log2_ratio"] = np.log2(1 + sig["excess"])
g = sns.catplot(data=sig, x="metric", y="log2_ratio", hue="family", col="arm", row="when", kind="strip",
                order=metrics, hue_order=R.families, dodge=True, height=3.0, aspect=1.6, size=3, alpha=0.7)
for ax in g.axes.flat:
    ax.axhline(0, color="grey", lw=1)
    ax.tick_params(axis="x", rotation=20)
g.set_axis_labels("metric", "log₂(unstable / healthy)")
g.figure.suptitle("Rank signature of the unstable arms (per layer × seed)", y=1.03)
plots.save(g.figure, out_dir, "signature")
display(results.signature.groupby(["arm", "family", "metric"])[["excess_after", "excess_end"]].median().unstack("metric").round(3))

# %% [markdown]
# ## Shapes by family and arm, and the between-seed agreement

# %%
counts = results.shapes.groupby(["family", "arm", "label"]).size().rename("trajectories").reset_index()
g = sns.catplot(data=counts, y="label", x="trajectories", hue="arm", col="family", kind="bar",
                order=list(rank_survey.SHAPES), hue_order=arm_order, col_order=R.families, height=3.2, aspect=1.0)
g.set_axis_labels("layer × seed trajectories", "shape")
g.figure.suptitle("Effective-rank trajectory shapes (criterion in the study module)", y=1.04)
plots.save(g.figure, out_dir, "shape_counts")
display(results.agreement.round(3))

# %% [markdown]
# ## Findings vs the seed
# Verdicts are computed by `gradience.studies.rank_survey.findings` from the runs above; the seed
# column comes from the repository's claim registry. Each unstable arm gets its own two rows (the
# arm is named in the measured column). An unstable arm's rows are *inconclusive* when the arm did
# not actually destabilise training (setback below threshold in most runs); its measured rank
# signature is still shown. Oscillation after an instability (the other half of the §4 phrase) is
# visible in the overlays but not scored. `write_report` also writes `metrics.json` and the curves
# for `dvc plots`.

# %%
table = base.write_report(stage, results, P, out_dir)
display(Markdown(table.drop(columns="id").to_markdown(index=False)))
