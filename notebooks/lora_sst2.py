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
# # Part II — LoRA fine-tuning on SST-2-style sentiment classification
#
# **Question** (synthesis, appendix "LoRA Experiments (SST-2)" and Part V's decision tree). On an
# "easy" classification task, does any reasonable LoRA configuration work (the seed: 94.0–96.0 %),
# is the low learning rate best, and does attention-only r = 8 at LR 5e-5 match it with 12× fewer
# parameters? And the analyses shared with `lora_gsm8k` (published there for GSM8K only): does
# α/r control generalisation, does LR dominate α/r, does the stable rank of ΔW = (α/r)·B·A track
# accuracy, attention vs all modules, is r = 8 enough, does the ppl-ratio monitor (> 1.5) flag the
# worse runs?
#
# **Protocol** (`gradience.studies.lora_family`, shared with `lora_gsm8k`). Each configuration is a
# PEFT LoRA adapter plus a new classification head (trained with it; PEFT's `modules_to_save`)
# from the same base model and seed(s). The zero-shot run is the base model with its untrained
# head, i.e. chance level. Per run: accuracy of the arg-max label on the scored test examples, the
# "perplexity" exp(label cross-entropy) on train and test examples and their ratio (every
# `eval_every` steps, with the monitor's warning), and the adapter geometry every
# `geometry_every` steps — stable rank, utilization = stable rank / r, dominance = ‖ΔW‖₂/‖W‖₂,
# κ and effective rank of ΔW, from the r × r core of B·A.
#
# **The default profile is smaller than the seed, marked as such here:**
# - Base model: all-MiniLM-L6-v2 (a 22.7 M-parameter BERT encoder; targets `query key value` and the
#   attention's `output.dense` for "attention", `intermediate.dense` and the layer's `output.dense`
#   for "MLP"), not Mistral-7B.
# - Data: **not SST-2**. The labelled Amazon fine-food reviews (Debian `r-cran-modeldata`): 5 stars
#   ("great") vs fewer, 62 % positive in the test split — a harder distinction than SST-2's polarity,
#   and reviews are cut at `max_length` tokens (a logistic probe on frozen mean-pooled MiniLM
#   features reaches ~62 % at 64 tokens and ~75 % at 256). The paper profile loads SST-2 (scored on
#   its validation split; SST-2's test labels are hidden).
# - Steps: `steps` updates of `batch_size` reviews (printed below), not the seed's epochs; so every
#   learning rate is multiplied by `lr_scale` (printed below, a free choice); the seed's 4× ratio
#   between 2e-4 and 5e-5 is kept, and "low LR" here means the seed's 5e-5 × `lr_scale`. The paper
#   profile uses the seed's learning rates (`lr_scale` 1). Sized in pilots (seed 0, all targets,
#   r 32, 48 tokens, 300 test reviews): at 40 steps and `lr_scale` 10 (an earlier default) four
#   of six configurations stayed at the majority class; at 2e-3 (`lr_scale` 10) seed 0 stayed
#   there for 160 steps; at 8e-4 and
#   2e-4 (`lr_scale` 4) it left it after 100–150 steps (72 % and 71–77 % at 200 steps). Every
#   comparison below carries the budget "compared configurations that learned": a configuration
#   counts only when it beats the better of the zero-shot and majority-class accuracy by z SE.
# - Configurations: the seed's four SST-2 configurations run with every seed; the others of the
#   GSM8K grid with the first seed only or only in the paper profile (listed below).
# - Test examples scored: fewer than the verdicts' budget `min_test_examples` where printed so.

# %% tags=["parameters"]
stage = "lora_sst2"
report = None  # this stage's `report` section of params.yaml; None reads params.yaml
out_dir = None  # None: an interactive run, written to .gradience/scratch/lora_sst2/

# %%
from IPython.display import Markdown, display

from gradience import plots
from gradience.studies import notebook
from gradience.studies.lora_family import analysis as lf
from gradience.studies.lora_family import figures as lfig
from gradience.studies.lora_family.runs import CONFIGS
from gradience.studies.lora_sst2 import analysis as study
from gradience.studies.lora_sst2 import findings as study_findings

ctx = notebook.open_report(stage, report, out_dir)
P, R, out_dir = ctx.params, ctx.tables.params, ctx.out_dir
plots.set_theme()
print(f"profile={R.profile}  base model={R.base_model} ({R.dtype})  data={R.data.model_dump()}")
print(f"steps={R.steps}  batch={R.batch_size}  lr_scale={R.lr_scale:g}  seeds={R.seeds}")
print(f"every seed: {R.configs}\nfirst seed only: {R.first_seed_configs}\n"
      f"only in the paper profile: {[c for c in CONFIGS if c not in R.configs + R.first_seed_configs]}")
results = study.analyse(ctx.tables, P)

# %% [markdown]
# ## The configurations and their parameter counts
# The seed's "Params" column beside PEFT's count of trainable parameters on the real Mistral-7B
# architecture (built from its published config on the meta device, no weights), and the
# count on the model trained here.

# %%
counts = lf.mistral_param_counts()
here = results.configs.set_index("config")["trainable_params"]
counts["params_here"] = counts.config.map(here)
counts

# %% [markdown]
# ## Cost on this machine
# CPU seconds per run (one thread per run) and the part spent scoring the test examples, from
# `runs.parquet`; the stage's wall time is about the sum divided by `workers`.

# %%
lf.cost_table(results.summary)

# %% [markdown]
# ## Zero-shot vs fine-tuned
# Label accuracy on the scored test examples; mean ± sd over seeds, beside the seed's SST-2 table
# (the zero-shot run is the untrained head; the majority class is printed for reference).

# %%
plots.save(lfig.accuracy_by_config(results, "accuracy (test; red star: the seed's SST-2 value)",
                                   study_findings.SEED_SST2), out_dir, "accuracy_by_config")
cfg = results.configs
print(f"majority class of the scored test examples: {lf.majority_share(ctx.tables):.3f}")
cfg[["config", "seeds", "r", "alpha_over_r", "lr", "targets", "accuracy", "accuracy_sd", "ppl_ratio",
     "lora_stable_rank", "utilization", "dominance"]].round(4)

# %% [markdown]
# ## The r × α/r grid (LR 2e-4 × lr_scale, all targets)
# The seed published this grid for GSM8K only (SST-2: baseline 95.0 % vs low_alpha 94.0 % at r 32).

# %%
plots.save(lfig.grid_heatmaps(results, "accuracy"), out_dir, "grid_heatmaps")

# %% [markdown]
# ## Training curves and the monitor
# Batch loss, test/train perplexity ratio (the monitor's threshold dashed) and the model-mean
# stable rank of ΔW over training, per configuration (mean over seeds).

# %%
plots.save(lfig.training_curves(results, P.memorisation_ratio, "labels"), out_dir, "curves")
lf.monitor_table(results.tuned, P.memorisation_ratio).round(3)

# %% [markdown]
# ## Accuracy vs stable rank
# One point per run; the seed (GSM8K): stable rank 4.66 (α/r 1) → 2.25 (α/r 0.25) → 1.30 (LR 5e-5),
# the lower the better. Right: utilization (stable rank / r) and dominance per module kind at the end.

# %%
plots.save(lfig.accuracy_vs_stable_rank(results, "accuracy"), out_dir, "accuracy_vs_stable_rank")
print("Spearman across configurations:", lf.stable_rank_association(results))

# %% [markdown]
# ## Findings vs the seed
# Verdicts are computed by `gradience.studies.lora_sst2.findings` (the shared analyses by
# `gradience.studies.lora_family.findings`) from the runs above with
# `reporting.judged`: a difference counts when it exceeds `z` standard errors (seed spread and the
# binomial test-set error combined); "not reproduced" only with `min_seeds` seeds per compared
# configuration and `min_test_examples` scored examples, otherwise "not comparable" naming the
# short budget. A claim whose configurations were not run is "inconclusive". The seed column comes
# from the repository's claim registry.
#
# Each claim's kind (event, comparison or absence, in the registry) sets what the verdict needs: an
# event the runs show is reproduced whatever the budget; a comparison or an absence needs every budget
# for either answer; and a comparison's negative also needs the power to have seen the claimed effect
# (the smallest detectable effect, stated), otherwise it is "inconclusive".

# %%
table = notebook.write_report(stage, results, P, out_dir)
display(Markdown(plots.markdown_table(table.drop(columns="id"))))
