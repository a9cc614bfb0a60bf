"""The arc as one answer: every study's verdicts, assembled from the studies' reports only.

The synthesis stage (``python -m gradience.synthesis``, the last stage of ``dvc.yaml``) reads each
study's ``findings.json`` (written by its report stage beside ``metrics.json``) and the claim registry,
and nothing else: no tables, no training. It executes ``notebooks/synthesis.py`` into
``reports/synthesis/``; its ``metrics.json`` is the scoreboard: the four verdict counts of the whole
arc, of each study, of each source document and of each kind of claim (keys in snake_case). The
README opens with the same scoreboard (:func:`scoreboard_markdown`; a test keeps the two equal).

Two tables of the synthesis document are measured across domains: Part III, the restraint principle
(:data:`RESTRAINT`: each mechanism, the effect the synthesis names and the claims whose runs test it)
and Part IV, what spectral metrics can and cannot do (:data:`CAPABILITIES`). Each row's verdict
combines its claims' verdicts (:func:`gradience.reporting.combined`); a row no study tests says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from gradience.reporting import (
    CLAIM_KINDS,
    FINDINGS_FILE,
    VERDICTS,
    claims,
    combined,
    read_findings,
    sources,
    write_metrics,
)
from gradience.runner import StageFailed, configure_logging, execute
from gradience.studies.registry import STAGES

STAGE = "synthesis"
NOTEBOOK = Path("notebooks") / f"{STAGE}.py"
OUTPUTS = (f"{STAGE}.ipynb", "figures", "metrics.json")
README_START, README_END = "<!-- scoreboard: start -->", "<!-- scoreboard: end -->"

# Part III of the synthesis: (domain, restraint mechanism, the effect it names) -> the claims that test it.
RESTRAINT: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("grokking", "weight decay", "forces κ recovery, enables reorganisation"): (
        "grokking.mul_wd0.1_groks", "grokking.weight_decay_causal", "grokking.recovery_necessary"),
    ("spectral edge", "weight decay", "compresses after the fit; removing it reverses compression"): (
        "spectral_edge.two_phases", "spectral_edge.wd_removal"),
    ("LoRA (α/r)", "lower α/r", "reduces adapter amplitude, concentrates updates"): (
        "lora_gsm8k.alpha_controls_generalisation", "lora_sst2.alpha_controls_generalisation"),
    ("LoRA (LR)", "lower learning rate", "reduces step size, prevents overfitting"): (
        "lora_gsm8k.lr_dominates_alpha", "lora_sst2.lr_dominates_alpha", "lora_sst2.low_lr_best"),
    ("LoRA (targets)", "attention-only", "prevents MLP overwriting base knowledge"): (
        "lora_gsm8k.attention_beats_all", "lora_sst2.attention_beats_all"),
    ("LoRA (all three)", "lower LR, lower α/r, attention-only", "each improves on the baseline"): (
        "lora_gsm8k.restraint", "lora_sst2.restraint"),
}
# Part IV: (can or cannot, capability, the synthesis's example) -> the claims that test it.
CAPABILITIES: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("can", "detect struggling runs", "κ divergence before grokking failure"): (
        "grokking.kappa_divergence_predicts", "grokking.low_recovery_no_grok", "grokking.kappa_growth_alert"),
    ("can", "diagnose capacity usage", "stable rank shows 14 % utilisation"): (),
    ("can", "track update dynamics", "stable rank drops → updates concentrating"): (
        "lora_gsm8k.stable_rank_tracks_concentration", "lora_sst2.stable_rank_tracks_concentration"),
    ("can", "audit efficiency", "an 83.9M adapter uses 4.66 effective dimensions"): (),
    ("cannot", "predict the outcome", "metrics describe, they do not predict"): (
        "grokking_transition.diagnostic_not_predictive",),
}


def collect(reports: str | Path = "reports", studies: tuple[str, ...] = STAGES) -> pd.DataFrame:
    """Every study's Findings rows, with the study, the claim's source document and its kind."""
    frames = [read_findings(Path(reports) / s / FINDINGS_FILE).assign(study=s) for s in studies]
    rows = pd.concat(frames, ignore_index=True)
    registry = claims()
    unknown = sorted(set(rows.id) - set(registry))
    if unknown:
        raise KeyError(f"findings name claims that are not in the claim registry: {unknown}")
    rows["source"] = rows.id.map(lambda c: registry[c]["source"])
    rows["kind"] = rows.id.map(lambda c: registry[c]["kind"])
    return rows


def tally(rows: pd.DataFrame, by: str, order: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """The four verdict counts (zeros included) and their total per value of ``by``, in ``order``, with
    a last row ``all``."""
    t = pd.crosstab(rows[by], rows.verdict).reindex(index=list(order), columns=list(VERDICTS), fill_value=0)
    t = t.fillna(0).astype(int)
    t.loc["all"] = t.sum()
    t["total"] = t.sum(axis=1)
    t.index.name, t.columns.name = by, None
    return t


def scoreboard(rows: pd.DataFrame) -> pd.DataFrame:
    """Verdict counts per study, in pipeline order."""
    return tally(rows, "study", [s for s in STAGES if s in set(rows.study)])


def by_source(rows: pd.DataFrame) -> pd.DataFrame:
    """Verdict counts per source document (the registry's sources, in its order)."""
    return tally(rows, "source", [s for s in sources() if s in set(rows.source)])


def by_kind(rows: pd.DataFrame) -> pd.DataFrame:
    """Verdict counts per kind of claim (event, comparison, absence)."""
    return tally(rows, "kind", CLAIM_KINDS)


def cross_domain(rows: pd.DataFrame, table: dict[tuple[str, str, str], tuple[str, ...]],
                 columns: tuple[str, str, str]) -> pd.DataFrame:
    """One row per entry of ``table`` (:data:`RESTRAINT` or :data:`CAPABILITIES`): its claims' verdicts
    ("study: verdict" each), the combined verdict, and what the runs measured. An entry whose claims no
    study judged is "not tested"."""
    by_id = rows.set_index("id")
    out = []
    for key, ids in table.items():
        found = [c for c in ids if c in by_id.index]
        verdicts = [by_id.loc[c, "verdict"] for c in found]
        out.append({**dict(zip(columns, key, strict=True)),
                    "claims": "; ".join(f"{c} ({by_id.loc[c, 'verdict']})" for c in found) or "–",
                    "verdict": combined(verdicts) if found else "not tested",
                    "measured": " | ".join(f"{c.split('.', 1)[0]}: {by_id.loc[c, 'measured']}" for c in found) or "–"})
    return pd.DataFrame(out)


def restraint(rows: pd.DataFrame) -> pd.DataFrame:
    """Part III measured: each restraint mechanism across domains, with its verdict."""
    return cross_domain(rows, RESTRAINT, ("domain", "mechanism", "effect claimed"))


def capabilities(rows: pd.DataFrame) -> pd.DataFrame:
    """Part IV measured: what spectral metrics can and cannot do, with the evidence."""
    return cross_domain(rows, CAPABILITIES, ("can or cannot", "capability", "example claimed"))


def _snake(counts: pd.Series) -> dict[str, int]:
    return {k.replace(" ", "_"): int(v) for k, v in counts.items()}


def metrics(rows: pd.DataFrame) -> dict:
    """``metrics.json``: the arc's verdict counts, then per study, per source and per kind."""
    parts = {"studies": scoreboard(rows), "sources": by_source(rows), "kinds": by_kind(rows)}
    out: dict = {"total": _snake(parts["studies"].loc["all"])}
    for name, table in parts.items():
        out[name] = {k: _snake(r) for k, r in table.drop(index="all").iterrows()}
    for name, table in (("restraint", restraint(rows)), ("capabilities", capabilities(rows))):
        counts = table.verdict.value_counts()
        out[name] = {v.replace(" ", "_"): int(counts.get(v, 0)) for v in (*VERDICTS, "not tested")}
    return out


def scoreboard_markdown(rows: pd.DataFrame) -> str:
    """The scoreboard as the README shows it: one row per study and the total."""
    board = scoreboard(rows).reset_index()
    board["study"] = [f"`{s}`" if s != "all" else "**all**" for s in board.study]
    return board.to_markdown(index=False)


def readme_scoreboard(readme: str | Path = "README.md") -> str:
    """The scoreboard block of the README (between the two markers)."""
    text = Path(readme).read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no scoreboard block ({README_START} … {README_END})")
    return text.split(README_START, 1)[1].split(README_END, 1)[0].strip()


def write_readme_scoreboard(rows: pd.DataFrame, readme: str | Path = "README.md") -> None:
    """Replace the README's scoreboard block with the scoreboard of ``rows``."""
    path = Path(readme)
    text = path.read_text()
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    path.write_text(f"{head}{README_START}\n{scoreboard_markdown(rows)}\n{README_END}{tail}")


def write(rows: pd.DataFrame, out_dir: str | Path) -> Path:
    return write_metrics(out_dir, metrics(rows))


def run(reports: str | Path = "reports", progress: bool = True) -> Path:
    """Check that every study's findings are there, then execute the synthesis notebook."""
    collect(reports)  # a clear error naming the study whose report is missing, before papermill starts
    out = Path(reports) / STAGE
    outputs = [out / name.format(stage=STAGE) for name in OUTPUTS]
    return execute(STAGE, NOTEBOOK, out, {"out_dir": str(out)}, outputs, progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradience.synthesis", description=__doc__.split("\n")[0])
    parser.add_argument("--readme", action="store_true",
                        help="write the scoreboard of the current reports into README.md instead")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    try:
        if args.readme:
            write_readme_scoreboard(collect())
            return 0
        if not args.quiet:
            configure_logging()
        print(run(progress=not args.quiet))
    except StageFailed as exc:
        print(f"gradience: {exc}", file=sys.stderr)
        return 1
    except (KeyError, FileNotFoundError, ValueError) as exc:
        print(f"gradience: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
