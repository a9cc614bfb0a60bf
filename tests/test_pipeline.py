"""End to end: a copy of the working tree, the smoke profile, DVC + papermill, as a user runs it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO
from gradience.studies import STAGES
from gradience.telemetry.glossary import undefined

BIN = Path(sys.executable).parent
ENV = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
pytestmark = pytest.mark.slow


def sh(*cmd, cwd, check=True):
    res = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and res.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The tracked and untracked-not-ignored files, as a fresh clone would have them, on the smoke profile.

    ``reports/`` is left out: every stage rewrites its report (and in a working tree it may hold
    uncommitted outputs that a clone would not have).
    """
    dest = tmp_path_factory.mktemp("clone")
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO).stdout.split()
    for rel in files:
        if (Path(REPO) / rel).is_file() and not rel.startswith("reports/"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(REPO) / rel, dest / rel)
    sh("git", "init", "-q", cwd=dest)
    sh("git", "add", "-A", cwd=dest)
    sh("git", "commit", "-qm", "copy", cwd=dest)
    sh("gradience", "profile", "smoke", cwd=dest)
    assert "matches data.dvc" in sh("gradience", "data", "--verify", cwd=dest).stdout
    sh("dvc", "repro", cwd=dest)
    return dest


@pytest.mark.parametrize("stage", STAGES)
def test_repro_writes_each_stage_report(repo, stage):
    out = repo / "reports" / stage
    for name in (f"{stage}.ipynb", "metrics.json", "telemetry.parquet", "runs.parquet"):
        assert (out / name).exists(), name
    assert list((out / "figures").glob("*.png")), "no figures"
    notebook = (out / f"{stage}.ipynb").read_text()
    assert "Findings vs the seed" in notebook and '"output_type": "error"' not in notebook
    assert json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("stage", STAGES)
def test_every_telemetry_metric_is_in_the_glossary(repo, stage):
    metrics = set(pd.read_parquet(repo / "reports" / stage / "telemetry.parquet", columns=["metric"])["metric"])
    assert not undefined(metrics)


def test_repro_is_then_up_to_date(repo):
    assert "up to date" in sh("dvc", "status", cwd=repo).stdout
    again = sh("dvc", "repro", cwd=repo).stdout
    assert "Running stage" not in again


def test_editing_one_section_reruns_only_that_stage(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["grokking"]["steps"] += 10
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = json.loads(sh("dvc", "status", "--json", cwd=repo).stdout)
    assert set(changed) == {"grokking"}
    sh("gradience", "profile", "smoke", cwd=repo)
    assert "up to date" in sh("dvc", "status", cwd=repo).stdout


def test_same_params_and_seed_give_identical_metrics(repo):
    before = {s: (repo / f"reports/{s}/metrics.json").read_text() for s in STAGES}
    sh("dvc", "repro", "--force", cwd=repo)
    after = {s: (repo / f"reports/{s}/metrics.json").read_text() for s in STAGES}
    assert after == before


def test_bad_params_stop_before_any_work_and_keep_reports(repo, tmp_path):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["grokking"]["lr"] = -0.1
    params["grokking"]["stepz"] = 5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    res = sh("gradience", "run", "grokking", "--params", str(bad), cwd=repo, check=False)
    assert res.returncode == 2
    assert "grokking.lr = -0.1: Input should be greater than 0" in res.stderr
    assert "grokking.stepz = 5: unknown key" in res.stderr
    assert (repo / "reports/grokking/metrics.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA to fail")
def test_a_failing_notebook_leaves_nothing_in_reports(repo, tmp_path):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["grokking"]["device"] = "cuda"  # valid, but this machine has no GPU: fails inside the notebook
    bad = tmp_path / "cuda.yaml"
    bad.write_text(yaml.safe_dump(params))
    res = sh("gradience", "run", "grokking", "--params", str(bad), "--quiet", cwd=repo, check=False)
    assert res.returncode == 1, res.stderr
    assert "no CUDA device is available" in res.stderr
    assert not (repo / "reports/grokking").exists()
    assert (repo / ".gradience/failed/grokking.ipynb").exists()


def test_data_that_differs_from_data_dvc_is_refused(repo):
    committed = (repo / "data.dvc").read_text()
    (repo / "data.dvc").write_text(committed.replace("md5: ", "md5: 0", 1))
    try:
        res = sh("gradience", "data", "--verify", cwd=repo, check=False)
        assert res.returncode == 1 and "hashes to" in res.stderr
    finally:
        (repo / "data.dvc").write_text(committed)
