"""Compare a rerun's report with the committed one (``gradience verify``).

Two files of ``reports/<stage>/`` are compared: ``findings.json`` row by row (the verdict of each
claim; a claim judged per task has one row per task, matched in order) and ``metrics.json`` key by
key (flattened, nested keys joined with ``.``). Each key gets one status:

- ``equal``: the same value (numbers, strings, ``null``);
- ``within tolerance`` / ``outside tolerance``: numbers that differ by at most / more than the
  key's tolerance (:data:`TOLERANCES`, relative; counts, i.e. two integers, also pass within
  :data:`COUNT_SLACK` of each other); a value that changed type or a changed string is ``outside
  tolerance``;
- ``censoring changed``: a value that was not measured in one run and measured in the other
  (``null``/NaN/±inf against a finite number: an event that happened just inside or just outside a
  run's budget, such as a grok step);
- ``verdict flipped``: a claim's verdict changed (``findings.json``), or a verdict count or a
  ``*verdict*`` value of ``metrics.json`` (an absent count is 0);
- ``missing``: the key is in one file only.

A stage fails when a verdict flipped or a number moved outside its tolerance; the rest is
reported. A key's tolerance is the larger of its pattern's (:data:`TOLERANCES`) and
:data:`RERUN_FACTOR` times how far it moved when one commit was rerun on a second 2-core machine
(:data:`RERUNS`, written by ``gradience verify --record``): many numbers of unstable or chaotic
runs (a spike, an edge of stability, a grok time) move across machines as much as across seeds,
so a number fails only when it moved further than a change of machine moves it. The same record
lists the claims whose verdict flipped between the two machines; their notebooks say so.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pandas as pd

from gradience.reporting import RERUNS, read_reruns

# Tolerances are RELATIVE: a number passes when |rerun - committed| <= tol * max(|committed|, FLOOR).
# FLOOR only avoids dividing by zero: a committed 0 must be rerun as (almost exactly) 0. There are
# no absolute tolerances, so a value near 0 (an accuracy of 0.001, an excess of -0.006) is held to
# a tight absolute bound. Patterns are fnmatch patterns on the flattened key; the first match wins.
TOLERANCES: dict[str, float] = {
    # Verdict counts: exact. A change is reported as "verdict flipped" whatever the tolerance.
    "findings.*": 0.0,
    "*verdict*": 0.0,
    # Counts of runs and events (n_*, *_runs, alert hits/misses): integers that the same seeds and
    # code must reproduce exactly; a changed count is what changes a verdict.
    "*.n_*": 0.0,
    "*_runs": 0.0,
    "alerts.*": 0.0,
    # kappa (condition number) medians and kappa-derived values (excess, recovery): ill-conditioned,
    # so the last bits of BLAS arithmetic matter; cross-machine reruns differ by up to 33 %.
    "*kappa*": 0.5,
    # Accuracies and fractions live in [0, 1]: 0.05 relative is at most 5 points for values near 1.
    "*acc*": 0.05,
    "*fraction*": 0.05,
    # Everything else (losses, ranks, lags, correlations, p-values): loose enough for reruns on
    # another machine, tight enough to catch a changed computation.
    "*": 0.25,
}
DEFAULT_TOLERANCE = 0.25  # when ``tolerances`` has no matching pattern
RERUN_FACTOR = 2.0  # a key may move twice as far as it moved between the two recorded machines
COUNT_SLACK = 1  # two counts (integers) this close are within tolerance: one run on the other side of a threshold
FLOOR = 1e-9
VERDICTS = ("findings.*", "*verdict*")
STATUSES = ("equal", "within tolerance", "censoring changed", "outside tolerance", "verdict flipped", "missing")
FAILING = ("outside tolerance", "verdict flipped")
_MISSING = object()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2, 3]}`` → ``{"a.b": 1, "c.0": 2, "c.1": 3}``."""
    out: dict[str, Any] = {}
    items: Iterable[tuple[Any, Any]] = d.items() if isinstance(d, Mapping) else enumerate(d)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, Mapping | list | tuple):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def tolerance(key: str, tolerances: Mapping[str, float] | None = None) -> float:
    """The relative tolerance of ``key``: the first pattern in ``tolerances`` that matches it."""
    for pattern, tol in (TOLERANCES if tolerances is None else tolerances).items():
        if fnmatchcase(key, pattern):
            return tol
    return DEFAULT_TOLERANCE


def _number(v: Any) -> float | None:
    """``v`` as a float when it is a number (``write_metrics`` writes ±inf as the string "inf")."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if v in ("inf", "-inf", "nan"):
        return float(v)
    return None


def _censored(v: float | None) -> bool:
    return v is None or not math.isfinite(v)


def _same(a: Any, b: Any) -> bool:
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return x == y or (math.isnan(x) and math.isnan(y))
    return type(a) is type(b) and a == b


def compare(committed: dict, rerun: dict, tolerances: Mapping[str, float] | None = None,
            moved: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per flattened key: ``key, committed, rerun, rel_diff, tolerance, status``.

    ``tolerances``: pattern → relative tolerance (default :data:`TOLERANCES`); ``moved``: key → how
    far it moved between two machines (its tolerance is then at least ``RERUN_FACTOR`` times that).
    ``rel_diff`` is ``|rerun - committed| / max(|committed|, 1e-9)`` for two numbers, else NaN.
    """
    moved = moved or {}
    a, b = flatten(committed), flatten(rerun)
    rows = []
    for key in list(a) + [k for k in b if k not in a]:
        x, y = a.get(key, _MISSING), b.get(key, _MISSING)
        verdict = any(fnmatchcase(key, p) for p in VERDICTS)
        if verdict and key.startswith("findings."):  # value_counts() omits verdicts no finding got
            x, y = (0 if v is _MISSING else v for v in (x, y))
        tol = tolerance(key, tolerances)
        if not verdict and key in moved:
            tol = max(tol, RERUN_FACTOR * moved[key])
        nx, ny = _number(x), _number(y)
        rel = abs(ny - nx) / max(abs(nx), FLOOR) if nx is not None and ny is not None else math.nan
        counts = type(x) is int and type(y) is int
        if x is _MISSING or y is _MISSING:
            status = "missing"
        elif _same(x, y):
            status = "equal"
        elif verdict:
            status = "verdict flipped"
        elif (x is None or nx is not None) and (y is None or ny is not None) and _censored(nx) != _censored(ny):
            status = "censoring changed"
        elif rel <= tol or (counts and abs(y - x) <= COUNT_SLACK):  # False for NaN: strings, changed types
            status = "within tolerance"
        else:
            status = "outside tolerance"
        rows.append({"key": key, "committed": None if x is _MISSING else x,
                     "rerun": None if y is _MISSING else y, "rel_diff": rel, "tolerance": tol,
                     "status": status})
    return pd.DataFrame(rows, columns=["key", "committed", "rerun", "rel_diff", "tolerance", "status"])


def compare_findings(committed: list[dict], rerun: list[dict]) -> pd.DataFrame:
    """One row per Findings row (key ``findings.json:<claim id>#<k>``, the k-th row of that claim):
    ``equal`` or ``verdict flipped`` by its verdict, ``missing`` when only one run has it."""
    def keyed(rows: list[dict]) -> dict[str, str]:
        seen: dict[str, int] = {}
        out = {}
        for row in rows:
            k = seen[row["id"]] = seen.get(row["id"], -1) + 1
            out[f"findings.json:{row['id']}#{k}"] = row["verdict"]
        return out

    a, b = keyed(committed), keyed(rerun)
    rows = []
    for key in list(a) + [k for k in b if k not in a]:
        x, y = a.get(key), b.get(key)
        status = "missing" if x is None or y is None else "equal" if x == y else "verdict flipped"
        rows.append({"key": key, "committed": x, "rerun": y, "rel_diff": math.nan, "tolerance": 0.0,
                     "status": status})
    return pd.DataFrame(rows, columns=["key", "committed", "rerun", "rel_diff", "tolerance", "status"])


def metrics_path(stage: str) -> str:
    return f"reports/{stage}/metrics.json"


def _committed_and_working(path: str, committed_ref: str, repo: str | Path, stage: str) -> tuple[Any, Any]:
    shown = subprocess.run(["git", "-C", str(repo), "show", f"{committed_ref}:{path}"],
                           capture_output=True, text=True)
    if shown.returncode != 0:
        raise FileNotFoundError(f"no committed {path} at {committed_ref!r}: {shown.stderr.strip()}")
    working = Path(repo) / path
    if not working.exists():
        raise FileNotFoundError(f"no {working}: rerun the stage first (dvc repro {stage})")
    return json.loads(shown.stdout), json.loads(working.read_text())


def verify_stage(stage: str, committed_ref: str = "HEAD", repo: str | Path = ".",
                 tolerances: Mapping[str, float] | None = None, reruns: dict | None = None) -> pd.DataFrame:
    """:func:`compare_findings` and :func:`compare` of the committed ``findings.json`` and ``metrics.json``
    of ``reports/<stage>/`` (``git show <committed_ref>:…``) with the working tree's; ``reruns``: the
    two-machine record whose moves widen tolerances (default :data:`RERUNS`; ``{}`` for none)."""
    moved = (read_reruns() if reruns is None else reruns).get("stages", {}).get(stage, {}).get("moved", {})
    tables = []
    findings = f"reports/{stage}/findings.json"
    shown = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{committed_ref}:{findings}"])
    if shown.returncode == 0 or (Path(repo) / findings).exists():
        tables.append(compare_findings(*_committed_and_working(findings, committed_ref, repo, stage)))
    tables.append(compare(*_committed_and_working(metrics_path(stage), committed_ref, repo, stage), tolerances,
                          moved))
    return pd.concat(tables, ignore_index=True)


def record(stages: Sequence[str], ref: str, about: str, repo: str | Path = ".", path: str | Path = RERUNS) -> Path:
    """Write :data:`RERUNS` from the working tree's reports, a rerun of ``ref``'s code on another machine:
    per stage, how far each number moved (``moved``) and each Findings row whose verdict flipped."""
    out: dict[str, Any] = {"about": about, "ref": ref, "stages": {}}
    for stage in stages:
        table = verify_stage(stage, ref, repo, reruns={})
        moves = table[table["rel_diff"].notna() & (table["rel_diff"] > 0) & ~table["key"].str.startswith("findings")]
        flips = table[(table["status"] == "verdict flipped") & table["key"].str.startswith("findings.json:")]
        out["stages"][stage] = {
            "moved": {k: round(float(v), 4) for k, v in zip(moves["key"], moves["rel_diff"], strict=True)},
            "flipped": {k.removeprefix("findings.json:"): {"elsewhere": a, "here": b}
                        for k, a, b in zip(flips["key"], flips["committed"], flips["rerun"], strict=True)},
        }
    Path(path).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return Path(path)


def main(stages: Sequence[str] = (), ref: str = "HEAD", repo: str | Path = ".", reruns: dict | None = None) -> int:
    """Print the differing keys of each stage and a summary; 1 if a stage fails, else 0.

    ``stages``: default every stage with a ``metrics.json`` in the working tree.
    """
    from gradience.studies.registry import STAGES

    stages = list(stages) or [s for s in STAGES if (Path(repo) / metrics_path(s)).exists()]
    if not stages:
        print(f"no reports/<stage>/metrics.json under {Path(repo).resolve()}: nothing to verify")
        return 1
    failed = []
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        for stage in stages:
            try:
                table = verify_stage(stage, ref, repo, reruns=reruns)
            except FileNotFoundError as exc:
                print(f"== {stage}: {exc}")
                failed.append(stage)
                continue
            counts = table["status"].value_counts()
            summary = ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts)
            print(f"== {stage} (vs {ref}): {summary}")
            changed = table[table["status"] != "equal"]
            if len(changed):
                print(changed.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
            if table["status"].isin(FAILING).any():
                failed.append(stage)
    verdict = f"FAILED: {', '.join(failed)}" if failed else "all within tolerance, no verdict flipped"
    print(f"verify: {len(stages)} stage(s) vs {ref}: {verdict}")
    return 1 if failed else 0
