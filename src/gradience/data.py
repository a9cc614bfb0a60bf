"""Build ``data/``, the pipeline's inputs, deterministically (byte-identical on every machine).

``data.dvc`` records the hash of ``data/``. On a fresh clone with no DVC remote, ``gradience data
--verify`` rebuilds the folder, hashes it with ``dvc add`` (which also fills the local cache) and
checks the hash against the committed ``data.dvc``, so the inputs are verified, not trusted.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from gradience.tasks import digits, gsm, modular, reviews, text


def build_modular(folder: Path) -> None:
    for p in modular.MODULI:
        modular.write_table(p, folder)


BUILDERS: dict[str, Callable[[Path], object]] = {
    "modular": build_modular,
    "digits": digits.build_digits,
    "text": text.build_shakespeare,
    "reviews": reviews.build_fine_foods,
    # >>> lora_gsm8k (its data builder; keep this marker line)
    "arithmetic": gsm.build_arithmetic,
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


class DataMismatch(RuntimeError):
    """The rebuilt ``data/`` does not hash to the value committed in ``data.dvc``."""


def _dvc_md5(dvc_file: Path) -> str:
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def verify(data_dir: str | Path = "data", dvc_file: str | Path = "data.dvc") -> str:
    """Hash ``data_dir`` with ``dvc add`` and compare with the committed ``dvc_file``; returns the hash.

    On a mismatch the committed ``dvc_file`` is restored and :class:`DataMismatch` is raised.
    """
    dvc_file = Path(dvc_file)
    committed = dvc_file.read_text()
    expected = _dvc_md5(dvc_file)
    subprocess.run([sys.executable, "-m", "dvc", "add", "--quiet", str(data_dir)], check=True)
    actual = _dvc_md5(dvc_file)
    if actual != expected:
        dvc_file.write_text(committed)
        raise DataMismatch(f"rebuilt {data_dir}/ hashes to {actual}, but {dvc_file} records {expected}")
    return actual
