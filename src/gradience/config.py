"""Reading and validating ``params.yaml`` before any work starts.

Each study declares its keys as pydantic models (see :mod:`gradience.studies.protocol`);
:func:`validate_section` turns every problem (unknown key, wrong type, impossible value) into one
:class:`ParamsError` that names the key, the value given and what is allowed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

PARAMS_FILE = "params.yaml"
Profile = Literal["default", "smoke", "paper"]
Device = Literal["auto", "cpu", "cuda"]
M = TypeVar("M", bound=BaseModel)


class ParamsError(ValueError):
    """Invalid parameters; the message lists every problem found."""


#: The largest integer any key takes. No count, size or seed of these studies comes near it, so a
#: bigger one is a typo (``steps: 1e12``) that would otherwise run for ever or fail deep inside.
MAX_INT = 2**31 - 1


class Section(BaseModel):
    """A strict block of params: unknown keys are errors, floats must be finite (a field that means
    "no limit" with ``inf`` says so with ``Field(allow_inf_nan=True)``) and integers at most :data:`MAX_INT`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_absurd_integers(cls, value: Any, info: ValidationInfo) -> Any:
        for n in _integers(value):
            if abs(n) > MAX_INT:
                raise ValueError(f"{n} is out of range: integers here are at most {MAX_INT} in size")
        return value


def _integers(value: Any) -> list[int]:
    """The integers in a validated value, looking inside lists and tuples (not nested sections)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _integers(v)]
    return []


def read_params_file(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the repository root or pass --params")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of stage sections, got {type(data).__name__}")
    return data


def _model_at(schema: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The (nested) model that owns the key at ``path``, looking through ``list[...]``/unions."""
    owner: Any = schema
    for part in path:
        if isinstance(part, int):
            continue
        field = owner.model_fields.get(part) if isinstance(owner, type) else None
        candidates = [field.annotation] if field else []
        owner = None
        while candidates:
            ann = candidates.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                owner = ann
                break
            candidates.extend(get_args(ann))
    return owner


def _describe(err: dict[str, Any], schema: type[BaseModel], stage: str) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    key = f"{stage}.{loc}" if loc else stage
    if err["type"] == "extra_forbidden":
        owner = _model_at(schema, err["loc"][:-1])
        allowed = ", ".join(owner.model_fields) if owner else "see the schema"
        return f"  {key} = {err['input']!r}: unknown key (allowed: {allowed})"
    return f"  {key} = {err.get('input')!r}: {err['msg']}"


def validate_section(stage: str, schema: type[M], section: Any) -> M:
    """Validate one section (``stage`` names it in messages) against ``schema``, or raise :class:`ParamsError`."""
    if section is None:
        raise ParamsError(f"params.yaml has no section {stage!r}")
    try:
        return schema.model_validate(section)
    except ValidationError as exc:
        lines = [_describe(e, schema, stage) for e in exc.errors()]
        raise ParamsError(f"invalid params for stage {stage!r}:\n" + "\n".join(lines)) from None


def stage_arguments(prog: str, description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments of a stage's own command (``python -m … STUDY [--params P] [--quiet]``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("study")
    parser.add_argument("--params", default=PARAMS_FILE)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)
