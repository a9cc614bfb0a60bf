"""The command line: study names checked at once, --version, --quiet, the list of studies."""

import json

import pytest

from gradience import __version__, cli
from gradience.studies.registry import QUESTIONS, STAGES


def test_a_mistyped_study_fails_at_once_naming_the_studies(capsys):
    for argv in (["train", "grokkin"], ["report", "grokkin"], ["run", "grokkin"], ["verify", "grokkin"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "grokkin" in err and all(stage in err for stage in STAGES), argv


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"gradience {__version__}"


def test_stages_prints_each_question_and_the_reports_verdict_counts(tmp_path):
    (tmp_path / "grokking").mkdir()
    (tmp_path / "grokking" / "metrics.json").write_text(json.dumps({"findings": {"reproduced": 2, "inconclusive": 1}}))
    lines = cli.stage_lines(tmp_path)
    assert len(lines) == len(STAGES) == len(QUESTIONS)
    assert lines[0].startswith("grokking") and QUESTIONS["grokking"] in lines[0]
    assert "[2 reproduced, 0 not reproduced, 0 not comparable, 1 inconclusive]" in lines[0]
    assert all("[no report yet]" in line for line in lines[1:])


def test_train_quiet_prints_no_progress_bar(tmp_path, data_dir, monkeypatch, capfd):
    import yaml

    from gradience.profiles import profile_params

    params = profile_params("smoke")
    params["grokking"]["runs"] |= {"steps": 20, "seeds": [0]}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(data_dir)
    assert cli.main(["train", "grokking", "--params", str(path), "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert out.strip() == "reports/grokking/tables" and "grokking runs" not in err and "it/s" not in err
    assert cli.main(["train", "grokking", "--params", str(path)]) == 0
    assert "grokking: 4 of 4 runs resumed" in capfd.readouterr().err  # progress: here, the finished runs it kept
