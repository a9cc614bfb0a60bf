"""The figures of the LoRA family's notebooks (``lora_gsm8k``, ``lora_sst2``), drawn from a
:class:`gradience.studies.lora_family.analysis.Analysis`. Each returns the figure; the notebook saves it."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import seaborn as sns

from gradience.studies.lora_family import analysis as lf


def accuracy_by_config(a: lf.Analysis, xlabel: str, marks: dict[str, float] | None = None) -> plt.Figure:
    """Accuracy per configuration (bars: mean, sd over seeds; dots: runs), zero-shot included; ``marks``:
    a published value per configuration, drawn as a red star."""
    order = a.configs.sort_values("accuracy").config.tolist()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(order) + 1.2))
    sns.barplot(data=a.summary, y="condition", x="accuracy", order=order, errorbar="sd", ax=ax, color="tab:blue")
    sns.stripplot(data=a.summary, y="condition", x="accuracy", order=order, ax=ax, color="k", size=4)
    for name, acc in (marks or {}).items():
        if name in order:
            ax.plot(acc, order.index(name), marker="*", ms=12, c="tab:red", ls="")
    ax.set(xlabel=xlabel, ylabel="configuration", title="Accuracy per configuration (bars: mean, sd over seeds)")
    return fig


def grid_heatmaps(a: lf.Analysis, accuracy_label: str) -> plt.Figure:
    """The r × α/r grid (:func:`.analysis.grid_frame`) of accuracy, ppl ratio and stable rank of ΔW."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    panels = [("accuracy", accuracy_label), ("ppl_ratio", "test/train ppl"), ("lora_stable_rank", "stable rank of ΔW")]
    for ax, (value, title) in zip(axes, panels, strict=True):
        with warnings.catch_warnings():
            # seaborn's colour range (np.nanmin / np.nanmax) warns "All-NaN slice encountered" when no
            # grid configuration ran in this profile (smoke): harmless, the panel is drawn blank.
            warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)
            sns.heatmap(lf.grid_frame(a.configs, value), annot=True, fmt=".2f", cmap="viridis", ax=ax, cbar=False)
        ax.set(title=title, xlabel="α/r", ylabel="r")
    fig.suptitle("The r × α/r grid (mean over seeds; blank: not run in this profile)", y=1.04)
    return fig


def training_curves(a: lf.Analysis, memorisation_ratio: float, loss_label: str) -> plt.Figure:
    """Batch loss, test/train perplexity ratio (the monitor's threshold dashed) and the model-mean stable
    rank of ΔW against step, per configuration (mean over seeds)."""
    s = a.series[a.series.condition != lf.ZERO_SHOT]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [("batch_loss", "batch loss", f"cross-entropy ({loss_label})"),
              ("ppl_ratio", "test/train perplexity (monitor: dashed)", "ppl ratio"),
              ("lora_stable_rank", "stable rank of ΔW (mean over modules)", "stable rank")]
    for i, (ax, (metric, title, ylabel)) in enumerate(zip(axes, panels, strict=True)):
        sns.lineplot(data=s.dropna(subset=[metric]), x="step", y=metric, hue="condition", ax=ax, errorbar=None,
                     marker="o" if metric == "ppl_ratio" else None, legend=i == 0)
        ax.set(title=title, ylabel=ylabel)
    axes[1].axhline(memorisation_ratio, ls="--", c="grey")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def accuracy_vs_stable_rank(a: lf.Analysis, accuracy_label: str) -> plt.Figure:
    """Left: accuracy against the final stable rank of ΔW, one point per run. Right: utilization per
    adapted module kind at the end."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    sns.scatterplot(data=a.tuned, x="lora_stable_rank", y="accuracy", hue="condition", style="targets", s=70, ax=axes[0])
    axes[0].set(title="accuracy vs stable rank of ΔW (final)", xlabel="stable rank (mean over modules)",
                ylabel=accuracy_label)
    axes[0].legend(fontsize=7)
    if len(a.modules):
        sns.boxplot(data=a.modules, x="kind", y="utilization", hue="condition", ax=axes[1], fliersize=1)
        axes[1].set(title="utilization per module kind (final)", xlabel="module", ylabel="stable rank / r")
        axes[1].legend(fontsize=6)
    fig.tight_layout()
    return fig
