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
# **Protocol.** The character-level Llama LM of Protocol A, trained by full-batch GD in three arms:
# *unstable* (η ramped far past the edge 2/λ_max until the run diverges), *fast_stable* (the same
# ramp, with η capped at `edge_cap`·2/λ_max(θ_t), λ_max tracked at every cadence step, so the run stays
# below the edge) and the slow *stable* arm (small η, clipping; fewer seeds, shown for context). The
# comparisons are judged between `fast_stable` and `unstable` (`analysis.reference`): the two share
# their η schedule up to the edge, so a difference is not just small η against large η. λ_max is
# tracked in both ramped arms. Every `cadence_every` steps, on a fixed measurement batch (the training windows; one
# sample = one window), the probe forms all per-sample gradients G (`torch.func.vmap`) and measures
# the **empirical** Fisher (observed labels) and the **sampled ("true")** Fisher (labels drawn from
# the model), F = GᵀG/n, through their n × n Gram matrix.
#
# **Choices the seed does not fix** (all in `params.yaml`, defined in `gradience.studies.fisher_geometry.analysis`):
# - *NG alignment inside F's span.* F has rank ≤ n = 64 in ~10⁴ parameters, so F⁻¹∇L is undefined
#   outside its span, and with a damping λ it is ∇L/λ there: the full-space cos(∇L, (F+λI)⁻¹∇L)
#   mostly measures how much of ∇L lies *outside* the span. We project ∇L onto span(F),
#   ∇L_F = P_F∇L, and report cos(∇L_F, F⁺∇L_F) (pseudo-inverse; `analysis.damping` = 0) together
#   with the fraction ‖∇L_F‖²/‖∇L‖² of the gradient that lies in the span.
# - *Alignment A(t) relative to W₀.* The share of tr F (or of F's top eigenvector) inside the span of
#   each weight matrix's top singular pair {u₁v₁ᵀ}, divided by the same share for the same F with
#   the *initial* weights W₀'s singular pairs: A = 1 at step 0 by construction, and A > 1 means the
#   Fisher concentrates in what the weights have learned, beyond what any network has at init.
# - *Matched loss, on a fixed loss grid.* Every run is read at the same `analysis.grid_points` loss
#   levels from `analysis.start_loss` down to L* (`analysis.matched_loss`): at each level, the first
#   passage of the training loss below it, interpolated between the two cadence points around it.
#   Every run so has the same number of points in the window, however fast it falls (a minimum over
#   many raw points of a slow run against one over two of a fast run would be biased). The H3
#   statistic is min A over the grid; "at L*" values are the grid's last level.
# - *Falsifier 3 against a cross-seed null.* A over W₀ cannot fail: W_t − W₀ is written by the very
#   gradients whose span F is. At L*, the runs store F's top eigenvectors and their weights; the
#   share of F_i in the top singular subspaces of its own weights W_i is ranked among the shares of
#   F_i in the weights W_j of the other seeds of the same regime at the same loss. Were the Fisher
#   unrelated to its own weights, the rank would be uniform.
# - *H3 threshold on held-out seeds.* T is chosen on `analysis.calibration_seeds` (best balanced
#   accuracy separating stable from unstable min A) and scored on the other seeds.

# %% tags=["parameters"]
stage = "fisher_geometry"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/fisher_geometry/

# %%
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import notebook
from gradience.studies.fisher_geometry import analysis as fg

ctx = notebook.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
plots.set_theme()
order = [r.name for r in R.regimes]
A = P.analysis
print(f"profile={R.profile}  steps={R.steps}  cadence every {R.cadence_every}  seeds={R.seeds}  "
      f"model={R.model.model_dump()}  data={R.data.model_dump()}")
print(f"Fisher kinds {R.fisher.kinds}; verdicts use the {A.kind!r} Fisher, NG alignment in span(F) at δ = {A.damping:g} "
      f"(0: F⁺); matched loss L* = {A.matched_loss:g} nats, H3 window {A.start_loss:g} → L*; "
      f"calibration seeds {A.calibration_seeds}, the others held out")

# %% [markdown]
# ## The runs
# The training stage `fisher_geometry_runs` wrote the telemetry, the singular-value snapshots and one
# row per run (with its CPU seconds) to `reports/fisher_geometry/tables/`. `analyse` finds each run's
# matched-loss step t* and summarises it there and over the matched window.

# %%
results = fg.analyse(ctx.tables, P)
series, summary, coupling = results.series, results.summary, results.coupling
live = series.dropna(subset=["fisher_top1"])
cols = ["regime", "seed", "lr", "outcome", "diverged_at", "cpu_seconds", "matched_step", "n_points", "share_min", "overlap_min",
        "ng_alignment_at_match", "span_fraction_at_match", "fisher_eff_dim_at_match", "eff_dim_min"]
summary[cols].round(3)

# %% [markdown]
# ## Training: loss and learning rate
# The dashed line is the matched loss L*; the regimes are compared where each run first reaches it.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
sns.lineplot(data=series, x="step", y="train_loss", hue="regime", units="seed", estimator=None, hue_order=order, ax=axes[0])
axes[0].axhline(A.matched_loss, ls="--", c="grey", lw=1, label=f"L* = {A.matched_loss:g}")
axes[0].axhline(A.start_loss, ls=":", c="grey", lw=1, label=f"window start {A.start_loss:g}")
axes[0].set(title="Training loss (full batch)", ylabel="cross-entropy (nats)", yscale="log")
axes[0].legend(fontsize=7)
sns.lineplot(data=series, x="step", y="lr", hue="regime", units="seed", estimator=None, hue_order=order, ax=axes[1])
axes[1].set(title="Learning rate η", ylabel="η", yscale="log")
fig.tight_layout()
plots.save(fig, out_dir, "training")

# %% [markdown]
# ## λ_max and the edge of stability in the ramped arms
# Left: λ_max of the training-set Hessian, tracked at every cadence step in the ramped arms. Right:
# η·λ_max/2 (1 = the edge of stability for GD, dashed). The capped arm's η uses the λ_max of the
# previous measurement, so sharpening between two cadence steps can carry it briefly past its cap.

# %%
tracked = series.dropna(subset=["lambda_max"]) if "lambda_max" in series else series.iloc[:0]
if len(tracked):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    sns.lineplot(data=tracked, x="step", y="lambda_max", hue="regime", units="seed", estimator=None, ax=axes[0], lw=1)
    axes[0].set(title="λ_max(H)", yscale="log")
    sns.lineplot(data=tracked, x="step", y="sharpness_over_edge", hue="regime", units="seed", estimator=None, ax=axes[1], lw=1)
    axes[1].axhline(1.0, ls="--", c="grey", lw=1)
    axes[1].set(title="η·λ_max/2", yscale="log")
    fig.tight_layout()
    plots.save(fig, out_dir, "sharpness")

# %% [markdown]
# ## The Fisher spectrum: top eigenvalues, and its shape
# Left: top eigenvalues of the analysed Fisher, one seed per regime. Right: the participation ratio
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
# ## Natural-gradient alignment, inside F's span
# Left: the fraction of ‖∇L‖² inside span(F). Middle: cos(∇L_F, F⁺∇L_F) inside the span (the
# verdict's quantity), one dot per run and cadence step before divergence, against the training loss
# so the regimes are read at equal loss (L* dashed; loss decreases to the right).
# Right: the full-space cos(∇L, (F + δλ₁I)⁻¹∇L) (δ = 0.01), which tracks √(1 − span fraction) wherever
# most of ∇L lies outside the span — why the verdict does not use it.

# %%
full = f"ng_alignment@{fg.full_damping(A, R):.0e}"
fig, axes = plt.subplots(1, 3, figsize=(16, 3.9))
sns.lineplot(data=live, x="step", y="span_fraction", hue="regime", units="seed", estimator=None, hue_order=order,
             ax=axes[0], lw=1)
axes[0].set(title="‖∇L_F‖² / ‖∇L‖²: gradient inside span(F)", ylabel="fraction", ylim=(0, 1.02))
sns.scatterplot(data=live[live.step > 0], x="train_loss", y="ng_alignment", hue="regime", hue_order=order, ax=axes[1],
                s=9, alpha=0.6, linewidth=0)
axes[1].axvline(A.matched_loss, ls="--", c="grey", lw=1)
axes[1].set(title="cos(∇L_F, F⁺∇L_F) in span(F)", xlabel="train loss (nats)", ylabel="cos")
axes[1].invert_xaxis()
sns.lineplot(data=live, x="step", y=full, hue="regime", units="seed", estimator=None, hue_order=order, ax=axes[2], lw=1)
axes[2].set(title=f"full space, {full.split('@')[1]}·λ₁ damping (not used)", ylabel="cos")
fig.tight_layout()
plots.save(fig, out_dir, "ng_alignment")

# %% [markdown]
# ## Fisher–weight alignment A(t), relative to the initial weights W₀
# A = 1 at step 0 (dashed). Left two panels: A for tr F and for F's top eigenvector, one dot per run
# and cadence step before divergence, against the training loss; the dotted line is T, chosen on the calibration seeds; the shaded band is the H3
# window (`start_loss` → L*). Right: the same share relative to a random direction (r²/mn), the
# null the analysis no longer uses — it is far above 1 already at W₀.

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 3.9))
titles = {"share": "A: tr F in W's top singular subspace / in W₀'s", "overlap": "A: F's top eigenvector, same ratio"}
for ax, (measure, col) in zip(axes, fg.ALIGNMENTS.items(), strict=False):
    sns.scatterplot(data=live[live.step > 0], x="train_loss", y=col, hue="regime", hue_order=order, ax=ax, s=9,
                    alpha=0.6, linewidth=0)
    ax.axhline(1.0, ls="--", c="grey", lw=1, label="W₀ (null)")
    ax.axhline(results.h3[measure]["threshold"], ls=":", c="k", lw=1, label="T (calibration seeds)")
    ax.axvspan(A.matched_loss, A.start_loss, color="grey", alpha=0.12, label="H3 window")
    ax.set(yscale="log", title=titles[measure], xlabel="train loss (nats)", ylabel="A (over W₀)")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
sns.lineplot(data=live, x="step", y="fisher_share_enrichment", hue="regime", units="seed", estimator=None,
             hue_order=order, ax=axes[2], lw=1)
axes[2].axhline(1.0, ls="--", c="grey", lw=1)
axes[2].set(yscale="log", title="tr F share over a random direction (old null)", ylabel="share / (r²/mn)")
fig.tight_layout()
plots.save(fig, out_dir, "fisher_vs_weights")

per = results.per_matrix
fig, ax = plt.subplots(figsize=(7, 3.8))
sns.barplot(data=per, y="matrix", x="enrichment", hue="regime", hue_order=order, ax=ax, errorbar=None)
ax.axvline(1.0, ls="--", c="grey", lw=1)
ax.set(xscale="log", title="Per matrix: tr F share in W's top subspace / in W₀'s (mean over steps, seeds)",
       xlabel="enrichment over W₀", ylabel="")
plots.save(fig, out_dir, "fisher_share_per_matrix")

# %% [markdown]
# ## Falsifier 3: the Fisher of one seed against the weights of another
# At L*, the share of each run's (top-k) Fisher inside the top singular subspaces of its own weights
# (large dots) and of the weights of every other seed of the same regime (small dots). The verdict
# ranks the own share among the others (a mean rank fraction of 0.5 is the null).

# %%
cross = results.cross_seed
if len(cross):
    fig, ax = plt.subplots(figsize=(8, 3.8))
    sns.stripplot(data=cross[~cross.own], x="run", y="share", color="grey", size=3, ax=ax, jitter=0.15, legend=False)
    sns.stripplot(data=cross[cross.own], x="run", y="share", hue="regime", size=8, ax=ax, jitter=False)
    ax.set(yscale="log", title="share of F_i in W_j's top subspaces (large: j = i)", xlabel="")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    fig.tight_layout()
    plots.save(fig, out_dir, "cross_seed")
results.cross_test

# %% [markdown]
# ### The held-out H3 test, and its sensitivity to the matched level
# T from the calibration seeds (reference arm against the unstable one, min A over the loss grid);
# accuracy = mean of (held-out stable runs above T) and (held-out unstable runs at or below T). The
# verdict uses L* = `analysis.matched_loss`; the other rows move it.

# %%
results.sensitivity.round(3)

# %% [markdown]
# ## Do Fisher and weight metrics co-vary over time?
# Detrended (log) series before divergence, cross-correlated within ±`max_lag` cadence points and
# tested against phase-randomised surrogates; Bonferroni over the pairs.

# %%
coupling[["regime", "seed", "weight_metric", "fisher_metric", "n", "best_lag", "best_r", "p_value",
          "significant", "significant_bonferroni"]].round(3)

# %% [markdown]
# ## Findings vs the seed
# Verdicts are computed by `gradience.studies.fisher_geometry.findings` from the runs above and
# judged against the budgets each needs (compared runs at L*, held-out seeds, diverged unstable runs,
# runs with stored vectors); the regime comparisons are `analysis.reference` against `unstable`, the
# slow arm's values stated beside them. The seed column comes from the repository's claim registry. `write_report`
# also writes `metrics.json` and the curves for `dvc plots`.
#
# Each claim's kind (event, comparison or absence, in the registry) sets what the verdict needs: an
# event the runs show is reproduced whatever the budget; a comparison or an absence needs every budget
# for either answer; and a comparison's negative also needs the power to have seen the claimed effect
# (the smallest detectable effect, stated), otherwise it is "inconclusive".

# %%
table = notebook.write_report(stage, results, P, out_dir)
display(Markdown(plots.markdown_table(table.drop(columns="id"))))
