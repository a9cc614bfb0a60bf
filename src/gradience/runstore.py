"""Finished runs kept on disk, so that an interrupted training stage resumes from them.

DVC ≥ 3 has no checkpoint outputs and deletes a stage's outputs before it runs it, so resuming is
the project's own. The grid runner writes each run the moment it finishes, atomically, to
``.gradience/runs/<study>/<code>/<run>.pkl`` (git-ignored, outside every DVC output), and a rerun
of the stage takes the runs it finds there instead of training them again:

- ``<code>`` fingerprints what can change any run of the stage: the source files of its training
  closure (the files DVC lists as its deps, :mod:`gradience.closure`), the contents of the data
  folders and base-model checkpoints it reads, and the library versions;
- ``<run>`` fingerprints one run: the stage's whole ``runs`` section, the condition, its spec and
  the seed.

An entry is reused only under both, so one made by other code or other params never is. Once the
stage has written its tables, the entries of other code are deleted; entries of the same code and
other params stay (switching a param back reuses them). Entries are pickles of
:class:`~gradience.studies.protocol.RunOutput`, written by this machine for this machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gradience.closure import PACKAGE, closure
from gradience.provenance import library_versions
from gradience.studies.protocol import Job, RunOutput

STORE = Path(".gradience/runs")


def _hash_tree(digest: Any, root: Path) -> None:
    """Feed ``digest`` with the relative path and bytes of every file under ``root`` (sorted)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(root.parent)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)


def code_fingerprint(modules: Iterable[str], inputs: Iterable[Path]) -> str:
    """A hash of the source closure of ``modules``, the files under ``inputs`` and the library versions."""
    digest = hashlib.sha256()
    for path in sorted(closure(list(modules))):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    for root in inputs:
        if root.exists():
            _hash_tree(digest, root)
        else:
            digest.update(f"missing:{root}".encode())
    digest.update(json.dumps(library_versions(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def run_fingerprint(job: Job) -> str:
    """A hash of what one run is: the stage's run params, its condition, spec and seed."""
    spec = job.spec.model_dump(mode="json") if hasattr(job.spec, "model_dump") else job.spec
    blob = json.dumps({"params": job.params.model_dump(mode="json"), "condition": job.condition,
                       "spec": spec, "seed": job.seed}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class RunStore:
    """The finished runs of one study trained by one code fingerprint (see the module docstring)."""

    def __init__(self, root: str | Path, study: str, code: str):
        self.study_dir = Path(root) / study
        self.folder = self.study_dir / code

    def _path(self, job: Job) -> Path:
        return self.folder / f"{run_fingerprint(job)}.pkl"

    def get(self, job: Job) -> RunOutput | None:
        """The stored output of ``job``, or ``None`` (also for an unreadable entry, which is removed)."""
        path = self._path(job)
        if not path.is_file():
            return None
        try:
            with path.open("rb") as handle:
                out = pickle.load(handle)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
            path.unlink(missing_ok=True)
            return None
        return out if isinstance(out, RunOutput) else None

    def put(self, job: Job, out: RunOutput) -> None:
        """Write ``out`` for ``job`` atomically (a temporary file renamed into place)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".run-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                pickle.dump(out, handle, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self._path(job))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def prune(self) -> None:
        """Delete the entries of every other code fingerprint of this study."""
        if self.study_dir.is_dir():
            for other in self.study_dir.iterdir():
                if other != self.folder:
                    shutil.rmtree(other, ignore_errors=True)
