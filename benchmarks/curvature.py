"""Curvature telemetry costs, as ratios measured side by side in one run.

Model: the project's ``MLP`` (64 → 128 → 64 → 10, LayerNorm, 17,610 parameters) trained 300 Adam
steps on scikit-learn's digits, then frozen; curvature is on a fixed batch of its first 256 digits.

1. HVP time / gradient time (float32, one thread, interleaved calls, median of 30), on the fixed
   batch and on all 1,797 digits. The gradient is plain autograd, as in training. HVP forms:
   :func:`hvp_fn` ``"reverse"`` (the default, cached vjp∘grad), ``"forward"`` (eager jvp∘grad),
   and jvp∘grad traced once by ``torch.func.linearize``; one-off setup costs in gradients.
   Target ≤ 2.5.
2. Top-10 eigenvalues (float64): ARPACK Lanczos vs PyHessian's power iteration with deflation at
   equal accuracy: for each target max relative error vs a machine-precision Lanczos reference,
   the cheapest run of each method (over a tolerance sweep) that meets it, then those two runs
   re-timed side by side (median of 3). Target ≥ 3× fewer HVPs.
3. Hutchinson (Rademacher) variance per probe, and the probes needed for a 1 % standard error.

Writes ``benchmarks/results/curvature.json`` and prints a table.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from sklearn.datasets import load_digits

from gradience.models.mlp import MLP
from gradience.telemetry.curvature import (
    HVP,
    Eigenvalues,
    cross_entropy,
    hessian_operator,
    hutchinson_trace,
    hvp_fn,
    lanczos_top_eigenvalues,
    make_loss_fn,
    power_iteration_deflation,
)

K, BATCH, REPEATS, TIMING_REPEATS = 10, 256, 30, 3
HVP_BATCHES = (BATCH, 1797)  # the fixed batch, and all of digits
TARGETS = (1e-3, 1e-6)
LANCZOS_TOLS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
POWER_TOLS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
POWER_MAX_ITER = 1000
Runner = Callable[[], Eigenvalues]


def trained_model() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = MLP(64, [128, 64], 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(300):
        idx = torch.randint(0, len(x), (128,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval(), (x, y)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = REPEATS,
                        warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def timed_setup(build: Callable[[], HVP]) -> tuple[HVP, float]:
    t0 = time.perf_counter()
    fn = build()
    return fn, time.perf_counter() - t0


def hvp_vs_grad(model: torch.nn.Module, batch) -> dict[str, float]:
    """Per-HVP cost of each HVP form and its one-off setup, in training gradients."""
    loss_fn, theta = make_loss_fn(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():  # make_fx tracing notices
        warnings.simplefilter("ignore")
        hvps = {"reverse": timed_setup(lambda: hvp_fn(loss_fn, theta)),
                "forward": timed_setup(lambda: hvp_fn(loss_fn, theta, "forward")),
                "forward_linearized": timed_setup(
                    lambda: torch.func.linearize(torch.func.grad(loss_fn), theta)[1])}
    med = interleaved_medians(
        {"grad": lambda: torch.autograd.grad(cross_entropy(model(batch[0]), batch[1]), params)}
        | {name: lambda fn=fn: fn(v) for name, (fn, _) in hvps.items()})
    return ({"batch": len(batch[1]), "params": theta.numel(), "grad_seconds": med["grad"]}
            | {f"hvp_{name}_over_grad": med[name] / med["grad"] for name in hvps}
            | {f"hvp_{name}_setup_in_grads": s / med["grad"] for name, (_, s) in hvps.items()})


def sweep(runs: dict[float, Runner], reference: np.ndarray) -> list[dict]:
    """HVP count and max relative error of each run (both deterministic: seeded starts)."""
    rows = []
    for tol, run in runs.items():
        out = run()
        err = float(np.max(np.abs(out.values - reference) / np.abs(reference)))
        rows.append({"tol": tol, "n_hvp": out.n_hvp, "max_rel_err": err})
    return rows


def cheapest(rows: list[dict], target: float) -> dict | None:
    ok = [r for r in rows if r["max_rel_err"] <= target]
    return min(ok, key=lambda r: r["n_hvp"]) if ok else None


def at_target(runs: dict[str, dict[float, Runner]], rows: dict[str, list[dict]],
              target: float) -> dict:
    """The cheapest run of each method reaching ``target``, re-timed side by side."""
    lanczos, power = runs["lanczos"], runs["power"]
    lz, pw = cheapest(rows["lanczos"], target), cheapest(rows["power"], target)
    if not (lz and pw):
        return {"lanczos": lz, "power": pw}
    med = interleaved_medians({"lanczos": lanczos[lz["tol"]], "power": power[pw["tol"]]},
                              repeats=TIMING_REPEATS, warmup=0)
    return {"lanczos": lz | {"seconds": med["lanczos"]}, "power": pw | {"seconds": med["power"]},
            "hvp_ratio_power_over_lanczos": pw["n_hvp"] / lz["n_hvp"],
            "time_ratio_power_over_lanczos": med["power"] / med["lanczos"]}


def eigen_comparison(model: torch.nn.Module, batch) -> dict:
    loss_fn, theta = make_loss_fn(copy.deepcopy(model).double(), (batch[0].double(), batch[1]))
    op = hessian_operator(loss_fn, theta)
    reference = lanczos_top_eigenvalues(op, K, tol=0).values
    lambda_min = float(eigsh(op, k=1, which="SA", return_eigenvectors=False)[0])
    matvec = op.torch_matvec
    runs = {"lanczos": {t: partial(lanczos_top_eigenvalues, op, K, t) for t in LANCZOS_TOLS},
            "power": {t: partial(power_iteration_deflation, matvec, theta, K, t, POWER_MAX_ITER)
                      for t in POWER_TOLS}}
    rows = {name: sweep(r, reference) for name, r in runs.items()}
    pyhessian = {1e-3: partial(power_iteration_deflation, matvec, theta, K)}
    return {"reference_top10": reference.tolist(), "lambda_min": lambda_min,
            "top10_are_largest_in_magnitude": bool(abs(lambda_min) < reference[-1]),
            "lanczos_sweep": rows["lanczos"], "power_sweep": rows["power"],
            "pyhessian_default_tol1e-3_maxiter100": sweep(pyhessian, reference)[0],
            "at_target": {f"{t:.0e}": at_target(runs, rows, t) for t in TARGETS},
            "hutchinson": hutchinson_stats(matvec, theta)}


def hutchinson_stats(matvec, theta: torch.Tensor, n: int = 100) -> dict[str, float]:
    est = hutchinson_trace(matvec, theta.numel(), n, seed=0, dtype=theta.dtype)
    var = float(est.samples.var(ddof=1))
    return {"n_probes": n, "trace": est.mean, "stderr": est.stderr, "variance_per_probe": var,
            "relative_sd_per_probe": var**0.5 / abs(est.mean),
            "probes_for_1pct_stderr": var / (0.01 * est.mean) ** 2}


def print_table(result: dict) -> None:
    rows = result["hvp"]
    print(f"model: MLP, {rows[0]['params']} params; HVP cost in training gradients (float32)")
    header = "".join(f"{'batch ' + str(r['batch']):>12}{'setup':>8}" for r in rows)
    print(f"{'HVP form':<30}{header}")
    for form in ("reverse", "forward", "forward_linearized"):
        cells = "".join(f"{r['hvp_' + form + '_over_grad']:>12.2f}"
                        f"{r['hvp_' + form + '_setup_in_grads']:>8.0f}" for r in rows)
        print(f"{form:<30}{cells}")
    e = result["eigen"]
    print(f"λ1..λ10 = {e['reference_top10'][0]:.4g} … {e['reference_top10'][-1]:.4g}, "
          f"λ_min = {e['lambda_min']:.3g}")
    print(f"{'target max rel err':<20}{'Lanczos HVPs':>14}{'power HVPs':>12}{'HVP ratio':>11}"
          f"{'time ratio':>12}")
    for target, row in e["at_target"].items():
        lz, pw = row["lanczos"], row["power"]
        ratio = row["hvp_ratio_power_over_lanczos"]
        tratio = row["time_ratio_power_over_lanczos"]
        print(f"{target:<20}{lz['n_hvp'] if lz else '-':>14}{pw['n_hvp'] if pw else 'not met':>12}"
              f"{f'{ratio:.1f}' if ratio else '-':>11}{f'{tratio:.1f}' if tratio else '-':>12}")
    d = e["pyhessian_default_tol1e-3_maxiter100"]
    print(f"PyHessian defaults (tol 1e-3, 100 iter): {d['n_hvp']} HVPs, "
          f"max rel err {d['max_rel_err']:.1e}")
    t = e["hutchinson"]
    print(f"Hutchinson: tr H ≈ {t['trace']:.4g} ± {t['stderr']:.2g} ({t['n_probes']} probes); "
          f"per-probe sd / tr = {t['relative_sd_per_probe']:.2f}; "
          f"{t['probes_for_1pct_stderr']:.0f} probes for 1 % s.e.")


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, (x, y) = trained_model()
    result = {"hvp": [hvp_vs_grad(model, (x[:b], y[:b])) for b in HVP_BATCHES],
              "eigen": eigen_comparison(model, (x[:BATCH], y[:BATCH])),
              "torch": torch.__version__}
    result["total_seconds"] = time.perf_counter() - t0
    print_table(result)
    out = Path(__file__).parent / "results" / "curvature.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} in {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
