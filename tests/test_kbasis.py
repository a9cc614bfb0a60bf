"""True-gradient effective rank and K-basis adaptation against dense references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradience.telemetry import kbasis as kb
from gradience.telemetry.spectral import spectral_metrics_from_sigma

torch.set_num_threads(1)


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]


def test_effective_rank_matches_spectral_and_known_values():
    assert kb.effective_rank(np.ones(5)) == pytest.approx(5.0)
    assert kb.effective_rank(np.array([1.0, 0, 0])) == pytest.approx(1.0)
    assert math.isnan(kb.effective_rank(np.zeros(3)))
    sigma = np.array([3.0, 2.0, 0.5, 0.1])
    assert kb.effective_rank(sigma) == pytest.approx(spectral_metrics_from_sigma(sigma, (4, 4))["effective_rank"])
    # two equal values and a zero: exp(log 2) = 2
    assert kb.effective_rank(np.array([1.0, 1.0, 0.0])) == pytest.approx(2.0)


def test_prefix_effective_ranks_equal_one_by_one():
    v = np.array([0.5, -2.0, 0.0, 1.0, 3.0])
    expected = [kb.effective_rank(v[:k]) for k in range(1, 6)]
    np.testing.assert_allclose(kb.prefix_effective_ranks(v), expected, rtol=1e-12)


def test_layer_of_and_per_layer():
    assert kb.layer_of("lm.model.layers.3.self_attn.q_proj.weight") == 3
    assert kb.layer_of("lm.model.embed_tokens.weight") is None
    vals = {"m.layers.0.a.weight": 2.0, "m.layers.0.b.weight": 4.0, "m.layers.1.a.weight": 5.0, "m.embed.weight": 9.0}
    assert kb.per_layer(vals) == {0: 3.0, 1: 5.0}
    assert kb.summarise(vals) == {"mean": 5.0, "max": 9.0}


def test_kbasis_gradient_is_diagonal_of_rotated_gradient_and_autograd():
    m, n, k = 7, 5, 3
    g = torch.Generator().manual_seed(0)
    w = torch.randn(m, n, generator=g, dtype=torch.float64)
    x = torch.randn(4, n, generator=g, dtype=torch.float64)
    basis = kb.svd_basis(w)
    U, V = basis.top(k)
    a = torch.randn(k, dtype=torch.float64, generator=g).requires_grad_()
    w_eff = (w + (U * a) @ V.T).detach().requires_grad_()
    loss = lambda W: (torch.tanh(x @ W.T) ** 2).sum()  # noqa: E731
    G = torch.autograd.grad(loss(w_eff), w_eff)[0]
    ga = torch.autograd.grad(loss(w + (U * a) @ V.T), a)[0]
    np.testing.assert_allclose(kb.kbasis_gradient(G, U, V), ga, rtol=1e-10)
    np.testing.assert_allclose(kb.kbasis_gradient(G, U, V), torch.diagonal(U.T @ G @ V), rtol=1e-12)


def test_coverage_and_cosines_against_explicit_projection_matrices():
    m, n = 6, 4
    g = torch.Generator().manual_seed(1)
    w = torch.randn(m, n, generator=g, dtype=torch.float64)
    G = torch.randn(m, n, generator=g, dtype=torch.float64)
    basis = kb.svd_basis(w)
    vecG = G.T.reshape(-1)  # column-major vec
    er_true = kb.effective_rank(torch.linalg.svdvals(G))
    for c in kb.kbasis_coverage(G, basis, [1, 2, 3, 9]):
        U, V = basis.top(c.k)
        M = torch.stack([torch.outer(U[:, i], V[:, i]).T.reshape(-1) for i in range(c.k)], 1)  # mn × K
        p_diag = M @ M.T @ vecG
        p_sub = torch.kron(V @ V.T, U @ U.T) @ vecG
        cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
        assert c.cos_diag == pytest.approx(cos(vecG, p_diag), rel=1e-10)
        assert c.cos_subspace == pytest.approx(cos(vecG, p_sub), rel=1e-10)
        constrained = kb.constrained_gradient(G, U, V)
        np.testing.assert_allclose(constrained.T.reshape(-1), p_diag, atol=1e-12)
        assert c.er_k == pytest.approx(kb.effective_rank(torch.linalg.svdvals(constrained)), rel=1e-8)
        assert c.coverage == pytest.approx(100 * c.er_k / er_true)
    assert kb.kbasis_coverage(G, basis, [9])[0].k == 4  # clamped to min(m, n)
    with pytest.raises(ValueError, match="K must be"):
        kb.kbasis_coverage(G, basis, [0])


def test_k_for_coverage_on_a_known_case():
    # W's basis is the identity; G = diag(g): the K-constrained gradient is diag(g_1..g_K) exactly
    w = torch.diag(torch.tensor([5.0, 4, 3, 2, 1], dtype=torch.float64))
    G = torch.diag(torch.tensor([1.0, 1, 1, 1, 0], dtype=torch.float64))  # ER = 4
    basis = kb.svd_basis(w)
    assert kb.k_for_coverage(G, basis, 95.0) == 4  # ER_3 = 3 = 75 %, ER_4 = 4 = 100 %
    assert kb.k_for_coverage(G, basis, 75.0) == 3
    G2 = torch.zeros(5, 5, dtype=torch.float64)
    G2[0, 1] = 1.0  # off-diagonal in this basis: no K-basis gradient at all
    assert math.isnan(kb.k_for_coverage(G2, basis, 95.0))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 6)
        self.layers = nn.ModuleList([nn.Linear(6, 6) for _ in range(2)])
        self.head = nn.Linear(6, 11, bias=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.emb(t)
        for layer in self.layers:
            h = h + torch.tanh(layer(h))
        return self.head(h)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 11, (4, 5), generator=g), torch.randint(0, 11, (4, 5), generator=g)


def test_true_gradients_of_plain_model_equal_backward():
    model, batch = _Tiny(), _batch()
    grads = kb.true_gradients(model, batch)
    assert set(grads) == {"emb.weight", "layers.0.weight", "layers.1.weight", "head.weight"}
    kb.cross_entropy(model(batch[0]), batch[1]).backward()
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], p.grad)
    model.head.weight.requires_grad_(False)  # frozen weights still get their gradient, and stay frozen
    assert torch.equal(kb.true_gradients(model, batch)["head.weight"], grads["head.weight"])
    assert not model.head.weight.requires_grad


def test_apply_kbasis_trains_only_a_and_true_gradient_is_at_adapted_weights():
    model, batch = _Tiny(), _batch()
    reference = _Tiny()
    a = kb.apply_kbasis(model, k=3, include=lambda n: n.startswith("layers."))
    assert sorted(a) == ["layers.0.weight", "layers.1.weight"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "layers.0.parametrizations.weight.0.a", "layers.1.parametrizations.weight.0.a"]
    torch.testing.assert_close(model(batch[0]), reference(batch[0]))  # a = 0: unchanged function
    with torch.no_grad():
        a["layers.0.weight"].copy_(torch.tensor([0.3, -0.2, 0.1]))
    delta = kb.kbasis_deltas(model)["layers.0.weight"]
    w_eff = reference.layers[0].weight.detach() + (delta.U * delta.a.detach()) @ delta.V.T
    with torch.no_grad():
        reference.layers[0].weight.copy_(w_eff)
    torch.testing.assert_close(model.layers[0].weight, w_eff)
    got, want = kb.true_gradients(model, batch), kb.true_gradients(reference, batch)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name])
    loss = kb.cross_entropy(model(batch[0]), batch[1])
    loss.backward()
    for name, p in a.items():
        torch.testing.assert_close(p.grad, kb.kbasis_gradient(want[name], kb.kbasis_deltas(model)[name].U,
                                                               kb.kbasis_deltas(model)[name].V))
    torch.testing.assert_close(kb.base_weight(model.layers[1]), _Tiny().layers[1].weight.detach())


def test_kbasis_clamps_k_and_rejects_bad_input():
    model = _Tiny()
    a = kb.apply_kbasis(model, k=64)
    assert a["emb.weight"].numel() == 6 and a["head.weight"].numel() == 6
    with pytest.raises(ValueError, match="no 2-D weight"):
        kb.apply_kbasis(_Tiny(), k=2, include=lambda n: False)
    tied = _Tiny()
    tied.head.weight = tied.emb.weight
    with pytest.raises(ValueError, match="tied"):
        kb.apply_kbasis(tied, k=2)


def test_probe_rows():
    from types import SimpleNamespace

    model, batch = _Tiny(), _batch()
    kb.apply_kbasis(model, k=4)
    rows = kb.GradientRankProbe(ks=(2, 4), target=95.0)(SimpleNamespace(model=model, batch=batch))
    by = {(s, m): v for s, m, v in rows}
    grads = kb.true_gradients(model, batch)
    er = kb.gradient_effective_ranks(grads)
    assert by[("layers.0.weight", "grad_er")] == pytest.approx(er["layers.0.weight"])
    assert by[("model", "grad_er_mean")] == pytest.approx(np.mean(list(er.values())))
    assert by[("model", "grad_er_max")] == pytest.approx(max(er.values()))
    assert 0 < by[("layers.1.weight", "k2_cos")] <= by[("layers.1.weight", "k4_cos")] <= 1 + 1e-12
    assert by[("layers.1.weight", "k4_cos")] <= by[("layers.1.weight", "k4_cos_subspace")] + 1e-12
    assert ("model", "k95") in by
    assert by[("model", "grad_er_layer1")] == pytest.approx(er["layers.1.weight"])  # one matrix per layer here
    k95 = kb.k_for_coverage(grads["layers.0.weight"], kb.svd_basis(kb.base_weight(model.layers[0])), 95.0)
    assert by[("model", "k95_layer0")] == pytest.approx(k95) or math.isnan(k95)
    assert ("model", "grad_er_layer2") not in by
