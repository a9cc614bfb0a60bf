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
# # Protocol B — Is grokking preceded by critical slowing down?
#
# **Question** (seed 001, hypothesis 2). "Grokking is preceded by diverging autocorrelation time in
# layer-wise spectral metrics." The agenda's phase-transition picture also expects rising
# fluctuations (variance) in the gradients; its falsifier is "no detectable precursors to phase
# transitions". Seed 000 concluded that spectral metrics are *diagnostic, not predictive*.
#
# **Protocol.** `a + b mod 97`, the grokking stage's MLP, AdamW, full batch, dense telemetry at a
# fixed cadence (train/test loss and accuracy, spectral metrics of every weight matrix, gradient
# norm, cosine between successive measured gradients, gradient noise scale B_simple). One condition
# that groks (weight decay 1) and non-grokking negative controls (weight decay 0 and the seed's
# 0.01), each over several seeds. For every run the transition onset t* is detected (test accuracy
# leaves chance for good); the series in the pre-transition window [memorisation, t*) are detrended
# and their rolling variance, lag-1 autocorrelation and integrated autocorrelation time are tested
# for a rising trend (Kendall τ) against phase-randomised surrogates. Controls are analysed over
# windows of the same length. Every definition and the verdict rule are stated in
# `gradience.studies.grokking_transition`; this notebook reads the runs of the training stage
# `grokking_transition_runs`, analyses, plots and compares.

# %% tags=["parameters"]
stage = "grokking_transition"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/grokking_transition/

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import base
from gradience.studies import grokking_transition as gt

ctx = base.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
plots.set_theme()
names = [c.name for c in R.conditions]
EW = P.early_warning
print(f"profile={R.profile}  steps={R.steps:,}  cadence every {R.cadence_every} steps  seeds={R.seeds}  "
      f"noise subsample={R.gradients.noise_examples}  surrogates={EW.n_surrogates} ({EW.surrogate})")

# %% [markdown]
# ## The runs, and their transitions
# The training stage wrote the telemetry and one row per run (everything needed to rerun it) to
# `reports/grokking_transition/tables/`. The analysis adds, per run, t_mem, the onset t*, the 0.5
# midpoint, the grok step and the analysis window, then the early-warning statistics of every
# series. All steps below are optimiser steps.

# %%
results = gt.analyse(ctx.tables, P)
tele, tr, ew, model = results.telemetry, results.transitions, results.early_warning, results.model
tr[["condition", "seed", "outcome", "grokked", "t_mem", "t_onset", "t_mid", "grok_step", "window_start",
    "window_end", "final_test_acc"]]

# %% [markdown]
# ## Accuracy, and where the transition was detected
# Dashed lines: onset t* of each grokking run (the end of its pre-transition window).

# %%
acc = model.melt(id_vars=["run", "step", "condition"], value_vars=["train_acc", "test_acc"],
                 var_name="split", value_name="accuracy")
g = plots.facet_lines(acc, "step", "accuracy", hue="split", col="condition", units="run", col_order=names,
                      title="Train and test accuracy (one line per seed)")
for ax, name in zip(g.axes.flat, names, strict=True):
    for t in tr.loc[(tr.condition == name) & tr.grokked, "t_onset"]:
        ax.axvline(t, ls="--", c="grey", lw=0.8)
plots.save(g.figure, out_dir, "accuracy_and_onset")

# %% [markdown]
# ## Gradient statistics over training
# Global gradient norm, cosine between gradients one cadence interval apart, and the gradient
# noise scale B_simple = tr Σ / ‖G‖² (McCandlish et al. 2018) on a fixed training subsample.

# %%
grad = model.melt(id_vars=["run", "step", "condition"], value_vars=["grad_norm", "grad_cosine", "grad_noise_scale"],
                  var_name="statistic", value_name="value").dropna()
g = sns.relplot(data=grad[grad.step > 0], x="step", y="value", hue="condition", row="statistic", kind="line",
                units="run", estimator=None, lw=0.7, height=2.4, aspect=3.2, hue_order=names,
                facet_kws={"sharey": False})
for ax, stat in zip(g.axes.flat, ["grad_norm", "grad_cosine", "grad_noise_scale"], strict=True):
    ax.set(yscale="linear" if stat == "grad_cosine" else "log", ylabel=stat)
g.figure.suptitle("Gradient statistics (one line per run)", y=1.02)
plots.save(g.figure, out_dir, "gradient_statistics")

# %% [markdown]
# ## One layer-wise series up close
# The stable rank of the hidden layer in the pre-transition window: the series (log10), its
# Gaussian-detrended residual and the three rolling indicators, grokking runs vs controls.

# %%
close_up = gt.indicator_curves(tele, tr, "hidden.weight", "stable_rank", EW)
if len(close_up):
    close_up["kind"] = close_up.grokked.map({True: "grokking run", False: "control"})
    g = sns.relplot(data=close_up, x="step", y="value", hue="kind", units="run", estimator=None, row="quantity",
                    kind="line", lw=0.8, height=2.0, aspect=3.5, facet_kws={"sharey": False},
                    row_order=["series", "residual", *gt.INDICATORS])
    g.set_titles("{row_name}")
    g.figure.suptitle("hidden.weight stable rank before the transition", y=1.02)
    plots.save(g.figure, out_dir, "indicators_hidden_stable_rank")

# %% [markdown]
# ## Kendall τ of each indicator, grokking runs vs controls
# One point per run and series; filled markers: significant against the surrogates (τ > 0 and p < α).

# %%
done = ew[ew.skipped == ""].copy()
done["series"] = done.scope.str.replace(".weight", "", regex=False) + ":" + done.metric
done["kind"] = done.grokked.map({True: "grokking run", False: "control"})
if len(done):
    g = sns.catplot(data=done, x="kendall_tau", y="series", hue="kind", col="indicator", kind="strip",
                    col_order=list(gt.INDICATORS), height=6, aspect=0.7, dodge=True, size=4, alpha=0.75)
    for ax in g.axes.flat:
        ax.axvline(0, c="grey", lw=0.8)
    g.set_axis_labels("Kendall τ of the rolling indicator", "")
    g.figure.suptitle("Trend of each early-warning indicator before the transition", y=1.02)
    plots.save(g.figure, out_dir, "kendall_tau")

# %% [markdown]
# ## The tests behind the verdicts
# For each test: per run, the fraction of its series that signal. The hypothesis needs this to be
# common in grokking runs (≥ `min_hit_fraction`) *and* higher than in the non-grokking controls.

# %%
fractions = results.fractions.copy()
fractions["kind"] = fractions.grokked.map({True: "grokking run", False: "control"})
if len(fractions):
    fig, ax = plt.subplots(figsize=(8, 3.4))
    sns.stripplot(data=fractions, x="test", y="fraction", hue="kind", dodge=True, size=7, ax=ax)
    ax.axhline(EW.min_hit_fraction, ls="--", c="grey", lw=1, label="min_hit_fraction")
    ax.axhline(EW.alpha, ls=":", c="grey", lw=1, label="α (chance rate)")
    ax.set(title="Fraction of series with a significant rising indicator, per run", xlabel="",
           ylabel="fraction of series", ylim=(-0.05, 1.05))
    ax.legend(fontsize=8)
    plots.save(fig, out_dir, "signalling_fractions")
display(pd.DataFrame(results.tests).T[["group", "indicator", "hit_fraction", "control_fraction", "p_mannwhitney",
                                       "verdict", "why"]])

# %% [markdown]
# ## Every signal: trend, significance rate, lead time
# Medians over runs. `lead_steps_grok`: steps between the alarm (indicator above its baseline for
# good) and t*; `xcorr_lag_steps`: lag of the largest cross-correlation of the series' changes with
# test accuracy's changes around t* (positive: the series moves first).

# %%
results.signals.round(3)

# %% [markdown]
# ## How far the test reaches
# - **Deterministic dynamics.** Training is full batch, so the residuals around the trend are slow
#   deterministic deviations, not noise: critical-slowing-down theory assumes a noise-driven system
#   near a bifurcation, which this is at best loosely. At this cadence the residuals of most series
#   have lag-1 autocorrelation close to 1 (see the close-up above).
# - **Two estimators of autocorrelation time.** H2 is tested with Sokal's model-free integrated
#   autocorrelation time, whose rolling estimate is noisy (the tests show it is far less powerful
#   than lag-1 autocorrelation on a genuine AR(1) slowing-down series). Under an AR(1) model the
#   autocorrelation time is (1+ρ₁)/(1−ρ₁), a monotone map of ρ₁, so the lag-1 row is also the
#   AR(1)-model test of H2 (Kendall τ is rank-based and unchanged by the map).
# - **Retrospective.** Detrending uses the whole pre-transition window, and t* is known; a
#   verdict of "supported" is a precursor in hindsight, not a forecast.
# - **Units of evidence.** Series within one run are correlated, so the comparison with the controls
#   is made per run (Mann–Whitney U over runs), not per series.

# %% [markdown]
# ## Findings vs the seed
# Verdicts are computed by `gradience.studies.grokking_transition.findings` from the runs above; the
# seed column comes from the repository's claim registry. `write_report` also writes `metrics.json`
# and the curves for `dvc plots`.

# %%
table = base.write_report(stage, results, P, out_dir)
display(Markdown(table.drop(columns="id").to_markdown(index=False)))
