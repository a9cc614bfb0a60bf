"""The synthesis stage: the arc's scoreboard from every study's findings.json and the claim registry."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from gradience import synthesis
from gradience.reporting import VERDICTS, claims, finding, findings_table, write_findings
from gradience.studies.registry import STAGES


def _write(reports: Path, study: str, rows: list[tuple[str, str]]) -> None:
    (reports / study).mkdir(parents=True, exist_ok=True)
    write_findings(reports / study, findings_table(finding(cid, "m", v, "w") for cid, v in rows))


@pytest.fixture
def reports(tmp_path):
    _write(tmp_path, "grokking", [("grokking.mul_wd0.1_groks", "reproduced"),
                                  ("grokking.add_wd0.1_memorises", "not reproduced"),
                                  ("grokking.kappa_10k_ordering", "inconclusive")])
    _write(tmp_path, "spectral_edge", [("spectral_edge.two_phases", "not comparable"),
                                       ("spectral_edge.edge_dominance", "reproduced")])
    return tmp_path


def test_tally_counts_every_verdict_per_study_zeros_included(reports):
    rows = synthesis.collect(reports, ("grokking", "spectral_edge"))
    board = synthesis.scoreboard(rows)
    assert list(board.index) == ["grokking", "spectral_edge", "all"]
    assert list(board.columns) == [*VERDICTS, "total"]
    assert board.loc["grokking"].tolist() == [1, 1, 0, 1, 3]
    assert board.loc["spectral_edge"].tolist() == [1, 0, 1, 0, 2]
    assert board.loc["all"].tolist() == [2, 1, 1, 1, 5]
    kinds = synthesis.by_kind(rows)
    assert kinds.loc["event", "reproduced"] == 2 and kinds.loc["absence", "not reproduced"] == 1
    assert kinds.loc["all", "total"] == 5
    assert synthesis.by_source(rows).loc["synthesis", "total"] == 3


def test_metrics_are_numbers_under_snake_case_keys(reports):
    m = synthesis.metrics(synthesis.collect(reports, ("grokking", "spectral_edge")))
    assert m["total"] == {"reproduced": 2, "not_reproduced": 1, "not_comparable": 1, "inconclusive": 1, "total": 5}
    assert m["studies"]["spectral_edge"]["inconclusive"] == 0  # zeros are kept: a diff shows 0, not "-"
    assert set(m["kinds"]) == {"event", "comparison", "absence"}
    keys = [k for part in m.values() for k, v in part.items() for k in (k, *(v if isinstance(v, dict) else ()))]
    assert not [k for k in keys if " " in k or "." in k], keys


def test_a_missing_study_or_an_unregistered_claim_is_named(reports):
    with pytest.raises(FileNotFoundError, match="dvc repro rosetta"):
        synthesis.collect(reports, ("grokking", "rosetta"))
    (reports / "rosetta").mkdir()
    (reports / "rosetta" / "findings.json").write_text(json.dumps(
        [{"id": "rosetta.no_such_claim", "verdict": "reproduced", "measured": "m", "why": "w"}]))
    with pytest.raises(KeyError, match="rosetta.no_such_claim"):
        synthesis.collect(reports, ("grokking", "rosetta"))


def test_the_readme_block_is_replaced_in_place(reports, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n{synthesis.README_START}\nold\n{synthesis.README_END}\n\nrest\n")
    rows = synthesis.collect(reports, ("grokking", "spectral_edge"))
    synthesis.write_readme_scoreboard(rows, readme)
    assert synthesis.readme_scoreboard(readme) == synthesis.scoreboard_markdown(rows)
    assert readme.read_text().endswith("\n\nrest\n") and "old" not in readme.read_text()
    assert re.search(r"^\| \*\*all\*\* +\| +2 \| +1 \| +1 \| +1 \| +5 \|$", synthesis.scoreboard_markdown(rows), re.M)


def test_the_committed_readme_and_synthesis_metrics_match_the_committed_reports():
    reports = Path(REPO) / "reports"
    rows = synthesis.collect(reports)
    assert synthesis.readme_scoreboard(Path(REPO) / "README.md") == synthesis.scoreboard_markdown(rows), (
        "run `python -m gradience.synthesis --readme`")
    committed = json.loads((reports / "synthesis" / "metrics.json").read_text())
    assert committed == json.loads(json.dumps(synthesis.metrics(rows)))
    per_study = {s: json.loads((reports / s / "metrics.json").read_text())["findings"] for s in STAGES}
    assert {s: {k.replace(" ", "_"): v for k, v in c.items()} for s, c in per_study.items()} == {
        s: {k: v for k, v in c.items() if k != "total"} for s, c in committed["studies"].items()}
    assert isinstance(rows, pd.DataFrame) and len(rows) == committed["total"]["total"]


def test_every_claim_of_the_cross_domain_tables_is_registered():
    registered = set(claims())
    for table in (synthesis.RESTRAINT, synthesis.CAPABILITIES):
        missing = [c for ids in table.values() for c in ids if c not in registered]
        assert not missing, missing


def test_a_cross_domain_row_combines_its_claims_and_says_when_nothing_tests_it(reports):
    rows = synthesis.collect(reports, ("grokking", "spectral_edge"))
    table = {("a", "b", "c"): ("grokking.mul_wd0.1_groks", "spectral_edge.edge_dominance"),
             ("d", "e", "f"): ("grokking.mul_wd0.1_groks", "grokking.add_wd0.1_memorises"),
             ("g", "h", "i"): ("grokking.mul_wd0.1_groks", "spectral_edge.two_phases"),
             ("j", "k", "l"): ()}
    out = synthesis.cross_domain(rows, table, ("x", "y", "z"))
    assert out.verdict.tolist() == ["reproduced", "not reproduced", "not comparable", "not tested"]
    assert out.loc[0, "claims"] == "grokking.mul_wd0.1_groks (reproduced); spectral_edge.edge_dominance (reproduced)"
    assert out.loc[3, "measured"] == "–" and list(out.columns[:3]) == ["x", "y", "z"]
    m = synthesis.metrics(rows)
    assert sum(m["restraint"].values()) == len(synthesis.RESTRAINT)
    assert sum(m["capabilities"].values()) == len(synthesis.CAPABILITIES)
