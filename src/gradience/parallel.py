"""Fan independent runs (seeds × conditions) out over local processes, or over a Ray cluster.

By default (``executor="local"``) runs go to the standard library's ``ProcessPoolExecutor``
(spawn context, so it also works inside a Jupyter kernel). ``executor="ray"`` makes each run a
Ray task instead, for a cluster of machines (GPUs included); Ray is optional
(``pip install "gradience[ray]"``) and imported only then. Either way every run is seeded and
pinned to one thread, so results depend neither on ``workers`` nor on the executor.
To sweep whole pipelines (params × stages) rather than runs, use DVC's experiment queue
(``dvc exp run --queue``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, TypeVar

import torch

from gradience.progress import bar as progress_bar

J = TypeVar("J")
R = TypeVar("R")

RAY_INSTALL = 'pip install "gradience[ray]"  (or: pip install "ray[default]")'


def check_executor(executor: str) -> str:
    """``executor`` if known: ``"local"``, ``"ray"`` or ``"ray://host:port"``; else ``ValueError``."""
    if executor in ("local", "ray") or executor.startswith("ray://"):
        return executor
    raise ValueError(f'unknown executor {executor!r}: use "local" (processes on this machine), "ray" '
                     '(ray.init(): the cluster in RAY_ADDRESS, else a new local instance) or "ray://host:port"')


def single_threaded(fn: Callable[[J], R], job: J) -> R:
    """Run ``fn(job)`` with one torch thread (deterministic and fair when runs share cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(job)
    finally:
        torch.set_num_threads(previous)


def map_runs(fn: Callable[[J], R], jobs: Sequence[J], workers: int = 1, desc: str = "runs",
             executor: str = "local", cpus_per_run: float = 1, gpus_per_run: float = 0,
             progress: bool = True, on_result: Callable[[int, R], None] | None = None) -> list[R]:
    """``[fn(job) for job in jobs]``, in order, with a progress bar.

    ``on_result(i, result)`` is called here, in this process, as each job ``i`` finishes (in the
    order they finish), e.g. to keep finished runs before the last one is done.

    ``executor="local"``: over ``workers`` local processes (in this process when ``workers <= 1``).
    ``executor="ray"`` or ``"ray://host:port"``: one Ray task per job, each asking for
    ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs; the cluster's resources set how many run at
    once (``workers`` is ignored). ``"ray"`` calls ``ray.init()``, which joins the cluster named by
    ``RAY_ADDRESS`` or starts a local instance. A Ray session started here is shut down on return;
    one already initialised by the caller is used and left running. ``fn`` must be importable by
    the Ray workers (``gradience`` installed on every node).
    """
    check_executor(executor)
    bar = progress_bar(total=len(jobs), desc=desc, enabled=progress)
    out: list[Any] = [None] * len(jobs)

    def done(i: int, result: R) -> None:
        out[i] = result
        if on_result is not None:
            on_result(i, result)
        bar.update(1)

    try:
        if executor != "local":
            _map_ray(fn, jobs, executor, cpus_per_run, gpus_per_run, done)
        elif workers <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                done(i, single_threaded(fn, job))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(single_threaded, fn, job): i for i, job in enumerate(jobs)}
                for future in as_completed(futures):
                    done(futures[future], future.result())
        return out
    finally:
        bar.close()


def _map_ray(fn: Callable[[J], R], jobs: Sequence[J], executor: str, cpus: float, gpus: float,
             done: Callable[[int, R], None]) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError(f"executor={executor!r} needs Ray, which is not installed: {RAY_INSTALL}") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if executor == "ray" else executor)
    try:
        task = ray.remote(num_cpus=cpus, num_gpus=gpus)(single_threaded)
        refs = [task.remote(fn, job) for job in jobs]
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            for ref in finished:
                done(index[ref], ray.get(ref))  # raises the run's own error, as the local path does
    finally:
        if started:
            ray.shutdown()
