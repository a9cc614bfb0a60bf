from pathlib import Path

from conftest import REPO
from gradience.telemetry.glossary import PAGE, markdown, page


def test_the_glossary_page_is_the_glossary_defined_in_code():
    assert Path(REPO, PAGE).read_text() == page(), "run `python -m gradience.telemetry.glossary`"
    assert markdown() in page() and "docs/glossary.md" in Path(REPO, "README.md").read_text()


def test_the_readme_is_short_and_links_what_moved_out():
    readme = Path(REPO, "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    for doc in ("docs/running.md", "docs/glossary.md", "docs/architecture.md"):
        assert f"]({doc})" in readme and Path(REPO, doc).exists(), doc


def test_ci_runs_exactly_the_readme_test_command():
    readme = Path(REPO, "README.md").read_text()
    assert "make test" in readme
    ci = [line for line in Path(REPO, ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set", "cd"))]
    assert ci == ["make lint", "make test"]


def test_glossary_patterns_cover_numbered_and_prefixed_names():
    from gradience.telemetry.glossary import undefined

    assert undefined({"kappa", "hessian_top10", "true_ng_alignment@1e-02", "emp_fisher_top3"}) == set()
    assert undefined({"kappa_typo", "hessian_topX"}) == {"kappa_typo", "hessian_topX"}


OUTSIDE = ("../" + "shared", "DESIGN" + ".md")  # split so this file does not match itself


def test_nothing_points_outside_the_repository():
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for rel in tracked:
        path = Path(REPO, rel)
        if path.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".txt", ""} and path.is_file():
            text = path.read_text(errors="ignore")
            if any(ref in text for ref in OUTSIDE):
                offenders.append(rel)
    assert not offenders


def test_readme_names_every_source_document_and_the_registry_is_consistent():
    from gradience.reporting import claims, sources

    readme = Path(REPO, "README.md").read_text()
    for key, source in sources().items():
        assert source["title"] in readme, key
    for cid, claim in claims().items():
        assert cid.split(".")[0] and claim["claim"] and str(claim["published"]) and claim["section"], cid


def test_every_registered_claim_is_tested_by_a_study():
    from gradience.reporting import claims

    code = "".join(p.read_text() for p in Path(REPO, "src/gradience/studies").rglob("*.py"))
    unused = [cid for cid in claims() if f'"{cid}"' not in code]
    assert not unused, f"claims no study tests: {unused}"


def test_flight_recorder_examples_run(tmp_path, monkeypatch):
    import re

    import pandas as pd

    from gradience.telemetry.recorder import TELEMETRY_COLUMNS

    doc = Path(REPO, "docs/flight_recorder.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", doc, re.S | re.M)
    assert len(blocks) == 2  # the Trainer example and the plain-loop example
    monkeypatch.chdir(tmp_path)
    for i, code in enumerate(blocks):
        before = set(tmp_path.glob("*.parquet"))
        exec(compile(code, f"docs/flight_recorder.md[python block {i}]", "exec"), {"__name__": f"doc_example_{i}"})
        written = set(tmp_path.glob("*.parquet")) - before
        assert written, f"python block {i} wrote no parquet file"
        for path in written:
            df = pd.read_parquet(path)
            assert tuple(df.columns) == TELEMETRY_COLUMNS and len(df) > 0, path.name
