"""The one stage protocol every study follows, and what the studies share.

A study is a module in ``gradience.studies`` that defines, with these names and signatures:

- ``RunParams`` (a :class:`RunParams` subclass): the ``<study>.runs`` keys; the training stage
  ``<study>_runs`` reads only these.
- ``ReportParams`` (a :class:`ReportParams` subclass): the ``<study>.report`` keys; the notebook
  stage ``<study>`` reads only these (and the tables).
- ``DATA``: the folders under ``data/`` the runs read; ``TABLES``: the tables a run returns
  besides its record (written as ``tables/<name>.parquet``).
- ``jobs(p: RunParams, data_dir: str) -> list[Job]``: the grid of independent runs.
- ``run_one(job: Job) -> RunOutput``: train one run; its tables and its record.
- ``analyse(tables: Tables, p: ReportParams) -> Analysis``: everything the notebook shows.
- ``findings(a: Analysis, p: ReportParams) -> list[dict]``: rows made by :func:`gradience.reporting.finding`.
- ``metrics(a: Analysis, p: ReportParams) -> dict``: what ``dvc metrics diff`` compares.
- ``curves(a: Analysis, p: ReportParams) -> pd.DataFrame``: key curves for ``dvc plots``
  (columns ``curve, step, value``; one CSV per curve).

``Analysis`` is the study's own dataclass. This module runs the grid (:func:`train`), loads the
tables back (:func:`load_tables`) and writes a report's metrics, findings and plot data
(:func:`write_report`); the notebook only calls these and draws figures.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import Field, create_model, field_validator

from gradience.config import (
    PARAMS_FILE,
    Device,
    ParamsError,
    Profile,
    Section,
    read_params_file,
    validate_section,
)
from gradience.parallel import check_executor, map_runs
from gradience.provenance import git_revision, library_versions
from gradience.studies import STAGES, study

TABLES_DIR = "tables"
RUN_PARAMS_FILE = "params.json"


class RunParams(Section):
    """Keys every training stage has."""

    profile: Profile = "default"
    device: Device = "cpu"
    seeds: list[int] = Field(min_length=1)


class ReportParams(Section):
    """Keys every report stage has (none yet; studies add theirs)."""


class StudyParams(Section):
    """One ``params.yaml`` section: ``workers``, ``executor`` (not tracked by DVC), ``runs`` and ``report``."""

    workers: int = Field(default=1, ge=1, le=256, description="parallel runs; cannot change a result")
    executor: str = Field(default="local", description='where runs go: "local" (processes here), "ray" '
                          '(ray.init(): RAY_ADDRESS or a new local instance) or "ray://host:port" (workers is '
                          "then ignored); cannot change a result")
    runs: RunParams
    report: ReportParams = ReportParams()

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, value: str) -> str:
        return check_executor(value)


@cache
def params_schema(stage: str) -> type[StudyParams]:
    mod = study(stage)
    return create_model(f"{stage}_params", __base__=StudyParams, runs=(mod.RunParams, ...),
                        report=(mod.ReportParams, Field(default_factory=mod.ReportParams)))


def load_params(stage: str, section: dict[str, Any] | None = None, path: str | Path = PARAMS_FILE) -> StudyParams:
    """The validated section of ``stage``: ``section`` if given, else read from ``params.yaml``."""
    if section is None:
        sections = read_params_file(path)
        unknown = sorted(set(sections) - set(STAGES))
        if unknown:
            raise ParamsError(f"{path}: unknown sections {unknown}; stages: {', '.join(STAGES)}")
        section = sections.get(stage)
    return validate_section(stage, params_schema(stage), section)


def unique_names(names: list[str], what: str) -> None:
    """Raise a ``ValueError`` naming ``what`` when ``names`` repeat (for params validators)."""
    if len(set(names)) != len(names):
        raise ValueError(f"{what} must be unique, got {names}")


# ------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class Job:
    """One independent run: a condition (regime, arm, …) of the grid and a seed."""

    params: RunParams
    condition: str
    seed: int
    data_dir: str
    spec: Any = None  # the condition's own params block, when it has one

    @property
    def run_id(self) -> str:
        return f"{self.condition}/s{self.seed}"


@dataclass
class RunOutput:
    tables: dict[str, pd.DataFrame]
    record: dict[str, Any]


def provenance(p: RunParams) -> dict[str, Any]:
    """The run-table fields every study records: profile, device, git revision, library versions."""
    from gradience.training import resolve_device

    return {"profile": p.profile, "device": str(resolve_device(p.device)), "git_rev": git_revision(),
            "versions": json.dumps(library_versions(), sort_keys=True)}


def _timed(job_and_fn: tuple[Any, Job]) -> RunOutput:
    run_one, job = job_and_fn
    wall, cpu = time.perf_counter(), time.process_time()
    out = run_one(job)
    out.record = {"run": job.run_id, "condition": job.condition, "seed": job.seed, **out.record,
                  **provenance(job.params), "wall_seconds": time.perf_counter() - wall,
                  "cpu_seconds": time.process_time() - cpu}
    return out


def train(stage: str, p: StudyParams, out_dir: str | Path, data_dir: str | Path = "data") -> Path:
    """Run the grid of ``stage`` and write ``<out_dir>/tables/``; return that folder.

    Tables are written to a temporary folder and moved into place only when every run finished,
    so a failed or interrupted stage leaves nothing half-written.
    """
    mod = study(stage)
    missing = [d for d in mod.DATA if not (Path(data_dir) / Path(d).name).exists()]
    if missing:
        raise FileNotFoundError(f"stage {stage!r} needs {missing} under {data_dir}/: run `gradience data` first")
    jobs = mod.jobs(p.runs, str(data_dir))
    gpus = 1 if p.runs.device == "cuda" or (p.runs.device == "auto" and torch.cuda.is_available()) else 0
    outputs = map_runs(_timed, [(mod.run_one, j) for j in jobs], workers=p.workers, desc=f"{stage} runs",
                       executor=p.executor, gpus_per_run=gpus)
    final = Path(out_dir) / TABLES_DIR
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TABLES_DIR}-", dir=final.parent))
    try:
        for name in mod.TABLES:
            frames = [o.tables[name] for o in outputs if len(o.tables[name])]
            table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
            table.to_parquet(tmp / f"{name}.parquet", index=False)
        pd.DataFrame([o.record for o in outputs]).to_parquet(tmp / "runs.parquet", index=False)
        (tmp / RUN_PARAMS_FILE).write_text(json.dumps(p.runs.model_dump(mode="json"), indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------ reports


@dataclass
class Tables:
    """A training stage's outputs: ``runs`` (one row per run), its ``params`` and the other tables."""

    params: RunParams
    runs: pd.DataFrame
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)

    def __getattr__(self, name: str) -> pd.DataFrame:
        frames = self.__dict__.get("frames", {})
        if name in frames:
            return frames[name]
        raise AttributeError(name)


def load_tables(stage: str, tables_dir: str | Path) -> Tables:
    """Read ``tables_dir`` (written by :func:`train`); a clear error when it is missing."""
    mod, folder = study(stage), Path(tables_dir)
    if not (folder / RUN_PARAMS_FILE).exists():
        raise FileNotFoundError(f"no tables for stage {stage!r} in {folder}/: run `dvc repro {stage}_runs` "
                                f"(or `gradience train {stage}`) first")
    params = mod.RunParams.model_validate(json.loads((folder / RUN_PARAMS_FILE).read_text()))
    frames = {name: pd.read_parquet(folder / f"{name}.parquet") for name in mod.TABLES}
    return Tables(params, pd.read_parquet(folder / "runs.parquet"), frames)


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
    """Write ``metrics.json`` and ``plots/<curve>.csv``; return the Findings table.

    Everything written here is computed by the study's functions from the analysed tables.
    """
    from gradience.reporting import findings_table, write_metrics

    mod, out = study(stage), Path(out_dir)
    table = findings_table(mod.findings(analysis, p))
    metrics = dict(mod.metrics(analysis, p))
    metrics["findings"] = table["verdict"].value_counts().to_dict()
    write_metrics(out, metrics)
    curves = mod.curves(analysis, p)
    plots = out / "plots"
    shutil.rmtree(plots, ignore_errors=True)
    plots.mkdir(parents=True)
    for name, g in curves.groupby("curve", sort=True):
        g[["step", "value"]].sort_values("step").to_csv(plots / f"{name}.csv", index=False, float_format="%.6g")
    return table


@dataclass
class ReportContext:
    """What a report notebook works from: its params, the training tables and where to write."""

    params: ReportParams
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
        p = validate_section(f"{stage}.report", study(stage).ReportParams, report)
    out = Path(out_dir) if out_dir is not None else root / ".gradience" / "scratch" / stage
    if not out.is_absolute():
        out = root / out
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return ReportContext(p, load_tables(stage, root / "reports" / stage / TABLES_DIR), out)
