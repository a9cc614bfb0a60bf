"""Execute one stage's notebook with papermill into ``reports/<stage>/``.

The stage's params section is validated first (a bad value stops here, before any work). The
notebook (jupytext percent ``.py``) receives three parameters: ``stage``, ``params`` (its section
only, defaults filled in) and ``out_dir``. If execution fails, ``reports/<stage>/`` is removed and
the partly executed notebook is kept in ``.gradience/failed/<stage>.ipynb`` for inspection, so
nothing half-written stays in ``reports/``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import jupytext
import nbformat
import papermill

from gradience.config import PARAMS_FILE, load_stage_params

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
FAILED_DIR = Path(".gradience/failed")
REQUIRED_OUTPUTS = ("metrics.json",)


class StageFailed(RuntimeError):
    """The notebook raised; the message says where the failed notebook was kept."""


def notebook_from_script(script: Path) -> nbformat.NotebookNode:
    nb = jupytext.read(script)
    nb.metadata["kernelspec"] = KERNELSPEC
    return nb


def run_stage(
    stage: str,
    params_path: str | Path = PARAMS_FILE,
    notebooks: str | Path = "notebooks",
    reports: str | Path = "reports",
    progress: bool = True,
) -> Path:
    """Validate, execute and write ``reports/<stage>/``; return the executed notebook's path."""
    params = load_stage_params(stage, path=params_path)
    script = Path(notebooks) / f"{stage}.py"
    if not script.exists():
        raise FileNotFoundError(f"no notebook for stage {stage!r}: {script} is missing")
    out = Path(reports) / stage
    shutil.rmtree(out, ignore_errors=True)
    (out / "figures").mkdir(parents=True)
    executed = out / f"{stage}.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{stage}.ipynb"
        nbformat.write(notebook_from_script(script), source)
        try:
            papermill.execute_notebook(
                str(source), str(executed), kernel_name=KERNELSPEC["name"], progress_bar=progress,
                log_output=progress, cwd=str(Path.cwd()),
                parameters={"stage": stage, "params": params.model_dump(mode="json"), "out_dir": str(out)},
            )
            missing = [name for name in REQUIRED_OUTPUTS if not (out / name).exists()]
            if missing:
                raise StageFailed(f"stage {stage!r} finished without writing {missing}")
        except BaseException as exc:
            kept = _keep_failed(executed, stage)
            shutil.rmtree(out, ignore_errors=True)
            if isinstance(exc, papermill.PapermillExecutionError):
                raise StageFailed(f"stage {stage!r} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                                  f"  the partly executed notebook is kept in {kept}") from None
            raise
    return executed


def _keep_failed(executed: Path, stage: str) -> Path | None:
    if not executed.exists():
        return None
    FAILED_DIR.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(executed, FAILED_DIR / f"{stage}.ipynb"))


def configure_logging() -> None:
    """Show papermill's streamed cell output (progress bars included) on the terminal."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)
