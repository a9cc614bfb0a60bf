"""Local JSONL files of the fine-tuning tasks (one record per line), read with schema checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from gradience.tasks import DataFileError, corrupted_data


def write_records(records: list[dict], path: str | Path) -> Path:
    """One sorted-key JSON object per line (UTF-8), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records),
                    encoding="utf-8")
    return path


def read_records(path: str | Path, valid: Callable[[dict], bool], schema: str, build: str) -> list[dict]:
    """The records of ``path``; a clear error naming ``build`` (how to make the file) when it is
    missing, and ``schema`` (what a record needs) at the first record ``valid`` rejects."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"missing data: {path} (build it with {build})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise corrupted_data(path, f"not UTF-8 text: {exc}") from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise corrupted_data(f"{path}:{i + 1}", f"not a JSON record ({exc.msg}); truncated?") from None
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not valid(rec):
            raise ValueError(f"{path}:{i + 1}: {schema}, got {rec}")
    return records
