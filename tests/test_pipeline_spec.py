"""dvc.yaml is generated from the studies, lists every module a stage loads, keeps report-side code out of
every training stage, and tracks no git file."""

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from gradience import closure, pipeline
from gradience.studies.grid import runs_module
from gradience.studies.registry import STAGES


def test_committed_dvc_yaml_is_the_generated_one():
    assert Path(REPO, "dvc.yaml").read_text() == pipeline.render(), "run `gradience pipeline`"


def test_each_study_is_a_training_stage_and_a_report_stage():
    spec = yaml.safe_load(pipeline.render())["stages"]
    weights = {f"weights_{name}" for stage in STAGES for name in pipeline.base_models(stage)}
    assert set(spec) == {s for stage in STAGES for s in (stage, f"{stage}_runs")} | weights | {"synthesis"}
    for stage in STAGES:
        runs, report = spec[f"{stage}_runs"], spec[stage]
        assert runs["params"] == [f"{stage}.runs"] and report["params"] == [f"{stage}.report"]
        assert runs["outs"] == [f"reports/{stage}/tables"]
        assert f"reports/{stage}/tables" in report["deps"] and f"notebooks/{stage}.py" in report["deps"]
        assert runs["cmd"] == f"python -m gradience.studies.grid {stage}"
        assert report["cmd"] == f"python -m gradience.runner {stage}"
        for needed in ("src/gradience/studies/grid.py", "src/gradience/studies/protocol.py",
                       f"src/gradience/studies/{stage}/runs.py", "src/gradience/parallel.py",
                       "src/gradience/provenance.py", "src/gradience/config.py"):
            assert needed in runs["deps"], needed
        for needed in ("src/gradience/runner.py", "src/gradience/reporting.py", "src/gradience/plots.py",
                       "src/gradience/studies/notebook.py", f"src/gradience/studies/{stage}/analysis.py",
                       f"src/gradience/studies/{stage}/findings.py", pipeline.CLAIM_REGISTRY):
            assert needed in report["deps"], needed


def test_the_synthesis_stage_reads_every_studys_findings_and_trains_nothing():
    spec = yaml.safe_load(pipeline.render())["stages"]
    synth = spec["synthesis"]
    assert synth["cmd"] == "python -m gradience.synthesis"
    assert {f"reports/{s}/findings.json" for s in STAGES} <= set(synth["deps"])
    assert pipeline.CLAIM_REGISTRY in synth["deps"] and "notebooks/synthesis.py" in synth["deps"]
    assert not [d for d in synth["deps"] if d.endswith(".ipynb")]  # never an executed notebook
    # the tables only for the cost table's measured CPU times (runs.parquet), the profiles for its counts
    assert {d for d in synth["deps"] if "/tables" in d} == {f"reports/{s}/tables" for s in STAGES}
    assert {"src/gradience/profiles/default.yaml", "src/gradience/profiles/paper.yaml"} <= set(synth["deps"])
    assert synth["metrics"] == [{"reports/synthesis/metrics.json": {"cache": False}}]
    for stage in STAGES:
        assert {"reports/" + stage + "/findings.json": {"cache": False}} in spec[stage]["outs"]


REPORT_SIDE = ("src/gradience/reporting.py", "src/gradience/synthesis.py", "src/gradience/plots.py", "src/gradience/runner.py",
               "src/gradience/cli.py", "src/gradience/__main__.py", "src/gradience/pipeline.py",
               "src/gradience/verify.py", "src/gradience/studies/notebook.py", "src/gradience/studies/registry.py",
               "src/gradience/claims/registry.yaml")


def _report_side(path: str) -> bool:
    name = Path(path).name
    return path in REPORT_SIDE or name in ("analysis.py", "findings.py", "figures.py") or path.startswith("notebooks/")


@pytest.mark.parametrize("stage", STAGES)
def test_no_training_stage_depends_on_report_side_code(stage):
    """Editing a verdict, a figure, a sentence, the CLI or the list of studies retrains nothing."""
    spec = yaml.safe_load(pipeline.render())["stages"]
    leaked = [d for d in spec[f"{stage}_runs"]["deps"] if _report_side(d)]
    assert not leaked, f"{stage}_runs depends on report-side code: {leaked}"


def test_report_side_check_recognises_report_side_code():
    assert _report_side("src/gradience/studies/grokking/findings.py")
    assert _report_side("src/gradience/studies/lora_family/figures.py")
    assert _report_side("src/gradience/reporting.py") and not _report_side("src/gradience/studies/grokking/runs.py")


def test_every_study_package_is_split_along_its_stages_with_nothing_in_init():
    studies = Path(REPO, "src/gradience/studies")
    for stage in STAGES:
        assert {"runs.py", "analysis.py", "findings.py"} <= {p.name for p in (studies / stage).glob("*.py")}, stage
    for init in Path(REPO, "src/gradience").rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        if init.parent == studies or init.parent.parent == studies:
            assert not body, f"{init.relative_to(REPO)} defines something: every parent __init__ is in a closure"


@pytest.mark.parametrize("stage", STAGES)
def test_findings_are_one_function_per_claim_with_the_claim_as_docstring(stage):
    mod = importlib.import_module(f"gradience.studies.{stage}.findings")
    assert mod.CLAIMS and all(callable(f) and (f.__doc__ or "").strip() for f in mod.CLAIMS), stage


def test_a_base_model_is_prepared_once_by_its_own_stage_and_feeds_the_runs():
    spec = yaml.safe_load(pipeline.render())["stages"]
    users = [stage for stage in STAGES if pipeline.base_models(stage)]
    assert users, "no study starts from a prepared base model"
    for stage in users:
        for name in pipeline.base_models(stage):
            prep = spec[f"weights_{name}"]
            assert prep["outs"] == [f"reports/weights/{name}"]
            assert f"reports/weights/{name}" in spec[f"{stage}_runs"]["deps"]
            module = pipeline.BASE_MODEL_STAGES[name]
            assert prep["cmd"].startswith(f"python -m {module} {name} ")
            assert str(closure.module_path(module).relative_to(REPO)) in prep["deps"]


def test_an_unknown_base_model_is_named(monkeypatch):
    monkeypatch.setattr(runs_module(STAGES[0]), "BASE_MODELS", ("gpt5",), raising=False)
    with pytest.raises(KeyError, match="unknown BASE_MODELS.*gpt5"):
        pipeline.base_models(STAGES[0])


def _loaded_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    return {m for m in json.loads(out.splitlines()[-1]) if m.startswith("gradience")}


def _files(modules: set[str]) -> set[str]:
    return {str(closure.module_path(m).relative_to(REPO)) for m in modules if closure.module_path(m)}


@pytest.mark.parametrize("stage", STAGES)
def test_static_closure_covers_every_module_a_stage_loads(stage):
    """What a stage's command really imports (its entry module and the study) is within its deps,
    and the training command loads no report-side module."""
    spec = yaml.safe_load(pipeline.render())["stages"]
    train = _loaded_modules(f"from gradience.studies import grid\ngrid.runs_module({stage!r})")
    assert _files(train) <= set(spec[f"{stage}_runs"]["deps"]), _files(train) - set(spec[f"{stage}_runs"]["deps"])
    assert not [f for f in _files(train) if _report_side(f)], "the training command loads report-side code"
    notebook = Path(REPO, "notebooks", f"{stage}.py").read_text()
    imports = "\n".join(line for line in notebook.splitlines() if line.startswith(("import ", "from ")))
    report = _loaded_modules(f"import gradience.runner, gradience.studies.{stage}.findings\n{imports}")
    assert _files(report) <= set(spec[stage]["deps"]), _files(report) - set(spec[stage]["deps"])


def test_closure_follows_relative_imports_and_function_level_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "gradience"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from . import b\ndef f():\n    from gradience.c import g\n")
    (pkg / "sub" / "b.py").write_text("from ..d import x\n")
    for name in ("c", "d", "unused"):
        (pkg / f"{name}.py").write_text("")
    monkeypatch.setattr(closure, "PACKAGE", pkg)
    found = {p.relative_to(pkg).as_posix() for p in closure.closure(["gradience.sub.a"])}
    assert found == {"__init__.py", "sub/__init__.py", "sub/a.py", "sub/b.py", "c.py", "d.py"}


def cached_outputs(spec: dict) -> list[str]:
    """Outputs DVC caches (and git-ignores); ``cache: false`` ones are committed to git on purpose."""
    outs = []
    for stage in spec.values():
        for kind in ("outs", "metrics", "plots"):
            for o in stage.get(kind, []):
                path, opts = (next(iter(o.items())) if isinstance(o, dict) else (o, {}))
                if opts.get("cache", True):
                    outs.append(path)
    return outs


def test_no_file_tracked_by_git_is_a_cached_dvc_output():
    outs = cached_outputs(yaml.safe_load(Path(REPO, "dvc.yaml").read_text())["stages"])
    assert "reports/grokking/tables" in outs
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    clashes = [f for f in tracked for out in outs if f == out or f.startswith(out.rstrip("/") + "/")]
    assert not clashes, f"tracked by git and also DVC outputs (fails `dvc repro` on a fresh clone): {clashes}"
