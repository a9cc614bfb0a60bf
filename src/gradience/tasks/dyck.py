"""Dyck-1: bracket sequences, and at every position the nesting depth (the task's functional coordinate).

A sequence is ``length`` tokens ``(`` = 0 and ``)`` = 1 that never closes more brackets than it
opened. ``kind="balanced"`` also ends at depth 0 (a Dyck word; ``length`` even); ``kind="prefix"``
may end open. The target at position t is the depth after reading token t, ``#( − #)`` over
tokens 0..t, a class in ``0..max_depth`` (``max_depth`` = length/2 for balanced words, = length for
prefixes, or a stated cap). Sequences are drawn uniformly among all valid ones (counted by dynamic
programming over (position, depth)), without repetition, so train and test are disjoint.
Generated in memory, seeded: nothing under ``data/``.
"""

from __future__ import annotations

import numpy as np
import torch

from gradience.tasks import Split

OPEN, CLOSE, PAD = 0, 1, 2
N_TOKENS = 2  # 3 with the padding token of variable-length words
IGNORE = -100
KINDS = ("balanced", "prefix")


def depths(tokens: np.ndarray | torch.Tensor) -> np.ndarray:
    """Depth after each token along the last axis (no validity check)."""
    t = np.asarray(tokens)
    return np.cumsum(np.where(t == OPEN, 1, -1), axis=-1)


def is_valid(tokens: np.ndarray, kind: str = "prefix") -> bool:
    d = depths(tokens)
    return bool((d >= 0).all() and (kind == "prefix" or d[-1] == 0))


def max_depth_of(length: int, kind: str, max_depth: int | None = None) -> int:
    full = length // 2 if kind == "balanced" else length
    return full if max_depth is None else min(full, max_depth)


def completions(length: int, kind: str, max_depth: int | None = None) -> np.ndarray:
    """``C[t, d]``: number of valid ways to write tokens t..length−1 starting from depth d."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if length < 1 or (kind == "balanced" and length % 2):
        raise ValueError(f"length must be ≥ 1 (and even for balanced words), got {length}")
    top = max_depth_of(length, kind, max_depth)
    C = np.zeros((length + 1, top + 2), dtype=object)  # python ints: exact counts for any length
    C[length, :top + 1] = 1 if kind == "prefix" else 0
    if kind == "balanced":
        C[length, 0] = 1
    for t in range(length - 1, -1, -1):
        for d in range(top + 1):
            C[t, d] = C[t + 1, d + 1] * (d + 1 <= top) + (C[t + 1, d - 1] if d > 0 else 0)
    return C


def n_sequences(length: int, kind: str = "balanced", max_depth: int | None = None) -> int:
    """Number of valid sequences (Catalan(length/2) for balanced words without a cap)."""
    return int(completions(length, kind, max_depth)[0, 0])


def sample(n: int, length: int, kind: str = "balanced", max_depth: int | None = None,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """``[n, length]`` int64 tokens, each row uniform over valid sequences (independent draws)."""
    rng = rng or np.random.default_rng(0)
    C = completions(length, kind, max_depth)
    top = C.shape[1] - 2
    out = np.empty((n, length), dtype=np.int64)
    for i in range(n):
        d = 0
        for t in range(length):
            up = C[t + 1, d + 1] if d + 1 <= top else 0
            total = C[t, d]
            if rng.random() * float(total) < float(up):
                out[i, t], d = OPEN, d + 1
            else:
                out[i, t], d = CLOSE, d - 1
    return out


def sample_variable(n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, length]`` balanced words of 1 … length/2 pairs (uniform), each uniform among the words of its
    length, padded with :data:`PAD` after the word."""
    pairs = rng.integers(1, length // 2 + 1, size=n)
    out = np.full((n, length), PAD, dtype=np.int64)
    for k in np.unique(pairs):
        rows = np.flatnonzero(pairs == k)
        out[rows, : 2 * k] = sample(len(rows), 2 * int(k), "balanced", rng=rng)
    return out


def dyck_split(n_train: int, n_test: int, length: int = 24, kind: str = "balanced", seed: int = 0,
               max_depth: int | None = None, variable: bool = False) -> Split:
    """Distinct sequences: ``x`` ``[n, length]`` tokens, ``y`` ``[n, length]`` depth classes.

    ``variable``: balanced words of 1 … length/2 pairs padded to ``length`` (:func:`sample_variable`; the
    seed's data are of this kind); padded positions have target −100 (ignored by the loss)."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be ≥ 1, got {n_train}, {n_test}")
    available = (sum(n_sequences(2 * k) for k in range(1, length // 2 + 1)) if variable
                 else n_sequences(length, kind, max_depth))
    if variable and (kind != "balanced" or max_depth is not None):
        raise ValueError("variable-length words are balanced and uncapped")
    if n_train + n_test > available:
        raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds the {available} distinct {kind} "
                         f"sequences of length {length}")
    rng = np.random.default_rng(seed)
    seen: dict[bytes, np.ndarray] = {}
    while len(seen) < n_train + n_test:
        need = n_train + n_test - len(seen)
        for row in (sample_variable(need, length, rng) if variable else sample(need, length, kind, max_depth, rng)):
            seen.setdefault(row.tobytes(), row)
    x = np.stack(list(seen.values()))[: n_train + n_test]
    y = np.where(x == PAD, IGNORE, depths(x))
    xt, yt = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.int64)
    return Split(xt[:n_train], yt[:n_train], xt[n_train:], yt[n_train:])
