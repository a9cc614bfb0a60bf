import numpy as np
import pandas as pd
import pytest

from gradience.telemetry.recorder import TELEMETRY_COLUMNS, Cadence, Recorder, write_parquet


def test_cadence_includes_start_end_multiples_and_log_points():
    c = Cadence(every=100, total_steps=1050, log_points=6)
    assert {0, 100, 1000, 1050} <= c.steps
    assert 1 in c and 4 in c  # geomspace(1, 1050, 6) → 1, 4, 16, 65, 261, 1050
    assert 50 not in c
    with pytest.raises(ValueError):
        Cadence(every=0, total_steps=10)


def test_recorder_writes_the_tidy_contract(tmp_path):
    rec = Recorder("cond/s0")
    rec.log(0, "model", "train_loss", 2.5)
    rec.log_many(10, "layer.weight", {"kappa": 3.0, "stable_rank": 1.5})
    rec.log_spectrum(10, "layer.weight", np.array([3.0, 1.0]))
    path = write_parquet(rec.frame(), tmp_path / "t.parquet")
    df = pd.read_parquet(path)
    assert tuple(df.columns) == TELEMETRY_COLUMNS
    assert len(df) == 3 and df["value"].tolist() == [2.5, 3.0, 1.5]
    sp = rec.spectra_frame()
    assert sp["sigma"].tolist() == [3.0, 1.0] and sp["index"].tolist() == [0, 1]
