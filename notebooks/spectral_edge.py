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
# # The lifecycle of the spectral edge (Dyck-1)
#
# **Question** (seed 002). The *spectral edge* is the dominant direction of the Gram matrix of the
# last W parameter updates. Split each AdamW update into its gradient part −η m̂/(√v̂+ε) and its
# weight-decay part −ηλθ: is the edge gradient-driven before the fit (the seed's "grokking") and
# decay-aligned after? Is it then perturbation-flat yet ablation-critical (> 4000× random)? Is the
# depth coordinate re-encoded (MLP probe R² 0.99 vs linear 0.86), and does removing weight decay
# after the fit bring the linear R² back (0.85 → 0.99) with accuracy held? Which class (functional
# / mixed / compression)?
#
# **Protocol.** Dyck-1 (balanced words; the target at each position is the nesting depth), a
# GPT-2-style 2-layer causal pre-LN transformer with learned positions (`transformers.GPT2Model`,
# d_model 64) and a per-position head, AdamW minibatches. Conditions: a sweep of weight decays (the
# main decay on every seed, the others on the first `sweep_seeds`) and a **removal** arm (main decay,
# then λ = 0 from `removal_at`, same optimiser). Every `every` steps: accuracy and the edge metrics of
# the window; every `probe_every` steps: linear / quadratic / MLP probes of the depth from the final
# hidden state (held-out test-sequence positions). At the end: loss along the edge vs random unit
# directions (perturbation) and the edge projected out of θ vs random directions (ablation).
#
# **The fit is not grokking here.** The fit is train accuracy ≥ `fit_acc`. In this setup it is not
# delayed generalisation: the λ = 0 control reaches test accuracy ≈ 1 too (its row below), so there
# is no grokking delay and the seed's "at grokking" reads "at the fit" throughout. The claims about
# the phases around grokking (two phases, perturbation-flat, re-encoded probes, weight-decay
# removal) therefore carry the budget "grokking delay": the step where test accuracy reaches
# `fit_acc` divided by the step where train accuracy does (`grok_delay` per run), at least
# `min_grok_delay`. Without a delay these runs cannot show those phases, and the verdict is "not
# comparable", not "not reproduced". The removal claim also needs headroom: a linear probe
# already at R² ≈ 1 at the removal has nothing to restore.
#
# **The decay clock.** AdamW's decoupled decay alone shrinks θ by exp(−lr·λ·t), so the compression
# phase after the fit is measured on the clock lr·λ·(steps after the fit) (`decay_clock_post` in the
# per-run table; `decay_clock_at_removal` for the removal arm, from the fit to `removal_at`), not in
# steps. Below `min_decay_clock` (one e-fold) decay has barely acted, and the claims about the
# post-fit phase (two phases, perturbation-flat, re-encoded probes, classes, weight-decay removal)
# are "not comparable" rather than "not reproduced".
#
# **Free choices and how the default profile is smaller than the seed** (marked as such): Dyck-1
# only — **SCAN is not run** (its grammar and split exist in `gradience.tasks.scan`, the
# encoder–decoder arm is missing), so the class claim's cross-task part and the gap-flow prediction
# are "not comparable"; 512 training words and a run sized for the decay clock after the fit to
# reach `min_decay_clock` on the slowest seed (the seed trains longer); the sweep's non-main decays
# on one seed; the "fit" is train accuracy ≥ `fit_acc`; the late phase is the second half of the
# steps after the fit; probes read the final hidden state only; no Fourier
# analysis (Dyck-1 depth has no Fourier structure); the class bounds on the gradient share are ours.

# %% tags=["parameters"]
stage = "spectral_edge"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/spectral_edge/

# %%
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import base
from gradience.studies import spectral_edge as se

ctx = base.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
plots.set_theme()
print(f"profile={R.profile}  steps={R.steps}  seeds={R.seeds}  decays={R.weight_decays} (main {R.main_decay})  "
      f"removal at {R.removal_at}  model={R.model.model_dump()}  n_train={R.n_train}  length={R.length}")
a = se.analyse(ctx.tables, P)
display(a.per_run.round(3))
control = a.per_run[a.per_run.weight_decay == 0]
main = a.per_run[a.per_run.condition == se.condition_name(R.main_decay)]
print(f"λ = 0 control: final test acc {control.final_test_acc.round(3).tolist()} (fit at step "
      f"{control.fit_step.tolist()}); lr·λ·steps after the fit, main decay: {main.decay_clock_post.round(2).tolist()} "
      f"(needs ≥ {P.min_decay_clock:g})")

# %% [markdown]
# ## The lifecycle on one time axis
# Accuracy, the edge gap σ1/σ2 and the gradient part's share of the edge's energy.

# %%
cols = ["train_acc", "test_acc", "edge_gap", "edge_grad_energy"]
long = a.wide.melt(id_vars=["run", "condition", "seed", "step"], value_vars=cols).dropna()
g = sns.relplot(data=long, x="step", y="value", hue="condition", units="seed", estimator=None, row="metric",
                kind="line", height=2.2, aspect=3, facet_kws={"sharey": False})
plots.save(g.figure, out_dir, "lifecycle")

# %% [markdown]
# ## Perturbation and ablation of the edge (end of run)

# %%
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
pert = a.perturbation.assign(kind=lambda d: d.direction.where(d.direction == "edge", "random"))
sns.lineplot(data=pert, x="eps", y="dloss", hue="kind", style="condition", ax=ax[0], errorbar=None)
ax[0].set(xlabel="step length ‖δθ‖ along the direction", ylabel="ΔL (test)")
sns.stripplot(data=a.per_run, x="condition", y="ablation_loss_ratio", ax=ax[1])
ax[1].set(yscale="log", ylabel="|ΔL| ablating edge / random")
plots.save(fig, out_dir, "perturbation_ablation")

# %% [markdown]
# ## Probes of the depth over training

# %%
pr = a.wide.melt(id_vars=["condition", "seed", "step"],
                 value_vars=["probe_r2_linear", "probe_r2_quadratic", "probe_r2_mlp"]).dropna()
g = sns.relplot(data=pr, x="step", y="value", hue="metric", col="condition", kind="line", height=3, aspect=1.1)
for axis in g.axes.flat:
    if R.removal_at:
        axis.axvline(R.removal_at, color="grey", ls=":")
plots.save(g.figure, out_dir, "probes")

# %% [markdown]
# ## Findings vs the seed
# Verdicts from `gradience.studies.spectral_edge.findings` with `reporting.judged`: "not reproduced"
# only where every budget was met (seeds that fit, steps after the fit, the decay clock
# lr·λ·steps after the fit — for the removal arm from the fit to the removal —, steps after the
# removal, removal after the fit, the grokking delay, the linear probe's headroom at the removal,
# tasks), otherwise "not comparable" naming the budget. The seed column comes from the claim registry.

# %%
table = base.write_report(stage, a, P, out_dir)
display(Markdown(plots.markdown_table(table.drop(columns="id"))))
