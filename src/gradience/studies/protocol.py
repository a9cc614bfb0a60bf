"""The stage protocol every study follows: its params, its jobs and its tables (both stages read this).

A study is a package ``gradience.studies.<study>`` split along its two DVC stages:

- ``runs.py`` — everything the training stage ``<study>_runs`` reads: ``RunParams`` (a
  :class:`RunParams` subclass, the ``<study>.runs`` keys), ``DATA`` (folders under ``data/``),
  ``TABLES`` (the tables a run returns besides its record), optionally ``BASE_MODELS``,
  ``jobs(p, data_dir) -> list[Job[RunParams]]`` and ``run_one(job) -> RunOutput``.
- ``analysis.py`` — the report side: ``ReportParams`` (the ``<study>.report`` keys),
  ``analyse(tables: Tables[RunParams], p) -> Analysis``, ``metrics(a, p) -> dict`` and
  ``curves(a, p) -> DataFrame`` (columns ``curve, step, value``).
- ``findings.py`` — one function per claim (its docstring is the claim), listed in the tuple
  ``CLAIMS``, and ``findings(a, p) -> list[dict]`` that calls them.

Imports go findings → analysis → runs, never back, so editing a verdict or a sentence reruns
one notebook and no training stage. The grid runner is :mod:`.grid`; the report side is
:mod:`.notebook`; the list of studies is :mod:`.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pandas as pd
from pydantic import Field

from gradience.config import Device, Profile, Section

TABLES_DIR = "tables"
RUN_PARAMS_FILE = "params.json"


class RunParams(Section):
    """Keys every training stage has."""

    profile: Profile = "default"
    device: Device = "cpu"
    seeds: list[int] = Field(min_length=1)


class ReportParams(Section):
    """Keys every report stage has (none yet; studies add theirs)."""


def unique_names(names: list[str], what: str) -> None:
    """Raise a ``ValueError`` naming ``what`` when ``names`` repeat (for params validators)."""
    if len(set(names)) != len(names):
        raise ValueError(f"{what} must be unique, got {names}")


P = TypeVar("P", bound=RunParams)
P_co = TypeVar("P_co", bound=RunParams, covariant=True)  # a Job of a study's params is a Job of its family's


@dataclass(frozen=True)
class Job(Generic[P_co]):
    """One independent run: a condition (regime, arm, …) of the grid and a seed."""

    params: P_co
    condition: str
    seed: int
    data_dir: str
    spec: Any = None  # the condition's own params block, when it has one

    @property
    def run_id(self) -> str:
        return f"{self.condition}/s{self.seed}"


@dataclass
class RunOutput:
    """What one run returns: its tables (by name, as in ``TABLES``) and its row of the run table."""

    tables: dict[str, pd.DataFrame]
    record: dict[str, Any]


@dataclass
class Tables(Generic[P]):
    """A training stage's outputs: ``runs`` (one row per run), its ``params`` and the other tables."""

    params: P
    runs: pd.DataFrame
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)

    def __getattr__(self, name: str) -> pd.DataFrame:
        frames = self.__dict__.get("frames", {})
        if name in frames:
            return frames[name]
        raise AttributeError(name)
