"""Modular arithmetic ``a ∘ b mod p`` (Power et al. 2022), the grokking task.

The full operation table lives in ``data/modular/mod{p}.csv`` (columns ``a,b,add,sub,mul,div``;
``div`` is ``a · b⁻¹`` and is only defined for ``b ≠ 0``, written as -1 otherwise).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from gradience.tasks import Split, corrupted_data, missing_data, random_split_indices

OPERATIONS = ("add", "sub", "mul", "div")
MODULI = (23, 59, 97, 113)  # tables shipped in data/; 97 is the seed's, 113 Nanda et al.'s


def is_prime(p: int) -> bool:
    return p >= 2 and all(p % k for k in range(2, int(p**0.5) + 1))


def operation_table(p: int) -> np.ndarray:
    """``(p², 6)`` int64 array with rows ``a, b, a+b, a-b, a·b, a·b⁻¹`` (mod p)."""
    if not is_prime(p):
        raise ValueError(f"modulus must be prime (division needs inverses), got {p}")
    a, b = (g.ravel() for g in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    inv = np.array([pow(int(v), -1, p) if v else -1 for v in range(p)])
    div = np.where(b > 0, (a * inv[b]) % p, -1)
    return np.stack([a, b, (a + b) % p, (a - b) % p, (a * b) % p, div], axis=1).astype(np.int64)


def write_table(p: int, folder: Path) -> Path:
    path = Path(folder) / f"mod{p}.csv"
    rows = "\n".join(",".join(map(str, r)) for r in operation_table(p))
    path.write_text("a,b," + ",".join(OPERATIONS) + "\n" + rows + "\n")
    return path


def load_table(data_dir: Path, p: int) -> np.ndarray:
    """The table of ``mod{p}.csv``, checked against :func:`operation_table` (a truncated or altered file
    is an error naming it, not a silently smaller task)."""
    path = Path(data_dir) / "modular" / f"mod{p}.csv"
    if not path.exists():
        raise missing_data(f"{path} (moduli shipped: {MODULI})")
    try:
        with warnings.catch_warnings():  # an empty file warns before it fails the check below
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as exc:
        raise corrupted_data(path, f"not a CSV of integers: {exc}") from None
    if table.shape != (p * p, 2 + len(OPERATIONS)):
        raise corrupted_data(path, f"shape {table.shape}, expected {(p * p, 2 + len(OPERATIONS))}: truncated?")
    if not np.array_equal(table, operation_table(p)):
        raise corrupted_data(path, f"values differ from the operation table mod {p}")
    return table


def modular_split(
    data_dir: Path, p: int, op: str, train_fraction: float, seed: int, equals_token: bool = False,
    shuffle_labels: bool = False,
) -> Split:
    """Inputs ``(a, b)`` as token pairs (``(a, b, =)`` with ``=`` = token ``p`` when
    ``equals_token``, for sequence models), target ``a ∘ b``; a seeded random train/test split.

    ``shuffle_labels``: the targets are permuted over the whole table (seeded by ``seed``) before the
    split, so every pair gets a random answer: a control that can memorise but never generalise.
    """
    if op not in OPERATIONS:
        raise ValueError(f"unknown operation {op!r}; allowed: {OPERATIONS}")
    table = load_table(data_dir, p)
    if op == "div":
        table = table[table[:, 1] > 0]
    x = torch.as_tensor(table[:, :2])
    if equals_token:
        x = torch.cat([x, torch.full((x.shape[0], 1), p)], dim=1)
    y = torch.as_tensor(table[:, 2 + OPERATIONS.index(op)])
    if shuffle_labels:
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(10_000 + seed))]
    tr, te = random_split_indices(len(table), train_fraction, seed)
    return Split(x[tr], y[tr], x[te], y[te])
