"""Fan independent runs (seeds × conditions) out over local processes.

Uses the standard library's ``ProcessPoolExecutor`` (spawn context, so it also works inside a
Jupyter kernel). Every run is pinned to one thread, so results do not depend on ``workers``.
For more than one machine, sweep whole pipelines with DVC's experiment queue
(``dvc exp run --queue``) rather than a home-made scheduler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import TypeVar

import torch
from tqdm.auto import tqdm

J = TypeVar("J")
R = TypeVar("R")


def single_threaded(fn: Callable[[J], R], job: J) -> R:
    """Run ``fn(job)`` with one torch thread (deterministic and fair when runs share cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(job)
    finally:
        torch.set_num_threads(previous)


def map_runs(fn: Callable[[J], R], jobs: Sequence[J], workers: int = 1, desc: str = "runs") -> list[R]:
    """``[fn(job) for job in jobs]``, in order, over ``workers`` processes, with a progress bar."""
    bar = tqdm(total=len(jobs), desc=desc, mininterval=5.0)
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(single_threaded(fn, job))
            bar.update(1)
        bar.close()
        return results
    results: list[R | None] = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(single_threaded, fn, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(1)
    bar.close()
    return results  # type: ignore[return-value]
