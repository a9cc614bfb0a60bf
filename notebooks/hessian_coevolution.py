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
# # Protocol A — Hessian–weight co-evolution at the edge of stability
#
# **Question** (seed 001, question 1 and hypothesis 1). Does the weight spectrum predict the
# Hessian spectrum, do they co-evolve, and — on the way to instability — does the weight spectrum
# change *first*? Hypothesis 1: "the weight spectrum leads the Hessian spectrum by K steps during
# approach to instability"; falsifier 1: "no significant cross-correlation between weight and
# Hessian spectra".
#
# **Protocol.** A small decoder-only transformer (Llama block, from `transformers`) learns
# character-level language modelling on Shakespeare (`data/text/shakespeare.txt`; the paper profile
# loads TinyShakespeare through `datasets`). It is trained by **full-batch gradient descent**, so the
# stability edge is exactly λ_max(H) = 2/η (with Adam the edge concerns the preconditioned Hessian,
# which the probes do not see). Three regimes, with η in units of the initial edge 2/λ_max(θ₀):
# *stable* (small η, gradient clipping), *marginal* (η for which progressive sharpening brings
# λ_max to 2/η within the run) and *unstable* (η ramped linearly to far past the edge; divergence is
# a recorded outcome). Every `cadence_every` steps: full SVD of every weight matrix (the training
# loop), the top-10 Hessian eigenvalues (ARPACK Lanczos on `torch.func` HVPs), and the Hutchinson
# trace with its standard error, all on the whole training set — the loss GD descends. Lead–lag:
# detrended (log) series, cross-correlation r(k) = corr(x_t, y_{t+k}), significance against
# phase-randomised surrogates. Every definition is in `gradience.studies.hessian_coevolution` and
# `gradience.studies.lm_regimes`; this notebook reads the runs of the training stage
# `hessian_coevolution_runs`, plots and compares.

# %% tags=["parameters"]
stage = "hessian_coevolution"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/hessian_coevolution/

# %%
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import base
from gradience.studies import hessian_coevolution as hc

ctx = base.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
plots.set_theme()
order = [r.name for r in R.regimes]
print(f"profile={R.profile}  steps={R.steps}  cadence every {R.cadence_every}  seeds={R.seeds}  "
      f"model={R.model.model_dump()}  data={R.data.model_dump()}")
print(f"Hessian: top-{R.hessian.top_k} Lanczos (tol {R.hessian.lanczos_tol:g}), Hutchinson with "
      f"{R.hessian.hutchinson_probes} Rademacher probes, on {'all' if R.hessian.measure_batch == 0 else R.hessian.measure_batch} training windows")

# %% [markdown]
# ## The runs
# The training stage `hessian_coevolution_runs` wrote the telemetry (`run, step, scope, metric, value`),
# the singular-value snapshots and one row per run (with λ_max(θ₀) and the η actually used) to
# `reports/hessian_coevolution/tables/`. `analyse` adds the edge summary per run and the lead–lag
# tests of every weight × Hessian pair.

# %%
results = hc.analyse(ctx.tables, P)
series, summary, lead_lag = results.series, results.summary, results.lead_lag
cols = ["regime", "seed", "lambda_max_init", "lr", "outcome", "diverged_at", "ratio_max", "edge_step",
        "ratio_after_edge", "frac_at_edge", "final_train_loss"]
summary[cols].round(3)

# %% [markdown]
# ## Hutchinson: how precise is the trace?
# The seed asks for 100 Hutchinson probes per trace; the default profile uses the number printed
# below (CPU budget; the paper profile uses 100). The standard error of each estimate, relative to
# the trace, says what that costs.

# %%
hu = results.hutchinson
print(f"{hu['probes']} probes per estimate; relative standard error: median {hu['relative_stderr_median']:.3f}, "
      f"90th percentile {hu['relative_stderr_p90']:.3f}; HVPs per measurement: median {hu['hvp_per_measurement_median']:.0f}")

# %% [markdown]
# ## Loss and sharpness against the edge 2/η
# Left: training loss. Right: λ_max·η/2 (1 = the edge of stability of GD); one line per seed.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
sns.lineplot(data=series, x="step", y="train_loss", hue="regime", units="seed", estimator=None, hue_order=order,
             ax=axes[0])
axes[0].set(title="Training loss (full batch; the last point of a diverged run is its blow-up)",
            ylabel="cross-entropy (nats)", yscale="log")
sns.lineplot(data=series.dropna(subset=["sharpness_over_edge"]), x="step", y="sharpness_over_edge", hue="regime",
             units="seed", estimator=None, hue_order=order, ax=axes[1])
axes[1].axhline(1.0, ls="--", c="grey", lw=1, label="edge λ_max = 2/η")
axes[1].set(yscale="log", title="Sharpness relative to the edge", ylabel="λ_max · η / 2")
axes[1].legend(fontsize=8)
fig.tight_layout()
plots.save(fig, out_dir, "loss_and_edge")

# %% [markdown]
# ## The Hessian spectrum: top-10 eigenvalues and trace
# One seed per regime; the trace band is ± 2 standard errors of the Hutchinson estimate.

# %%
top = [f"hessian_top{i + 1}" for i in range(R.hessian.top_k)]
first = series[series.seed == R.seeds[0]].dropna(subset=["hessian_top1"])
eig = first.melt(id_vars=["regime", "step"], value_vars=top, var_name="eigenvalue", value_name="λ")
eig["index"] = eig.eigenvalue.str.replace("hessian_top", "").astype(int)
fig, axes = plt.subplots(1, len(order) + 1, figsize=(4.2 * (len(order) + 1), 3.8))
for ax, name in zip(axes, order, strict=False):
    sns.lineplot(data=eig[eig.regime == name], x="step", y="λ", hue="index", palette="viridis", ax=ax,
                 legend="full" if ax is axes[0] else False)
    ax.plot(first[first.regime == name].step, 2 / first[first.regime == name].lr, "k--", lw=1, label="2/η")
    ax.set(yscale="symlog", title=f"{name}: top-{R.hessian.top_k} Hessian eigenvalues", ylabel="eigenvalue")
axes[0].legend(title="i", fontsize=7, ncol=2, loc="lower right")
ax = axes[-1]
for name in order:
    g = first[first.regime == name]
    ax.plot(g.step, g.hessian_trace, label=name)
    ax.fill_between(g.step, g.hessian_trace - 2 * g.hessian_trace_stderr, g.hessian_trace + 2 * g.hessian_trace_stderr, alpha=0.3)
ax.set(yscale="symlog", title="Hutchinson trace ± 2 s.e.", xlabel="step", ylabel="tr H")
ax.legend(fontsize=8)
fig.tight_layout()
plots.save(fig, out_dir, "hessian_spectrum")

# %% [markdown]
# ## The weight spectrum over the same steps
# κ (largest over matrices), largest spectral norm, mean stable rank and mean power-law exponent α
# of the singular values (σ_i ∝ i^-α), before divergence (the window the lead–lag analysis uses).

# %%
wm = ["kappa", "spectral_norm_max", "stable_rank_mean", "alpha_mean"]
div = series.run.map(summary.set_index("run").diverged_at)
before = series[~(series.step >= div)]
long = before.melt(id_vars=["regime", "seed", "step"], value_vars=wm, var_name="metric", value_name="value")
g = sns.relplot(data=long, x="step", y="value", hue="regime", units="seed", estimator=None, col="metric", kind="line",
                col_wrap=4, height=3, aspect=1.15, facet_kws={"sharey": False}, hue_order=order)
g.axes[0].set_yscale("log")
g.set_titles("{col_name}")
g.figure.suptitle("Weight-spectrum metrics over training (one line per seed)", y=1.04)
plots.save(g.figure, out_dir, "weight_spectrum")

# %% [markdown]
# ## Lead–lag of the primary pair
# r(k) = corr(x_t, y_{t+k}) of the detrended (log) series before divergence; k > 0: the weight metric
# leads. The dotted band is the 95 % range of |r| for independent white noise of that length
# (a reference only; the verdicts use the surrogate test, which respects autocorrelation).

# %%
x, y = P.lead_lag.primary
cc = results.cross_correlation
g = sns.relplot(data=cc, x="lag_steps", y="r", hue="seed", col="regime", kind="line", marker="o", height=3.2,
                aspect=1.2, col_order=[r for r in order if r in set(cc.regime)], palette="colorblind")
n_typ = lead_lag[lead_lag.primary].n.median()
for ax in g.axes.flat:
    ax.axvline(0, c="grey", lw=0.8)
    ax.axhspan(-1.96 / n_typ**0.5, 1.96 / n_typ**0.5, color="grey", alpha=0.15)
g.set_axis_labels("lag k (steps; > 0: weights lead)", f"r({x}, {y})")
g.figure.suptitle(f"Cross-correlation of {x} and {y} before divergence", y=1.04)
plots.save(g.figure, out_dir, "primary_cross_correlation")
lead_lag[lead_lag.primary][["regime", "seed", "n", "best_lag", "lead_steps", "best_r", "r_lag0", "p_value", "direction"]].round(3)

# %% [markdown]
# ## Every weight × Hessian pair
# Per pair: how many runs are coupled beyond the surrogates (p < α), and the median lead (steps;
# > 0: weights lead) over those runs. Pairs are many and runs few: read this as a map, with the
# Bonferroni-corrected count in the findings below.

# %%
heat = results.pairs.set_index(["weight_metric", "hessian_metric"])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
sns.heatmap(heat.significant.unstack(), annot=True, fmt=".0f", cmap="Blues", ax=axes[0], cbar=False)
axes[0].set(title=f"runs with p < {P.lead_lag.alpha} (of {summary.shape[0]})", xlabel="Hessian metric", ylabel="weight metric")
sns.heatmap(heat.lead.unstack(), annot=True, fmt=".0f", cmap="coolwarm", center=0, ax=axes[1], cbar=False)
axes[1].set(title="median lead of coupled runs (steps; > 0 weights lead)", xlabel="Hessian metric", ylabel="")
fig.tight_layout()
plots.save(fig, out_dir, "lead_lag_pairs")

# %% [markdown]
# ## Findings vs the seed
# Verdicts are computed by `gradience.studies.hessian_coevolution.findings` from the runs above; the
# seed column comes from the repository's claim registry. `write_report` also writes `metrics.json`
# and the curves for `dvc plots`.

# %%
table = base.write_report(stage, results, P, out_dir)
display(Markdown(table.drop(columns="id").to_markdown(index=False)))
