"""The one progress bar: tqdm text bars, quiet where nobody watches them.

Quiet (``disable=True``) when the caller asks, inside a worker process (its bars would interleave
with the parent's), and in a notebook executed by the report stage (``GRADIENCE_PROGRESS=0``,
set by :func:`quiet`, which the report stage wraps around the notebook's kernel and ``train --quiet``
around its runs, so executed notebooks hold no bar fragments).
Interactive notebooks and the terminal show them.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm  # text bars: readable in executed notebooks, no ipywidgets needed

ENV = "GRADIENCE_PROGRESS"


def shown(enabled: bool = True) -> bool:
    """Whether a bar asked for with ``enabled`` is drawn here."""
    return enabled and os.environ.get(ENV, "1") != "0" and multiprocessing.parent_process() is None


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
        enabled: bool = True, mininterval: float = 5.0, leave: bool = True) -> tqdm:
    """A tqdm bar over ``iterable`` (or of ``total`` steps), quiet unless :func:`shown`."""
    return tqdm(iterable, total=total, desc=desc, disable=not shown(enabled), mininterval=mininterval, leave=leave)


@contextmanager
def quiet(active: bool = True) -> Iterator[None]:
    """No bars inside the block, in this process and in the processes (and kernels) it starts."""
    previous = os.environ.get(ENV)
    if active:
        os.environ[ENV] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
