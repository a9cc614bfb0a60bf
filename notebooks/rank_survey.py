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
# rank signature are defined precisely in `gradience.studies.rank_survey`; this notebook runs,
# plots and compares.

# %% tags=["parameters"]
stage = "rank_survey"
params = None  # this stage's section of params.yaml; None reads it from params.yaml
out_dir = "reports/rank_survey"

# %%
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots, reporting
from gradience.config import load_stage_params
from gradience.studies import rank_survey

P = load_stage_params(stage, params)
plots.set_theme()
arm_order = [a.name for a in P.arms]
print(f"profile={P.profile}  seeds={P.seeds}  families={P.families}  arms={arm_order}")
for f in P.families:
    fp = P.family(f)
    print(f"  {f}: steps={fp.steps:,} lr={fp.lr:g} batch={fp.batch_size}")
c = P.criterion
print(f"criterion: smoothing {c.smoothing_window} points, expansion ≥ {c.expand_min:.0%}, "
      f"compression ≥ {c.compress_min:.0%}, plateau: last {c.plateau_fraction:.0%} within {c.plateau_tol:.0%}")

# %% [markdown]
# ## Run every family × arm × seed
# Telemetry (tidy parquet: `run, step, scope, metric, value`), one row per run (`runs.parquet`)
# and the per-layer shape classification (`shapes.parquet`) are written next to this notebook.

# %%
results = rank_survey.run(P, out_dir)
runs = results.runs
cols = ["family", "arm", "seed", "outcome", "final_train_loss", "final_test_loss", "final_test_acc",
        "setback", "destabilised", "rank_jump"]
runs[[c for c in cols if c in runs]].round(3)

# %%
layers = rank_survey.layer_frame(results.telemetry, runs)
layers["layer"] = layers["scope"].map(rank_survey.short_name)
layers = layers.merge(results.shapes[["run", "scope", "label"]], on=["run", "scope"], how="left")
layers["step_frac"] = layers["step"] / layers["family"].map({f: P.family(f).steps for f in P.families})
model = results.telemetry[results.telemetry.scope == "model"].pivot_table(
    index=["run", "step"], columns="metric", values="value").reset_index().merge(runs[["run", "family", "arm", "seed"]], on="run")

# %% [markdown]
# ## Healthy training: per-layer effective-rank trajectories
# Small multiples, one panel per weight matrix, one line per seed; the colour is the shape label the
# criterion assigns to that trajectory (the first of: expansion→compression→plateau,
# expansion→compression, monotone compression, compression→expansion, expansion, compression, flat).

# %%
healthy = layers[layers.arm == P.healthy_arm]
for family in P.families:
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
tel = tel[tel.arm == P.healthy_arm].copy()
tel["relative"] = tel["value"] / tel.groupby(["run", "scope", "metric"])["value"].transform("first")
tel["layer"] = tel["scope"].map(rank_survey.short_name)
for family in P.families:
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
fig, axes = plt.subplots(1, len(P.families), figsize=(4.2 * len(P.families), 3.4), squeeze=False)
for ax, family in zip(axes[0], P.families, strict=True):
    d = model[(model.family == family) & (model.step > 0)]
    sns.lineplot(data=d, x="step", y="train_loss", hue="arm", hue_order=arm_order, errorbar=("pi", 100), ax=ax)
    start, end = rank_survey.family_spike_window(P, family)
    ax.axvspan(start, end, color="grey", alpha=0.2, label="spike window")
    ax.set(yscale="log", title=f"{family}: train loss", ylabel="train loss (log)")
fig.tight_layout()
plots.save(fig, out_dir, "loss_by_arm")

for family in P.families:
    d = layers[(layers.family == family) & (layers.step > 0)]
    g = sns.relplot(data=d, x="step", y="value", hue="arm", col="layer", kind="line", errorbar=("pi", 100),
                    col_wrap=4, height=2.4, aspect=1.2, hue_order=arm_order, facet_kws={"sharey": False})
    g.set_axis_labels("step", "effective rank")
    g.figure.suptitle(f"{family}: effective rank per layer, healthy vs unstable arms (mean and range over seeds)",
                      y=1.03)
    start, end = rank_survey.family_spike_window(P, family)
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
                order=metrics, hue_order=P.families, dodge=True, height=3.0, aspect=1.6, size=3, alpha=0.7)
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
                order=list(rank_survey.SHAPES), hue_order=arm_order, col_order=P.families, height=3.2, aspect=1.0)
g.set_axis_labels("layer × seed trajectories", "shape")
g.figure.suptitle("Effective-rank trajectory shapes (criterion in the study module)", y=1.04)
plots.save(g.figure, out_dir, "shape_counts")
display(results.agreement.round(3))

# %% [markdown]
# ## Findings vs the seed
# Verdicts are computed by `gradience.studies.rank_survey.findings` from the runs above. An unstable
# arm's rows are *inconclusive* when the arm did not actually destabilise training (setback below
# threshold in most runs); its measured rank signature is still shown. Oscillation after an
# instability (the other half of the §4 phrase) is visible in the overlays but not scored.

# %%
table = reporting.findings_table(rank_survey.findings(results, P))
metrics_out = rank_survey.summary_metrics(results, P) | {"findings": table["verdict"].value_counts().to_dict()}
reporting.write_metrics(out_dir, metrics_out)
display(Markdown(table.to_markdown(index=False)))
