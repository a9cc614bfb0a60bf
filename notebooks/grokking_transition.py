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
# layer-wise spectral metrics." The agenda's phase-transition picture also expects "increasing
# variance in gradients"; its falsifier is "no detectable precursors to phase transitions". Seed 000
# concluded that spectral metrics are *diagnostic, not predictive*.
#
# **Protocol.** Modular arithmetic mod 97 (addition), the grokking stage's MLP, AdamW, **mini-batch**
# training (so that there are fluctuations to slow down), telemetry at a fixed cadence: train/test
# loss and accuracy, spectral metrics of every weight matrix, mini-batch gradient norm and loss,
# cosine between measured gradients, and the gradient covariance trace tr Σ of per-example
# gradients. One run's residuals are autocorrelated at any cadence, so a trend test on one run has
# little power; the verdicts therefore read an **ensemble**: many seeds of one fast-grokking
# condition, each **aligned on its own transition t*** and paired with the non-grokking reference
# run of the same seed (weight decay 0, same data split and initialisation) **at the same steps**.
# At each aligned time before t*, the variance and the lag-1 autocorrelation are taken **across
# seeds** (after removing the ensemble mean); their trend towards t* (Kendall τ) in the grokking
# ensemble is contrasted with the references' (Δτ, bootstrap over pairs). Beside every verdict,
# the **power**: how often the same test, on simulated ensembles of the same size and noise (AR(1)
# at the measured residual autocorrelation), detects a critical slowing down of stated size. The
# **level** of tr Σ is compared between grokking and reference runs at the same steps, and its
# direction before t* tested, with the analytic power of that t test and the rise the runs leave possible. The per-run analyses of
# earlier versions (residual statistics of each run against surrogates) are kept below as a
# descriptive view on the first seeds; they are not verdicts. Definitions, free choices and the
# verdict rule: `gradience.studies.grokking_transition` (`runs`, `ensemble`, `analysis`, `findings`).
#
# **Free choices the seed does not fix** (stated here and in the modules' docstrings): lr, batch size,
# train fraction, the ensemble condition (addition at weight decay 0.3, which groks fast), the
# number of seeds, the cadence, the aligned window (`ensemble.points` cadence points before t*), the
# 1,024 examples evaluated per point, the 128 examples of the tr Σ subsample, the stop rules, and
# the claimed effect sizes of the power analysis (`power.claimed_slowing`, `power.claimed_rise`).

# %% tags=["parameters"]
stage = "grokking_transition"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/grokking_transition/

# %%
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import notebook
from gradience.studies.grokking_transition import analysis as gt
from gradience.studies.grokking_transition import early_warning as ews
from gradience.studies.grokking_transition import hypothesis_tests as ht

ctx = notebook.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
plots.set_theme()
names = [c.name for c in R.conditions]
EW, PW, EN = P.early_warning, P.power, P.ensemble
print(f"profile={R.profile}  lr={R.lr:g}  batch={R.batch_size}  cap={R.steps:,} steps  cadence every "
      f"{R.cadence_every}  seeds={R.seeds}  tr Σ subsample={R.gradients.noise_examples}  surrogates="
      f"{EW.n_surrogates} ({EW.surrogate})  power sims={PW.n_sims}  ensemble window={EN.points} points, "
      f"bootstrap={EN.n_boot}, simulated ensembles={EN.n_sims}")

# %% [markdown]
# ## The runs, their cost, and their transitions
# One row per run: outcome, t_mem, onset t*, grok step, the lr·wd·steps clock at the grok step, the
# steps run (grokking runs stop `stop.hold_steps` after grokking) and the CPU seconds each run took.

# %%
results = gt.analyse(ctx.tables, P)
tele, tr, ew, model, units = results.telemetry, results.transitions, results.early_warning, results.model, results.units
tr = tr.assign(grok_clock=tr.grok_step * tr.lr * tr.weight_decay)
display(tr[["condition", "seed", "reference", "grokked", "t_mem", "t_onset", "grok_step", "grok_clock", "steps_run",
            "final_test_acc", "cpu_seconds"]])
print(f"training CPU: {tr.cpu_seconds.sum():.0f} s over {len(tr)} runs "
      f"(≈ {tr.cpu_seconds.sum() / 2 / 60:.1f} min wall on 2 workers)")

# %% [markdown]
# ## The ensemble: pairs aligned on the transition
# One row per seed of the ensemble condition with a transition: its onset t*, the later of the two
# memorisation steps, and whether the pair is analysed (the window of `ensemble.points` cadence
# points before t* must start after memorisation and every value be present in both runs).

# %%
pairs = results.ensemble_pairs
display(pairs)
print(f"{int(pairs.kept.sum()) if len(pairs) else 0} pairs analysed (verdicts need ≥ {EN.min_pairs})")

# %% [markdown]
# ## Ensemble indicators against time to the transition
# For every series of a test: the indicator across seeds at each aligned time (x: cadence points
# before t*), grokking ensemble vs the references at the same steps. Critical slowing down predicts
# a rise towards t* in the grokking ensemble and not in the references.

# %%
ec = results.ensemble_curves
if ec is not None and len(ec):
    ec = ec.assign(series=ec.scope.str.replace(".weight", "", regex=False) + ":" + ec.metric)
    g = sns.relplot(data=ec, x="k", y="value", hue="role", col="test", units="series", estimator=None, kind="line",
                    lw=0.7, alpha=0.7, height=3, aspect=1.2, facet_kws={"sharey": False})
    for ax, test in zip(g.axes.flat, g.col_names, strict=True):
        ax.set(yscale="linear" if test == "lag1_autocorrelation" else "log", xlabel="cadence points before t*")
    g.figure.suptitle("Across-seed indicators, aligned on each seed's transition (one line per series)", y=1.04)
    plots.save(g.figure, out_dir, "ensemble_indicators")

# %% [markdown]
# ## The ensemble tests and their power
# Per test: the mean Kendall τ over its series in the grokking ensemble and in the references,
# Δτ with its 90% bootstrap interval and one-sided p (pairs resampled). Power: the same test on
# simulated pairs whose AR(1) coefficient covers a share *s* of its distance to 1 by t* (x axis),
# the references' constant, at the measured residual lag-1 autocorrelation; dashed line: the
# target power, star: the claimed slowing.

# %%
display(results.ensemble_tests.round(3))
epw = results.ensemble_power
if len(epw):
    g = sns.relplot(data=epw, x="effect", y="power", hue="tested", col="test", kind="line", marker="o",
                    height=3, aspect=1.1)
    for ax, test in zip(g.axes.flat, g.col_names, strict=True):
        ax.axhline(PW.target, ls="--", c="grey", lw=1)
        claimed = epw[(epw.test == test) & epw.claimed]
        ax.scatter(claimed.effect, claimed.power, marker="*", s=120, c="k", zorder=3)
        ax.set(xlabel="slowing s", ylim=(0, 1))
    g.set_titles("{col_name}")
    g.figure.suptitle("Power of each ensemble test against a slowing s of known size (s: the share of its "
                      "distance to 1 the AR(1) coefficient covers by t*)", y=1.06)
    plots.save(g.figure, out_dir, "ensemble_power")

# %% [markdown]
# ## The level of tr Σ, grokking vs reference at the same steps
# log10 tr Σ over the aligned window, every pair (grokking run and its reference at the same
# steps). The table: the level ratio (mean over the window), the grokking runs' own change (last
# minus first `level_fraction` of the window) with t tests both ways, and the change relative to
# the reference.

# %%
display(results.ensemble_level.round(4))
kept = pairs[pairs.kept] if len(pairs) else pairs
trace_all = tele[(tele.scope == "model") & (tele.metric == EN.level_metric)]
frames = []
for r in kept.itertuples():
    steps = r.t_onset - R.cadence_every * np.arange(EN.points, 0, -1)
    for run, kind in ((r.run, "grokking run"), (r.ref, "reference")):
        s = trace_all[(trace_all.run == run) & trace_all.step.isin(steps)]
        frames.append(pd.DataFrame({"pair": r.run, "kind": kind, "steps before t*": s.step - r.t_onset,
                                    "log10 tr Σ": np.log10(s.value)}))
if frames:
    lv = pd.concat(frames, ignore_index=True)
    g = sns.relplot(data=lv, x="steps before t*", y="log10 tr Σ", hue="kind", units="pair", estimator=None,
                    kind="line", lw=0.6, alpha=0.7, height=3.2, aspect=1.6)
    g.figure.suptitle("Gradient covariance trace before the transition, grokking vs reference", y=1.03)
    plots.save(g.figure, out_dir, "noise_trace_ensemble")

# %% [markdown]
# ## Single-run view (descriptive)
# The per-run analyses on the seeds of `runs.seeds`: each grokking run over its own window
# [memorisation, t*), each reference run over that window of the same seed. They have little power
# (one run's residuals are autocorrelated at any cadence) and are not verdicts; they show what one
# run looks like.

# %%
units

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
# Mini-batch gradient norm, cosine between gradients one cadence interval apart, the gradient
# covariance trace tr Σ and the noise scale B_simple (McCandlish et al. 2018) on a fixed subsample.

# %%
stats_shown = [m for m in ["grad_norm", "grad_cosine", "grad_noise_trace", "grad_noise_scale"] if m in model]
grad = model.melt(id_vars=["run", "step", "condition"], value_vars=stats_shown, var_name="statistic",
                  value_name="value").dropna()
g = sns.relplot(data=grad[grad.step > 0], x="step", y="value", hue="condition", row="statistic", kind="line",
                units="run", estimator=None, lw=0.6, height=2.3, aspect=3.2, hue_order=names,
                facet_kws={"sharey": False})
for ax, stat in zip(g.axes.flat, stats_shown, strict=True):
    ax.set(yscale="linear" if stat == "grad_cosine" else "log", ylabel=stat)
g.figure.suptitle("Gradient statistics (one line per run)", y=1.02)
plots.save(g.figure, out_dir, "gradient_statistics")

# %% [markdown]
# ### The level of tr Σ before the transition, per run
# log10 tr Σ against steps before the end of the window (t* for grokking runs, the matched t* for
# controls).

# %%
trace = tele[(tele.scope == "model") & (tele.metric == "grad_noise_trace")]
frames = []
for u in units.itertuples():
    if not np.isfinite(u.window_end) or not (u.control or u.grokked):
        continue
    s = trace[(trace.run == u.run) & (trace.step >= u.window_start) & (trace.step < u.window_end)]
    frames.append(pd.DataFrame({"unit": f"{u.run}→{u.tested}", "tested": u.tested,
                                "kind": "control" if u.control else "grokking run",
                                "steps before t*": s.step - u.window_end, "log10 tr Σ": np.log10(s.value)}))
if frames:
    lv = pd.concat(frames, ignore_index=True)
    g = sns.relplot(data=lv, x="steps before t*", y="log10 tr Σ", hue="kind", col="tested", units="unit",
                    estimator=None, kind="line", lw=0.7, height=3, aspect=1.3)
    g.figure.suptitle("Gradient covariance trace in the pre-transition window", y=1.03)
    plots.save(g.figure, out_dir, "noise_trace_level")

# %% [markdown]
# ### One layer-wise series up close
# The stable rank of the hidden layer in the pre-transition window of the first tested condition:
# the series (log10), its Gaussian-detrended residual and the three rolling indicators, grokking
# runs vs controls.

# %%
first = units.loc[~units.control, "tested"].iloc[0]
close_up = ews.indicator_curves(tele, units[units.tested == first], "hidden.weight", "stable_rank", EW)
if len(close_up):
    close_up["kind"] = close_up.control.map({False: "grokking run", True: "control"})
    g = sns.relplot(data=close_up, x="step", y="value", hue="kind", units="run", estimator=None, row="quantity",
                    kind="line", lw=0.8, height=2.0, aspect=3.5, facet_kws={"sharey": False},
                    row_order=["series", "residual", *ews.INDICATORS])
    g.set_titles("{row_name}")
    g.figure.suptitle(f"hidden.weight stable rank before the transition ({first})", y=1.02)
    plots.save(g.figure, out_dir, "indicators_hidden_stable_rank")

# %% [markdown]
# ### Kendall τ of each indicator, grokking runs vs controls
# One point per analysis unit and series, all tested conditions together.

# %%
done = ew[(ew.skipped == "") & (ew.control | ew.grokked)].copy()
done["series"] = done.scope.str.replace(".weight", "", regex=False) + ":" + done.metric
done["kind"] = done.control.map({False: "grokking run", True: "control"})
if len(done):
    g = sns.catplot(data=done, x="kendall_tau", y="series", hue="kind", col="indicator", kind="strip",
                    col_order=[*ews.INDICATORS, ews.LEVEL], height=6, aspect=0.6, dodge=True, size=3, alpha=0.7)
    for ax in g.axes.flat:
        ax.axvline(0, c="grey", lw=0.8)
    g.set_axis_labels("Kendall τ", "")
    g.set_titles("{col_name}")
    g.figure.suptitle("Single-run tests (descriptive): trend of each indicator, and of the tr Σ level, before the "
                      "transition", y=1.02)
    plots.save(g.figure, out_dir, "kendall_tau")

# %% [markdown]
# ### Single-run tests (not verdicts)
# Per unit, the fraction of its series that signal (τ > 0, surrogate p < α), grokking runs vs
# controls (one-sided Mann–Whitney U over runs).

# %%
fractions = results.fractions.copy()
fractions["kind"] = fractions.control.map({False: "grokking run", True: "control"})
if len(fractions):
    g = sns.catplot(data=fractions, x="test", y="fraction", hue="kind", col="tested", kind="strip", dodge=True,
                    size=6, height=3.4, aspect=1.2)
    for ax in g.axes.flat:
        ax.axhline(EW.min_hit_fraction, ls="--", c="grey", lw=1)
        ax.axhline(EW.alpha, ls=":", c="grey", lw=1)
        ax.tick_params(axis="x", rotation=30)
    g.figure.suptitle("Fraction of series with a significant rising indicator (dashed: min_hit_fraction, "
                      "dotted: α)", y=1.04)
    plots.save(g.figure, out_dir, "signalling_fractions")
display(results.tests.drop(columns=["group"]).round(3))

# %% [markdown]
# ### What the single-run tests could have detected (power)
# Residual tests: AR(1) noise of the median length and median residual lag-1 autocorrelation of the
# condition's grokking series, with the coefficient rising by t* a fraction *s* of its distance to
# 1 (x axis); the null is the stationary AR(1), which is what the phase surrogates of a stationary
# series are. Level test: each grokking run's own tr Σ fluctuations with a rise by the factor on
# the x axis. Dashed line: the target power; the star marks the claimed effect.

# %%
pwr = results.power
if len(pwr):
    g = sns.relplot(data=pwr, x="effect", y="power", hue="tested", col="test", kind="line", marker="o",
                    height=3, aspect=1.1, facet_kws={"sharex": False})
    for ax, test in zip(g.axes.flat, g.col_names, strict=True):
        ax.axhline(PW.target, ls="--", c="grey", lw=1)
        claimed = pwr[(pwr.test == test) & pwr.claimed]
        ax.scatter(claimed.effect, claimed.power, marker="*", s=120, c="k", zorder=3)
        if ht.TESTS[test][1] == ews.LEVEL:
            ax.set(xscale="log", xlabel="tr Σ rise factor by t*")
        else:
            ax.set(xlabel="slowing s")
    g.set_titles("{col_name}")
    g.figure.suptitle("Single-run tests (descriptive): power against an effect of known size (s: the share of "
                      "its distance to 1 the AR(1) coefficient covers by t*)", y=1.06)
    plots.save(g.figure, out_dir, "power")
display(results.power_summary.round(3))

# %% [markdown]
# ### Every single-run signal: trend, significance rate, lead time
# Medians over units, per tested condition. `lead_steps_grok`: steps between the alarm (indicator
# above its baseline for good) and t*; `xcorr_lag_steps`: lag of the largest cross-correlation of
# the series' changes with test accuracy's changes around t* (positive: the series moves first).

# %%
results.signals.round(3)

# %% [markdown]
# ## How far the test reaches
# - **Fluctuations.** Training is mini-batch, so the series carry sampling noise around their
#   trend; critical-slowing-down theory assumes a noise-driven system near a bifurcation, which a
#   grokking network is at best loosely. Spectral series are smooth functions of weights that move
#   little per step, so their deviations from the ensemble mean stay strongly autocorrelated (the
#   `resid_lag1` column): the power simulation uses that value.
# - **Ensemble.** Seeds are independent, so the across-seed indicators do not rest on one run's
#   autocorrelated residuals; the bootstrap resamples pairs (the same resample for every series of
#   a test), and the references at the same steps absorb what any run does at that stage of training.
#   The power is simulated for one series: for the mean over a test's series (the same effect in
#   each, correlations ≥ 0) it is a lower bound.
# - **Power.** A negative verdict ("not reproduced") is given only where the smallest effect the test
#   detects with power ≥ `power.target` is no larger than the claimed effect; otherwise "inconclusive",
#   with both in the reason. Low power does not block a precursor the runs show.
# - **tr Σ.** The reference runs memorise and their training loss goes to 0, so their tr Σ collapses;
#   the claim is tested on the grokking runs' own direction before t*, the comparison with the
#   references at the same steps is reported beside it. Its negative is decisive when the runs
#   exclude the claimed rise: the one-sided upper confidence bound of the rise (the largest rise the
#   runs leave possible) is below the claimed factor; the rise the test would see before the data,
#   at power `power.target`, is stated beside it.
# - **Retrospective.** Alignment uses each run's t*, known after the fact: a "supported" verdict is a
#   precursor in hindsight, not a forecast.

# %% [markdown]
# ## Findings vs the seed
# Verdicts are computed by `gradience.studies.grokking_transition.findings` from the runs above
# (`gradience.reporting.judged`: every verdict names the budget it needed — pairs aligned on t* —
# and the power against the claimed effect); the seed column comes from the repository's
# claim registry. `write_report` also writes `metrics.json` and the curves for `dvc plots`.

# %%
table = notebook.write_report(stage, results, P, out_dir)
display(Markdown(plots.markdown_table(table.drop(columns="id"))))
