import math

import numpy as np
import pytest
import torch
from torch import nn

from gradience.tasks import Split
from gradience.telemetry import edge
from gradience.telemetry.recorder import Cadence, Recorder
from gradience.training import TrainConfig, evaluate, train


def _orthonormal(n: int, k: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)))
    return q


def test_edge_spectrum_matches_explicit_gram_and_second_moment():
    X = torch.as_tensor(np.random.default_rng(0).standard_normal((6, 40)))
    spec = edge.edge_spectrum(X, k=3)
    ref = np.linalg.eigh(X.numpy() @ X.numpy().T)[0][::-1]
    np.testing.assert_allclose(spec.eigenvalues, ref, rtol=1e-10)
    vals, vecs = np.linalg.eigh(X.numpy().T @ X.numpy())  # the P × P matrix, explicit
    np.testing.assert_allclose(spec.eigenvalues[:3], vals[::-1][:3], rtol=1e-10)
    for i in range(3):
        assert abs(float(spec.directions[:, i] @ torch.as_tensor(vecs[:, -1 - i]))) == pytest.approx(1, abs=1e-10)
    # sign convention: net motion along v_1 is ≥ 0
    assert float((X @ spec.directions[:, 0]).sum()) >= 0


def _synthetic(W=8, P=30, s=(5.0, 2.0, 1.0), decay_along_edge=None, seed=0):
    """X = Σ s_i u_i q_iᵀ (u orthonormal in time, q orthonormal in parameter space) and a split
    X = G + D whose decay part has coefficients ``b`` along q_1 and a component along q_4 ⟂ X."""
    U = _orthonormal(W, 3, seed)
    U = U * np.where(U.sum(0) < 0, -1.0, 1.0)
    Q = _orthonormal(P, 4, seed + 1)
    X = sum(si * np.outer(U[:, i], Q[:, i]) for i, si in enumerate(s))
    b = decay_along_edge if decay_along_edge is not None else np.random.default_rng(seed + 2).standard_normal(W)
    D = np.outer(b, Q[:, 0]) + np.outer(np.linspace(-1, 1, W), Q[:, 3])
    return torch.as_tensor(X - D), torch.as_tensor(D), U, Q, b


def test_known_dominant_direction_and_split():
    G, D, U, Q, b = _synthetic()
    metrics, v = edge.window_metrics(G, D)
    assert abs(float(v @ torch.as_tensor(Q[:, 0]))) == pytest.approx(1, abs=1e-10)
    assert float(v @ torch.as_tensor(Q[:, 0])) > 0  # net motion s_1 Σu_1 > 0 is along +q_1
    assert metrics["edge_sigma1_sq"] == pytest.approx(25) and metrics["edge_sigma2_sq"] == pytest.approx(4)
    assert metrics["edge_sigma3_sq"] == pytest.approx(1) and metrics["edge_gap"] == pytest.approx(2.5)
    assert metrics["edge_gap23"] == pytest.approx(2.0) and metrics["edge_share"] == pytest.approx(25 / 30)
    a = 5.0 * U[:, 0] - b  # gradient part along the edge
    assert metrics["edge_grad_energy"] == pytest.approx(a @ a / (a @ a + b @ b), rel=1e-10)
    assert metrics["edge_grad_decay_cos"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-10)
    assert metrics["edge_grad_decay_agree"] == pytest.approx(np.mean(a * b > 0))


def test_two_phases_gradient_driven_then_aligned_compression():
    U = _orthonormal(8, 3, 0)
    U = U * np.where(U.sum(0) < 0, -1.0, 1.0)
    # before: decay has nothing along the edge → gradient energy 1
    m_before, _ = edge.window_metrics(*_synthetic(decay_along_edge=np.zeros(8))[:2])
    assert m_before["edge_grad_energy"] == pytest.approx(1.0)
    # after: decay carries 95 % of the motion along the edge, gradient the same sign → 0.25 % energy, cos 1
    m_after, _ = edge.window_metrics(*_synthetic(decay_along_edge=0.95 * 5.0 * U[:, 0])[:2])
    assert m_after["edge_grad_energy"] == pytest.approx(0.05**2 / (0.05**2 + 0.95**2), rel=1e-8)
    assert m_after["edge_grad_decay_cos"] == pytest.approx(1.0, abs=1e-10)
    assert m_after["edge_grad_decay_agree"] == 1.0


def test_ring_buffer_keeps_the_last_window_in_order():
    tracker = edge.EdgeTracker(nn.Linear(2, 1, bias=False), window=3)
    for i in range(5):
        tracker.push(torch.full((2,), float(i)), torch.zeros(2))
    grad, _ = tracker.parts()
    assert grad[:, 0].tolist() == [2.0, 3.0, 4.0] and tracker.updates == 5
    assert tracker.history["grad_norm"][-1] == pytest.approx(4 * math.sqrt(2))


def test_tracker_splits_adamw_updates_exactly():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    lr, wd, betas, eps = 0.05, 0.3, (0.9, 0.98), 1e-8
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=wd)
    tracker = edge.EdgeTracker(model, window=4)
    m = v = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    with tracker.attach():
        for t in range(1, 7):
            theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
            opt.step()
            m, v = betas[0] * m + (1 - betas[0]) * g, betas[1] * v + (1 - betas[1]) * g * g
            adam = -lr * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
            grad_part, decay_part = (p[-1].double() for p in tracker.parts())
            torch.testing.assert_close(decay_part, -lr * wd * theta, rtol=1e-6, atol=1e-9)
            torch.testing.assert_close(grad_part, adam, rtol=1e-4, atol=1e-7)
    assert tracker.updates == 6
    opt.step()  # detached: no longer recorded
    assert tracker.updates == 6


def test_coupled_decay_is_refused_and_zero_decay_accepted():
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="couples decay"):
        edge.decay_part(torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1), list(model.parameters()))
    with pytest.raises(ValueError, match="couples decay"):
        edge.decay_part(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1),
                        list(model.parameters()))
    d = edge.decay_part(torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5), list(model.parameters()))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(d, -0.05 * theta)


def _toy_split(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] > 0).long()
    return Split(x[: n // 2], y[: n // 2], x[n // 2:], y[n // 2:])


def test_tracker_probe_inside_the_training_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    tracker = edge.EdgeTracker(model, window=5)
    rec = Recorder("r")
    with tracker.attach():
        train(model, _toy_split(), TrainConfig(steps=20, lr=0.01, weight_decay=0.1), recorder=rec,
              cadence=Cadence(5, 20), probes=[tracker.probe()])
    assert tracker.updates == 20
    f = rec.frame()
    at10 = f[(f.step == 10)].set_index("metric").value
    assert at10["edge_window"] == 5 and 0 <= at10["edge_grad_energy"] <= 1
    assert at10["edge_sigma1_sq"] >= at10["edge_sigma2_sq"] >= at10["edge_sigma3_sq"] >= 0
    assert 0 <= f[f.step == 15].set_index("metric").value["edge_rotation"] <= 90
    assert "edge_window" not in set(f[f.step == 0].metric)  # fewer than two updates: nothing logged
    v = tracker.direction()
    assert v.shape == (sum(p.numel() for p in model.parameters()),)
    assert float(v.norm()) == pytest.approx(1.0)


def _quadratic(P=20, seed=0):
    rng = np.random.default_rng(seed)
    h, c, theta = rng.uniform(0.5, 3.0, P), rng.standard_normal(P), rng.standard_normal(P)
    H, C = torch.as_tensor(h), torch.as_tensor(c)

    def f(t):
        loss = float(0.5 * (H * (t.double() - C) ** 2).sum())
        return loss, -loss  # a stand-in "accuracy" that moves with the loss

    return f, torch.as_tensor(theta), h, c


def test_perturbation_curve_on_a_quadratic():
    f, theta, h, c = _quadratic()
    grad = h * (theta.numpy() - c)
    v = np.zeros(20)
    v[3] = 2.0  # not unit: the helper normalises
    eps = [-0.5, 0.1, 0.5, 1.0]
    curve = edge.perturbation_curve(f, theta, torch.as_tensor(v), eps, n_random=5, seed=3)
    expected = [e * grad[3] + 0.5 * e * e * h[3] for e in eps]
    np.testing.assert_allclose(curve.edge, expected, rtol=1e-10)
    R = edge.random_directions(5, 20, 3).numpy()
    ref = np.array([[e * grad @ r + 0.5 * e * e * (h * r * r).sum() for e in eps] for r in R])
    np.testing.assert_allclose(curve.random, ref, rtol=1e-9, atol=1e-12)


def test_ablation_on_a_quadratic():
    f, theta, h, c = _quadratic()
    th = theta.numpy()
    k = int(np.argmax(np.abs(th)))
    v = torch.zeros(20, dtype=torch.float64)
    v[k] = -1.0
    ab = edge.ablation_impact(f, theta, v, n_random=16, seed=1)
    base = 0.5 * (h * (th - c) ** 2).sum()
    edge_loss = base + 0.5 * h[k] * (c[k] ** 2 - (th[k] - c[k]) ** 2)  # θ_k → 0
    assert ab.base[0] == pytest.approx(base) and ab.edge[0] == pytest.approx(edge_loss)
    R = edge.random_directions(16, 20, 1).numpy()
    rand = np.array([0.5 * (h * (th - (th @ r) * r - c) ** 2).sum() for r in R])
    np.testing.assert_allclose(ab.random[:, 0], rand, rtol=1e-10)
    assert ab.loss_ratio == pytest.approx(abs(edge_loss - base) / np.abs(rand - base).mean(), rel=1e-10)
    projected = edge.project_out(theta, v)
    assert float(projected.double() @ v) == pytest.approx(0, abs=1e-12)


def test_flat_evaluator_matches_evaluate_and_leaves_model_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    s = _toy_split()
    f, theta = edge.flat_evaluator(model, s.x_test, s.y_test)
    loss, acc = evaluate(model, s.x_test, s.y_test)
    assert f(theta) == pytest.approx((loss, acc), rel=1e-6)
    before = [p.clone() for p in model.parameters()]
    f(torch.zeros_like(theta))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    ab = edge.ablation_impact(f, theta, torch.ones_like(theta), n_random=3)
    assert ab.random.shape == (3, 2)


def test_probes_linear_reference_and_nonlinear_targets():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 6))
    w = rng.standard_normal(6)
    y_lin = X @ w + 0.3 * rng.standard_normal(600)
    tr, te = slice(0, 400), slice(400, 600)
    r2 = edge.probe_r2("linear", X[tr], y_lin[tr], X[te], y_lin[te], alpha=1e-8)
    A = np.c_[X[tr], np.ones(400)]
    coef = np.linalg.lstsq(A, y_lin[tr], rcond=None)[0]
    pred = np.c_[X[te], np.ones(200)] @ coef
    ref = 1 - ((y_lin[te] - pred) ** 2).sum() / ((y_lin[te] - y_lin[te].mean()) ** 2).sum()
    assert r2 == pytest.approx(ref, abs=1e-8)
    y_sq = X[:, 0] ** 2 + X[:, 1] * X[:, 2]  # invisible to a linear probe
    scores = edge.probe_scores(X[tr], y_sq[tr], X[te], y_sq[te], pca_dim=0)
    assert scores["probe_r2_linear"] < 0.1
    assert scores["probe_r2_quadratic"] > 0.999
    assert scores["probe_r2_mlp"] > 0.6
    # PCA branch: the signal spans the 6 leading principal directions of 46 features (rotated, so the
    # coordinates mix), PCA to 8 keeps them and the quadratic probe still recovers y_sq
    Q = _orthonormal(46, 46, 5)
    wide = np.c_[X, 0.05 * rng.standard_normal((600, 40))] @ Q.T
    assert edge.probe_r2("quadratic", wide[tr], y_sq[tr], wide[te], y_sq[te], pca_dim=8) > 0.99
    with pytest.raises(ValueError, match="probe kind"):
        edge.probe_r2("cubic", X[tr], y_lin[tr], X[te], y_lin[te])


def test_residual_stream_of_a_tiny_llama():
    from gradience.models.transformer import CausalLM, tiny_llama

    model = CausalLM(tiny_llama(vocab=8, d_model=16, n_layers=2, n_heads=2, d_mlp=32, max_len=12))
    hs = edge.residual_stream(model, torch.zeros(3, 10, dtype=torch.long))
    assert len(hs) == 3 and hs[1].shape == (3, 10, 16)
