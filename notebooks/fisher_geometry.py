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
# # Protocol C — Fisher information geometry against the weight spectra
#
# **Question** (seed 001, question 3 and hypothesis 3). Is the Fisher information — the metric of
# the model's output distribution on parameter space — related to the weight spectra during
# training, is gradient descent implicitly close to natural gradient when training is stable, and
# does instability come with an extremely anisotropic Fisher? Hypothesis 3: "stable training
# maintains Fisher–weight spectral alignment above a threshold T"; falsifier 3: "Fisher and weight
# spectra are unrelated in practice".
#
# **Protocol.** The character-level Llama LM of Protocol A, trained by full-batch GD in a *stable*
# regime (small η, clipping) and an *unstable* one (η ramped far past the edge 2/λ_max until the run
# diverges). Every `cadence_every` steps, on a fixed measurement batch (the training windows; one
# sample = one window), the probe forms all per-sample gradients (`torch.func.vmap`) and measures
# the **empirical** Fisher (observed labels) and the **sampled ("true")** Fisher (labels drawn from
# the model) through their n × n Gram matrix: top eigenvalues, tr F, tr F², the participation ratio
# (tr F)²/tr F² (low = anisotropic), the decay exponent of √λ_i (comparable to the weights' α), the
# Fisher–weight alignment A — the share of tr F, and the overlap of F's top eigenvector, inside the
# span of each weight matrix's top singular pair, relative to a random direction — and
# cos(∇L, (F + δλ₁I)⁻¹∇L) at relative dampings δ.
# Definitions and verdict rules are in `gradience.studies.fisher_geometry` and
# `gradience.telemetry.probes`; this notebook reads the runs of the training stage
# `fisher_geometry_runs`, plots and compares.

# %% tags=["parameters"]
stage = "fisher_geometry"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/fisher_geometry/

# %%
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import base
from gradience.studies import fisher_geometry as fg

ctx = base.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
plots.set_theme()
order = [r.name for r in R.regimes]
A = P.analysis
print(f"profile={R.profile}  steps={R.steps}  cadence every {R.cadence_every}  seeds={R.seeds}  "
      f"model={R.model.model_dump()}  data={R.data.model_dump()}")
print(f"Fisher kinds {R.fisher.kinds}; verdicts use the {A.kind!r} Fisher, NG alignment at δ = {A.damping:g}")

# %% [markdown]
# ## The runs
# The training stage `fisher_geometry_runs` wrote the telemetry, the singular-value snapshots and one
# row per run to `reports/fisher_geometry/tables/`. `analyse` summarises every run from
# `analysis.from_step` to before divergence and tests the co-variation of the metric pairs.

# %%
results = fg.analyse(ctx.tables, P)
series, summary, coupling = results.series, results.summary, results.coupling
live = series.dropna(subset=["fisher_top1"])
cols = ["regime", "seed", "lambda_max_init", "lr", "outcome", "diverged_at", "final_train_loss", "share_min",
        "share_median", "overlap_min", "overlap_median", "ng_alignment_median", "eff_dim_min", "fisher_alpha_median",
        "weight_alpha_median"]
summary[cols].round(3)

# %% [markdown]
# ## Training: loss and learning rate

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
sns.lineplot(data=series, x="step", y="train_loss", hue="regime", units="seed", estimator=None, hue_order=order, ax=axes[0])
axes[0].set(title="Training loss (full batch)", ylabel="cross-entropy (nats)", yscale="log")
sns.lineplot(data=series, x="step", y="lr", hue="regime", units="seed", estimator=None, hue_order=order, ax=axes[1])
axes[1].set(title="Learning rate η", ylabel="η", yscale="log")
fig.tight_layout()
plots.save(fig, out_dir, "training")

# %% [markdown]
# ## The Fisher spectrum: top eigenvalues, and its shape
# Left: top eigenvalues of the sampled Fisher, one seed per regime. Right: the participation ratio
# (tr F)²/tr F² — the number of directions the Fisher effectively spans (at most n).

# %%
first = live[live.seed == R.seeds[0]]
top = [f"fisher_top{i + 1}" for i in range(min(R.fisher.top_k, 10))]
eig = first.melt(id_vars=["regime", "step"], value_vars=top, var_name="eigenvalue", value_name="λ")
eig["i"] = eig.eigenvalue.str.replace("fisher_top", "").astype(int)
fig, axes = plt.subplots(1, len(order) + 1, figsize=(4.3 * (len(order) + 1), 3.8))
for ax, name in zip(axes, order, strict=False):
    sns.lineplot(data=eig[eig.regime == name], x="step", y="λ", hue="i", palette="viridis", ax=ax,
                 legend="full" if ax is axes[0] else False)
    ax.set(yscale="log", title=f"{name}: top eigenvalues of F ({A.kind})", ylabel="eigenvalue")
sns.lineplot(data=live, x="step", y="fisher_eff_dim", hue="regime", units="seed", estimator=None, hue_order=order, ax=axes[-1])
axes[-1].set(title="Participation ratio (tr F)² / tr F²", ylabel="effective dimension", yscale="log")
fig.tight_layout()
plots.save(fig, out_dir, "fisher_spectrum")

# %% [markdown]
# ## Fisher against the weight spectra
# Decay exponents (Fisher: √λ_i ∝ i^-α; weights: σ_i ∝ i^-α, mean over matrices), and the two
# alignment measures A(t), each relative to a random direction (1 = chance, dashed): the share of
# tr F inside the weights' top singular subspace, and the overlap of F's top eigenvector with it.
# The dotted line is the threshold T (the lowest A of any stable run from step `from_step` on).

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 3.9))
alpha = live.melt(id_vars=["regime", "seed", "step"], value_vars=["fisher_alpha", "alpha_mean"], var_name="spectrum",
                  value_name="α")
sns.lineplot(data=alpha, x="step", y="α", hue="regime", style="spectrum", units="seed", estimator=None, hue_order=order,
             ax=axes[0])
axes[0].set(title="Power-law decay exponents", ylabel="α")
axes[0].legend(fontsize=7, ncol=2)
thresholds = results.thresholds
titles = {"share": "A(t): share of tr F in W's top singular subspace", "overlap": "A(t): F's top eigenvector in it"}
for ax, (measure, col) in zip(axes[1:], fg.ALIGNMENTS.items(), strict=True):
    sns.lineplot(data=live[live.step >= A.from_step], x="step", y=col, hue="regime", units="seed", estimator=None,
                 hue_order=order, ax=ax, lw=1)
    ax.axhline(1.0, ls="--", c="grey", lw=1, label="chance")
    ax.axhline(thresholds[measure]["threshold"], ls=":", c="k", lw=1, label="T (stable minimum)")
    ax.set(yscale="log", title=titles[measure], ylabel="enrichment over chance")
    ax.legend(fontsize=7)
fig.tight_layout()
plots.save(fig, out_dir, "fisher_vs_weights")

per = results.per_matrix
fig, ax = plt.subplots(figsize=(7, 3.8))
sns.barplot(data=per, y="matrix", x="value", hue="regime", hue_order=order, ax=ax, errorbar=None)
ax.set(xscale="log", title="Share of tr F in each matrix's top singular subspace (mean over time, seeds)",
       xlabel="share (chance = r²/mn)", ylabel="")
plots.save(fig, out_dir, "fisher_share_per_matrix")

# %% [markdown]
# ### Does the H3 verdict hinge on where the window starts?
# Alignment has to form from a random initialisation. The verdict uses the window from
# `analysis.from_step`; this table repeats the threshold test with windows starting later.

# %%
results.sensitivity.round(3)

# %% [markdown]
# ## Natural-gradient alignment cos(∇L, (F + δλ₁I)⁻¹∇L)
# 1 = the gradient already points along the natural gradient. Both Fishers, every damping.

# %%
ng = [c for c in series.columns if c.startswith(("emp_ng_alignment@", "true_ng_alignment@"))]
longng = live.melt(id_vars=["regime", "seed", "step"], value_vars=ng, var_name="which", value_name="cos")
longng["fisher"] = longng.which.str.split("_").str[0].map({"emp": "empirical", "true": "true"})
longng["damping δ"] = longng.which.str.split("@").str[1]
g = sns.relplot(data=longng, x="step", y="cos", hue="regime", style="damping δ", col="fisher", kind="line", height=3.4,
                aspect=1.4, hue_order=order, errorbar=None)
g.set_axis_labels("step", "cos(∇L, F⁻¹∇L)")
g.figure.suptitle("Natural-gradient alignment (mean over seeds)", y=1.04)
plots.save(g.figure, out_dir, "ng_alignment")

# %% [markdown]
# ## Do Fisher and weight metrics co-vary over time?
# Detrended (log) series before divergence, cross-correlated within ±`max_lag` cadence points and
# tested against phase-randomised surrogates; Bonferroni over the pairs.

# %%
coupling[["regime", "seed", "weight_metric", "fisher_metric", "n", "best_lag", "best_r", "p_value",
          "significant", "significant_bonferroni"]].round(3)

# %% [markdown]
# ## Findings vs the seed
# Verdicts are computed by `gradience.studies.fisher_geometry.findings` from the runs above; the
# seed column comes from the repository's claim registry. `write_report` also writes `metrics.json`
# and the curves for `dvc plots`.

# %%
table = base.write_report(stage, results, P, out_dir)
display(Markdown(table.drop(columns="id").to_markdown(index=False)))
