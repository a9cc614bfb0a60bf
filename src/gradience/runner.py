"""Execute one report notebook with papermill into ``reports/<stage>/``.

The stage's ``report`` section is validated first (a bad value stops here, before any work), and
the training stage's tables must exist. The notebook (jupytext percent ``.py``) receives three
parameters: ``stage``, ``report`` (its section, defaults filled in) and ``out_dir``. The report's
own outputs (:data:`REPORT_OUTPUTS`) are cleared first; if execution fails they are removed again
and the partly executed notebook is kept in ``.gradience/failed/<stage>.ipynb``, so nothing
half-written stays in ``reports/``. The training tables are never touched here.

``python -m gradience.runner <study>`` is the report stage's DVC command. Progress bars inside
the executed notebook are off (``GRADIENCE_PROGRESS=0``): the notebook is read, not watched.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat
import papermill

from gradience.config import PARAMS_FILE, ParamsError, stage_arguments
from gradience.progress import quiet
from gradience.studies.notebook import load_params
from gradience.studies.protocol import TABLES_DIR

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
FAILED_DIR = Path(".gradience/failed")
REQUIRED_OUTPUTS = ("metrics.json",)
REPORT_OUTPUTS = ("{stage}.ipynb", "figures", "plots", "metrics.json", "findings.json")


class StageFailed(RuntimeError):
    """The notebook raised; the message says where the failed notebook was kept."""


def notebook_from_script(script: Path) -> nbformat.NotebookNode:
    nb = jupytext.read(script)
    nb.metadata["kernelspec"] = KERNELSPEC
    return nb


def report_outputs(stage: str, reports: str | Path = "reports") -> list[Path]:
    return [Path(reports) / stage / name.format(stage=stage) for name in REPORT_OUTPUTS]


def _clear(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_report(
    stage: str,
    params_path: str | Path = PARAMS_FILE,
    notebooks: str | Path = "notebooks",
    reports: str | Path = "reports",
    progress: bool = True,
) -> Path:
    """Validate, execute the notebook and write the report into ``reports/<stage>/``."""
    params = load_params(stage, path=params_path)
    script = Path(notebooks) / f"{stage}.py"
    if not script.exists():
        raise FileNotFoundError(f"no notebook for stage {stage!r}: {script} is missing")
    out = Path(reports) / stage
    if not (out / TABLES_DIR).is_dir():
        raise FileNotFoundError(f"no tables in {out / TABLES_DIR}/: run `dvc repro {stage}_runs` "
                                f"(or `gradience train {stage}`) first")
    parameters = {"stage": stage, "report": params.report.model_dump(mode="json"), "out_dir": str(out)}
    return execute(stage, script, out, parameters, report_outputs(stage, reports), progress)


def execute(stage: str, script: Path, out: Path, parameters: dict, outputs: list[Path], progress: bool = True) -> Path:
    """papermill ``script`` into ``out/<stage>.ipynb`` with ``parameters``: ``outputs`` are cleared first,
    and removed again if the notebook fails (kept in ``.gradience/failed/``) or writes no ``metrics.json``."""
    _clear(outputs)
    (out / "figures").mkdir(parents=True)
    executed = out / f"{stage}.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{stage}.ipynb"
        nbformat.write(notebook_from_script(script), source)
        try:
            with quiet():  # the kernel inherits it: no bars in the executed notebook
                papermill.execute_notebook(
                    str(source), str(executed), kernel_name=KERNELSPEC["name"], progress_bar=progress,
                    log_output=progress, cwd=str(Path.cwd()), parameters=parameters,
                )
            _name_the_source(executed, script)
            missing = [name for name in REQUIRED_OUTPUTS if not (out / name).exists()]
            if missing:
                raise StageFailed(f"stage {stage!r} finished without writing {missing}")
        except BaseException as exc:
            kept = _keep_failed(executed, stage)
            _clear(outputs)
            if isinstance(exc, papermill.PapermillExecutionError):
                raise StageFailed(f"stage {stage!r} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                                  f"  the partly executed notebook is kept in {kept}") from None
            raise
    return executed


def _name_the_source(executed: Path, script: Path) -> None:
    """Record the notebook's source (not the temporary .ipynb papermill ran) in its metadata."""
    nb = nbformat.read(executed, as_version=4)
    nb.metadata["papermill"]["input_path"] = str(script)
    nbformat.write(nb, executed)


def _keep_failed(executed: Path, stage: str) -> Path | None:
    if not executed.exists():
        return None
    FAILED_DIR.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(executed, FAILED_DIR / f"{stage}.ipynb"))


def configure_logging() -> None:
    """Show papermill's streamed cell output (progress bars included) on the terminal."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = stage_arguments("python -m gradience.runner", __doc__.split("\n")[0], argv)
    if not args.quiet:
        configure_logging()
    try:
        print(run_report(args.study, params_path=args.params, progress=not args.quiet))
    except StageFailed as exc:
        print(f"gradience: {exc}", file=sys.stderr)
        return 1
    except (ParamsError, KeyError, FileNotFoundError) as exc:
        print(f"gradience: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
