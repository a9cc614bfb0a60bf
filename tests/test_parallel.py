import math
import sys
import time

import pandas as pd
import pytest

from gradience.config import ParamsError
from gradience.parallel import map_runs
from gradience.profiles import profile_params
from gradience.studies import grid, notebook
from gradience.studies.protocol import TABLES_DIR

JOBS = [400, 3, 1200, 0, 57, 800]  # uneven sizes, so processes finish out of order


@pytest.mark.parametrize("workers", [1, 2])
def test_local_executor_matches_a_serial_loop_in_order(workers):
    assert map_runs(math.factorial, JOBS, workers=workers) == [math.factorial(j) for j in JOBS]


def test_unknown_executor_is_rejected_clearly():
    with pytest.raises(ValueError, match=r"unknown executor 'spark': use \"local\".*\"ray\".*\"ray://host:port\""):
        map_runs(math.factorial, JOBS, executor="spark")
    section = profile_params("smoke")["grokking"] | {"executor": "spark"}
    with pytest.raises(ParamsError, match=r"grokking.executor = 'spark': .*unknown executor 'spark'"):
        notebook.load_params("grokking", section)
    for ok in ("local", "ray", "ray://head.example:10001"):
        assert notebook.load_params("grokking", profile_params("smoke")["grokking"] | {"executor": ok}).executor == ok


def test_missing_ray_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "ray\[default\]"'):
        map_runs(math.factorial, JOBS, executor="ray")


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False)
    print(f"ray.init: {time.perf_counter() - start:.1f} s")
    yield ray
    ray.shutdown()


def test_ray_executor_gives_the_local_results(local_ray, tmp_path, data_dir):
    params = notebook.load_params("grokking", profile_params("smoke")["grokking"])
    timings = {}
    for executor in ("local", "ray"):
        start = time.perf_counter()
        grid.train("grokking", params.model_copy(update={"executor": executor}), tmp_path / executor, data_dir)
        timings[executor] = time.perf_counter() - start
    print("train grokking (smoke):", {k: f"{v:.1f} s" for k, v in timings.items()})
    assert local_ray.is_initialized()  # a session the caller started is left running
    local, ray = (notebook.load_tables("grokking", tmp_path / e / TABLES_DIR) for e in ("local", "ray"))
    pd.testing.assert_frame_equal(local.telemetry, ray.telemetry)
    pd.testing.assert_frame_equal(local.spectra, ray.spectra)
    timing = ["wall_seconds", "cpu_seconds"]
    pd.testing.assert_frame_equal(local.runs.drop(columns=timing), ray.runs.drop(columns=timing))
