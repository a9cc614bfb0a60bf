"""Tasks: the data each protocol trains on, and one way to split it.

Every task returns a :class:`Split` of tensors; inputs are built from files under ``data/``
(see :mod:`gradience.data`), so a stage's inputs are exactly what ``data.dvc`` versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

REBUILD = "rebuild data/ with `gradience data --verify` (or `make data`)"


class DataFileError(FileNotFoundError):
    """A file under ``data/`` that is missing or unreadable (truncated, garbage bytes); the message names
    it and how to rebuild it. A ``FileNotFoundError``, so every stage's command reports it in one line."""


def missing_data(path: str | Path) -> DataFileError:
    return DataFileError(f"missing data: {path}; {REBUILD}")


def corrupted_data(path: str | Path, problem: str) -> DataFileError:
    return DataFileError(f"corrupted data: {path} ({problem}); {REBUILD}")


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device | str) -> Split:
        return Split(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)))


def random_split_indices(n: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded permutation of ``range(n)`` cut into train / test; ``0 < train_fraction < 1``."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = max(1, min(n - 1, round(train_fraction * n)))
    return perm[:n_train], perm[n_train:]
