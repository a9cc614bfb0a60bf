"""Fourier measurements against signals whose spectra are known, and the edge tracker's parameter subset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradience.telemetry import edge, fourier


def test_positional_power_of_pure_tones():
    T, d = 24, 5
    t = np.arange(T)
    rng = np.random.default_rng(0)
    amp = rng.standard_normal((3, 1, d))
    nyquist = amp * np.cos(np.pi * t)[None, :, None]  # (−1)^t: the open/close alternation
    shares = fourier.positional_power(nyquist)
    assert shares.shape == (T // 2 + 1,) and shares.sum() == pytest.approx(1.0)
    assert shares[-1] == pytest.approx(1.0, abs=1e-12)
    constant = np.broadcast_to(amp, (3, T, d))
    assert fourier.positional_power(constant)[0] == pytest.approx(1.0)
    mixed = constant + nyquist  # equal amplitude: DC power T² a², Nyquist T² a² → half each
    s = fourier.positional_power(mixed)
    assert s[0] == pytest.approx(0.5) and s[-1] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        fourier.positional_power(np.zeros((2, 3)))


def test_attention_uniformity_uniform_zero_and_one_hot_log_t():
    B, H, T = 2, 3, 6
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    att = np.broadcast_to(uniform, (B, H, T, T))
    np.testing.assert_allclose(fourier.attention_uniformity(att), 0.0, atol=1e-12)
    first = np.zeros((T, T))
    first[:, 0] = 1.0  # every query looks at token 0 only: KL = log(t + 1)
    kl = fourier.attention_uniformity(np.broadcast_to(first, (B, H, T, T)))
    np.testing.assert_allclose(kl, np.log(np.arange(1, T + 1)).mean())


def test_group_concentration_of_a_single_mode_and_of_noise():
    G = 13
    d = np.repeat(np.arange(G), 20)
    one = fourier.group_concentration(np.cos(2 * np.pi * d / G) + 3.0, d, G)
    assert one.peak == 1 and one.concentration == pytest.approx(1.0) and one.elevation == pytest.approx(G // 2)
    np.testing.assert_allclose(one.profile, np.cos(2 * np.pi * np.arange(G) / G) + 3.0)
    two = fourier.group_concentration(np.cos(2 * np.pi * d / G) + np.cos(2 * np.pi * 3 * d / G), d, G)
    assert two.concentration == pytest.approx(0.5) and two.peak in (1, 3)
    flat = fourier.group_concentration(np.ones_like(d, dtype=float), d, G)
    assert np.isnan(flat.concentration)  # a constant response has no non-DC power
    missing = fourier.group_concentration(np.array([1.0, 2.0, 1.0]), np.array([0, 1, 3]), 5)
    assert np.isnan(missing.profile[2]) and np.isclose(missing.shares.sum(), 1.0)
    with pytest.raises(ValueError):
        fourier.group_concentration(np.ones(3), np.zeros(3, dtype=int), 2)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(3, 3, bias=True)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.attn(x)))


def test_tracker_subset_embed_and_restrict():
    torch.manual_seed(0)
    net = _Net()
    tracker = edge.EdgeTracker(net, window=3, include=edge.attention_weights)
    assert tracker.n_params == 9  # attn.weight only (a matrix whose name holds "attn")
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.5)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    before = net.attn.weight.detach().clone()
    with tracker.attach():
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    grad, decay = tracker.parts()
    assert grad.shape == (3, 9)
    total = (grad + decay).sum(0).double()
    torch.testing.assert_close(total, (net.attn.weight.detach() - before).reshape(-1).double(), rtol=1e-5, atol=1e-6)
    v = tracker.direction()
    full = tracker.embed(v)
    assert full.shape == (9 + 3 + 6 + 2,) and torch.equal(full[:9], v) and not full[9:].any()
    f, theta = edge.flat_evaluator(net, x, y)
    f_sub, theta_sub = tracker.restrict(f, theta)
    assert theta_sub.shape == (9,)
    assert f_sub(theta_sub) == pytest.approx(f(theta))
    assert f_sub(theta_sub + 0.3 * v) == pytest.approx(f(theta + 0.3 * full))
    with pytest.raises(ValueError, match="selects none"):
        edge.EdgeTracker(net, window=3, include=lambda n, p: False)
