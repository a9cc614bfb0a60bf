import copy
import json
import shutil
import subprocess

import pytest

from conftest import REPO
from gradience import verify


@pytest.fixture
def committed(tmp_path):
    """A copy of a real committed metrics file (grokking: kappa medians, accuracies, findings)."""
    path = tmp_path / "metrics.json"
    shutil.copy(f"{REPO}/reports/grokking/metrics.json", path)
    metrics = json.loads(path.read_text())
    # fixed verdict counts, so the tests do not depend on what the committed report found
    metrics["findings"] = {"reproduced": 3, "not reproduced": 2, "not comparable": 1, "inconclusive": 1}
    return metrics


def statuses(table):
    return dict(zip(table["key"], table["status"], strict=True))


def write_stage(root, stage, metrics):
    folder = root / "reports" / stage
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, committed):
    """A git repository whose HEAD has ``reports/x/metrics.json``; returns (root, committed metrics)."""
    root = tmp_path / "repo"
    write_stage(root, "x", committed)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "metrics")
    return root


def test_identical_files_are_all_equal(committed, repo, capsys):
    table = verify.compare(committed, copy.deepcopy(committed))
    assert set(table["status"]) == {"equal"}
    assert "conditions.mul_wd0.1.kappa.model.final_median" in set(table["key"])  # nested keys joined with "."
    assert verify.main(["x"], "HEAD", repo) == 0
    n_keys = len(verify.flatten(committed))
    assert f"{n_keys} equal" in capsys.readouterr().out


@pytest.mark.parametrize(("factor", "status"), [(1.1, "within tolerance"), (4.0, "outside tolerance")])
def test_kappa_change_is_judged_by_its_tolerance(committed, repo, factor, status):
    key = "conditions.add_wd1.kappa.model.final_median"
    rerun = copy.deepcopy(committed)
    rerun["conditions"]["add_wd1"]["kappa"]["model"]["final_median"] *= factor  # +10 % / +300 %
    row = verify.compare(committed, rerun).set_index("key").loc[key]
    assert row["status"] == status
    assert row["tolerance"] == verify.TOLERANCES["*kappa*"] == 0.5
    assert row["rel_diff"] == pytest.approx(factor - 1)
    write_stage(repo, "x", rerun)
    assert verify.main(["x"], "HEAD", repo) == (1 if status == "outside tolerance" else 0)


def test_a_moved_finding_is_a_flipped_verdict(committed, repo):
    rerun = copy.deepcopy(committed)
    rerun["findings"]["reproduced"] -= 1
    rerun["findings"]["not reproduced"] += 1
    s = statuses(verify.compare(committed, rerun))
    assert s["findings.reproduced"] == s["findings.not reproduced"] == "verdict flipped"
    assert s["findings.inconclusive"] == "equal"
    write_stage(repo, "x", rerun)
    assert verify.main(["x"], "HEAD", repo) == 1


def test_an_absent_findings_count_is_zero(committed):
    rerun = copy.deepcopy(committed)
    rerun["findings"]["not comparable"] -= 1
    rerun["findings"]["supported"] = 1  # a verdict no committed finding had
    s = statuses(verify.compare(committed, rerun))
    assert s["findings.not comparable"] == s["findings.supported"] == "verdict flipped"


def test_missing_keys_and_nulls(committed):
    committed["conditions"]["add_wd0"]["grok_step_mean"] = None  # runs that never grokked
    committed["conditions"]["add_wd0.01"]["grok_step_mean"] = None
    committed["conditions"]["add_wd1"]["op"] = "add"
    rerun = copy.deepcopy(committed)
    del rerun["conditions"]["add_wd1"]["kappa"]["model"]["peak_median"]
    rerun["conditions"]["add_wd1"]["extra"] = 1.0
    rerun["conditions"]["add_wd0.01"]["grok_step_mean"] = 1500.0  # null → a number: it grokked now
    rerun["conditions"]["add_wd1"]["kappa"]["model"]["final_median"] = "inf"  # rank-deficient now
    rerun["conditions"]["add_wd1"]["op"] = "mul"  # a changed string
    s = statuses(verify.compare(committed, rerun))
    assert s["conditions.add_wd1.kappa.model.peak_median"] == s["conditions.add_wd1.extra"] == "missing"
    assert s["conditions.add_wd0.grok_step_mean"] == "equal"  # null == null
    assert s["conditions.add_wd0.01.grok_step_mean"] == "censoring changed"
    assert s["conditions.add_wd1.kappa.model.final_median"] == "censoring changed"
    assert s["conditions.add_wd1.op"] == "outside tolerance"
    assert "censoring changed" not in verify.FAILING


def test_counts_pass_within_one_and_fail_beyond():
    table = verify.compare({"n_grokked": 10, "x.n_runs": 24, "n_big": 3}, {"n_grokked": 11, "x.n_runs": 24, "n_big": 5},
                           {"*": 0.0})
    assert list(table["status"]) == ["within tolerance", "equal", "outside tolerance"]
    assert verify.compare({"a": 1.0}, {"a": 2.0}, {"*": 0.0})["status"].item() == "outside tolerance"  # floats: no slack


def test_findings_are_compared_claim_by_claim_in_order():
    committed = [{"id": "a", "verdict": "reproduced"}, {"id": "b", "verdict": "inconclusive"},
                 {"id": "b", "verdict": "reproduced"}, {"id": "c", "verdict": "not reproduced"}]
    rerun = [{"id": "a", "verdict": "reproduced"}, {"id": "b", "verdict": "inconclusive"},
             {"id": "b", "verdict": "not comparable"}, {"id": "d", "verdict": "reproduced"}]
    s = statuses(verify.compare_findings(committed, rerun))
    assert s == {"findings.json:a#0": "equal", "findings.json:b#0": "equal", "findings.json:b#1": "verdict flipped",
                 "findings.json:c#0": "missing", "findings.json:d#0": "missing"}


def test_a_flipped_claim_in_findings_json_fails_the_stage(committed, repo, capsys):
    rows = [{"id": "grokking.x", "verdict": "reproduced", "measured": "1", "why": ""}]
    (repo / "reports" / "x" / "findings.json").write_text(json.dumps(rows))
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "findings")
    assert verify.main(["x"], "HEAD", repo) == 0
    rows[0]["verdict"] = "inconclusive"
    (repo / "reports" / "x" / "findings.json").write_text(json.dumps(rows))
    assert verify.main(["x"], "HEAD", repo) == 1
    assert "findings.json:grokking.x#0" in capsys.readouterr().out


def test_tolerances_first_matching_pattern_wins():
    assert verify.tolerance("findings.reproduced") == 0.0
    assert verify.tolerance("shapes.cnn.healthy.n_flat") == 0.0
    assert verify.tolerance("signature.mlp.no_norm.kappa.excess_end_median") == 0.5
    assert verify.tolerance("runs.cnn.healthy.final_test_acc_mean") == 0.05
    assert verify.tolerance("hutchinson.relative_stderr_median") == 0.25
    assert verify.tolerance("loss", {"acc": 0.1}) == verify.DEFAULT_TOLERANCE
    table = verify.compare({"a": 0.0, "b": "x"}, {"a": 1e-12, "b": "y"}, {"*": 0.5})
    assert list(table["status"]) == ["within tolerance", "outside tolerance"]  # 1e-9 floor for zeros


def test_verify_stage_reads_the_committed_file_from_git(committed, repo):
    rerun = copy.deepcopy(committed)
    rerun["conditions"]["mul_wd0.1"]["final_test_acc_mean"] = 0.5
    write_stage(repo, "x", rerun)
    s = statuses(verify.verify_stage("x", "HEAD", repo))
    assert s["conditions.mul_wd0.1.final_test_acc_mean"] == "outside tolerance"
    assert sum(v != "equal" for v in s.values()) == 1
    with pytest.raises(FileNotFoundError, match=r"no committed reports/y/metrics.json at 'HEAD'"):
        verify.verify_stage("y", "HEAD", repo)


def test_a_recorded_move_widens_that_keys_tolerance_only(committed):
    key = "conditions.add_wd1.kappa.model.final_median"
    rerun = copy.deepcopy(committed)
    rerun["conditions"]["add_wd1"]["kappa"]["model"]["final_median"] *= 4.0  # +300 %
    assert statuses(verify.compare(committed, rerun))[key] == "outside tolerance"
    row = verify.compare(committed, rerun, moved={key: 1.6}).set_index("key").loc[key]
    assert row["status"] == "within tolerance" and row["tolerance"] == pytest.approx(3.2)
    assert statuses(verify.compare(committed, rerun, moved={key: 1.0}))[key] == "outside tolerance"


def test_record_writes_moves_and_flips_and_reports_mark_the_flipped_rows(committed, repo):
    from gradience.reporting import findings_table, mark_machine_flips, read_reruns

    rows = [{"id": "x.a", "verdict": "reproduced", "measured": "1", "why": "w"},
            {"id": "x.a", "verdict": "inconclusive", "measured": "2", "why": "w"}]
    (repo / "reports" / "x" / "findings.json").write_text(json.dumps(rows))
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "findings")
    rerun = copy.deepcopy(committed)
    rerun["conditions"]["add_wd1"]["kappa"]["model"]["final_median"] *= 1.5
    write_stage(repo, "x", rerun)
    rows[1]["verdict"] = "not reproduced"
    (repo / "reports" / "x" / "findings.json").write_text(json.dumps(rows))
    path = verify.record(["x"], "HEAD", "machine A vs B", repo, repo / "reruns.json")
    reruns = read_reruns(path)
    assert reruns["stages"]["x"]["moved"] == {"conditions.add_wd1.kappa.model.final_median": 0.5}
    assert reruns["stages"]["x"]["flipped"] == {"x.a#1": {"elsewhere": "inconclusive", "here": "not reproduced"}}
    table = findings_table([{**r, "claim": "", "seed": ""} for r in rows])
    marked = mark_machine_flips("x", table, reruns)
    assert marked["why"].iloc[0] == "w"
    assert marked["why"].iloc[1] == "w; on a second 2-core machine the same code gave “inconclusive”: this verdict sits on a threshold"
    assert verify.main(["x"], "HEAD", repo, reruns=reruns) == 1  # a flip still fails verification
