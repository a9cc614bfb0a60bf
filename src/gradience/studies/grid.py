"""The training stage: run a study's grid of independent runs and write its tables.

``python -m gradience.studies.grid <study>`` is the DVC command of ``<study>_runs``. It imports
the study's ``runs`` module and nothing of the report side (verdicts, notebooks, the CLI, the list
of studies), so editing those never makes a training stage stale. It validates the keys it
reads (``workers``, ``executor``, ``runs``); ``gradience check`` and the report stage validate
the ``report`` keys.
"""

from __future__ import annotations

import errno
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import torch
from pydantic import Field, create_model, field_validator

from gradience.config import (
    PARAMS_FILE,
    ParamsError,
    Section,
    read_params_file,
    stage_arguments,
    validate_section,
)
from gradience.parallel import check_executor, map_runs
from gradience.progress import quiet
from gradience.provenance import git_revision, library_versions
from gradience.runstore import STORE, RunStore, code_fingerprint
from gradience.studies.protocol import RUN_PARAMS_FILE, TABLES_DIR, Job, RunOutput, RunParams

TRAIN_ENTRY = "gradience.studies.grid"  # this module, also when run as __main__


class StageSection(Section):
    """One ``params.yaml`` section: ``workers``, ``executor`` (not tracked by DVC), ``runs`` and ``report``."""

    workers: int = Field(default=1, ge=1, le=256, description="parallel runs; cannot change a result")
    executor: str = Field(default="local", description='where runs go: "local" (processes here), "ray" '
                          '(ray.init(): RAY_ADDRESS or a new local instance) or "ray://host:port" (workers is '
                          "then ignored); cannot change a result")
    runs: RunParams
    report: Any = None  # validated by the report side (gradience.studies.notebook)

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, value: str) -> str:
        return check_executor(value)


def runs_module(stage: str) -> ModuleType:
    """``gradience.studies.<stage>.runs``; a clear error when there is no such study."""
    try:
        return importlib.import_module(f"gradience.studies.{stage}.runs")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"gradience.studies.{stage}"):
            raise KeyError(f"unknown study {stage!r}: no module gradience.studies.{stage}.runs") from None
        raise


def load_run_params(stage: str, section: dict[str, Any] | None = None,
                    path: str | Path = PARAMS_FILE) -> StageSection:
    """The validated training keys of ``stage``: ``section`` if given, else read from ``params.yaml``."""
    if section is None:
        section = read_params_file(path).get(stage)
    schema = create_model(f"{stage}_runs_params", __base__=StageSection, runs=(runs_module(stage).RunParams, ...))
    return validate_section(stage, schema, section)


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


WEIGHTS_DIR = Path("reports/weights")  # base-model checkpoints (the weights_<name> stages)


def run_store(stage: str, mod: ModuleType, data_dir: str | Path, root: str | Path = STORE) -> RunStore:
    """The run store of ``stage`` under the code, data and base models that train it now."""
    inputs = [Path(data_dir) / Path(d).name for d in mod.DATA]
    inputs += [WEIGHTS_DIR / name for name in getattr(mod, "BASE_MODELS", ())]
    return RunStore(root, stage, code_fingerprint([TRAIN_ENTRY, mod.__name__], inputs))


def train(stage: str, p: StageSection, out_dir: str | Path, data_dir: str | Path = "data",
          progress: bool = True, store: str | Path | None = None) -> Path:
    """Run the grid of ``stage`` and write ``<out_dir>/tables/``; return that folder.

    With a ``store`` (the stage command's is ``.gradience/runs``; ``None`` keeps nothing), each run
    is kept in the run store (:mod:`gradience.runstore`) as soon as it finishes and runs already
    there are taken from it, so an interrupted stage resumes from its finished runs and writes the
    same tables. Tables are written to a temporary folder and moved into place only when every run
    finished, so a failed or interrupted stage leaves nothing half-written.
    """
    mod = runs_module(stage)
    missing = [d for d in mod.DATA if not (Path(data_dir) / Path(d).name).exists()]
    if missing:
        raise FileNotFoundError(f"stage {stage!r} needs {missing} under {data_dir}/: run `gradience data` first")
    jobs = mod.jobs(p.runs, str(data_dir))
    runs = run_store(stage, mod, data_dir, store) if store is not None else None
    outputs: list[RunOutput | None] = [runs.get(j) if runs else None for j in jobs]
    todo = [i for i, out in enumerate(outputs) if out is None]
    if progress and len(todo) < len(jobs):
        print(f"{stage}: {len(jobs) - len(todo)} of {len(jobs)} runs resumed from {runs.folder}", file=sys.stderr)

    def keep(k: int, out: RunOutput) -> None:
        outputs[todo[k]] = out
        if runs:
            runs.put(jobs[todo[k]], out)

    gpus = 1 if p.runs.device == "cuda" or (p.runs.device == "auto" and torch.cuda.is_available()) else 0
    with quiet(not progress or not todo):  # also the bars of runs trained in this process
        map_runs(_timed, [(mod.run_one, jobs[i]) for i in todo], workers=p.workers, desc=f"{stage} runs",
                 executor=p.executor, gpus_per_run=gpus, on_result=keep)
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
    if runs:
        runs.prune()
    return final


def main(argv: list[str] | None = None) -> int:
    args = stage_arguments("python -m gradience.studies.grid", __doc__.split("\n")[0], argv)
    try:
        print(train(args.study, load_run_params(args.study, path=args.params), f"reports/{args.study}",
                    progress=not args.quiet, store=STORE))
    except (ParamsError, KeyError, FileNotFoundError) as exc:
        print(f"gradience: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"gradience: no space left on the device ({exc.filename or 'writing'}): free some and rerun "
              f"`dvc repro {args.study}_runs`; finished runs are kept in {STORE}/{args.study} and resume",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
