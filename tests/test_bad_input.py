"""Bad input other than params: corrupted ``data/`` files, truncated training tables, a full disk
while a report is written, and runs that diverge.

Each corrupts a copy under ``tmp_path`` (never the real ``data/`` or ``reports/``) and checks for one
clear message naming the file and what to run, with earlier outputs left intact. A diverging run
(a learning rate of 1e6) must be a recorded outcome in every study family, and its study's analysis
must still write a report.
"""

import errno
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from gradience import runner
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS
from gradience.studies import grid
from gradience.studies.grid import _timed, load_run_params, runs_module
from gradience.studies.notebook import (
    TablesError,
    check_tables,
    load_params,
    load_tables,
    study_part,
    write_report,
)
from gradience.studies.protocol import Tables
from gradience.tasks import DataFileError
from gradience.tasks.digits import digits_split
from gradience.tasks.modular import modular_split
from gradience.tasks.reviews import read_jsonl
from gradience.tasks.text import load_corpus

SMOKE = profile_params("smoke")
REBUILD = "`gradience data --verify` (or `make data`)"


@pytest.fixture
def data_copy(data_dir, tmp_path):
    """A private copy of the session's ``data/`` to corrupt."""
    return shutil.copytree(data_dir, tmp_path / "data")


def _truncate(path, keep=0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _garbage(path):
    path.write_bytes(bytes(range(256)) * 8)


# ------------------------------------------------------------------ data/ files


def _one_wrong_answer(path):
    lines = path.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",7"
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage", [_truncate, _garbage, _one_wrong_answer, lambda p: p.write_text("a,b,add,sub,mul,div\n")])
def test_a_damaged_modular_table_is_named_with_how_to_rebuild(data_copy, damage):
    path = data_copy / "modular" / "mod23.csv"
    damage(path)
    with pytest.raises(DataFileError, match="corrupted data") as err:
        modular_split(data_copy, 23, "add", 0.5, 0)
    assert str(path) in str(err.value) and REBUILD in str(err.value)


def test_a_missing_data_file_is_named(data_copy):
    (data_copy / "modular" / "mod59.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing data: .*mod59.csv .*gradience data --verify"):
        modular_split(data_copy, 59, "add", 0.5, 0)


@pytest.mark.parametrize("name", ["images.npy", "labels.npy"])
@pytest.mark.parametrize("damage", [_truncate, _garbage])
def test_damaged_digits_arrays_are_named(data_copy, name, damage):
    damage(data_copy / "digits" / name)
    with pytest.raises(DataFileError, match=rf"corrupted data: .*digits/{name} .*gradience data --verify"):
        digits_split(data_copy, 0.5, 0)


def test_digits_of_mismatched_lengths_are_named(data_copy):
    labels = data_copy / "digits" / "labels.npy"
    np.save(labels, np.load(labels)[:100])
    with pytest.raises(DataFileError, match=r"images \(1797, 8, 8\) and labels \(100,\)"):
        digits_split(data_copy, 0.5, 0)


def test_a_corpus_of_garbage_bytes_is_named(data_copy):
    _garbage(data_copy / "text" / "shakespeare.txt")
    with pytest.raises(DataFileError, match=r"corrupted data: .*shakespeare.txt \(not UTF-8 text"):
        load_corpus(data_copy, "shakespeare")


def test_a_truncated_jsonl_file_names_the_line(data_copy):
    path = data_copy / "reviews" / "test.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:10]) + "\n" + lines[10][: len(lines[10]) // 2] + "\n")
    with pytest.raises(DataFileError, match=r"corrupted data: .*test.jsonl:11 \(not a JSON record"):
        read_jsonl(path)
    assert len(read_jsonl(data_copy / "reviews" / "train.jsonl")) == 4000  # the intact file still reads


def test_the_training_stage_exits_2_on_corrupted_data_and_keeps_its_tables(data_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # grid.main reads data/ and writes reports/ relative to here
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(SMOKE))
    old = tmp_path / "reports" / "grokking" / "tables"
    old.mkdir(parents=True)
    (old / "runs.parquet").write_bytes(b"earlier tables")
    _truncate(data_copy / "modular" / "mod23.csv", 0.3)
    assert grid.main(["grokking", "--params", "params.yaml", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradience: corrupted data: data/modular/mod23.csv") and REBUILD in err
    assert "Traceback" not in err
    assert sorted(p.name for p in old.iterdir()) == ["runs.parquet"]
    assert (old / "runs.parquet").read_bytes() == b"earlier tables"


# ------------------------------------------------------------------ the training tables, read by the report side


def _tables(folder, stage="grokking"):
    folder.mkdir(parents=True)
    runs = load_run_params(stage, SMOKE[stage]).runs
    (folder / "params.json").write_text(json.dumps(runs.model_dump(mode="json")))
    for name in (*runs_module(stage).TABLES, "runs"):
        pd.DataFrame({"run": ["add_wd1/s0"] * 200, "value": np.arange(200.0)}).to_parquet(folder / f"{name}.parquet")
    return folder


@pytest.mark.parametrize("keep", [0.5, 0.98, 0.0])
def test_a_truncated_table_names_the_file_and_the_stage_to_rerun(tmp_path, keep):
    folder = _tables(tmp_path / "tables")
    assert len(load_tables("grokking", folder).runs) == 200
    _truncate(folder / "telemetry.parquet", keep)
    for read in (check_tables, load_tables):
        with pytest.raises(TablesError, match=r"corrupted table .*telemetry.parquet .*`dvc repro grokking_runs`"):
            read("grokking", folder)


@pytest.mark.parametrize(("content", "problem"), [('{"profile": "smo', "corrupted or stale"),
                                                   ('{"seeds": []}', "corrupted or stale")])
def test_a_broken_params_json_is_named(tmp_path, content, problem):
    folder = _tables(tmp_path / "tables")
    (folder / "params.json").write_text(content)
    with pytest.raises(TablesError, match=rf"{problem} .*params.json .*`dvc repro grokking_runs`"):
        load_tables("grokking", folder)


def test_a_missing_table_is_named(tmp_path):
    folder = _tables(tmp_path / "tables")
    (folder / "spectra.parquet").unlink()
    with pytest.raises(TablesError, match=r"missing table .*spectra.parquet: run `dvc repro grokking_runs`"):
        check_tables("grokking", folder)


def _report_folder(tmp_path):
    """``reports/grokking/`` with tables and an earlier report (metrics.json, a figure)."""
    out = tmp_path / "reports" / "grokking"
    _tables(out / "tables")
    (out / "figures").mkdir()
    (out / "figures" / "old.png").write_bytes(b"old figure")
    (out / "metrics.json").write_text('{"old": 1}')
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(SMOKE))
    (tmp_path / "notebooks").mkdir()
    shutil.copy(f"{REPO}/notebooks/grokking.py", tmp_path / "notebooks")
    return out


def _earlier_report_intact(out):
    assert (out / "metrics.json").read_text() == '{"old": 1}'
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["old.png"]
    assert not (out / "grokking.ipynb").exists() and not (out / "plots").exists()


def test_the_report_stage_stops_on_a_truncated_table_before_touching_the_report(tmp_path, monkeypatch, capsys):
    out = _report_folder(tmp_path)
    _truncate(out / "tables" / "runs.parquet")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner.papermill, "execute_notebook", lambda *a, **k: pytest.fail("executed"))
    assert runner.main(["grokking", "--params", "params.yaml", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "corrupted table reports/grokking/tables/runs.parquet" in err and "`dvc repro grokking_runs`" in err
    assert "Traceback" not in err
    _earlier_report_intact(out)



def test_a_full_disk_while_the_report_is_written_keeps_the_earlier_report(tmp_path, monkeypatch, capsys):
    """papermill (standing in for the notebook) writes part of the new report, then ENOSPC."""
    out = _report_folder(tmp_path)
    monkeypatch.chdir(tmp_path)

    def fill_the_disk(source, executed, **kwargs):
        staged = Path(kwargs["parameters"]["out_dir"])  # the notebook writes into the staging folder
        (staged / "figures" / "new.png").write_bytes(b"half a figure")
        (staged / "metrics.json").write_text('{"new": ')
        (staged / "plots").mkdir()
        raise OSError(errno.ENOSPC, "No space left on device", str(staged / "metrics.json"))

    monkeypatch.setattr(runner.papermill, "execute_notebook", fill_the_disk)
    with pytest.raises(runner.StageFailed, match=r"could not write its report .*No space left on device") as err:
        runner.run_report("grokking", params_path="params.yaml", progress=False)
    assert "the earlier report in reports/grokking is kept" in str(err.value)
    _earlier_report_intact(out)
    assert (out / "tables" / "runs.parquet").exists()
    assert not (tmp_path / runner.STAGING_DIR / "grokking").exists()


def test_a_successful_report_replaces_the_earlier_one(tmp_path, monkeypatch):
    out = _report_folder(tmp_path)
    monkeypatch.chdir(tmp_path)

    def write(source, executed, **kwargs):
        staged = Path(kwargs["parameters"]["out_dir"])
        (staged / "figures" / "new.png").write_bytes(b"new figure")
        (staged / "metrics.json").write_text('{"new": 2}')
        nb = json.loads(open(source).read())
        nb["metadata"]["papermill"] = {}
        open(executed, "w").write(json.dumps(nb))

    monkeypatch.setattr(runner.papermill, "execute_notebook", write)
    runner.run_report("grokking", params_path="params.yaml", progress=False)
    assert (out / "metrics.json").read_text() == '{"new": 2}'
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["new.png"]
    assert not (tmp_path / runner.STAGING_DIR / "grokking").exists()


# ------------------------------------------------------------------ diverging runs


def _huge_lr(node, value):
    """Every ``lr`` (and LoRA's ``lr_scale``) of a runs block set to ``value``, learning rates absolute."""
    if isinstance(node, dict):
        for k in list(node):
            if k in ("lr", "lr_scale") and isinstance(node[k], (int, float)):
                node[k] = value
            elif k == "lr_unit":
                node[k] = "absolute"
            else:
                _huge_lr(node[k], value)
    elif isinstance(node, list):
        for x in node:
            _huge_lr(x, value)


def _diverge(stage, data_dir, lr=1e6, select=None, **runs):
    """Run the smoke grid of ``stage`` at learning rate ``lr`` (``select``: which jobs) as the training
    stage does; returns the validated params and the tables."""
    section = profile_params("smoke")[stage]
    section["runs"] |= runs
    _huge_lr(section["runs"], lr)
    p = load_params(stage, section)
    mod = runs_module(stage)
    jobs = [j for j in mod.jobs(p.runs, str(data_dir)) if select is None or select(j)]
    outs = [_timed((mod.run_one, j)) for j in jobs]
    frames = {}
    for name in mod.TABLES:
        parts = [o.tables[name] for o in outs if len(o.tables[name])]
        frames[name] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()  # as grid.train writes
    return p, Tables(p.runs, pd.DataFrame([o.record for o in outs]), frames)


def _report(stage, p, tables, tmp_path):
    analysis = study_part(stage, "analysis").analyse(tables, p.report)
    (tmp_path / "report").mkdir()
    table = write_report(stage, analysis, p.report, tmp_path / "report")
    assert len(table) > 0 and set(table.verdict) <= set(VERDICTS)
    assert "findings" in json.loads((tmp_path / "report" / "metrics.json").read_text())
    return analysis


def test_diverging_runs_of_the_training_loop_are_recorded_and_reported(data_dir, tmp_path):
    """training.train (grokking; rank_survey, grokking_transition and gradient_rank use the same loop)."""
    p, tables = _diverge("grokking", data_dir)
    runs = tables.runs
    assert (runs.outcome == "diverged").all() and len(runs) == 4
    assert runs.diverged_at.between(0, p.runs.steps - 1).all()
    tel = tables.telemetry
    flagged = tel[tel.metric == "diverged"]
    assert sorted(flagged.run) == sorted(runs.run) and (flagged.value == 1.0).all()
    start = tel[(tel.metric == "train_loss") & (tel.step == 0)]
    assert len(start) == 4 and np.isfinite(start.value).all()  # later evaluations may be inf/NaN rows: kept
    _report("grokking", p, tables, tmp_path)


def test_every_run_diverging_in_the_rank_survey_still_reports(data_dir, tmp_path):
    p, tables = _diverge("rank_survey", data_dir)
    assert (tables.runs.outcome == "diverged").all()
    _report("rank_survey", p, tables, tmp_path)


def test_diverging_lm_regimes_are_recorded(data_dir, tmp_path):
    """The lm_regimes family (hessian_coevolution): a non-finite loss or a blow-up, with its step."""
    from gradience.studies.lm_regimes.runs import DIVERGED_OUTCOMES

    p, tables = _diverge("hessian_coevolution", data_dir)
    assert tables.runs.outcome.isin(DIVERGED_OUTCOMES).all()
    assert (tables.runs.diverged_at >= 0).all()
    _report("hessian_coevolution", p, tables, tmp_path)


def test_fisher_probes_on_a_diverging_run_record_a_failure_not_a_crash(data_dir, tmp_path):
    """Before the fix the Fisher eigensystem (no positive eigenvalue) and the λ_max Lanczos (non-finite
    HVPs) raised inside the run."""
    p, tables = _diverge("fisher_geometry", data_dir)
    assert tables.runs.outcome.isin(["diverged", "blew_up"]).any()
    failed = tables.telemetry[tables.telemetry.metric.str.endswith("_failed")]
    assert len(failed) > 0 and (failed.value == 1.0).all()
    _report("fisher_geometry", p, tables, tmp_path)


def test_a_diverging_spectral_edge_run_is_recorded_with_empty_post_run_tables(data_dir, tmp_path):
    """Before the fix the edge tracker's eigh raised on NaN weight updates."""
    p, tables = _diverge("spectral_edge", data_dir)
    runs = tables.runs
    assert (runs.outcome == "diverged").all() and (runs.diverged_at >= 0).all()
    assert tables.perturbation.empty and tables.ablation.empty
    assert np.isfinite(runs.final_train_acc).all()
    analysis = _report("spectral_edge", p, tables, tmp_path)
    assert analysis.per_run.ablation_loss_ratio.isna().all()


def test_a_diverging_lora_run_stops_before_the_non_finite_update_and_is_scored(data_dir):
    """lora.finetune.train (the LoRA family; rosetta's reviews arms use the same loop)."""
    p, tables = _diverge("lora_sst2", data_dir, lr=1e30, select=lambda j: j.spec is not None)
    rec = tables.runs.iloc[0]
    assert rec.outcome == "diverged" and 0 <= rec.diverged_at < p.runs.steps
    assert rec.steps == rec.diverged_at and 0.0 <= rec.accuracy <= 1.0
    loss = tables.telemetry.query("metric == 'batch_loss'").sort_values("step").value
    assert not math.isfinite(loss.iloc[-1]) and np.isfinite(loss.iloc[:-1]).all()


def test_rosetta_records_diverged_arms_and_reports(data_dir, tmp_path):
    p, tables = _diverge("rosetta", data_dir, tasks=["modular"])
    assert (tables.runs.outcome == "diverged").any()
    _report("rosetta", p, tables, tmp_path)


def test_a_notebook_that_fails_in_a_cell_keeps_the_earlier_report(tmp_path, monkeypatch):
    """A real papermill run of a notebook that writes part of a report, then raises (cell 3: papermill
    injects the parameters as cell 2)."""
    out = _report_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "failing.py"
    script.write_text('# %% tags=["parameters"]\nout_dir = "."\n\n'
                      '# %%\nfrom pathlib import Path\nPath(out_dir, "metrics.json").write_text("{}")\n'
                      'Path(out_dir, "figures", "new.png").write_bytes(b"new")\nraise RuntimeError("boom")\n')
    with pytest.raises(runner.StageFailed, match=r"failed in cell 3: RuntimeError: boom") as err:
        runner.execute("grokking", script, runner.Path("reports/grokking"), {"out_dir": "reports/grokking"},
                       runner.report_outputs("grokking"), progress=False)
    assert ".gradience/failed/grokking.ipynb" in str(err.value)
    assert (tmp_path / ".gradience" / "failed" / "grokking.ipynb").exists()
    _earlier_report_intact(out)


def test_a_diverging_rosetta_lora_arm_is_recorded(data_dir):
    """Rosetta's reviews arms train with lora.finetune.train: the outcome was always "completed"."""
    _, tables = _diverge("rosetta", data_dir, lr=1e30, tasks=["reviews"],
                         select=lambda j: j.condition == "reviews.conventional")
    assert list(tables.runs.outcome) == ["diverged"]
    loss = tables.history.query("metric == 'batch_loss'").sort_values("step").value
    assert not math.isfinite(loss.iloc[-1]) and np.isfinite(loss.iloc[:-1]).all()
