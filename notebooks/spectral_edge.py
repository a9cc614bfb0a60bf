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
# # The lifecycle of the spectral edge (Dyck-1 and SCAN)
#
# **Question** (seed 002). The *spectral edge* is the dominant direction of the Gram matrix of the
# last W parameter updates. Split each AdamW update into its gradient part −η m̂/(√v̂+ε) and its
# weight-decay part −ηλθ: is the edge gradient-driven before grokking and decay-aligned after? Is it
# then perturbation-flat yet ablation-critical (> 4000× random)? Is the depth coordinate re-encoded
# (MLP probe R² 0.99 vs linear 0.86), and does removing weight decay after grokking bring the linear
# R² back (0.85 → 0.99) with accuracy held? What Fourier structure do the representations, the
# attention and the edge carry? Which class (functional / mixed / compression) is each task's edge,
# and does redundancy predict it?
#
# **Protocol.** Two tasks, one training loop (`gradience.studies.spectral_edge.runs.run_one`):
# - **Dyck-1**: balanced words of fixed length; the target at each position is the nesting depth.
#   A GPT-2-style 2-layer causal pre-LN transformer with learned positions (`transformers.GPT2Model`)
#   and a per-position head, on a small training set in full batches (the seed: 50 words).
#   Conditions: a sweep of weight decays (the main decay on every seed, the others on the first
#   `sweep_seeds`) and a **removal** arm (main decay, then λ = 0 from `removal_at`, same optimiser).
# - **SCAN**: every command of the grammar generated in the repository (`gradience.tasks.scan`), the
#   seeded 80/20 "simple" split, a subset of `scan.n_train` training commands; an encoder–decoder
#   pre-LN transformer (`torch.nn.Transformer`, `gradience.models.seq2seq`). Accuracy is per action
#   token, as for Dyck-1; exact match of the whole sequence (`seq_acc`) is shown beside it.
#   Conditions: `scan.weight_decays` (main decay on every seed, the others on the first `sweep_seeds`).
#
# Every `every` steps: train/test accuracy and the edge metrics of the window, the edge built from
# the attention projection matrices (`edge_params`, as the seed does); every `probe_every` steps
# (Dyck-1): linear / quadratic / MLP probes of the depth from the final hidden state. At the end:
# loss along the edge vs random unit directions of the same subspace (perturbation), the edge
# projected out vs random directions (ablation) and, for Dyck-1, the Fourier analyses.
#
# **Grokking and the budgets.** The fit is train accuracy ≥ `fit_acc`; grokking is test accuracy
# reaching `test_fit_acc` well after (`grok_delay` = test-fit step ÷ train-fit step ≥ `min_grok_delay`).
# At the standard initialisation these small models generalise with the fit, so there is no grokking
# to study; `init_scale` multiplies the initial weight matrices and embeddings (the large-initialisation
# recipe of "Omnigrok"): the model then fits by memorising, λ = 0 stays memorised (the control the
# Fourier claims need) and decay brings generalisation late. The
# claims about the phases around grokking carry that budget, and those about the compression phase
# the decay clock lr·λ·(steps after the fit) ≥ `min_decay_clock` (AdamW's decay alone shrinks θ by
# exp(−clock)). Short of a budget a verdict is "not comparable", never "not reproduced". Controls:
# the removal claim is judged against the same seeds with the decay kept (a probe that is still
# improving would otherwise count as "restored"); the attention and positional-spectrum claims
# against a λ = 0 control that memorises (attention at initialisation is near uniform too); the
# depth-basis Fourier claim against a random direction. A claim made for both tasks is judged on each
# task's own runs and that task's one budget set (its fitted seeds, steps and clock after the fit, its
# grokking delay: the same set on every such row, so the same missing headroom gets the same label;
# the Findings row gives each task's verdict): it is "reproduced" only
# when both are, "not reproduced" when either is, "not comparable" when a task is short of budget,
# and otherwise "inconclusive".
#
# **Free choices and how the default profile is smaller than the seed** (marked as such): the models
# are smaller (Dyck-1 d_model 64; SCAN d_model 64, one encoder and one decoder layer, ≈ 0.12 M
# parameters against the seed's ≈ 1.5 M), SCAN trains on fewer steps at a larger learning rate, the
# sweep's non-main decays run on one seed, Dyck-1's initial weights are scaled (`init_scale`; the
# seed's model groks at its own scale, ours only this way), Dyck-1 words have one fixed length (the
# seed pads words of 1–12 pairs), probes read the final hidden state only, the depth-basis Fourier analysis is done at
# the end of the run (the seed's at grokking), and the class bounds on the gradient share are ours.
# The seed's "gap flow equation" is not given in full: its prediction is tested as the seed states
# it, redundancy (here: parameters per scored training target) against the class. Read Dyck-1's class
# with `init_scale` in mind: after the fit its edge is set by decay shrinking the scaled-up weights
# (the gradient part's share falls to ≈ 0 once the training loss is ≈ 10⁻⁴), which is what the large
# initialisation is for; at the standard scale (the paper profile) it need not be.

# %% tags=["parameters"]
stage = "spectral_edge"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/spectral_edge/

# %%
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import notebook
from gradience.studies.spectral_edge import analysis as se

ctx = notebook.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
plots.set_theme()
print(f"profile={R.profile}  seeds={R.seeds}  edge from {R.edge_params} parameters, window {R.window}\n"
      f"Dyck-1: steps={R.steps}  decays={R.weight_decays} (main {R.main_decay})  removal at {R.removal_at}  "
      f"model={R.model.model_dump()}  n_train={R.n_train}  length={R.length}\n"
      f"SCAN: steps={R.scan.steps}  decays={R.scan.weight_decays} (main {R.scan.main_decay})  "
      f"model={R.scan.model.model_dump()}  n_train={R.scan.n_train}  lr={R.scan.lr}")
a = se.analyse(ctx.tables, P)
cols = ["task", "condition", "seed", "fit_step", "test_fit_step", "grok_delay", "decay_clock_post", "final_train_acc",
        "final_test_acc", "final_test_seq_acc", "grad_energy_pre", "grad_energy_post", "rotation_post", "gap_median", "ablation_loss_ratio",
        "r2_linear", "r2_mlp", "edge_class"]
display(a.per_run[[c for c in cols if c in a.per_run]].round(3))

# %% [markdown]
# ## The lifecycle on one time axis
# Per-token accuracy (SCAN's exact match in the last row), the edge gap σ1/σ2 and the gradient part's share of the edge's
# energy, per task.

# %%
metrics = ["train_acc", "test_acc", "edge_gap", "edge_grad_energy", "test_seq_acc"]
long = a.wide.melt(id_vars=["run", "task", "condition", "seed", "step"],
                   value_vars=[m for m in metrics if m in a.wide]).dropna()
g = sns.relplot(data=long, x="step", y="value", hue="condition", units="seed", estimator=None, row="metric",
                col="task", kind="line", height=2.2, aspect=2.2, facet_kws={"sharey": "row", "sharex": "col"})
plots.save(g.figure, out_dir, "lifecycle")

# %% [markdown]
# ## Perturbation and ablation of the edge (end of run)

# %%
fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
pert = a.perturbation.assign(kind=lambda d: d.direction.where(d.direction == "edge", "random"))
sns.lineplot(data=pert, x="eps", y="dloss", hue="kind", style="condition", ax=ax[0], errorbar=None)
ax[0].set(xlabel="step length ‖δθ‖ along the direction", ylabel="ΔL (test)", title="perturbation")
sns.stripplot(data=a.per_run, x="condition", y="ablation_loss_ratio", hue="task", ax=ax[1])
ax[1].set(yscale="log", ylabel="|ΔL| ablating edge / random", title="ablation")
ax[1].tick_params(axis="x", rotation=30)
plots.save(fig, out_dir, "perturbation_ablation")

# %% [markdown]
# ## Probes of the depth over training (Dyck-1)

# %%
pr = a.wide.melt(id_vars=["condition", "seed", "step"],
                 value_vars=["probe_r2_linear", "probe_r2_quadratic", "probe_r2_mlp"]).dropna()
g = sns.relplot(data=pr, x="step", y="value", hue="metric", col="condition", kind="line", height=3, aspect=1.1)
for axis in g.axes.flat:
    if R.removal_at:
        axis.axvline(R.removal_at, color="grey", ls=":")
g.set_axis_labels("step", "held-out R² of the depth")
plots.save(g.figure, out_dir, "probes")

# %% [markdown]
# ## Fourier structure (Dyck-1, end of run)
# Left: share of the final hidden state's power at each positional frequency (Nyquist = length/2, the
# open/close alternation). Middle: KL of each layer's attention from uniform backward attention
# (0 = the counting pattern). Right: the response ‖Δh‖² to a step along the edge (and along a random
# direction), averaged per depth, as power shares over the depth frequencies.

# %%
fr = a.fourier.merge(a.per_run[["run", "task"]], on="run")
fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
if len(fr):
    sns.lineplot(data=fr[fr.analysis == "positional"], x="index", y="value", hue="condition", ax=ax[0], marker="o")
    ax[0].set(xlabel="positional frequency ω", ylabel="power share", yscale="log", title="hidden states")
    sns.barplot(data=fr[fr.analysis == "attention_kl"], x="index", y="value", hue="condition", ax=ax[1])
    ax[1].set(xlabel="layer", ylabel="KL from uniform (nats)", yscale="log", title="attention")
    depth = fr[fr.analysis.isin(["depth_share", "depth_random_share"])].assign(
        direction=lambda d: d.analysis.map({"depth_share": "edge", "depth_random_share": "random"}))
    sns.lineplot(data=depth, x="index", y="value", hue="direction", style="condition", ax=ax[2], marker="o")
    ax[2].set(xlabel="depth frequency", ylabel="power share", title="edge response by depth")
plots.save(fig, out_dir, "fourier")

# %% [markdown]
# ## Classes of the edge
# The late gradient share along the edge (Term 3 of the seed's gap flow against Term 2, the decay
# damping), the edge's rotation per measurement, and redundancy (parameters per scored training
# target), per task at its main decay.

# %%
cls = a.per_run.groupby(["task", "condition"])[["grad_energy_post", "rotation_post", "params_per_target",
                                                 "final_test_acc"]].median()
cls["class (mode over seeds)"] = a.per_run.groupby(["task", "condition"]).edge_class.agg(lambda s: s.mode().iloc[0])
display(cls.round(3))

# %% [markdown]
# ## Findings vs the seed
# Verdicts from `gradience.studies.spectral_edge.findings` with `reporting.judged`: "not reproduced"
# only where every budget was met (seeds that fit, steps after the fit, the decay clock, the
# grokking delay, steps after the removal, the linear probe's headroom, a memorising control, both
# tasks), otherwise "not comparable" naming the budget. The seed column comes from the claim registry.
#
# Each claim's kind (event, comparison or absence, in the registry) sets what the verdict needs: an
# event the runs show is reproduced whatever the budget; a comparison or an absence needs every budget
# for either answer; and a comparison's negative also needs the power to have seen the claimed effect
# (the smallest detectable effect, stated), otherwise it is "inconclusive".

# %%
table = notebook.write_report(stage, a, P, out_dir)
display(Markdown(plots.markdown_table(table.drop(columns="id"))))
