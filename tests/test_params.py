import pytest
import yaml

from gradience.cli import check_sections
from gradience.config import ParamsError
from gradience.profiles import PROFILES, deep_merge, profile_params, render
from gradience.studies.grid import load_run_params
from gradience.studies.notebook import load_params
from gradience.studies.registry import STAGES


def _grokking(**changes):
    section = profile_params("smoke")["grokking"]
    return section | {"runs": section["runs"] | changes}


def test_every_profile_validates_for_every_stage():
    for name in PROFILES:
        params = profile_params(name)
        assert set(params) == set(STAGES)
        for stage in STAGES:
            assert load_params(stage, params[stage]).runs.profile == name


def test_committed_params_yaml_is_the_default_profile():
    from conftest import REPO

    with open(f"{REPO}/params.yaml") as f:
        assert yaml.safe_load(f) == profile_params("default")
    assert yaml.safe_load(render("default")) == profile_params("default")


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(ParamsError) as err:
        load_params("grokking", _grokking(learning_rate=0.1))
    msg = str(err.value)
    assert "grokking.runs.learning_rate = 0.1: unknown key" in msg and "lr" in msg


def test_nested_unknown_key_lists_the_nested_fields():
    bad = _grokking(conditions=[{"name": "x", "op": "add", "weight_decay": 1.0, "wd": 2}])
    with pytest.raises(ParamsError, match=r"grokking.runs.conditions.0.wd = 2: unknown key \(allowed: name, op, weight_decay, role, steps, shuffle_labels, seeds, cadence_every, cadence_log_points\)"):
        load_params("grokking", bad)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"steps": "many"}, r"grokking.runs.steps = 'many': Input should be a valid integer"),
        ({"lr": -1.0}, r"grokking.runs.lr = -1.0: Input should be greater than 0"),
        ({"train_fraction": 1.5}, r"grokking.runs.train_fraction = 1.5: Input should be less than 1"),
        ({"modulus": 91}, r"grokking.runs.modulus = 91: Value error, must be one of the moduli"),
        ({"seeds": []}, r"grokking.runs.seeds = \[\]: List should have at least 1 item"),
        ({"device": "tpu"}, r"grokking.runs.device = 'tpu': Input should be 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_wrong_types_and_impossible_values_are_named(changes, pattern):
    with pytest.raises(ParamsError, match=pattern):
        load_params("grokking", _grokking(**changes))


def test_missing_section_and_unknown_stage():
    with pytest.raises(ParamsError, match="no section 'grokking'"):
        from gradience.config import validate_section
        from gradience.studies.notebook import params_schema

        validate_section("grokking", params_schema("grokking"), None)
    with pytest.raises(KeyError, match="unknown study 'nope'"):
        load_params("nope", {})
    with pytest.raises(KeyError, match="unknown study 'nope'"):
        load_run_params("nope", {})


def test_deep_merge_merges_mappings_and_replaces_lists():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    assert deep_merge(base, {"a": {"y": [3]}}) == {"a": {"x": 1, "y": [3]}, "b": 2}
    assert base["a"]["y"] == [1, 2]


def test_unknown_section_in_params_file_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(profile_params("smoke") | {"grokin": {"steps": 1}}))
    with pytest.raises(ParamsError, match=r"unknown sections \['grokin'\]"):
        check_sections(str(path))


def test_report_keys_are_checked_and_sections_have_only_workers_runs_report():
    section = profile_params("smoke")["grokking"]
    with pytest.raises(ParamsError, match=r"grokking.report.grok_threshold = 2.0: Input should be less than or equal to 1"):
        load_params("grokking", section | {"report": {"grok_threshold": 2.0}})
    with pytest.raises(ParamsError, match=r"grokking.steps = 5: unknown key \(allowed: workers, executor, runs, report\)"):
        load_params("grokking", section | {"steps": 5})
    with pytest.raises(ParamsError, match=r"grokking.workers = 0: Input should be greater than or equal to 1"):
        load_params("grokking", section | {"workers": 0})


def test_the_training_stage_validates_the_keys_it_reads_and_leaves_report_keys_to_the_report_stage():
    section = profile_params("smoke")["grokking"]
    with pytest.raises(ParamsError, match=r"grokking.runs.lr = -1.0: Input should be greater than 0"):
        load_run_params("grokking", _grokking(lr=-1.0))
    with pytest.raises(ParamsError, match=r"grokking.steps = 5: unknown key \(allowed: workers, executor, runs, report\)"):
        load_run_params("grokking", section | {"steps": 5})
    bad_report = section | {"report": {"grok_threshold": 2.0}}
    assert load_run_params("grokking", bad_report).runs == load_params("grokking", section).runs
    with pytest.raises(ParamsError, match=r"grokking.report.grok_threshold = 2.0"):
        load_params("grokking", bad_report)  # the report stage (and `gradience check`) names it


def test_check_validates_every_section_of_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    params = profile_params("smoke")
    path.write_text(yaml.safe_dump(params))
    check_sections(str(path))
    params["rosetta"]["report"] = {"no_such_key": 1}
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"rosetta.report.no_such_key = 1: unknown key"):
        check_sections(str(path))
