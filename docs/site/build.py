"""Build the site of the executed notebooks from reports/, never re-running them (`make site`).

``python docs/site/build.py SITE`` lays the sources out in SITE/src and runs Sphinx (docs/site/conf.py)
into SITE/html. The layout copies reports/synthesis/synthesis.ipynb to SITE/src/index.ipynb (the
site's front page) with one markdown cell appended, a hidden toctree naming the study pages in
pipeline order (gradience.studies.registry.STAGES); every reports/<study>/<study>.ipynb to
SITE/src/<study>.ipynb; and docs/glossary.md. Code cells are tagged hide-input in the copies, so a page
leads with its prose, figures and tables and the code unfolds on a click. reports/ is only read.
"""

import shutil
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]


def _read(path: Path) -> nbformat.NotebookNode:
    """The executed notebook, its code cells tagged hide-input (folded; outputs shown as they are)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata["tags"] = [*cell.metadata.get("tags", []), "hide-input"]
    return nb


def prepare(dest: Path) -> list[str]:
    """Fill the source folder ``dest`` (emptied first); return the study pages, in order."""
    from gradience.studies.registry import STAGES

    missing = [p for p in ["synthesis", *STAGES] if not (ROOT / "reports" / p / f"{p}.ipynb").exists()]
    if missing:
        raise SystemExit(f"no executed notebook reports/<study>/<study>.ipynb for {missing}: run `make study` (or dvc repro)")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for study in STAGES:
        nbformat.write(_read(ROOT / "reports" / study / f"{study}.ipynb"), dest / f"{study}.ipynb")
    shutil.copyfile(ROOT / "docs" / "glossary.md", dest / "glossary.md")
    index = _read(ROOT / "reports" / "synthesis" / "synthesis.ipynb")
    toc = "\n".join(["```{toctree}", ":hidden:", ":caption: Studies", "", *STAGES, "```", "",
                     "```{toctree}", ":hidden:", ":caption: Reference", "", "glossary", "```"])
    index.cells.append(nbformat.v4.new_markdown_cell(toc))
    nbformat.write(index, dest / "index.ipynb")
    return list(STAGES)


def build(site: Path) -> Path:
    """Lay out ``site``/src and build ``site``/html (warnings are errors); return the front page."""
    from sphinx.cmd.build import build_main

    studies = prepare(site / "src")
    if build_main(["-q", "-W", "--keep-going", "-b", "html", "-c", str(ROOT / "docs" / "site"),
                   str(site / "src"), str(site / "html")]):
        raise SystemExit(f"sphinx-build failed on {site / 'src'} (messages above)")
    print(f"site: {site / 'html' / 'index.html'} (the synthesis, {len(studies)} studies, the glossary)")
    return site / "html" / "index.html"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python docs/site/build.py SITE (e.g. .gradience/site)")
    build(Path(sys.argv[1]))
