"""One seaborn theme and the figure and table helpers every notebook uses."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

DPI = 110


def set_theme() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", rc={"figure.dpi": DPI})


def save(fig: plt.Figure, out_dir: str | Path, name: str) -> None:
    """Write ``<out_dir>/figures/<name>.png``; the figure stays displayable.

    Returns nothing, so a cell ending in ``save(...)`` shows the figure, not a machine's path.
    """
    path = Path(out_dir) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table, with ``|`` inside cells escaped so a cell such as
    "|Δ log r|" cannot split its row."""
    return frame.astype(str).replace({r"\|": r"\\|"}, regex=True).to_markdown(index=False)


def facet_lines(data, x: str, y: str, hue: str, col: str, *, logx: bool = False, logy: bool = False,
                col_wrap: int | None = None, height: float = 3.0, units: str | None = None,
                title: str = "", ylabel: str | None = None, xlabel: str | None = None,
                **kw) -> sns.FacetGrid:
    """Small multiples of line plots; ``units`` draws one line per run instead of a mean band.

    Extra keywords (``hue_order``, ``col_order``, …) go to :func:`seaborn.relplot`.
    """
    kw |= {"units": units, "estimator": None} if units else {"errorbar": ("pi", 100)}
    g = sns.relplot(data=data, x=x, y=y, hue=hue, col=col, kind="line", col_wrap=col_wrap,
                    height=height, aspect=1.3, facet_kws={"sharey": True}, **kw)
    g.set(xscale="log" if logx else "linear", yscale="log" if logy else "linear")
    g.set_axis_labels(xlabel or x, ylabel or y)
    if title:
        g.figure.suptitle(title, y=1.03)
    return g
