"""End to end on a real ``git clone`` of the committed HEAD: the README's study command, smoke profile.

The clone reuses this test run's virtual environment (``make -o`` marks its setup as done) and
imports the clone's own ``src/`` (``PYTHONPATH``), so what runs is exactly what is committed.
Uncommitted changes in the working tree are invisible here, as they are to a new user.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO
from gradience.studies.registry import STAGES
from gradience.telemetry.glossary import undefined

VENV = Path(sys.prefix)
pytestmark = pytest.mark.slow


def sh(*cmd, cwd, check=True, env=None):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and res.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    dest = tmp_path_factory.mktemp("fresh") / "gradience"
    sh("git", "clone", "-q", REPO, dest, cwd=REPO)
    env = os.environ | {"PYTHONPATH": str(dest / "src"), "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}",
                        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"}
    # The README's study command, switched to the smoke profile the documented way.
    make = sh("make", "-o", f"{VENV}/.installed", f"VENV={VENV}", "study", "PROFILE=smoke", cwd=dest, env=env)
    return dest, env, make.stdout + make.stderr


def test_the_clone_runs_the_committed_code(clone):
    dest, env, _ = clone
    where = sh(sys.executable, "-c", "import gradience; print(gradience.__file__)", cwd=dest, env=env).stdout
    assert where.strip() == str(dest / "src" / "gradience" / "__init__.py")


@pytest.mark.parametrize("stage", STAGES)
def test_study_writes_each_report_and_its_tables(clone, stage):
    dest, _, _ = clone
    out = dest / "reports" / stage
    for name in (f"{stage}.ipynb", "metrics.json", "tables/runs.parquet", "tables/params.json"):
        assert (out / name).exists(), name
    assert list((out / "figures").glob("*.png")), "no figures"
    assert list((out / "plots").glob("*.csv")), "no plot data"
    notebook = (out / f"{stage}.ipynb").read_text()
    assert "Findings vs the seed" in notebook and '"output_type": "error"' not in notebook
    assert json.loads((out / "metrics.json").read_text())["findings"]
    assert json.loads((out / "findings.json").read_text())  # the rows the synthesis stage reads


def test_the_synthesis_assembles_every_studys_verdicts(clone):
    dest, _, _ = clone
    out = dest / "reports" / "synthesis"
    metrics = json.loads((out / "metrics.json").read_text())
    rows = sum(len(json.loads((dest / "reports" / s / "findings.json").read_text())) for s in STAGES)
    total = metrics["total"]
    assert total["total"] == rows == sum(v for k, v in total.items() if k != "total")
    assert set(metrics["studies"]) == set(STAGES)
    notebook = (out / "synthesis.ipynb").read_text()
    assert "The scoreboard" in notebook and '"output_type": "error"' not in notebook
    assert (out / "figures" / "scoreboard.png").exists()


@pytest.mark.parametrize("stage", STAGES)
def test_every_telemetry_metric_is_in_the_glossary(clone, stage):
    dest, _, _ = clone
    tables = dest / "reports" / stage / "tables"
    for table in tables.glob("*.parquet"):
        frame = pd.read_parquet(table)
        if "metric" in frame.columns:
            assert not undefined(set(frame["metric"])), table.name


def test_then_everything_is_up_to_date_and_git_sees_no_stray_outputs(clone):
    dest, env, _ = clone
    assert "up to date" in sh("dvc", "status", cwd=dest, env=env).stdout
    assert "Running stage" not in sh("dvc", "repro", cwd=dest, env=env).stdout
    changed = {line[3:] for line in sh("git", "status", "--porcelain", cwd=dest, env=env).stdout.splitlines()}
    assert not [c for c in changed if "/tables" in c or c.endswith(".parquet")], changed


def test_editing_a_report_key_reruns_only_that_notebook(clone):
    dest, env, _ = clone
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["grokking"]["report"]["kappa_recovery_alert"] = 3.0
    params["grokking"]["workers"] = 2  # not tracked: cannot change a result
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(json.loads(sh("dvc", "status", "--json", cwd=dest, env=env).stdout)) == {"grokking"}
    ran = sh("dvc", "repro", cwd=dest, env=env).stdout
    assert "Running stage 'grokking'" in ran and "grokking_runs" not in ran.replace("Stage 'grokking_runs' didn't change", "")
    params["grokking"]["runs"]["steps"] += 10
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(json.loads(sh("dvc", "status", "--json", cwd=dest, env=env).stdout)) == {"grokking_runs"}
    sh("git", "checkout", "params.yaml", cwd=dest, env=env)
    sh("gradience", "profile", "smoke", cwd=dest, env=env)
    sh("dvc", "repro", cwd=dest, env=env)  # the report back to the smoke params, for the tests below


def _stale_after_editing(dest, env, path: str, edit) -> set[str]:
    """The stages ``dvc status`` lists after ``edit(text)`` of ``path``; the file is restored after."""
    file = dest / path
    text = file.read_text()
    file.write_text(edit(text))
    try:
        return set(json.loads(sh("dvc", "status", "--json", cwd=dest, env=env).stdout))
    finally:
        file.write_text(text)


def test_editing_analysis_side_code_reruns_notebooks_and_never_a_training_stage(clone):
    dest, env, _ = clone
    sentence = lambda t: t.replace('"""', '"""Reworded. ', 1)  # noqa: E731  a docstring edit: code changed, tables not
    assert _stale_after_editing(dest, env, "src/gradience/studies/grokking/findings.py", sentence) == {"grokking"}
    assert _stale_after_editing(dest, env, "src/gradience/studies/spectral_edge/analysis.py", sentence) == {"spectral_edge"}
    reports = _stale_after_editing(dest, env, "src/gradience/reporting.py", sentence)
    assert reports == {*STAGES, "synthesis"}, reports  # the verdict rule: every notebook, no training stage
    claims = _stale_after_editing(dest, env, "src/gradience/claims/registry.yaml", lambda t: t + "\n# edited\n")
    assert claims == {*STAGES, "synthesis"}, claims
    assert _stale_after_editing(dest, env, "src/gradience/cli.py", sentence) == set()
    # the list of studies: only the synthesis, which reads every study's findings, depends on it
    assert _stale_after_editing(dest, env, "src/gradience/studies/registry.py", sentence) == {"synthesis"}
    assert _stale_after_editing(dest, env, "src/gradience/studies/grokking/runs.py", sentence) >= {"grokking_runs"}


def test_an_experiment_with_a_set_param_runs(clone):
    dest, env, _ = clone
    sh("git", "add", "-A", cwd=dest, env=env)
    sh("git", "commit", "-qm", "smoke study", cwd=dest, env=env)
    sh("dvc", "exp", "run", "-S", "grokking.report.grok_threshold=0.9", cwd=dest, env=env)
    shown = sh("dvc", "exp", "show", "--json", cwd=dest, env=env).stdout
    assert "grok_threshold" in shown


def test_same_params_and_seed_give_identical_metrics(clone):
    dest, env, _ = clone
    sh("dvc", "exp", "apply", "HEAD", cwd=dest, env=env, check=False)
    sh("git", "checkout", "--", ".", cwd=dest, env=env)
    sh("dvc", "checkout", "--force", cwd=dest, env=env)
    before = {s: (dest / f"reports/{s}/metrics.json").read_text() for s in STAGES}
    sh("dvc", "repro", "--force", cwd=dest, env=env)
    after = {s: (dest / f"reports/{s}/metrics.json").read_text() for s in STAGES}
    assert after == before


def test_bad_params_stop_before_any_work_and_keep_reports(clone, tmp_path):
    dest, env, _ = clone
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["grokking"]["runs"]["lr"] = -0.1
    params["grokking"]["runs"]["stepz"] = 5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    res = sh("gradience", "run", "grokking", "--params", str(bad), cwd=dest, env=env, check=False)
    assert res.returncode == 2
    assert "grokking.runs.lr = -0.1: Input should be greater than 0" in res.stderr
    assert "grokking.runs.stepz = 5: unknown key" in res.stderr
    assert (dest / "reports/grokking/metrics.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA to fail")
def test_a_failing_run_or_notebook_leaves_nothing_half_written(clone, tmp_path):
    dest, env, _ = clone
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["grokking"]["runs"]["device"] = "cuda"  # valid, but this machine has no GPU
    bad = tmp_path / "cuda.yaml"
    bad.write_text(yaml.safe_dump(params))
    tables = sorted(p.name for p in (dest / "reports/grokking/tables").iterdir())
    res = sh("gradience", "train", "grokking", "--params", str(bad), cwd=dest, env=env, check=False)
    assert res.returncode != 0 and "no CUDA device is available" in res.stderr
    assert sorted(p.name for p in (dest / "reports/grokking/tables").iterdir()) == tables
    assert not list((dest / "reports/grokking").glob(".tables-*"))
    report = {name: (dest / "reports/grokking" / name).read_bytes() for name in ("metrics.json", "grokking.ipynb")}
    broken = dest / "notebooks" / "grokking.py"
    source = broken.read_text()
    broken.write_text(source.replace("results = grokking.analyse(", "raise RuntimeError('boom')\nresults = grokking.analyse(", 1))
    try:
        res = sh("gradience", "report", "grokking", "--quiet", cwd=dest, env=env, check=False)
    finally:
        broken.write_text(source)
    assert res.returncode == 1 and "boom" in res.stderr
    # the report written before is kept as it was (the notebook wrote into a staging folder)
    assert {name: (dest / "reports/grokking" / name).read_bytes() for name in report} == report
    assert not (dest / ".gradience/staging/grokking").exists()
    assert (dest / "reports/grokking/tables/runs.parquet").exists()
    assert (dest / ".gradience/failed/grokking.ipynb").exists()


def test_data_that_differs_from_data_dvc_is_refused(clone):
    dest, env, _ = clone
    committed = (dest / "data.dvc").read_text()
    (dest / "data.dvc").write_text(committed.replace("md5: ", "md5: 0", 1))
    try:
        res = sh("gradience", "data", "--verify", cwd=dest, env=env, check=False)
        assert res.returncode == 1 and "hashes to" in res.stderr
    finally:
        (dest / "data.dvc").write_text(committed)
