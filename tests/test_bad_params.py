"""Bad params, tried systematically: mutations of the smoke profile must stop with one clear error
naming the key, before any work starts (property-based, with hypothesis).

The Python entry points are the ones the stages use (``load_params``: the report stage and
``gradience check``; ``load_run_params``: the training stage); the command lines are checked for
exit code 2 and a one-line message naming the key, never a traceback.
"""

import copy
import math
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradience import cli
from gradience.config import MAX_INT, ParamsError, _model_at
from gradience.profiles import profile_params
from gradience.studies import grid
from gradience.studies.grid import load_run_params
from gradience.studies.notebook import load_params, params_schema
from gradience.studies.registry import STAGES

SMOKE = profile_params("smoke")
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _walk(obj, path=()):
    """Every (path, value) of a section, descending into mappings and lists of mappings."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, (*path, k))
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        for i, v in enumerate(obj):
            yield from _walk(v, (*path, i))


def _owned(stage, path):
    """True when the key at ``path`` belongs to a params model (not a free-form mapping's entry)."""
    return _model_at(params_schema(stage), path[:-1]) is not None


def _where(predicate):
    return [(s, p) for s in STAGES for p, v in _walk(SMOKE[s]) if p and _owned(s, p) and predicate(p, v)]


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


MAPPINGS = [(s, p) for s in STAGES for p, v in _walk(SMOKE[s])
            if isinstance(v, dict) and (not p or _model_at(params_schema(s), p) is not None)]
NUMBERS = _where(lambda p, v: _number(v))
FLOATS = _where(lambda p, v: isinstance(v, float))
INTS = _where(lambda p, v: _number(v) and isinstance(v, int))
SEED_LISTS = _where(lambda p, v: p[-1] == "seeds" and p[-2] == "runs")
NAMED_LISTS = _where(lambda p, v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, dict) and "name" in x for x in v))
#: Sizes and counts: zero or a negative value is impossible (seeds, offsets and "-1: the study's" are not sizes).
SIZE_WORDS = ("steps", "n_train", "n_test", "batch_size", "d_model", "d_embed", "d_hidden", "d_mlp", "n_layers",
              "n_heads", "context", "every", "top_k", "probes", "window", "max_length", "examples")
SIZES = [(s, p) for s, p in INTS if isinstance(p[-1], str) and p[-1] != "eval_max_examples"
         and any(w in p[-1] for w in SIZE_WORDS) and not p[-1].startswith(("cadence_log", "warmup"))]


def _key(stage, path):
    return ".".join([stage, *map(str, path)])


def _set(stage, path, value):
    section = copy.deepcopy(SMOKE[stage])
    node = section
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return section


def _fails_naming(stage, section, key, *fragments, training=False):
    with pytest.raises(ParamsError) as err:
        (load_run_params if training else load_params)(stage, section)
    msg = str(err.value)
    assert f"invalid params for stage {stage!r}" in msg
    assert f"{key} = " in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_the_mutation_tables_are_not_empty():
    """Each kind of mutation has places to go in every family (so no property below is vacuous)."""
    assert len(MAPPINGS) >= 3 * len(STAGES) and len(FLOATS) > 20 and len(INTS) > 50
    assert {s for s, _ in SEED_LISTS} == set(STAGES)
    assert {s for s, _ in SIZES} >= {"grokking", "rank_survey", "spectral_edge", "lora_sst2", "rosetta"}
    assert any(p[-1] == "conditions" for _, p in NAMED_LISTS)


KEY_NAMES = st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True)


@FAST
@given(where=st.sampled_from(MAPPINGS), name=KEY_NAMES)
def test_an_unknown_key_anywhere_is_named_with_the_allowed_ones(where, name):
    stage, path = where
    owner = _model_at(params_schema(stage), path) if path else params_schema(stage)
    if name in owner.model_fields:
        return
    section = copy.deepcopy(SMOKE[stage])
    node = section
    for part in path:
        node = node[part]
    node[name] = 1
    key = _key(stage, (*path, name))
    msg = _fails_naming(stage, section, key, "unknown key (allowed: ", ", ".join(owner.model_fields))
    assert msg.count("\n") == 1  # one problem, one line


def test_unknown_keys_in_each_kind_of_place():
    """Top level, a section, ``runs``, ``report`` and a condition list item, spelled out."""
    g = SMOKE["grokking"]
    cases = [((), "steps", "grokking.steps"), (("runs",), "learning_rate", "grokking.runs.learning_rate"),
             (("report",), "threshold", "grokking.report.threshold"),
             (("runs", "model"), "width", "grokking.runs.model.width"),
             (("runs", "conditions", 1), "wd", "grokking.runs.conditions.1.wd")]
    for path, name, key in cases:
        section = copy.deepcopy(g)
        node = section
        for part in path:
            node = node[part]
        node[name] = 3
        _fails_naming("grokking", section, key, "unknown key")


@FAST
@given(where=st.sampled_from(NUMBERS), bad=st.sampled_from(["many", [1, 2], {"x": 1}, None]))
def test_a_wrong_type_for_a_number_is_named(where, bad):
    stage, path = where
    _fails_naming(stage, _set(stage, path, bad), _key(stage, path))


@FAST
@given(where=st.sampled_from(FLOATS), bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_floats_are_rejected(where, bad):
    stage, path = where
    _fails_naming(stage, _set(stage, path, bad), _key(stage, path), "finite number")


@FAST
@given(where=st.sampled_from(INTS), bad=st.integers(min_value=MAX_INT + 1, max_value=10**30))
def test_absurdly_large_integers_are_rejected(where, bad):
    stage, path = where
    msg = _fails_naming(stage, _set(stage, path, bad), _key(stage, path))
    assert "out of range" in msg or "less than or equal" in msg  # the generic bound, or the field's own


def test_huge_steps_name_the_bound_in_the_training_stage_too():
    section = _set("grokking", ("runs", "steps"), 1e12)
    _fails_naming("grokking", section, "grokking.runs.steps", f"at most {MAX_INT}", training=True)


@FAST
@given(where=st.sampled_from(SIZES), bad=st.integers(min_value=-10**6, max_value=-1))
def test_negative_sizes_are_impossible(where, bad):
    stage, path = where
    _fails_naming(stage, _set(stage, path, bad), _key(stage, path), "greater than")


def test_every_size_rejects_minus_one():
    """Exhaustive over the sizes (the property above samples them); 0 is legal where it has a meaning
    (``batch_size`` 0: full batch, ``spectra_every`` 0: never, ``train_examples`` 0: all)."""
    accepted = []
    for stage, path in SIZES:
        try:
            load_params(stage, _set(stage, path, -1))
            accepted.append(_key(stage, path))
        except ParamsError:
            pass
    assert accepted == []


@pytest.mark.parametrize(("stage", "path"), SEED_LISTS, ids=[s for s, _ in SEED_LISTS])
def test_an_empty_seed_list_is_rejected_in_every_study(stage, path):
    _fails_naming(stage, _set(stage, path, []), _key(stage, path), "at least 1 item", training=True)


@pytest.mark.parametrize(("stage", "path"), NAMED_LISTS, ids=[_key(s, p) for s, p in NAMED_LISTS])
def test_duplicate_condition_names_are_rejected(stage, path):
    items = copy.deepcopy(SMOKE[stage])
    for part in path:
        items = items[part]
    with pytest.raises(ParamsError) as err:
        load_params(stage, _set(stage, path, [*items, copy.deepcopy(items[0])]))
    msg = str(err.value)
    assert "unique" in msg and _key(stage, path[:-1]) in msg, msg


# ------------------------------------------------------------------ the command lines


def _write(tmp_path, stage, section):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(SMOKE | {stage: section}))
    return str(path)


@pytest.mark.parametrize(("stage", "path", "value", "key"), [
    ("grokking", ("runs", "lr"), math.nan, "grokking.runs.lr = nan"),
    ("rosetta", ("runs", "modular", "steps"), -5, "rosetta.runs.modular.steps = -5"),
    ("spectral_edge", ("runs", "seeds"), [], "spectral_edge.runs.seeds = []"),
    ("lora_sst2", ("report", "no_such_key"), 1, "lora_sst2.report.no_such_key = 1: unknown key"),
])
def test_gradience_check_exits_2_naming_the_key(tmp_path, capsys, stage, path, value, key):
    params = _write(tmp_path, stage, _set(stage, path, value))
    assert cli.main(["check", "--params", params]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err and err.startswith("gradience: invalid params")


def test_the_training_stage_command_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(grid, "train", lambda *a, **k: pytest.fail("work started on bad params"))
    params = _write(tmp_path, "grokking", _set("grokking", ("runs", "batch_size"), -1))
    assert grid.main(["grokking", "--params", params]) == 2
    assert "grokking.runs.batch_size = -1: Input should be greater than or equal to 0" in capsys.readouterr().err


def test_gradience_check_from_the_shell(tmp_path):
    """The real command: exit code 2, the key named, no traceback."""
    params = _write(tmp_path, "rank_survey", _set("rank_survey", ("runs", "mlp", "steps"), 10**12))
    res = subprocess.run([sys.executable, "-m", "gradience", "check", "--params", params],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "rank_survey.runs.mlp.steps = 1000000000000" in res.stderr and "Traceback" not in res.stderr
