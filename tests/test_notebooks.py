"""Every stage's notebook opens in JupyterLab as a notebook and runs there as well as under papermill."""

import shutil
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest
from jupyter_server.services.contents.filemanager import FileContentsManager
from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class

from conftest import REPO
from gradience.profiles import write_profile
from gradience.runner import notebook_from_script
from gradience.studies import STAGES
from gradience.studies.base import load_params, train


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_opens_as_a_notebook_with_a_parameters_cell(stage):
    manager = build_sync_jupytext_contents_manager_class(FileContentsManager)(root_dir=REPO)
    model = manager.get(f"notebooks/{stage}.py", type="notebook")
    cells = model["content"]["cells"]
    params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1
    namespace: dict = {}
    exec(params[0]["source"], namespace)
    assert namespace["stage"] == stage and namespace["report"] is None and namespace["out_dir"] is None
    assert any("Findings vs the seed" in c["source"] for c in cells if c["cell_type"] == "markdown")


def test_every_notebook_belongs_to_a_stage():
    scripts = {p.stem for p in Path(REPO, "notebooks").glob("*.py")}
    assert scripts == set(STAGES)
    for stage in STAGES:
        assert jupytext.read(Path(REPO, "notebooks", f"{stage}.py")).metadata["kernelspec"]["name"] == "python3"


def test_lab_config_in_the_repo_opens_py_notebooks_as_notebooks():
    assert "JUPYTER_CONFIG_PATH=$(CURDIR)/.jupyter jupyter lab" in Path(REPO, "Makefile").read_text()
    settings = Path(REPO, ".jupyter", "labconfig", "default_setting_overrides.json").read_text()
    assert '"python": "Jupytext Notebook"' in settings.replace("'", '"')


def test_run_all_from_the_notebooks_folder_writes_to_scratch_not_reports(tmp_path, data_dir):
    """As JupyterLab runs it: working directory notebooks/, no parameters injected."""
    (tmp_path / "notebooks").mkdir()
    shutil.copy(Path(REPO, "notebooks", "grokking.py"), tmp_path / "notebooks")
    (tmp_path / "dvc.yaml").write_text(Path(REPO, "dvc.yaml").read_text())
    write_profile("smoke", tmp_path / "params.yaml")
    p = load_params("grokking", path=tmp_path / "params.yaml")
    train("grokking", p, tmp_path / "reports" / "grokking", data_dir)
    source = tmp_path / "grokking.ipynb"

    nbformat.write(notebook_from_script(tmp_path / "notebooks" / "grokking.py"), source)
    papermill.execute_notebook(str(source), str(tmp_path / "executed.ipynb"), cwd=str(tmp_path / "notebooks"),
                               kernel_name="python3", progress_bar=False)
    scratch = tmp_path / ".gradience" / "scratch" / "grokking"
    assert (scratch / "metrics.json").exists() and list((scratch / "figures").glob("*.png"))
    assert sorted(p.name for p in (tmp_path / "reports" / "grokking").iterdir()) == ["tables"]
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    outputs = str([c.get("outputs", []) for c in executed.cells])
    assert "IProgress not found" not in outputs and str(tmp_path) not in outputs  # no stray warnings or paths
