"""An interrupted training stage resumes from its finished runs and writes the same tables."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gradience.profiles import profile_params
from gradience.runstore import RunStore, code_fingerprint, run_fingerprint
from gradience.studies import grid

TIMING = ["wall_seconds", "cpu_seconds"]  # the only run-table fields that differ between two runs


def _section(steps: int = 600) -> dict:
    section = profile_params("smoke")["grokking"]
    section["runs"]["steps"] = steps
    section["runs"]["conditions"][0]["seeds"] = [0, 1, 2, 3, 4]  # six runs of about a second each
    return section


def _stage_dir(tmp_path: Path, data_dir: Path, section: dict) -> Path:
    (tmp_path / "data").symlink_to(data_dir)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"grokking": section}))
    return tmp_path


def _interruptible() -> None:
    """SIGINT as in a terminal: a test run started in the background (CI, nohup) inherits it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _command(cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gradience.studies.grid", "grokking"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_interruptible)


def assert_same_tables(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.parquet"))
    assert names == sorted(p.name for p in b.glob("*.parquet")) and "runs.parquet" in names
    for name in names:
        left, right = pd.read_parquet(a / name), pd.read_parquet(b / name)
        if name == "runs.parquet":
            left, right = left.drop(columns=TIMING), right.drop(columns=TIMING)
        pd.testing.assert_frame_equal(left, right, check_exact=True)
    assert (a / "params.json").read_text() == (b / "params.json").read_text()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_a_killed_training_stage_resumes_from_its_finished_runs_with_the_same_tables(tmp_path, data_dir, sig):
    section = _section()
    cwd = _stage_dir(tmp_path / "stage", data_dir, section) if (tmp_path / "stage").mkdir() is None else None
    store = cwd / ".gradience" / "runs" / "grokking"
    proc = _command(cwd)
    deadline = time.monotonic() + 300
    while not list(store.glob("*/*.pkl")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no run finished within 300 s"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    proc.communicate(timeout=60)
    finished = len(list(store.glob("*/*.pkl")))
    assert proc.returncode != 0 and 1 <= finished < 6, (proc.returncode, finished)
    assert not (cwd / "reports" / "grokking" / "tables").exists()  # nothing half-written
    assert not list(store.glob("*/.run-*"))  # no partial entry either

    rerun = subprocess.run([sys.executable, "-m", "gradience.studies.grid", "grokking"], cwd=cwd,
                           capture_output=True, text=True, check=True)
    assert f"grokking: {finished} of 6 runs resumed" in rerun.stderr

    p = grid.load_run_params("grokking", section)
    reference = grid.train("grokking", p, tmp_path / "uninterrupted", data_dir, progress=False)
    assert_same_tables(cwd / "reports" / "grokking" / "tables", reference)


def _job_and_store(tmp_path, data_dir, section):
    p = grid.load_run_params("grokking", section)
    mod = grid.runs_module("grokking")
    return p, mod.jobs(p.runs, str(data_dir)), grid.run_store("grokking", mod, data_dir, tmp_path / "store")


def test_an_entry_of_other_params_or_other_data_is_never_reused(tmp_path, data_dir):
    p, jobs, store = _job_and_store(tmp_path, data_dir, _section(steps=20))
    other_steps = grid.load_run_params("grokking", _section(steps=21)).runs
    other_params_job = jobs[0].__class__(other_steps, jobs[0].condition, jobs[0].seed, jobs[0].data_dir, jobs[0].spec)
    assert run_fingerprint(jobs[0]) != run_fingerprint(other_params_job)
    assert len({run_fingerprint(j) for j in jobs}) == len(jobs)  # every run its own entry

    copy = tmp_path / "data_copy"
    copy.mkdir()
    for d in ("modular",):
        (copy / d).mkdir()
        for f in (data_dir / d).iterdir():
            (copy / d / f.name).write_bytes(f.read_bytes())
    same = code_fingerprint(["gradience.studies.grid", "gradience.studies.grokking.runs"], [copy / "modular"])
    first = next((copy / "modular").iterdir())
    first.write_bytes(first.read_bytes() + b"\n")
    changed = code_fingerprint(["gradience.studies.grid", "gradience.studies.grokking.runs"], [copy / "modular"])
    assert same != changed


def test_a_corrupt_entry_is_retrained_and_old_code_is_pruned(tmp_path, data_dir):
    section = _section(steps=20)
    section["runs"]["conditions"] = section["runs"]["conditions"][:1]
    section["runs"]["conditions"][0]["seeds"] = [0, 1]
    p, jobs, store = _job_and_store(tmp_path, data_dir, section)
    stale = RunStore(tmp_path / "store", "grokking", "0" * 16)
    stale.folder.mkdir(parents=True)
    first = grid.train("grokking", p, tmp_path / "a", data_dir, progress=False, store=tmp_path / "store")
    assert not stale.folder.exists() and len(list(store.folder.glob("*.pkl"))) == 2
    entry = next(store.folder.glob("*.pkl"))
    entry.write_bytes(b"not a pickle")
    assert sum(store.get(j) is None for j in jobs) == 1 and not entry.exists()
    again = grid.train("grokking", p, tmp_path / "b", data_dir, progress=False, store=tmp_path / "store")
    assert_same_tables(first, again)
    with (store.folder / entry.name).open("rb") as handle:
        assert pickle.load(handle).record["run"] in {j.run_id for j in jobs}


def test_a_killed_report_stage_leaves_the_previous_report(tmp_path):
    """SIGKILL while the notebook is half-way through writing its report: ``reports/`` is untouched."""
    out = tmp_path / "reports" / "demo"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "old.png").write_bytes(b"old figure")
    (out / "metrics.json").write_text('{"old": 1}')
    (out / "demo.ipynb").write_text("{}")
    script = tmp_path / "demo.py"
    script.write_text('# %% tags=["parameters"]\nout_dir = "."\n\n'
                      "# %%\nimport time\nfrom pathlib import Path\n"
                      'Path(out_dir, "metrics.json").write_text("{\\"new\\": ")\n'
                      'Path(out_dir, "figures", "new.png").write_bytes(b"half")\n'
                      'Path(out_dir, "started").write_text("")\ntime.sleep(600)\n')
    code = ("from pathlib import Path; from gradience import runner; "
            "runner.execute('demo', Path('demo.py'), Path('reports/demo'), {'out_dir': 'reports/demo'}, "
            "runner.report_outputs('demo'), progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = tmp_path / ".gradience" / "staging" / "demo" / "started"
    deadline = time.monotonic() + 300
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert (out / "metrics.json").read_text() == '{"old": 1}' and (out / "demo.ipynb").read_text() == "{}"
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["old.png"]
    assert sorted(p.name for p in out.iterdir()) == ["demo.ipynb", "figures", "metrics.json"]
