"""Hessian tools against the exact Hessian of a 124-parameter MLP (``torch.func.hessian``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradience.telemetry.curvature import (
    hessian_metrics,
    hessian_operator,
    hutchinson_trace,
    hvp,
    hvp_fn,
    lanczos_top_eigenvalues,
    make_loss_fn,
    power_iteration_deflation,
    sharpness_vs_edge,
)


def mlp_problem(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    x = torch.randn(32, 5, dtype=torch.float64)
    return model, (x, torch.randint(0, 4, (32,)))


@pytest.fixture(scope="module")
def exact():
    model, batch = mlp_problem()
    loss_fn, theta = make_loss_fn(model, batch)
    H = torch.func.hessian(loss_fn)(theta)
    return model, batch, loss_fn, theta, H, hvp_fn(loss_fn, theta)


def test_loss_fn_is_the_model_loss_on_trainable_params_only():
    model, (x, y) = mlp_problem()
    model[0].bias.requires_grad_(False)
    loss_fn, theta = make_loss_fn(model, (x, y))
    assert theta.numel() == 5 * 12 + 12 * 4 + 4
    expected = nn.functional.cross_entropy(model(x), y)
    assert loss_fn(theta).item() == pytest.approx(expected.item(), rel=1e-14)


@pytest.mark.parametrize("method", ["reverse", "forward"])
def test_hvp_equals_exact_hessian_times_v(exact, method):
    _, _, loss_fn, theta, H, _ = exact
    v = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(hvp_fn(loss_fn, theta, method)(v), H @ v, rtol=0, atol=1e-10)
    assert torch.allclose(hvp(loss_fn, theta, v), H @ v, rtol=0, atol=1e-10)


def test_lanczos_top10_matches_exact_eigenvalues(exact):
    _, _, loss_fn, theta, H, _ = exact
    top = torch.linalg.eigvalsh(H).flip(0)[:10].numpy()
    result = lanczos_top_eigenvalues(hessian_operator(loss_fn, theta), k=10)
    assert np.all(np.diff(result.values) <= 0)
    np.testing.assert_allclose(result.values, top, rtol=1e-4)
    assert 10 < result.n_hvp < 5 * theta.numel()


def test_hessian_operator_counts_and_casts(exact):
    _, _, loss_fn, theta, H, _ = exact
    op = hessian_operator(loss_fn, theta)
    v = np.linspace(-1, 1, theta.numel())
    out = op @ v
    assert out.dtype == np.float64 and op.n_matvec == 1
    np.testing.assert_allclose(out, H.numpy() @ v, rtol=0, atol=1e-10)


def test_power_iteration_matches_exact_on_psd_hessian():
    # softmax regression: a PSD Hessian, so the largest |λ| are the largest λ
    torch.manual_seed(3)
    model = nn.Linear(8, 6).double()
    batch = (torch.randn(64, 8, dtype=torch.float64), torch.randint(0, 6, (64,)))
    loss_fn, theta = make_loss_fn(model, batch)
    top = torch.linalg.eigvalsh(torch.func.hessian(loss_fn)(theta)).flip(0)[:5].numpy()
    matvec = hvp_fn(loss_fn, theta)
    result = power_iteration_deflation(matvec, theta, k=5, tol=1e-12, max_iter=3000)
    np.testing.assert_allclose(result.values, top, rtol=1e-4)
    loose = power_iteration_deflation(matvec, theta, k=5, tol=1e-3)
    assert loose.n_hvp < result.n_hvp


def test_hutchinson_mean_and_stderr_match_exact_variance(exact):
    _, _, _, theta, H, matvec = exact
    n = 200
    est = hutchinson_trace(matvec, theta.numel(), n, seed=0, dtype=torch.float64)
    exact_sd = float(2 * (H**2).sum() - 2 * (H.diagonal() ** 2).sum()) ** 0.5
    assert est.samples.shape == (n,) and est.mean == pytest.approx(est.samples.mean())
    assert abs(est.mean - float(H.trace())) < 3 * est.stderr
    assert est.stderr == pytest.approx(exact_sd / n**0.5, rel=0.15)


def test_hutchinson_is_seeded(exact):
    _, _, _, theta, _, matvec = exact
    a, b = (hutchinson_trace(matvec, theta.numel(), 5, seed=7, dtype=torch.float64)
            for _ in range(2))
    np.testing.assert_array_equal(a.samples, b.samples)


def test_sharpness_vs_edge():
    out = sharpness_vs_edge(50.0, lr=0.02)
    assert out == {"hessian_lambda_max": 50.0, "edge_2_over_lr": 100.0, "sharpness_over_edge": 0.5}
    with pytest.raises(ValueError, match="lr=0"):
        sharpness_vs_edge(1.0, lr=0)


def test_hessian_metrics_flat_dict(exact):
    model, batch, _, _, H, _ = exact
    out = hessian_metrics(model, batch, lr=0.1, k=3, n_probes=20)
    top = torch.linalg.eigvalsh(H).flip(0)[:3]
    for i in range(3):
        assert out[f"hessian_top{i + 1}"] == pytest.approx(float(top[i]), rel=1e-6)
    assert out["sharpness_over_edge"] == pytest.approx(float(top[0]) * 0.1 / 2, rel=1e-6)
    assert out["hessian_trace_stderr"] > 0

