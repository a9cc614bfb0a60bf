"""What a grokking run costs on this CPU, measured side by side: the choice behind the default profile.

One thread (``torch.set_num_threads(1)``: the stage runs one run per core). Per optimiser step and
per run, the default grokking MLP (p = 97, 40 % train) trained

- full batch, one model;
- mini-batch ``B`` (512, 256), one model;
- ``R`` runs stacked into one ``torch.func.vmap`` model (``stack_module_state`` + ``functional_call``,
  one AdamW over the stacked tensors), full batch and mini-batch 512, cost divided by ``R``;

and, per cadence point, the telemetry: evaluation on the whole split (train and test accuracy and
loss) and the weight spectra (three SVDs and their metrics). Repeats alternate the modes; medians
are reported, with ratios to the mini-batch-512 single-model step. Prints a table and writes
``benchmarks/results/grokking_cost.json``.

Usage: ``python benchmarks/grokking_cost.py [steps_per_repeat]`` (default 300).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad, stack_module_state, vmap

from gradience.data import build
from gradience.profiles import profile_params
from gradience.studies.grid import load_run_params as load_params
from gradience.studies.grokking.runs import build_model
from gradience.tasks.modular import modular_split
from gradience.telemetry.recorder import Recorder
from gradience.training import evaluate, loss_and_accuracy, record_weight_spectra

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
REPEATS = 3
STACK = 15  # runs stacked into one vmap model (the 15 runs)


def single(p, split, batch: int) -> float:
    """CPU seconds per step of one model."""
    torch.manual_seed(0)
    model = build_model(p)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=p.betas, weight_decay=0.1)
    n = split.x_train.shape[0]
    g = torch.Generator().manual_seed(0)
    t0 = time.process_time()
    for _ in range(STEPS):
        idx = torch.randint(n, (batch,), generator=g) if batch else slice(None)
        loss, _ = loss_and_accuracy(model(split.x_train[idx]), split.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.process_time() - t0) / STEPS


def stacked(p, split, batch: int) -> float:
    """CPU seconds per step and per run of ``STACK`` models trained as one vmap model."""
    torch.manual_seed(0)
    models = [build_model(p) for _ in range(STACK)]
    params, buffers = stack_module_state(models)
    base = build_model(p).to("meta")

    def loss_fn(prm, buf, x, y):
        return torch.nn.functional.cross_entropy(functional_call(base, (prm, buf), (x,)), y)

    grads_fn = vmap(grad(loss_fn), in_dims=(0, 0, 0, 0))
    opt = torch.optim.AdamW(list(params.values()), lr=p.lr, betas=p.betas, weight_decay=0.1)
    n = split.x_train.shape[0]
    g = torch.Generator().manual_seed(0)
    t0 = time.process_time()
    for _ in range(STEPS):
        idx = torch.randint(n, (STACK, batch or n), generator=g) if batch else torch.arange(n).expand(STACK, n)
        grads = grads_fn(params, buffers, split.x_train[idx], split.y_train[idx])
        for k, t in params.items():
            t.grad = grads[k]
        opt.step()
    return (time.process_time() - t0) / STEPS / STACK


def telemetry(p, split) -> dict[str, float]:
    """CPU seconds of one cadence point: evaluation on both splits, and the weight spectra."""
    model = build_model(p)
    rec = Recorder("bench")
    reps = 20
    t0 = time.process_time()
    for _ in range(reps):
        evaluate(model, split.x_train, split.y_train)
        evaluate(model, split.x_test, split.y_test)
    t1 = time.process_time()
    for i in range(reps):
        record_weight_spectra(i, model, rec, snapshot=False)
    t2 = time.process_time()
    return {"evaluate": (t1 - t0) / reps, "spectra": (t2 - t1) / reps}


def main() -> None:
    torch.set_num_threads(1)
    p = load_params("grokking", profile_params("default")["grokking"]).runs
    data = Path(".gradience/bench-data")
    build(data)
    split = modular_split(data, p.modulus, "add", p.train_fraction, 0)
    modes = {
        "full_batch": lambda: single(p, split, 0),
        "minibatch_512": lambda: single(p, split, 512),
        "minibatch_256": lambda: single(p, split, 256),
        f"vmap{STACK}_full_batch": lambda: stacked(p, split, 0),
        f"vmap{STACK}_minibatch_512": lambda: stacked(p, split, 512),
    }
    times: dict[str, list[float]] = {k: [] for k in modes}
    tele: list[dict[str, float]] = []
    for _ in range(REPEATS):
        for name, fn in modes.items():
            times[name].append(fn())
        tele.append(telemetry(p, split))
    med = {k: statistics.median(v) for k, v in times.items()}
    cad = {k: statistics.median(t[k] for t in tele) for k in ("evaluate", "spectra")}
    ref = med["minibatch_512"]
    result = {
        "model": p.model.model_dump(), "modulus": p.modulus, "train_fraction": p.train_fraction,
        "n_train": int(split.x_train.shape[0]), "threads": 1, "steps_per_repeat": STEPS, "repeats": REPEATS,
        "stacked_runs": STACK,
        "cpu_seconds_per_step_per_run": med,
        "ratio_to_minibatch_512": {k: v / ref for k, v in med.items()},
        "vmap_speedup_full_batch": med["full_batch"] / med[f"vmap{STACK}_full_batch"],
        "vmap_speedup_minibatch_512": ref / med[f"vmap{STACK}_minibatch_512"],
        "cpu_seconds_per_cadence_point": cad,
        "cadence_point_in_minibatch_512_steps": {k: v / ref for k, v in cad.items()},
    }
    print(f"{'mode':<24}{'ms/step/run':>12}{'× mb512':>9}")
    for name, t in med.items():
        print(f"{name:<24}{1e3 * t:>12.2f}{t / ref:>9.2f}")
    for k, v in cad.items():
        print(f"cadence point: {k:<9}{1e3 * v:>8.2f} ms = {v / ref:.1f} mb-512 steps")
    out = Path(__file__).parent / "results" / "grokking_cost.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
