"""Execute one report notebook with papermill into ``reports/<stage>/``.

The stage's ``report`` section is validated first (a bad value stops here, before any work), and
the training stage's tables must exist. The notebook (jupytext percent ``.py``) receives three
parameters: ``stage``, ``report`` (its section, defaults filled in) and ``out_dir``. It writes into
a staging folder, and its report replaces the previous one in ``reports/<stage>/`` only once it has
finished (:func:`execute`), so a failure of any kind, a kill included, leaves ``reports/`` as it was.
The training tables are checked (present, readable) first and are never touched here.

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
from gradience.studies.notebook import check_tables, load_params
from gradience.studies.protocol import TABLES_DIR

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
FAILED_DIR = Path(".gradience/failed")
STAGING_DIR = Path(".gradience/staging")
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
    check_tables(stage, out / TABLES_DIR)  # a truncated table stops here, before the old report is moved
    parameters = {"stage": stage, "report": params.report.model_dump(mode="json"), "out_dir": str(out)}
    return execute(stage, script, out, parameters, report_outputs(stage, reports), progress)


def execute(stage: str, script: Path, out: Path, parameters: dict, outputs: list[Path], progress: bool = True) -> Path:
    """papermill ``script`` with ``parameters``, then move its report into ``out``; the executed notebook's path.

    The notebook writes into ``.gradience/staging/<stage>/`` (its ``out_dir``; the executed notebook
    records ``parameters["out_dir"]``), and only once it has finished and written ``metrics.json`` is
    each of ``outputs`` replaced by its new version, one rename each. An error in a cell, a full disk
    or a kill (SIGKILL included) therefore leaves ``reports/`` as it was; the partly executed notebook
    is kept in ``.gradience/failed/<stage>.ipynb``.
    """
    staging = STAGING_DIR / stage
    _clear([staging])
    executed = staging / f"{stage}.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{stage}.ipynb"
        try:
            (staging / "figures").mkdir(parents=True)
            nbformat.write(notebook_from_script(script), source)
            with quiet():  # the kernel inherits it: no bars in the executed notebook
                papermill.execute_notebook(
                    str(source), str(executed), kernel_name=KERNELSPEC["name"], progress_bar=progress,
                    log_output=progress, cwd=str(Path.cwd()), parameters=parameters | {"out_dir": str(staging)},
                )
            _record_the_run(executed, script, str(staging), str(parameters.get("out_dir", out)))
            missing = [name for name in REQUIRED_OUTPUTS if not (staging / name).exists()]
            if missing:
                raise StageFailed(f"stage {stage!r} finished without writing {missing}")
            _replace(outputs, staging)
        except BaseException as exc:
            kept = _keep_failed(executed, stage)
            _clear([staging])
            if isinstance(exc, papermill.PapermillExecutionError):
                raise StageFailed(f"stage {stage!r} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                                  f"  the partly executed notebook is kept in {kept}") from None
            if isinstance(exc, OSError):  # e.g. ENOSPC: a full disk
                raise StageFailed(f"stage {stage!r} could not write its report ({exc}); the earlier report in "
                                  f"{out} is kept") from None
            raise
    _clear([staging])
    return out / f"{stage}.ipynb"


def _replace(outputs: list[Path], staging: Path) -> None:
    """Each of ``outputs`` replaced by its namesake in ``staging`` (removed where the notebook wrote none)."""
    for path in outputs:
        new = staging / path.name
        _clear([path])
        if new.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            new.rename(path)


def _record_the_run(executed: Path, script: Path, staging: str, out_dir: str) -> None:
    """Record the notebook's source (not the temporary .ipynb papermill ran) and its report folder
    (not the staging folder it wrote into) in the executed notebook."""
    nb = nbformat.read(executed, as_version=4)
    meta = nb.metadata.setdefault("papermill", {})
    meta["input_path"] = str(script)
    meta["output_path"] = str(Path(out_dir) / executed.name)
    if "out_dir" in meta.get("parameters", {}):
        meta["parameters"]["out_dir"] = out_dir
    for cell in nb.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell.source = cell.source.replace(f'"{staging}"', f'"{out_dir}"')
    nbformat.write(nb, executed)


def _keep_failed(executed: Path, stage: str) -> Path | None:
    if not executed.exists():
        return None
    try:
        FAILED_DIR.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(executed, FAILED_DIR / f"{stage}.ipynb"))
    except OSError:  # a full disk: restoring the previous report matters more
        return None


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
