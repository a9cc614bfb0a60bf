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
# # Part I — Grokking on modular arithmetic: κ, κ_recovery and the monitoring rules
#
# **Question** (seed 000, Part I). Do spectral metrics of the weights — the condition number κ
# and its recovery κ_recovery = κ_peak / κ_final — separate runs that grok from runs that stay
# memorised, and do the seed's two monitoring rules (κ growth > 50× early → raise weight decay;
# κ_recovery < 2 → "may be stuck") flag the runs that fail?
#
# **Protocol.** `a ∘ b mod 97`, a random train/test split of all pairs, AdamW, full batch. The seed's
# three conditions (multiplication wd 0.1; addition wd 0.01; addition wd 0.1) plus two controls
# (addition wd 1, which should grok; addition wd 0, which should not), each over several seeds.
# All definitions (grok step, model-level κ, smoothing, the rescaled "10k-step" point) are stated in
# `gradience.studies.grokking`; this notebook reads the runs of the training stage `grokking_runs`,
# plots and compares.

# %% tags=["parameters"]
stage = "grokking"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/grokking/

# %%
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import base, grokking

ctx = base.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
plots.set_theme()
order = {"hue_order": [c.name for c in R.conditions]}
print(f"profile={R.profile}  steps={R.steps:,}  lr={R.lr:g}  seeds={R.seeds}  model={R.model.kind}")

# %% [markdown]
# ## The runs
# The training stage wrote the telemetry (tidy parquet: `run, step, scope, metric, value`), the
# singular-value snapshots and one row per run to `reports/grokking/tables/`.

# %%
results = grokking.analyse(ctx.tables, P)
tele, summary, model = results.telemetry, results.summary, results.model
cols = ["condition", "seed", "outcome", "grokked", "grok_step", "final_train_acc", "final_test_acc",
        "kappa_probe", "kappa_peak", "kappa_final", "kappa_recovery", "kappa_growth"]
summary[cols].round(3)

# %% [markdown]
# ## Accuracy: memorisation, then (for some conditions) generalisation
# Train and test accuracy against step (log axis), one line per seed.

# %%
acc = model.melt(id_vars=["run", "step", "condition", "seed"], value_vars=["train_acc", "test_acc"],
                 var_name="split", value_name="accuracy")
acc = acc[acc.step > 0]
g = plots.facet_lines(acc, "step", "accuracy", hue="split", col="condition", units="run", logx=True,
                      col_wrap=3, col_order=order["hue_order"], title="Train vs test accuracy by condition (one line per seed)")
plots.save(g.figure, out_dir, "accuracy_curves")

# %% [markdown]
# ## κ trajectories
# Model-level κ (largest over weight matrices) by condition, and per layer.

# %%
g = plots.facet_lines(model[model.step > 0], "step", "kappa", hue="condition", col="condition", units="run",
                      logx=True, logy=True, col_wrap=3, ylabel="κ (max over matrices)",
                      col_order=order["hue_order"], **order,
                      title="Condition number κ over training")
plots.save(g.figure, out_dir, "kappa_by_condition")

layers = tele[(tele.metric == "kappa") & (tele.scope != "model") & (tele.step > 0)].copy()
layers["condition"] = layers.run.str.split("/").str[0]
g = plots.facet_lines(layers, "step", "value", hue="condition", col="scope", logx=True, logy=True,
                      ylabel="κ", **order, title="Per-layer κ (mean and range over seeds)")
plots.save(g.figure, out_dir, "kappa_per_layer")

# %% [markdown]
# ## κ_recovery against the outcome, and effective rank

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
sns.stripplot(data=summary, x="condition", y="kappa_recovery", hue="grokked", ax=axes[0], size=7, jitter=0.15,
              order=order["hue_order"])
axes[0].axhline(P.kappa_recovery_alert, ls="--", c="grey", lw=1, label="'stuck' threshold")
axes[0].set(yscale="log", title="κ_recovery = κ_peak / κ_final", ylabel="κ_recovery")
axes[0].tick_params(axis="x", rotation=30)
axes[0].legend(title="grokked", fontsize=8)
sns.lineplot(data=model[model.step > 0], x="step", y="effective_rank", hue="condition", ax=axes[1],
             errorbar=("pi", 100), **order)
axes[1].set(xscale="log", title="Mean effective rank (Roy–Vetterli) of the weight matrices",
            ylabel="effective rank")
fig.tight_layout()
plots.save(fig, out_dir, "kappa_recovery_and_rank")

# %% [markdown]
# ## The seed's monitoring rules, scored against the outcomes
# Each alert predicts "will not grok". Hits: alert and no grok; false alarms: alert on a run that grokked.

# %%
display(summary[["condition", "seed", "grokked", "kappa_growth", "alert_growth", "kappa_recovery", "alert_stuck"]].round(2))
results.alerts

# %% [markdown]
# ## Findings vs the seed
# Verdicts are computed by `gradience.studies.grokking.findings` from the runs above; the seed
# column comes from the repository's claim registry. `write_report` also writes `metrics.json`
# and the curves for `dvc plots`.

# %%
table = base.write_report(stage, results, P, out_dir)
display(Markdown(table.drop(columns="id").to_markdown(index=False)))
