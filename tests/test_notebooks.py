"""Every stage's notebook opens in JupyterLab as a notebook and runs there as well as under papermill."""

import json
import re
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
from gradience.studies.grid import load_run_params, train
from gradience.studies.registry import STAGES


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


def test_the_synthesis_notebook_has_only_an_out_dir_parameter():
    cells = jupytext.read(Path(REPO, "notebooks", "synthesis.py")).cells
    params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    namespace: dict = {}
    exec(params[0]["source"], namespace)
    assert len(params) == 1 and {k for k in namespace if not k.startswith("__")} == {"out_dir"}


def test_every_notebook_belongs_to_a_stage():
    scripts = {p.stem for p in Path(REPO, "notebooks").glob("*.py")}
    assert scripts == {*STAGES, "synthesis"}
    for stage in (*STAGES, "synthesis"):
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
    p = load_run_params("grokking", path=tmp_path / "params.yaml")
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


MACHINE_PATH = re.compile(r"(/work/|/home/|/tmp/|/root/|/Users/|site-packages|\.venv/|[A-Z]:\\\\)")
LIBRARY_WARNING = re.compile(r"\b(FutureWarning|DeprecationWarning|PendingDeprecationWarning|UserWarning|RuntimeWarning)\b")
PROGRESS_FRAGMENT = re.compile(r"\d+it/s\]|\|[█▏▎▍▌▋▊▉]+ *\||\d+/\d+ \[\d+:\d+<")


def _output_texts(path: Path) -> list[str]:
    """Every text a reader sees in an executed notebook's outputs (streams, errors, text/plain, html)."""
    texts = []
    for cell in json.loads(path.read_text())["cells"]:
        for out in cell.get("outputs", []):
            if "text" in out:
                texts.append("".join(out["text"]))
            for key in ("text/plain", "text/markdown", "text/html"):
                if key in out.get("data", {}):
                    texts.append("".join(out["data"][key]))
            texts.extend(out.get("traceback", []))
    return texts


def _committed_notebooks() -> list[Path]:
    return sorted(Path(REPO, "reports").glob("*/*.ipynb"))


def test_every_stage_has_a_committed_executed_notebook():
    assert {p.parent.name for p in _committed_notebooks()} == {*STAGES, "synthesis"}


@pytest.mark.parametrize("path", _committed_notebooks(), ids=lambda p: p.parent.name)
def test_committed_notebooks_hold_no_machine_path_library_warning_or_progress_fragment(path):
    for text in _output_texts(path):
        for pattern, what in ((MACHINE_PATH, "a machine path"), (LIBRARY_WARNING, "a library warning"),
                              (PROGRESS_FRAGMENT, "a progress-bar fragment")):
            found = pattern.search(text)
            assert not found, f"{path.relative_to(REPO)} shows {what}: …{text[max(0, found.start() - 80):found.end() + 80]}…"


def test_the_output_checks_catch_what_they_look_for():
    leaks = ["/work/main/.venv/lib/python3.11/site-packages/transformers/modeling_utils.py:123: FutureWarning: x",
             "train: 100%|██████████| 10/10 [00:01<00:00, 9.1it/s]"]
    assert MACHINE_PATH.search(leaks[0]) and LIBRARY_WARNING.search(leaks[0]) and PROGRESS_FRAGMENT.search(leaks[1])
    assert not any(p.search("κ = 3.2 | 4 seeds | reproduced") for p in (MACHINE_PATH, LIBRARY_WARNING, PROGRESS_FRAGMENT))
