"""The Rosetta Stone's 15 rules on small matrices and models with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradience.rosetta as ro

torch.set_num_threads(1)
F32_EPS = 2.0**-23
DIAG = np.diag([10.0, 1.0, 1e-2, 1e-4])  # √ε·σ_max = 3.45e-3: σ_k = 1e-2 (k = 3), 1e-4 is below the floor


def _with_sigma(sigma, m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.linalg.qr(torch.randn(m, len(sigma), generator=g, dtype=torch.float64))[0]
    q = torch.linalg.qr(torch.randn(n, len(sigma), generator=g, dtype=torch.float64))[0]
    return p @ torch.diag(torch.tensor(sigma, dtype=torch.float64)) @ q.T


def test_rules_table_names_existing_functions():
    assert sorted(ro.RULES) == list(range(1, 16))
    for _, _, names in ro.RULES.values():
        assert all(callable(getattr(ro, f)) for f in names)


def test_precision_constants_and_sigma_k():
    c = ro.precision_constants(torch.float32)
    assert c.eps == F32_EPS and c.sqrt_eps == pytest.approx(3.4527e-4, rel=1e-4)
    assert c.lr_min == F32_EPS and c.lr_max == pytest.approx(2896.3, rel=1e-4)
    assert (c.residual_min, c.residual_max) == (c.sqrt_eps, c.lr_max) and c.eigengap_threshold == 2.0
    assert ro.precision_constants(torch.float64).eps == 2.0**-52
    with pytest.raises(ValueError, match="floating"):
        ro.precision_constants(torch.int32)
    assert ro.sigma_k(np.diag(DIAG)) == (3, 1e-2)
    assert ro.sigma_k(np.diag(DIAG), torch.float64) == (4, 1e-4)  # float64's floor 1.5e-7 keeps 1e-4
    assert ro.sigma_k(np.zeros(3)) == (0, 0.0)
    gap, ratio = ro.eigengap(np.diag(DIAG))
    assert gap == pytest.approx(1e-2 - 1e-4) and ratio == pytest.approx(100.0)


def _quadratic():
    """L(w) = mean((Xw − y)²), X = [[2,0,0],[0,1,0],[0,0,1],[0,0,0]], y = 0, w = (1,1,1):
    H = 2XᵀX/4 = diag(2, ½, ½) → λ_max = 2; L = 1.5, g = (2, ½, ½), ‖g‖² = 4.5."""
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(1.0)
    x = torch.tensor([[2.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.float64)
    return model, (x, torch.zeros(4, dtype=torch.float64))


def _mse(logits, y):
    return ((logits.squeeze(-1) - y) ** 2).mean()


def test_step_size_controller_on_a_quadratic():
    model, batch = _quadratic()
    s = ro.mass_step_size(model, batch, _mse, lanczos_tol=1e-10)
    assert s.ceiling == pytest.approx(1.0, rel=1e-8)  # 2/λ_max
    assert s.sps == pytest.approx(1.5 / 4.5)  # Polyak
    assert s.weyl == pytest.approx(math.sqrt(3) / math.sqrt(4.5))  # σ(W)=‖w‖=√3 over ‖g‖₂
    assert (s.step, s.binding) == (pytest.approx(1 / 3), "sps")
    assert ro.mass_step_size(model, batch, _mse, loss_floor=1.2).sps == pytest.approx(0.3 / 4.5)
    # the chosen step decreases the loss
    with torch.no_grad():
        before = _mse(model(batch[0]), batch[1])
        g = torch.tensor([2.0, 0.5, 0.5], dtype=torch.float64)
        model.weight -= s.step * g
        assert _mse(model(batch[0]), batch[1]) < before


def test_step_terms_and_clamp():
    assert ro.ceiling_step(4.0) == 0.5 and ro.ceiling_step(-1.0) == math.inf
    assert ro.polyak_step(2.0, 4.0) == 0.5 and ro.polyak_step(1.0, 0.0) == math.inf
    assert ro.polyak_step(0.5, 1.0, loss_floor=1.0) == 0.0
    w = torch.tensor(DIAG)
    d = torch.zeros(4, 4, dtype=torch.float64)
    d[0, 1] = 0.5  # ‖D‖₂ = 0.5
    assert ro.weyl_step([(w, d)]) == pytest.approx(1e-2 / 0.5)
    assert ro.weyl_step([(w, torch.zeros_like(d))]) == math.inf
    lo = ro.mass_step(1e-9, 5.0, 5.0)
    assert (lo.step, lo.binding) == (F32_EPS, "lr_min")
    hi = ro.mass_step(math.inf, math.inf, math.inf)
    assert hi.binding == "lr_max" and hi.step == pytest.approx(2896.3, rel=1e-4)
    assert ro.mass_step(0.3, 0.2, 0.1).binding == "weyl"


def test_adam_epsilon_and_decay_scale():
    assert ro.adam_epsilon(DIAG) == pytest.approx(math.sqrt(F32_EPS) * 100)  # precision floor wins
    assert ro.adam_epsilon(np.diag([1.0, 0.5, 0.2])) == pytest.approx(0.04)  # σ_k² wins
    assert ro.decay_scale(DIAG) == pytest.approx(1e-3)
    model = nn.Linear(4, 4, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(DIAG))
    assert ro.weight_decays(model, 0.1) == {"weight": pytest.approx(1e-4)}


def test_scaled_gd_and_cayley():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    gA, gB = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    dA, dB = ro.scaled_gd_directions(A, B, gA, gB, eps=0.1)
    eye = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(dB, gB @ torch.linalg.inv(A @ A.T + 0.1 * eye))
    torch.testing.assert_close(dA, torch.linalg.inv(B.T @ B + 0.1 * eye) @ gA)
    X = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0]
    G = torch.randn(6, 2, generator=g, dtype=torch.float64)
    Y = ro.cayley_retraction(X, G, tau=0.7)
    torch.testing.assert_close(Y.T @ Y, eye, atol=1e-12, rtol=0)
    W = G @ X.T - X @ G.T
    tau = 1e-6
    torch.testing.assert_close((ro.cayley_retraction(X, G, tau) - X) / tau, -W @ X, atol=1e-5, rtol=0)


def test_budget_schedule_stop():
    d = torch.zeros(4, 4, dtype=torch.float64)
    d[2, 3] = 5e-3
    assert ro.budget_ratio(torch.tensor(DIAG), d) == pytest.approx(0.5)
    assert ro.lr_multiplier(0, 100) == 1.0 and ro.lr_multiplier(50, 100, cosine=True) == pytest.approx(0.5)
    assert ro.lr_multiplier(100, 100, cosine=True) == pytest.approx(0.0)
    assert ro.should_stop([1.0, 0.5]) == (False, "")
    assert ro.should_stop([1.0, 1.0 + 1e-5]) == (True, "loss_stable")
    assert ro.should_stop([1e-5]) == (True, "loss_below_sqrt_eps")
    assert ro.should_stop([1.0, 0.5], [0.2, 0.95]) == (True, "budget_exhausted")


def test_critical_batch_size():
    g = torch.tensor([[1.0, 1], [1, -1], [3, 1], [3, -1]])  # ḡ=(2,0); tr Σ̂ = 8/3; ‖G‖² = 4 − (8/3)/4
    assert ro.critical_batch_size(g) == pytest.approx((8 / 3) / (10 / 3))
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])
    rows = []
    for i in range(6):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert ro.critical_batch_size(model=model, x=x, y=y) == pytest.approx(
        ro.critical_batch_size(torch.stack(rows)), rel=1e-8)
    with pytest.raises(ValueError, match="needs per_example"):
        ro.critical_batch_size(model=model)


def test_lora_scale_bound_and_excess():
    b = ro.lora_scale_bound(DIAG, 0.5)
    assert b["weyl"] == pytest.approx(0.02) and b["gap"] == pytest.approx((1e-2 - 1e-4) / 1.0)
    assert ro.lora_scale_bound(DIAG, 0.0)["weyl"] == math.inf
    A = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64)
    B = torch.tensor([[0.5], [0], [0], [0]], dtype=torch.float64)
    assert ro.scale_excess(DIAG, A, B, scale=2.0) == pytest.approx(100.0)  # 2·0.5/0.01


def test_peft_scale_excess_and_claim_summary():
    from peft import LoraConfig, get_peft_model

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4, bias=False)

        def forward(self, x):
            return self.lin(x)

    net = Net()
    with torch.no_grad():
        net.lin.weight.copy_(torch.tensor(DIAG, dtype=torch.float32))
    model = get_peft_model(net, LoraConfig(r=2, lora_alpha=4, target_modules=["lin"]))
    mod = model.base_model.model.lin
    with torch.no_grad():
        mod.lora_A["default"].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]]))
        mod.lora_B["default"].weight.copy_(torch.tensor([[0.5, 0], [0, 0.25], [0, 0], [0, 0]]))
    table = ro.peft_scale_excess(model)
    row = table.iloc[0]
    assert row.module == "lin" and row.r == 2 and row.scale == 2.0
    assert row.ba_norm == pytest.approx(0.5) and row.sigma_k == pytest.approx(1e-2, rel=1e-6)
    assert row.excess == pytest.approx(100.0, rel=1e-5)
    s = ro.scale_claim_summary([0.5, 30.0, 100.0, math.inf])
    assert s == {"n": 3.0, "min": 0.5, "median": 30.0, "max": 100.0, "fraction_over": pytest.approx(2 / 3),
                 "fraction_over_lower": pytest.approx(2 / 3)}
    assert math.isnan(ro.scale_claim_summary([])["median"])


def test_rank_targets_dropout():
    flat, half = np.eye(4), np.diag([1.0, 1.0, 0.0, 0.0])
    assert ro.tail_dims(flat) == 0 and ro.tail_dims(half) == 2
    assert ro.tail_dims(_with_sigma([1.0] * 4, 6, 4)) == 0  # orthonormal columns: erank 4 − rounding
    assert ro.geometric_dropout(half) == pytest.approx(0.25) and ro.geometric_dropout(half, rank=1) == pytest.approx(0.125)
    assert ro.geometric_dropout(flat) == pytest.approx(0.0)
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(_with_sigma([1.0] * 4, 4, 4).float())
        model[1].weight.copy_(torch.tensor(half))
    table = ro.spectral_decay_table(model)
    assert table.tail_dims.tolist() == [0, 2] and table.target.tolist() == [False, True]
    assert table.decay_ratio.iloc[0] == pytest.approx(1.0, rel=1e-5)
    assert ro.select_target_modules(model) == ["1"]


def test_spectral_init_norms():
    W = _with_sigma([5.0, 2.0, 0.3, 0.1, 1e-5], 6, 5)
    A, B = ro.spectral_init(W, r=3, seed=1)
    assert A.shape == (3, 5) and B.shape == (6, 3)
    assert float(torch.linalg.matrix_norm(A, 2)) == pytest.approx(math.sqrt(0.1))
    assert float(torch.linalg.matrix_norm(B, 2)) == pytest.approx(math.sqrt(0.1))
    np.testing.assert_allclose(torch.linalg.svdvals(B @ A)[:3], [0.1] * 3, rtol=1e-10)
    assert ro.lora_scale_bound(W, float(torch.linalg.matrix_norm(B @ A, 2)))["weyl"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="r must be"):
        ro.spectral_init(W, r=6)


def test_residual_scale_values_and_clamp():
    x, fx = 3 * torch.eye(4), 0.5 * torch.eye(4)
    assert ro.residual_scale(x, fx) == pytest.approx(6.0)
    c = ro.precision_constants()
    assert ro.residual_scale(x, torch.zeros(4, 4)) == c.residual_max
    assert ro.residual_scale(x, 1e6 * torch.eye(4)) == c.residual_min


def test_llama_branches_scales_and_hooks():
    from gradience.models.transformer import tiny_llama

    torch.manual_seed(0)
    lm = tiny_llama(vocab=11, d_model=8, n_layers=2, n_heads=2, d_mlp=16, max_len=8)
    tokens = torch.randint(0, 11, (2, 6))
    hidden = lm(input_ids=tokens, output_hidden_states=True).hidden_states
    br = ro.llama_branches(lm, tokens)
    torch.testing.assert_close(br[0]["x"], hidden[0])
    torch.testing.assert_close(br[0]["x"] + br[0]["attn"] + br[0]["mlp"], hidden[1])
    scales = ro.llama_residual_scales(lm, tokens)
    assert set(scales) == {"0.attn", "0.mlp", "1.attn", "1.mlp"}
    assert scales["0.mlp"] == pytest.approx(ro.residual_scale(br[0]["x"] + br[0]["attn"], br[0]["mlp"]))
    handles = ro.apply_residual_scales(lm, {"0.attn": 0.0, "0.mlp": 0.0})
    torch.testing.assert_close(lm(input_ids=tokens, output_hidden_states=True).hidden_states[1], hidden[0])
    for h in handles:
        h.remove()
    torch.testing.assert_close(lm(input_ids=tokens, output_hidden_states=True).hidden_states[1], hidden[1])
