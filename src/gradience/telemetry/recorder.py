"""Cadence and the tidy telemetry table of docs/architecture.md: ``run, step, scope, metric, value``.

Singular-value snapshots (one row per singular value) go to a second table with columns
``run, step, scope, index, sigma``: they are spectra, not scalar measurements.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

TELEMETRY_COLUMNS = ("run", "step", "scope", "metric", "value")
SPECTRA_COLUMNS = ("run", "step", "scope", "index", "sigma")
MODEL_SCOPE = "model"


class Cadence:
    """When to measure: step 0, every ``every`` steps, ``log_points`` log-spaced steps, and the last.

    Log-spaced points resolve the fast early dynamics that a linear cadence misses.
    """

    def __init__(self, every: int, total_steps: int, log_points: int = 0) -> None:
        if every < 1:
            raise ValueError(f"cadence every must be ≥ 1, got {every}")
        if total_steps < 0:
            raise ValueError(f"total_steps must be ≥ 0, got {total_steps}")
        steps = set(range(0, total_steps + 1, every)) | {total_steps}
        if log_points and total_steps > 1:
            steps |= {int(s) for s in np.geomspace(1, total_steps, log_points).astype(int)}
        self.every, self.total_steps, self.log_points = every, total_steps, log_points
        self.steps: frozenset[int] = frozenset(steps)

    def __contains__(self, step: int) -> bool:
        return step in self.steps

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class Recorder:
    """Collects measurements of one run in memory; :meth:`frame` gives the tidy table."""

    run: str
    _rows: list[tuple[int, str, str, float]] = field(default_factory=list)
    _spectra: list[tuple[int, str, np.ndarray]] = field(default_factory=list)

    def log(self, step: int, scope: str, metric: str, value: float) -> None:
        self._rows.append((int(step), scope, metric, float(value)))

    def log_many(self, step: int, scope: str, values: Mapping[str, float]) -> None:
        for metric, value in values.items():
            self.log(step, scope, metric, value)

    def log_spectrum(self, step: int, scope: str, sigma: np.ndarray) -> None:
        self._spectra.append((int(step), scope, np.asarray(sigma, dtype=np.float64)))

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self._rows, columns=list(TELEMETRY_COLUMNS[1:]))
        df.insert(0, "run", self.run)
        return df.astype({"run": "string", "step": "int64", "scope": "string", "metric": "string", "value": "float64"})

    def spectra_frame(self) -> pd.DataFrame:
        parts = [
            pd.DataFrame({"step": step, "scope": scope, "index": np.arange(s.size), "sigma": s})
            for step, scope, s in self._spectra
        ]
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SPECTRA_COLUMNS[1:]))
        df.insert(0, "run", self.run)
        return df.astype({"run": "string", "step": "int64", "scope": "string", "index": "int64", "sigma": "float64"})


def concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = list(frames)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(TELEMETRY_COLUMNS))


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table deterministically (no pandas index, fixed compression)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False, compression="zstd")
    return path


def wide(df: pd.DataFrame, scope: str = MODEL_SCOPE) -> pd.DataFrame:
    """One scope's telemetry as ``run, step`` × metric columns (handy for plots)."""
    sub = df[df["scope"] == scope]
    return sub.pivot_table(index=["run", "step"], columns="metric", values="value", aggfunc="first").reset_index()
