"""Gram-trick Fisher metrics against an explicit P × P Fisher matrix (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradience.telemetry.curvature import flatten, trainable_params
from gradience.telemetry.fisher import (
    batch_grad,
    fisher_gradients,
    fisher_metrics,
    fisher_spectrum,
    natural_gradient_alignment,
    per_sample_grads,
    per_sample_losses,
    sample_labels,
)

DAMPINGS = (1e-3, 1e-2, 1e-1)


def classifier() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    return model, (torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,)))


class TinySeq(nn.Module):
    """Embedding → linear logits per position: a sequence model with ``[n, T, V]`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.out = nn.Embedding(7, 4), nn.Linear(4, 7)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(tokens)))


def explicit_grads(model: nn.Module, batch, loss) -> torch.Tensor:
    """Per-sample gradients one backward pass at a time."""
    rows = []
    for x, y in zip(*batch, strict=True):
        model.zero_grad()
        loss(model(x[None]), y[None]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


def explicit_alignment(G: torch.Tensor, g: torch.Tensor, lam: float) -> float:
    F = G.T @ G / G.shape[0]
    x = torch.linalg.solve(F + lam * torch.eye(F.shape[0], dtype=F.dtype), g)
    return float(g @ x / (g.norm() * x.norm()))


@pytest.fixture(scope="module")
def problem():
    model, batch = classifier()
    return model, batch, explicit_grads(model, batch, nn.functional.cross_entropy)


def test_per_sample_grads_match_one_at_a_time(problem):
    model, batch, G = problem
    torch.testing.assert_close(per_sample_grads(model, batch), G, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(batch_grad(model, batch), G.mean(0), rtol=1e-12, atol=1e-14)


def test_sequence_rows_average_their_non_ignored_tokens():
    torch.manual_seed(1)
    model = TinySeq().double()
    x = torch.randint(0, 7, (4, 5))
    y = torch.randint(0, 7, (4, 5))
    y[0, 3:] = -100
    y[2] = -100  # a row with no targets: loss 0, zero gradient

    def loss(logits, t):
        return per_sample_losses(logits, t)[0]

    G = per_sample_grads(model, (x, y))
    torch.testing.assert_close(G, explicit_grads(model, (x, y), loss), rtol=1e-12, atol=1e-14)
    assert float(G[2].abs().max()) == 0.0
    row0 = nn.functional.cross_entropy(model(x[:1])[0, :3], y[0, :3])
    assert per_sample_losses(model(x), y)[0].item() == pytest.approx(row0.item(), rel=1e-13)


def test_spectrum_trace_and_trace_sq_equal_explicit_fisher(problem):
    _, _, G = problem
    F = G.T @ G / G.shape[0]
    eig = torch.linalg.eigvalsh(F).flip(0)
    out = fisher_spectrum(G, k=10)
    got = np.array([out[f"fisher_top{i}"] for i in range(1, 11)])
    np.testing.assert_allclose(got, eig[:10].numpy(), rtol=1e-8)
    assert out["fisher_trace"] == pytest.approx(float(F.trace()), rel=1e-10)
    assert out["fisher_trace_sq"] == pytest.approx(float((F @ F).trace()), rel=1e-10)


def test_alignment_equals_explicit_solve_empirical(problem):
    _, _, G = problem
    g = G.mean(0)
    got = natural_gradient_alignment(G, g, DAMPINGS)
    for lam in DAMPINGS:
        assert got[lam] == pytest.approx(explicit_alignment(G, g, lam), rel=1e-8)


def test_alignment_equals_explicit_solve_with_gradient_off_the_row_space(problem):
    model, batch, G_emp = problem
    G = fisher_gradients(model, batch, kind="true", seed=3)
    g = G_emp.mean(0)
    got = natural_gradient_alignment(G, g, DAMPINGS)
    exact = [explicit_alignment(G, g, lam) for lam in DAMPINGS]
    np.testing.assert_allclose([got[lam] for lam in DAMPINGS], exact, rtol=1e-8)
    assert exact[0] < 0.9  # the residual term matters here, so the test can fail


def test_true_fisher_trace_is_unbiased(problem):
    model, batch, _ = problem
    logits = model(batch[0]).detach()
    probs = torch.softmax(logits, -1)
    per_label = [explicit_grads(model, (batch[0], torch.full((16,), c)),
                                nn.functional.cross_entropy) for c in range(3)]
    exact = float(sum((probs[:, c] * (per_label[c] ** 2).sum(1)).sum() for c in range(3)) / 16)
    traces = np.array([fisher_spectrum(fisher_gradients(model, batch, "true", seed=s))
                       ["fisher_trace"] for s in range(60)])
    se = traces.std(ddof=1) / np.sqrt(traces.size)
    assert abs(traces.mean() - exact) < 3 * se


def test_sampled_labels_are_seeded_and_keep_ignored_positions():
    model = TinySeq().double()
    x = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(0))
    y = torch.full((3, 6), -100)
    y[:, :2] = 1
    a, b = sample_labels(model, (x, y), seed=5), sample_labels(model, (x, y), seed=5)
    assert torch.equal(a, b) and torch.equal(a[:, 2:], y[:, 2:])
    assert int(a[:, :2].min()) >= 0 and int(a[:, :2].max()) < 7


def test_fisher_metrics_dict(problem):
    model, batch, G = problem
    out = fisher_metrics(model, batch, kind="empirical", dampings=(1e-2,), k=3)
    assert set(out) == {"fisher_top1", "fisher_top2", "fisher_top3", "fisher_trace",
                        "fisher_trace_sq", "ng_alignment@1e-02"}
    assert out["ng_alignment@1e-02"] == pytest.approx(explicit_alignment(G, G.mean(0), 1e-2),
                                                      rel=1e-8)
    assert len(flatten(trainable_params(model))) == G.shape[1]


@pytest.mark.parametrize(("kwargs", "match"), [({"kind": "exact"}, "kind='exact'"),
                                                ({"dampings": (0.1, 0.0)}, "dampings")])
def test_bad_input_is_named(problem, kwargs, match):
    model, batch, _ = problem
    with pytest.raises(ValueError, match=match):
        fisher_metrics(model, batch, **kwargs)

