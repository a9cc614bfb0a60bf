"""Telemetry overhead at the default cadence, as a ratio to plain training, measured side by side.

Trains the default grokking model (same data, same steps) three ways, alternating repeats:
no telemetry; the default cadence (losses, accuracies, norms, per-matrix spectra);
and the default cadence with singular-value snapshots. Prints the median time ratios and writes
``benchmarks/results/telemetry_overhead.json``. Target: ≤ 1.10 (≤ 10 % overhead).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from gradience.data import build
from gradience.profiles import profile_params
from gradience.studies.grid import load_run_params as load_params
from gradience.studies.grokking.runs import build_model
from gradience.tasks.modular import modular_split
from gradience.telemetry.recorder import Cadence, Recorder
from gradience.training import TrainConfig, train

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
REPEATS = 3


def timed(p, split, mode: str) -> float:
    torch.manual_seed(0)
    model = build_model(p)
    cfg = TrainConfig(steps=STEPS, lr=p.lr, weight_decay=1.0, seed=0)
    recorder = None if mode == "plain" else Recorder("bench")
    cadence = Cadence(p.cadence_every, STEPS, p.cadence_log_points)
    t0 = time.perf_counter()
    train(model, split, cfg, recorder=recorder, cadence=cadence,
          spectra_every=p.spectra_every if mode == "snapshots" else 0)
    return time.perf_counter() - t0


def main() -> None:
    torch.set_num_threads(1)
    p = load_params("grokking", profile_params("default")["grokking"]).runs
    data = Path(".gradience/bench-data")
    build(data)
    split = modular_split(data, p.modulus, "add", p.train_fraction, 0)
    times: dict[str, list[float]] = {"plain": [], "telemetry": [], "snapshots": []}
    for _ in range(REPEATS):
        for mode in times:
            times[mode].append(timed(p, split, mode))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "steps": STEPS, "cadence_every": p.cadence_every, "cadence_log_points": p.cadence_log_points,
        "repeats": REPEATS, "median_seconds": med,
        "ratio_telemetry_to_plain": med["telemetry"] / med["plain"],
        "ratio_snapshots_to_plain": med["snapshots"] / med["plain"],
    }
    print(f"{'mode':<12}{'median s':>10}{'ratio':>8}")
    for mode, t in med.items():
        print(f"{mode:<12}{t:>10.2f}{t / med['plain']:>8.3f}")
    out = Path(__file__).parent / "results" / "telemetry_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
