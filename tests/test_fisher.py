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
    span_alignment,
    subspace_share,
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



def explicit_span_alignment(G: torch.Tensor, g: torch.Tensor, lam: float) -> tuple[float, float]:
    """From the explicit P × P Fisher: its range by eigh, ∇L_F = P_F ∇L, x = (F + λI)⁺ ∇L_F."""
    F = G.T @ G / G.shape[0]
    w, Q = torch.linalg.eigh(F)
    Q = Q[:, w > 1e-10 * w.max()]
    gF = Q @ (Q.T @ g)
    x = torch.linalg.pinv(F, hermitian=True) @ gF if lam == 0 else torch.linalg.solve(
        F + lam * torch.eye(F.shape[0], dtype=F.dtype), gF)
    return float(gF @ x / (gF.norm() * x.norm())), float(gF @ gF / (g @ g))


def test_span_alignment_equals_the_explicit_fisher_inside_its_span(problem):
    model, batch, G_emp = problem
    G = fisher_gradients(model, batch, kind="true", seed=3)  # ∇L (true labels) is not in its span
    g = G_emp.mean(0)
    got = span_alignment(G, g, (0.0, 1e-3, 1e-1))
    for lam in (0.0, 1e-3, 1e-1):
        cos, frac = explicit_span_alignment(G, g, lam)
        assert got[f"cos@{lam:g}"] == pytest.approx(cos, rel=1e-7)
    assert got["span_fraction"] == pytest.approx(frac, rel=1e-9)
    assert 0.5 < got["span_fraction"] < 0.99  # rank 16 of 103 parameters: the projection matters
    # the empirical Fisher's ∇L is the mean of its rows: entirely inside its span
    assert span_alignment(G_emp, g)["span_fraction"] == pytest.approx(1.0, rel=1e-9)
    # full-space NG alignment at a small damping is pulled towards the out-of-span part
    lam = 1e-3 * float(torch.linalg.eigvalsh(G.T @ G / 16).max())
    full = natural_gradient_alignment(G, g, (lam,))[lam]
    assert abs(full - explicit_alignment(G, g, lam)) < 1e-8 and full != pytest.approx(got["cos@0.001"], abs=0.05)


def test_span_alignment_is_one_along_an_eigenvector_and_rejects_negative_damping():
    G = torch.randn(4, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, Q = torch.linalg.eigh(G.T @ G / 4)
    assert span_alignment(G, Q[:, -1] + 1e-3 * Q[:, 0], (0.0,))["cos@0"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="≥ 0"):
        span_alignment(G, Q[:, -1], (-1.0,))


def test_subspace_share_against_an_explicit_projector():
    gen = torch.Generator().manual_seed(4)
    W = {"a": torch.randn(3, 4, generator=gen, dtype=torch.float64)}
    layout = [("a", torch.Size([3, 4])), ("b", torch.Size([5]))]
    G = torch.randn(6, 17, generator=gen, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(W["a"])
    basis = torch.stack([torch.outer(U[:, i], Vh[j]).reshape(-1) for i in range(2) for j in range(2)])
    P = basis.T @ basis  # projector onto span{u_i v_jᵀ}, i, j ≤ 2, in the 12-dim block of "a"
    Ga = G[:, :12]
    inside, energy, chance = subspace_share(G, layout, W, rank=2)["a"]
    assert inside == pytest.approx(float(torch.einsum("si,ij,sj->", Ga, P, Ga)), rel=1e-10)
    assert energy == pytest.approx(float((Ga**2).sum()), rel=1e-12) and chance == pytest.approx(energy * 4 / 12)
    with pytest.raises(ValueError, match="must be a matrix"):
        subspace_share(G, layout, {"b": torch.ones(5)})
