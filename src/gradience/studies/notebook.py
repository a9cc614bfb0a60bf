"""The report stage's side of the protocol: a notebook's params, its tables and what it writes.

A report notebook calls :func:`open_report` (params and tables, under papermill or interactively),
the study's ``analysis.analyse``, draws figures, and ends with :func:`write_report`, which writes
``metrics.json`` (with all four verdict counts), ``findings.json`` and the ``dvc plots`` curves, and returns the
Findings table. Everything written is computed by the study's functions from the tables.
"""

from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, create_model

from gradience.config import PARAMS_FILE, read_params_file, validate_section
from gradience.reporting import (
    findings_table,
    mark_machine_flips,
    verdict_counts,
    write_findings,
    write_metrics,
)
from gradience.studies.grid import StageSection, runs_module
from gradience.studies.protocol import RUN_PARAMS_FILE, TABLES_DIR, ReportParams, RunParams, Tables


def study_part(stage: str, part: str) -> ModuleType:
    """``gradience.studies.<stage>.<part>`` (``runs``, ``analysis`` or ``findings``)."""
    runs_module(stage)  # a clear error for an unknown study
    return importlib.import_module(f"gradience.studies.{stage}.{part}")


class StudyParams(StageSection):
    """A whole section, ``report`` included (the training stage validates only its own keys)."""

    report: ReportParams = ReportParams()


def params_schema(stage: str) -> type[StudyParams]:
    return create_model(f"{stage}_params", __base__=StudyParams, runs=(runs_module(stage).RunParams, ...),
                        report=(study_part(stage, "analysis").ReportParams,
                                Field(default_factory=study_part(stage, "analysis").ReportParams)))


def load_params(stage: str, section: dict[str, Any] | None = None, path: str | Path = PARAMS_FILE) -> StudyParams:
    """The validated section of ``stage`` (runs and report): ``section`` if given, else from ``params.yaml``."""
    if section is None:
        section = read_params_file(path).get(stage)
    return validate_section(stage, params_schema(stage), section)


class TablesError(FileNotFoundError):
    """A training stage's tables are missing, truncated or unreadable; the message names the file and
    the stage to rerun. A ``FileNotFoundError``, so the report stage's command reports it in one line."""


def _rerun(stage: str) -> str:
    return f"run `dvc repro {stage}_runs` (or `gradience train {stage}`)"


def _run_params(stage: str, folder: Path) -> RunParams:
    path = folder / RUN_PARAMS_FILE
    if not path.exists():
        raise TablesError(f"no tables for stage {stage!r} in {folder}/: {_rerun(stage)} first")
    try:
        return runs_module(stage).RunParams.model_validate(json.loads(path.read_text()))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and pydantic's ValidationError are ValueErrors
        raise TablesError(f"corrupted or stale {path} ({str(exc).splitlines()[0]}): {_rerun(stage)} again") from None


def _table_paths(stage: str, folder: Path) -> list[Path]:
    return [folder / f"{name}.parquet" for name in (*runs_module(stage).TABLES, "runs")]


def _read_table(stage: str, path: Path, metadata_only: bool = False) -> pd.DataFrame | None:
    if not path.exists():
        raise TablesError(f"missing table {path}: {_rerun(stage)} again")
    try:
        if metadata_only:
            pq.read_metadata(path)
            return None
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TablesError(f"corrupted table {path} ({exc}): {_rerun(stage)} again") from None


def check_tables(stage: str, tables_dir: str | Path) -> None:
    """Every table of ``tables_dir`` present with a readable parquet footer, and its ``params.json`` valid
    (what a truncated or interrupted write breaks); cheap: no table is read. Raises :class:`TablesError`."""
    folder = Path(tables_dir)
    _run_params(stage, folder)
    for path in _table_paths(stage, folder):
        _read_table(stage, path, metadata_only=True)


def load_tables(stage: str, tables_dir: str | Path) -> Tables:
    """Read ``tables_dir`` (written by :func:`gradience.studies.grid.train`); a :class:`TablesError` naming
    the file and the stage to rerun when one is missing, truncated or unreadable."""
    mod, folder = runs_module(stage), Path(tables_dir)
    params = _run_params(stage, folder)
    frames = {name: _read_table(stage, folder / f"{name}.parquet") for name in mod.TABLES}
    return Tables(params, _read_table(stage, folder / "runs.parquet"), frames)


def step_curves(frame: pd.DataFrame, by: str | list[str], metrics: dict[str, str]) -> pd.DataFrame:
    """Each metric aggregated per group of ``by`` and step (``{"test_acc": "mean"}``), as the long
    ``curve, step, value`` frame a study's ``curves`` returns; curve = ``<metric>_<group>``.
    Metrics absent from ``frame`` and all-NaN points are left out."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for metric, how in metrics.items():
        if metric not in frame:
            continue
        g = frame.groupby([*by, "step"])[metric].agg(how).dropna().reset_index()
        group = g[by].astype(str).agg("_".join, axis=1)
        rows.append(pd.DataFrame({"curve": metric + "_" + group, "step": g["step"], "value": g[metric]}))
    return pd.concat(rows, ignore_index=True)


def write_report(stage: str, analysis: Any, p: ReportParams, out_dir: str | Path) -> pd.DataFrame:
    """Write ``metrics.json``, ``findings.json`` (the Findings rows, which the synthesis stage reads) and
    ``plots/<curve>.csv``; return the Findings table (a row whose verdict flipped on a second machine says so)."""
    out = Path(out_dir)
    ana, fin = study_part(stage, "analysis"), study_part(stage, "findings")
    table = mark_machine_flips(stage, findings_table(fin.findings(analysis, p)))
    metrics = dict(ana.metrics(analysis, p))
    metrics["findings"] = verdict_counts(table)
    write_metrics(out, metrics)
    write_findings(out, table)
    curves = ana.curves(analysis, p)
    plots = out / "plots"
    shutil.rmtree(plots, ignore_errors=True)
    plots.mkdir(parents=True)
    for name, g in curves.groupby("curve", sort=True):
        g[["step", "value"]].sort_values("step").to_csv(plots / f"{name}.csv", index=False, float_format="%.6g")
    return table


@dataclass
class ReportContext:
    """What a report notebook works from: its params, the training tables and where to write."""

    params: Any  # the study's ReportParams
    tables: Tables
    out_dir: Path


def repository_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) with ``dvc.yaml``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() and (folder / PARAMS_FILE).exists():
            return folder
    raise FileNotFoundError(f"no dvc.yaml and {PARAMS_FILE} at or above {here}: open the notebook inside the repository")


def open_report(stage: str, report: dict[str, Any] | None = None, out_dir: str | Path | None = None) -> ReportContext:
    """Set up a report notebook, under papermill or interactively (JupyterLab, any working directory).

    ``report``: the stage's ``report`` section (papermill passes it); ``None`` reads ``params.yaml``.
    ``out_dir``: where figures and metrics go; ``None`` (an interactive run) uses the scratch folder
    ``.gradience/scratch/<stage>/``, so only ``dvc repro`` writes into ``reports/``.
    """
    root = repository_root()
    if report is None:
        p = load_params(stage, path=root / PARAMS_FILE).report
    else:
        p = validate_section(f"{stage}.report", study_part(stage, "analysis").ReportParams, report)
    out = Path(out_dir) if out_dir is not None else root / ".gradience" / "scratch" / stage
    if not out.is_absolute():
        out = root / out
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return ReportContext(p, load_tables(stage, root / "reports" / stage / TABLES_DIR), out)
