"""Build ``data/``, the pipeline's inputs, deterministically (byte-identical on every machine).

``data.dvc`` records the hash of ``data/``. On a fresh clone with no DVC remote, ``gradience data``
rebuilds the folder and ``dvc commit`` finds the same hash, so the inputs are verified, not trusted.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from gradience.tasks import digits, modular, text


def build_modular(folder: Path) -> None:
    for p in modular.MODULI:
        modular.write_table(p, folder)


BUILDERS: dict[str, Callable[[Path], object]] = {
    "modular": build_modular,
    "digits": digits.build_digits,
    "text": text.build_shakespeare,
}


def build(data_dir: str | Path = "data") -> list[Path]:
    """(Re)write every input folder under ``data_dir``; returns the files written."""
    data_dir = Path(data_dir)
    for name, builder in BUILDERS.items():
        folder = data_dir / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        builder(folder)
    return sorted(p for p in data_dir.rglob("*") if p.is_file())
