"""Stage outputs a reader and ``dvc metrics diff`` use: ``metrics.json``, the findings table and the
one verdict rule (:func:`judge`).

Every finding names a claim of the registry (``claims/registry.yaml``) by id; its text and its
published number come from there, so every Findings table quotes the seed the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

Verdict = Literal["reproduced", "not reproduced", "not comparable", "inconclusive"]
VERDICTS = ("reproduced", "not reproduced", "not comparable", "inconclusive")
ClaimKind = Literal["event", "comparison", "absence"]
CLAIM_KINDS = ("event", "comparison", "absence")


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return None if math.isnan(f) else (str(f) if math.isinf(f) else round(f, 6))
    return value


def write_metrics(out_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """``metrics.json`` with sorted keys and 6-decimal floats (NaN → null, ±inf → "inf")."""
    path = Path(out_dir) / "metrics.json"
    path.write_text(json.dumps(_clean(metrics), indent=2, sort_keys=True) + "\n")
    return path


FINDINGS_FILE = "findings.json"


def write_findings(out_dir: str | Path, table: pd.DataFrame) -> Path:
    """``findings.json``: the Findings rows (claim id, verdict, measured, why), which the synthesis stage
    reads; the claim's wording and published value stay in the registry."""
    path = Path(out_dir) / FINDINGS_FILE
    rows = table[["id", "verdict", "measured", "why"]].to_dict(orient="records")
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    return path


def read_findings(path: str | Path) -> pd.DataFrame:
    """The rows of a ``findings.json`` (a clear error when it is missing)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {path}: run that study's report stage (`dvc repro {path.parent.name}`) first")
    return pd.DataFrame(json.loads(path.read_text()), columns=["id", "verdict", "measured", "why"])


def mean_spread(values: Iterable[float], fmt: str = "{:,.3g}") -> str:
    """``mean ± sd (n=k)`` over the finite values; ``—`` when there are none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "—"
    sd = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{fmt.format(v.mean())} ± {fmt.format(sd)} (n={v.size})"


COLUMNS = ["id", "claim", "seed", "measured", "verdict", "why"]


@cache
def _registry() -> dict:
    data = yaml.safe_load(files("gradience.claims").joinpath("registry.yaml").read_text())
    for cid, c in data["claims"].items():
        if c["source"] not in data["sources"]:
            raise ValueError(f"claim {cid!r}: unknown source {c['source']!r}; sources: {sorted(data['sources'])}")
        if c.get("kind") not in CLAIM_KINDS:
            raise ValueError(f"claim {cid!r}: kind {c.get('kind')!r} must be one of {CLAIM_KINDS}")
    return data


def claims() -> dict[str, dict[str, str]]:
    """The claim registry: id → source, section, claim, published."""
    return _registry()["claims"]


def sources() -> dict[str, dict[str, str]]:
    """The source documents: key → title, what it covers."""
    return _registry()["sources"]


def finding(claim_id: str, measured: str, verdict: Verdict, why: str) -> dict[str, str]:
    """One Findings row for the registry's claim ``claim_id``."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    registry = claims()
    if claim_id not in registry:
        raise KeyError(f"claim {claim_id!r} is not in the claim registry (gradience/claims/registry.yaml)")
    c = registry[claim_id]
    return {"id": claim_id, "claim": c["claim"], "seed": str(c["published"]), "measured": measured,
            "verdict": verdict, "why": why}


@dataclass(frozen=True)
class Budget:
    """One thing a claim needs from the runs: how much the runs reached against how much it needs.

    ``Budget("lr·wd·steps", 12.0, 10.0)`` (a clock), ``Budget("seeds with a grok", 2, 1)`` (a
    control that must have happened), ``Budget("runs with wd 0", 3, 1)`` (a control that must exist).
    """

    name: str
    reached: float
    needed: float

    @property
    def met(self) -> bool:
        return bool(self.reached >= self.needed)

    def __str__(self) -> str:
        return f"{self.name} {self.reached:,.3g} (needs ≥ {self.needed:,.3g})"


@dataclass(frozen=True)
class Power:
    """What a negative needs: the smallest effect the runs could detect at their n (at the stated
    test and level), beside the effect the source claims, in the same unit.

    ``Power("accuracy difference (points)", 6.2, 4.0)``: the runs could not have seen the claimed 4
    points, so "no difference" or "A does not beat B" from them is inconclusive, not a negative.
    """

    measure: str
    detectable: float
    claimed: float

    @property
    def sufficient(self) -> bool:
        return bool(math.isfinite(self.detectable) and self.detectable <= abs(self.claimed))

    def __str__(self) -> str:
        return f"smallest detectable {self.measure} {self.detectable:,.3g} vs claimed {abs(self.claimed):,.3g}"


def judge(holds: bool | None, budgets: Sequence[Budget] = (), kind: ClaimKind = "comparison",
          power: Power | None = None) -> tuple[Verdict, str]:
    """The verdict and the budget sentence for a claim the runs checked (the one verdict rule).

    ``holds``: whether the measurement agrees with the claim (``None``: nothing to judge →
    "inconclusive"). ``budgets``: what the claim needs (steps on the right clock, controls, seeds).
    ``kind`` (from the claim registry): what a short or small run could fake.

    - ``event`` (it happens: "it groks"): shown → "reproduced" whatever the budget, since a short run
      cannot fake it; not shown → "not reproduced" only with every budget met (the runs had the time
      and the seeds for it to happen), else "not comparable".
    - ``comparison`` (A beats B, x leads y, a score separates outcomes): a short run can fake either
      answer, so every budget must be met ("not comparable" otherwise); a negative then also needs
      ``power`` that could have seen the claimed effect, else "inconclusive" naming both (no stated
      power: "inconclusive" too).
    - ``absence`` (it does not happen; no difference; any configuration works): every budget must be
      met for either answer, as for a comparison (a run too short for the thing to happen agrees
      vacuously, and one seed can show a "difference" that is seed noise); then the runs showing what
      the claim rules out → "not reproduced"; agreeing → "reproduced", and where ``power`` is given
      (a statistical "no difference"), only if it could have seen a difference of the claimed size.

    The returned sentence names every budget (reached against needed) and the power, so the
    Findings table says what was tested.
    """
    if kind not in CLAIM_KINDS:
        raise ValueError(f"kind must be one of {CLAIM_KINDS}, got {kind!r}")
    short = [b for b in budgets if not b.met]
    said = "; ".join([str(b) for b in budgets] + ([str(power)] if power is not None else []))
    if holds is None:
        return "inconclusive", said
    if kind == "event" and holds:
        return "reproduced", said
    if short:
        return "not comparable", "short of budget: " + "; ".join(str(b) for b in short) + (
            f" (met: {'; '.join(str(b) for b in budgets if b.met)})" if len(short) < len(budgets) else "") + (
            f"; {power}" if power is not None else "")
    if kind == "event":
        return "not reproduced", said
    if kind == "absence":
        if not holds:
            return "not reproduced", "the runs show what the claim rules out" + (f"; {said}" if said else "")
        if power is not None and not power.sufficient:
            return "inconclusive", f"too little power for a negative: {power}" + (
                f"; {'; '.join(str(b) for b in budgets)}" if budgets else "")
        return "reproduced", said
    if holds:
        return "reproduced", said
    if power is None:
        return "inconclusive", "a negative needs power: the smallest effect these runs could detect is not stated" + (
            f"; {said}" if said else "")
    if not power.sufficient:
        return "inconclusive", f"too little power for a negative: {power}" + (
            f"; {'; '.join(str(b) for b in budgets)}" if budgets else "")
    return "not reproduced", said


def claim_kind(claim_id: str) -> ClaimKind:
    """The registry's kind of ``claim_id``: event, comparison or absence."""
    registry = claims()
    if claim_id not in registry:
        raise KeyError(f"claim {claim_id!r} is not in the claim registry (gradience/claims/registry.yaml)")
    return registry[claim_id]["kind"]


def judged(claim_id: str, measured: str, holds: bool | None, why: str, budgets: Sequence[Budget] = (),
           power: Power | None = None) -> dict[str, str]:
    """A Findings row whose verdict comes from :func:`judge` with the claim's registered kind; ``why``
    is followed by the budget (and power) sentence."""
    verdict, budget = judge(holds, budgets, claim_kind(claim_id), power)
    return finding(claim_id, measured, verdict, "; ".join(x for x in (why, budget) if x))


def combined(verdicts: Iterable[Verdict]) -> Verdict:
    """One verdict from several parts of a claim (its tasks, or the claims behind one statement): "not
    reproduced" when any part is, "reproduced" when every part is, else "not comparable" when a part is
    short of budget, else "inconclusive" (also for no parts at all)."""
    got = set(verdicts)
    if "not reproduced" in got:
        return "not reproduced"
    if got == {"reproduced"}:
        return "reproduced"
    return "not comparable" if "not comparable" in got else "inconclusive"


def judged_per_task(claim_id: str, results: Mapping[str, tuple[bool | None, str]],
                    budgets: Mapping[str, Sequence[Budget]], why: str,
                    power: Mapping[str, Power] | None = None) -> dict[str, str]:
    """One Findings row for a claim made for every task, each task judged on its own runs by :func:`judge`.

    ``results``: per task label, whether the measurement agrees and its text. ``budgets``: per task label,
    THE budget set of that task: a study computes it once and passes the same mapping to every per-task
    row, so the same missing headroom gets the same label on every row. ``power``: per task, where stated.

    The row is "not reproduced" when any task is (a task that contradicts the claim with every budget met
    is a negative for that task, whatever the others show); "reproduced" when every task is; else "not
    comparable" when a task is short of budget; else "inconclusive". The measured text names each task's
    verdict.
    """
    missing = [t for t in results if t not in budgets]
    if missing:
        raise KeyError(f"no budget set for task(s) {missing}: every task judged needs its one budget set")
    kind = claim_kind(claim_id)
    verdicts = {t: judge(h, budgets[t], kind, (power or {}).get(t)) for t, (h, _) in results.items()}
    verdict = combined([v for v, _ in verdicts.values()])
    measured = "; ".join(f"{t}: {text} ({verdicts[t][0]})" for t, (_, text) in results.items())
    said = "; ".join(f"{t}: {verdicts[t][1]}" for t in results if verdicts[t][1])
    return finding(claim_id, measured, verdict, "; ".join(x for x in (why, said) if x))


def findings_table(rows: Iterable[dict[str, str]]) -> pd.DataFrame:
    """The notebook's closing *Findings vs the seed* table."""
    return pd.DataFrame(list(rows), columns=COLUMNS)


RERUNS = Path(__file__).resolve().parent / "claims" / "reruns.json"


def read_reruns(path: str | Path = RERUNS) -> dict[str, Any]:
    """The recorded rerun of one commit on a second machine (``gradience verify --record``): per stage,
    ``{"moved": {metrics key: relative change}, "flipped": {"<claim id>#<k>": {"elsewhere": v, "here": v}}}``."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def mark_machine_flips(stage: str, table: pd.DataFrame, reruns: dict[str, Any] | None = None) -> pd.DataFrame:
    """``table`` with a sentence added to the ``why`` of each row whose verdict flipped between the two
    machines of :data:`RERUNS` (the k-th row of a claim is ``<id>#<k>``): such a verdict sits on a threshold."""
    flipped = (read_reruns() if reruns is None else reruns).get("stages", {}).get(stage, {}).get("flipped", {})
    if not flipped:
        return table
    table = table.copy()
    nth = table.groupby("id").cumcount()
    for i, (claim, k) in enumerate(zip(table["id"], nth, strict=True)):
        flip = flipped.get(f"{claim}#{k}")
        if flip and table["verdict"].iat[i] in (flip["here"], flip["elsewhere"]):
            other = flip["elsewhere"] if table["verdict"].iat[i] == flip["here"] else flip["here"]
            table.iloc[i, table.columns.get_loc("why")] += (
                f"; on a second 2-core machine the same code gave “{other}”: this verdict sits on a threshold")
    return table


def verdict_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many rows of a Findings table got each verdict, all four named (zeros included)."""
    counts = table["verdict"].value_counts()
    return {v: int(counts.get(v, 0)) for v in VERDICTS}
