"""Every stage has a notebook that JupyterLab (through jupytext) opens as a notebook, with the runner's parameters."""

from pathlib import Path

import jupytext
import pytest
from jupyter_server.services.contents.filemanager import FileContentsManager
from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class

from conftest import REPO
from gradience.studies import STAGES


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_opens_as_a_notebook_with_a_parameters_cell(stage):
    manager = build_sync_jupytext_contents_manager_class(FileContentsManager)(root_dir=REPO)
    model = manager.get(f"notebooks/{stage}.py", type="notebook")
    cells = model["content"]["cells"]
    params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1
    namespace: dict = {}
    exec(params[0]["source"], namespace)
    assert namespace["stage"] == stage and namespace["params"] is None
    assert namespace["out_dir"] == f"reports/{stage}"
    assert any("Findings vs the seed" in c["source"] for c in cells if c["cell_type"] == "markdown")


def test_every_notebook_belongs_to_a_stage():
    scripts = {p.stem for p in Path(REPO, "notebooks").glob("*.py")}
    assert scripts == set(STAGES)
    for stage in STAGES:
        assert jupytext.read(Path(REPO, "notebooks", f"{stage}.py")).metadata["kernelspec"]["name"] == "python3"
