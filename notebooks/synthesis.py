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
# # The arc as one answer: the scoreboard
#
# Ten studies test the claims of five source documents, from grokking on modular arithmetic to LoRA
# fine-tuning. Each study's notebook ends with a *Findings vs the seed* table; this notebook reads those
# tables (each study's `findings.json`) and the claim registry, and nothing else: it trains nothing and
# reads no telemetry, so it reruns in seconds whenever a study's verdicts change.
#
# **How to read a verdict.** *Reproduced*: the runs show what the claim says, with every budget it needs
# (an event the runs show needs none). *Not reproduced*: the runs contradict it with every budget met
# and, for a comparison, the power to have seen the claimed effect. *Not comparable*: a budget is short
# (the row names it, reached against needed). *Inconclusive*: the runs agree with neither answer
# firmly enough — most often a negative without the power to see the claimed effect.

# %% tags=["parameters"]
out_dir = None  # None: an interactive run, written to .gradience/scratch/synthesis/

# %%
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from gradience import cost, plots, reporting, synthesis
from gradience.studies.notebook import repository_root

root = repository_root()
out_dir = Path(out_dir) if out_dir is not None else root / ".gradience" / "scratch" / synthesis.STAGE
(out_dir / "figures").mkdir(parents=True, exist_ok=True)
plots.set_theme()
rows = synthesis.collect(root / "reports")
print(f"{len(rows)} Findings rows from {rows.study.nunique()} studies, {rows.source.nunique()} source documents")

# %% [markdown]
# ## The scoreboard
#
# One row per study (pipeline order), the four verdict counts and their total. The README opens with
# this table.

# %%
board = synthesis.scoreboard(rows)
display(Markdown(synthesis.scoreboard_markdown(rows)))

# %%
COLOURS = dict(zip(reporting.VERDICTS, ("#1b9e77", "#d95f02", "#a6a6a6", "#7570b3"), strict=True))
shown = board.drop(index="all")[list(reporting.VERDICTS)]
fig, ax = plt.subplots(figsize=(8, 4.2))
shown.iloc[::-1].plot.barh(stacked=True, color=COLOURS, ax=ax, width=0.75)
ax.set_xlabel("Findings rows")
ax.set_ylabel("")
ax.set_title("Verdicts per study")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
plots.save(fig, out_dir, "scoreboard")

# %% [markdown]
# ## Per source document and per kind of claim
#
# The source documents are those of the claim registry. The kind of a claim decides what a short or
# small run could fake: an *event* the runs show cannot be faked by a short run; a *comparison* or an
# *absence* can, so it needs every budget for either answer.

# %%
titles = {k: v["title"] for k, v in reporting.sources().items()}
src = synthesis.by_source(rows).rename(index=lambda s: titles.get(s, s))
display(Markdown(src.reset_index().to_markdown(index=False)))
display(Markdown(synthesis.by_kind(rows).reset_index().to_markdown(index=False)))

# %% [markdown]
# ## Part III measured: does restraint help across domains?
#
# The synthesis closes on one principle: constraining the updates (weight decay, a lower learning rate,
# a lower α/r, fewer target modules) improves generalisation, in grokking and in LoRA alike. Each row
# names the claims whose runs test that mechanism; its verdict combines theirs ("not reproduced" if any
# is, "reproduced" only if all are, else "not comparable" if any is short of budget, else
# "inconclusive").

# %%
display(Markdown(plots.markdown_table(synthesis.restraint(rows))))

# %% [markdown]
# ## Part IV measured: what spectral metrics can and cannot do
#
# The synthesis's table of capabilities ("detect struggling runs", "track update dynamics", …) and the
# limitation it states most firmly ("metrics describe, they do not predict"), each with the claims the
# runs tested. A capability no study tests yet reads "not tested".

# %%
display(Markdown(plots.markdown_table(synthesis.capabilities(rows))))

# %% [markdown]
# ## What held, and what did not
#
# Every claim the runs reproduced, and every claim they contradicted with every budget met (and the
# power to have seen the claimed effect), with the measured value. The reasons, and the rows that
# could not decide, are in each study's notebook.

# %%
registry = reporting.claims()
for verdict in ("reproduced", "not reproduced"):
    sel = rows[rows.verdict == verdict]
    table = sel.assign(claim=sel.id.map(lambda c: registry[c]["claim"]))[["study", "claim", "measured"]]
    display(Markdown(f"**{verdict}** ({len(sel)})"))
    display(Markdown(plots.markdown_table(table)))

# %% [markdown]
# ## What the paper scale costs
#
# Per study, the runs, optimiser steps and training FLOPs of the default and the paper profile,
# counted from the params (``gradience.cost``: the study's own jobs and models; FLOPs ≈ 6·N·tokens
# per step for dense training, 4·N_base + 6·N_adapter for LoRA, plus the Hutchinson and Fisher
# probes whose counts the params fix). Beside them, the default's measured CPU time (the summed
# ``cpu_seconds`` of each study's run table; "n/a" where the table is missing or came from another
# profile) with the FLOP/s it implies, and the paper's estimated time on one H100 SXM (peak bf16
# 989, fp32 67 TFLOP/s) at the utilisation shown: 5 % for the small fp32 models, 40 % for
# Mistral-7B LoRA in bf16. `gradience profile paper` prints the same estimate.

# %%
costs = cost.cost_table(root / "data", root / "reports")
missing = costs.study[costs.default_cpu_hours.isna()].tolist()
display(Markdown(plots.markdown_table(cost.display_table(costs))))
if missing:
    display(Markdown(f"No default-profile run table yet for: {', '.join(missing)} (measured time n/a)."))

# %%
path = synthesis.write(rows, out_dir)  # metrics.json, read by `dvc metrics show`
