from pathlib import Path

from conftest import REPO
from gradience.telemetry.glossary import markdown


def test_readme_carries_the_glossary_defined_in_code():
    assert markdown() in Path(REPO, "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    readme = Path(REPO, "README.md").read_text()
    assert "make test" in readme
    ci = [line for line in Path(REPO, ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set", "cd"))]
    assert ci == ["make test"]


def test_glossary_patterns_cover_numbered_and_prefixed_names():
    from gradience.telemetry.glossary import undefined

    assert undefined({"kappa", "hessian_top10", "true_ng_alignment@1e-02", "emp_fisher_top3"}) == set()
    assert undefined({"kappa_typo", "hessian_topX"}) == {"kappa_typo", "hessian_topX"}
