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
# *stable* (small η, gradient clipping; the control), *marginal* (η for which progressive sharpening
# brings λ_max to 2/η within the run) and *unstable* (η ramped linearly to far past the edge;
# divergence is a recorded outcome).
#
# **Measurements, every step** (default profile): the full SVD of every weight matrix, and λ_max
# of the training-set Hessian tracked by Lanczos warm-started from the previous step's top
# eigenvector (stopped at a relative residual of `hessian.track_tol`; a few HVPs per step). Every
# `hessian.full_every` steps a cold ARPACK Lanczos gives the top-10 eigenvalues — it also checks the
# tracked λ_max and restarts the tracking if it fell behind — and the Hutchinson trace with its
# standard error.
#
# **Lead–lag.** Cross-correlation r(k) = corr(x_t, λ_max,t+k) of a weight metric x with λ_max
# (log10), in two views: the **levels** (co-evolution is in the trends; detrending would remove
# it) and the **detrended residuals** (fluctuations about the trends). Significance against
# phase-randomised surrogates of x.
#
# **Ill-conditioning.** The seed's hypothesis is about conditioning ("weight matrix ill-conditioning
# (high κ) may precede Hessian ill-conditioning"), so κ is also tested against the Hessian's
# conditioning, λ₁/λ₁₀ and λ₁·P/tr H (P parameters), which exist only at the cold measurements
# (every `hessian.full_every` steps): the same tests with lags in cold points.
#
# **Cross-seed pairing null.** Every run of a regime shares its trends (sharpening, the η schedule),
# and trending levels beat phase surrogates whether or not a run's own spectra are coupled. The
# pairing null compares the coupling statistic of the matched pairs (κ and λ_max of the same run)
# with κ of run i against λ_max of run j of the same regime; its p-value is exact over the
# within-regime pairings, and its smallest value is 1/(number of pairings) (1/6 per regime of 3
# seeds; 1/72 over regimes of 3, 3 and 2 runs), which is the resolution a negative needs.
#
# **Free choices the seed does not fix** (stated here and in `gradience.studies.hessian_coevolution.analysis`):
# the model size, the corpus window, the regimes' η, the 200-step budget; the analysed window is
# every step before divergence; the **predicted lead** K (the seed gives no number): 1 ≤ K ≤ 30
# steps — a lead below one GD update cannot be causal, and a lead must fit inside the approach it
# precedes (the marginal runs sharpen from about 0.3 to 1 × 2/η in 30–60 steps); the lag range
# ±40 steps at a cadence of 1 step covers it. "Approaching instability" = the marginal and unstable
# runs that actually reached λ_max·η/2 ≥ 1.

# %% tags=["parameters"]
stage = "hessian_coevolution"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/hessian_coevolution/

# %%
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import notebook
from gradience.studies.hessian_coevolution import analysis as hc

ctx = notebook.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
LL = P.lead_lag
plots.set_theme()
order = [r.name for r in R.regimes]
print(f"profile={R.profile}  steps={R.steps}  cadence every {R.cadence_every}  seeds={R.seeds}  "
      f"model={R.model.model_dump()}  data={R.data.model_dump()}")
print(f"λ_max tracked every {R.cadence_every} step(s) to relative residual {R.hessian.track_tol:g}; every "
      f"{R.hessian.full_every} steps: cold top-{R.hessian.top_k} Lanczos (tol {R.hessian.lanczos_tol:g}) and "
      f"Hutchinson with {R.hessian.hutchinson_probes} Rademacher probes, on "
      f"{'all' if R.hessian.measure_batch == 0 else R.hessian.measure_batch} training windows")
print(f"lead–lag: lags ±{LL.max_lag} points = ±{LL.max_lag * R.cadence_every} steps; predicted lead "
      f"{LL.predicted_lead[0]}–{LL.predicted_lead[1]} steps; ≥ {LL.min_points} points per run; "
      f"{LL.surrogates} {LL.surrogate_kind} surrogates; α = {LL.alpha}")

# %% [markdown]
# ## The runs
# The training stage `hessian_coevolution_runs` wrote the telemetry (`run, step, scope, metric, value`),
# the singular-value snapshots and one row per run (with λ_max(θ₀), the η actually used and the CPU
# seconds) to `reports/hessian_coevolution/tables/`. `analyse` adds the edge summary per run and the
# lead–lag tests of every weight metric × λ_max pair in both views.

# %%
results = hc.analyse(ctx.tables, P)
series, summary, lead_lag = results.series, results.summary, results.lead_lag
cols = ["regime", "seed", "lambda_max_init", "lr", "outcome", "diverged_at", "n_points", "ratio_max", "edge_step",
        "ratio_after_edge", "frac_at_edge", "final_train_loss", "hvp_per_step", "cold_gap_max", "restarts",
        "cpu_seconds"]
summary[cols].round(3)

# %% [markdown]
# ## What λ_max every step costs
# HVPs per step of the warm-started tracking against the HVPs of one cold top-k Lanczos + Hutchinson
# measurement, the largest relative disagreement of the tracked λ_max with the cold Lanczos where
# both were measured, and the CPU seconds per run (the whole run: training, SVDs, probes).

# %%
hu = results.hutchinson
print(f"tracking: median {summary.hvp_per_step.median():.1f} HVPs per step (max over runs of the median "
      f"{summary.hvp_per_step.max():.1f}); cold top-{R.hessian.top_k} + trace: median "
      f"{hu['hvp_per_measurement_median']:.0f} HVPs per measurement")
print(f"tracked vs cold λ_max: largest relative gap {summary.cold_gap_max.max():.2e}; cold restarts "
      f"{int(summary.restarts.sum())} over {len(summary)} runs")
print(f"CPU seconds per run: {summary.groupby('regime', sort=False).cpu_seconds.median().round(1).to_dict()} "
      f"(median per regime); total {summary.cpu_seconds.sum():.0f} s")
print(f"Hutchinson ({hu['probes']} probes): relative standard error median {hu['relative_stderr_median']:.3f}, "
      f"90th percentile {hu['relative_stderr_p90']:.3f}")

# %% [markdown]
# ## λ_max against the edge 2/η, every step
# One panel per regime: λ_max of every seed (lines) and its edge 2/η (dashed, same colour; it
# falls along the unstable regime's η ramp). Below: training loss, and λ_max·η/2 (1 = the edge).

# %%
live = series.dropna(subset=["lambda_max"])
fig, axes = plt.subplots(2, len(order), figsize=(4.6 * len(order), 7.2), sharex=True)
palette = dict(zip(R.seeds, sns.color_palette("colorblind", len(R.seeds)), strict=False))
for j, name in enumerate(order):
    ax = axes[0, j]
    for seed, g in live[live.regime == name].groupby("seed"):
        ax.plot(g.step, g.lambda_max, color=palette[seed], lw=1, label=f"λ_max, seed {seed}")
        ax.plot(g.step, g.edge_2_over_lr, color=palette[seed], lw=1, ls="--", label=f"2/η, seed {seed}")
    ax.set(yscale="log", title=f"{name}: λ_max and 2/η", ylabel="eigenvalue")
    ax = axes[1, j]
    sns.lineplot(data=live[live.regime == name], x="step", y="sharpness_over_edge", hue="seed", palette=palette,
                 ax=ax, legend=False, lw=1)
    ax.axhline(1.0, ls="--", c="grey", lw=1)
    ax.set(yscale="log", title=f"{name}: λ_max·η/2 (1 = edge)", ylabel="λ_max · η / 2", xlabel="step")
axes[0, 0].legend(fontsize=7, ncol=2)
fig.tight_layout()
plots.save(fig, out_dir, "lambda_max_vs_edge")

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
sns.lineplot(data=series, x="step", y="train_loss", hue="regime", units="seed", estimator=None, hue_order=order, ax=ax)
ax.set(title="Training loss (full batch; a diverged run ends at its blow-up)", ylabel="cross-entropy (nats)", yscale="log")
fig.tight_layout()
plots.save(fig, out_dir, "loss")

# %% [markdown]
# ## The Hessian spectrum at the cold measurements: top-10 eigenvalues and trace
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
    g = live[(live.regime == name) & (live.seed == R.seeds[0])]
    ax.plot(g.step, g.edge_2_over_lr, "k--", lw=1, label="2/η")
    ax.set(yscale="symlog", title=f"{name}: top-{R.hessian.top_k} eigenvalues", ylabel="eigenvalue")
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
# ## Lead–lag of the primary pair, levels and residuals
# r(k) = corr(x_t, λ_max,t+k) before divergence; k > 0: the weight metric leads. Top row: the levels
# (log10, not detrended); bottom row: the Gaussian-detrended residuals. The shaded band marks the
# predicted lead (k from the smallest to the largest predicted K); the grey horizontal band is the
# 95 % range of |r| for independent white noise of that length (a reference only: the verdicts use
# the surrogate test, which respects autocorrelation).

# %%
x = LL.primary
cc = results.cross_correlation
regimes_cc = [r for r in order if r in set(cc.regime)]
g = sns.relplot(data=cc, x="lag_steps", y="r", hue="seed", col="regime", row="view", kind="line", height=3.0,
                aspect=1.3, col_order=regimes_cc, row_order=list(hc.VIEWS), palette="colorblind",
                facet_kws={"sharey": False})
n_typ = lead_lag[lead_lag.primary].n.median()
for ax in g.axes.flat:
    ax.axvline(0, c="grey", lw=0.8)
    ax.axvspan(*LL.predicted_lead, color="tab:green", alpha=0.12)
    ax.axhspan(-1.96 / n_typ**0.5, 1.96 / n_typ**0.5, color="grey", alpha=0.15)
g.set_titles("{row_name} — {col_name}")
g.set_axis_labels("lag k (steps; > 0: weights lead)", f"r({x}, λ_max)")
g.figure.suptitle(f"Cross-correlation of {x} and λ_max before divergence (green: predicted lead)", y=1.03)
plots.save(g.figure, out_dir, "primary_cross_correlation")
lead_lag[lead_lag.primary][["view", "regime", "seed", "n", "lead_steps", "best_r", "r_lag0", "p_value",
                            "direction"]].round(3)

# %% [markdown]
# ## Every weight metric × λ_max
# Per view and weight metric: runs coupled beyond the surrogates (p < α, of those tested) and the
# median lead (steps; > 0: weights lead) over those runs. Pairs are several and runs few: read this
# as a map, with the Bonferroni-corrected counts in the findings below.

# %%
heat = results.pairs.set_index(["weight_metric", "view"])
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
sns.heatmap(heat.significant.unstack()[list(hc.VIEWS)], annot=True, fmt=".0f", cmap="Blues", ax=axes[0], cbar=False)
axes[0].set(title=f"runs with p < {LL.alpha} (of {summary.shape[0]})", xlabel="view", ylabel="weight metric (vs λ_max)")
sns.heatmap(heat.lead.unstack()[list(hc.VIEWS)], annot=True, fmt=".0f", cmap="coolwarm", center=0, ax=axes[1], cbar=False)
axes[1].set(title="median lead of coupled runs (steps; > 0 weights lead)", xlabel="view", ylabel="")
fig.tight_layout()
plots.save(fig, out_dir, "lead_lag_pairs")

# %% [markdown]
# ## The Hessian's conditioning at the cold measurements
# λ₁/λ₁₀ (top) and λ₁·P/tr H (where the Hutchinson trace exceeds 2 standard errors; middle) and κ at
# the same steps (bottom), every seed, before divergence. Below: κ against each conditioning metric,
# cross-correlated per run at lags in cold points (levels), against phase surrogates.

# %%
cold = before.dropna(subset=["hessian_top1"])
cm = [*hc.CONDITIONING, x]
long = cold.melt(id_vars=["regime", "seed", "step"], value_vars=cm, var_name="metric", value_name="value")
g = sns.relplot(data=long, x="step", y="value", hue="seed", col="regime", row="metric", kind="line", marker="o",
                height=2.6, aspect=1.4, col_order=order, row_order=cm, palette="colorblind", facet_kws={"sharey": "row"})
for ax in g.axes.flat:
    ax.set_yscale("log")
g.set_titles("{row_name} — {col_name}")
g.figure.suptitle(f"Hessian conditioning and {x} at the cold measurements (every {R.hessian.full_every} steps)", y=1.02)
plots.save(g.figure, out_dir, "hessian_conditioning")
results.conditioning[["regime", "seed", "hessian_metric", "n", "lead_steps", "best_r", "r_lag0", "p_value",
                      "direction"]].round(3)

# %% [markdown]
# ## Cross-seed pairing null
# For each test of κ, the coupling statistic max_k |r(k)| of κ of run i (rows) against the Hessian
# metric of run j (columns), runs of one regime cut to their common pre-divergence window; the
# diagonal is the matched pairs. The table gives, for every test (each weight metric × λ_max, their
# mean over the weight metrics as one test, κ × each conditioning metric), the matched and
# mismatched means, the exact p of the matched pairing among all within-regime pairings, and its
# smallest attainable value.

# %%
pp = results.pairing_pairs
tests = [("levels", hc.HESSIAN_METRIC), ("residuals", hc.HESSIAN_METRIC), *(("levels", m) for m in hc.CONDITIONING)]
regimes_pp = [r for r in order if r in set(pp.regime)]
if len(pp) and regimes_pp:
    fig, axes = plt.subplots(len(tests), len(regimes_pp), figsize=(3.4 * len(regimes_pp), 2.9 * len(tests)), squeeze=False)
    for i, (view, metric) in enumerate(tests):
        for j, name in enumerate(regimes_pp):
            m = pp[(pp.view == view) & (pp.weight_metric == x) & (pp.hessian_metric == metric) & (pp.regime == name)]
            ax = axes[i, j]
            if m.empty:
                ax.set_axis_off()
                continue
            S = m.pivot(index="x_run", columns="y_run", values="stat")
            S.index, S.columns = [r.split("/")[-1] for r in S.index], [r.split("/")[-1] for r in S.columns]
            sns.heatmap(S, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", cbar=False, ax=ax)
            ax.set(title=f"{view}, {metric}: {name}", xlabel=f"{metric} of run", ylabel=f"{x} of run")
    fig.tight_layout()
    plots.save(fig, out_dir, "pairing_null")
results.pairing.round(4)

# %% [markdown]
# ## Findings vs the seed
# Verdicts are computed by `gradience.studies.hessian_coevolution.findings` from the runs above
# with `reporting.judged`: "not reproduced" only where every budget the claim needs was met (lag
# range vs the predicted lead, cadence, points per run, runs that reached the edge), otherwise "not
# comparable" naming the budget. Falsifier 1 (weights × λ_max, and κ × the Hessian's conditioning)
# is judged by the cross-seed pairing null on top of the surrogates. The direction the runs show —
# λ_max first — is a row of its own: the repository's finding, not a claim of the source (which asks
# "which changes first?" and hypothesises the weights), judged by a sign test over the runs at the edge,
# with the stable runs' direction shown as a control. The seed column comes from the repository's claim
# registry. `write_report` also writes `metrics.json` and the curves for `dvc plots`.
#
# Each claim's kind (event, comparison or absence, in the registry) sets what the verdict needs: an
# event the runs show is reproduced whatever the budget; a comparison or an absence needs every budget
# for either answer; and a comparison's negative also needs the power to have seen the claimed effect
# (the smallest detectable effect, stated), otherwise it is "inconclusive".

# %%
table = notebook.write_report(stage, results, P, out_dir)
display(Markdown(plots.markdown_table(table.drop(columns="id"))))
