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


# ------------------------------------------------------------------ protocol (the study's arms)


def _tiny_bert(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=384, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(cfg)


def test_param_groups_epsilon_and_decay_match_numpy():
    from gradience.rosetta.protocol import Conventional, param_groups

    net = nn.Sequential(nn.Linear(4, 4, bias=True), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(DIAG, dtype=torch.float32))
    conv = Conventional(lr=0.1, weight_decay=0.5, steps=1, batch_size=0)
    groups, chosen = param_groups(net, conv, ["adam_epsilon", "decay"])
    assert len(groups) == 3 and groups[-1]["eps"] == 1e-8 and groups[-1]["weight_decay"] == 0.5  # the bias
    s = np.linalg.svd(DIAG, compute_uv=False)
    sk = s[s >= math.sqrt(F32_EPS) * s[0]][-1]  # 1e-2
    assert groups[0]["eps"] == pytest.approx(max(sk**2, math.sqrt(F32_EPS) * s[0] ** 2), rel=1e-6)
    assert groups[0]["weight_decay"] == pytest.approx(0.5 * sk / s[0], rel=1e-6)
    s1 = np.linalg.svd(net[1].weight.detach().double().numpy(), compute_uv=False)
    assert groups[1]["weight_decay"] == pytest.approx(0.5 * s1[-1] / s1[0], rel=1e-6)
    plain, _ = param_groups(net, conv, [])
    assert all(g["eps"] == 1e-8 and g["weight_decay"] == 0.5 for g in plain)
    assert set(chosen.metric) == {"adam_eps", "weight_decay"}


def _regression_split(n=64, seed=0):
    from gradience.tasks import Split

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] > 0).long()
    return Split(x[: n // 2], y[: n // 2], x[n // 2:], y[n // 2:])


def test_train_arm_conventional_learns_and_mass_uses_the_measured_step():
    from gradience.rosetta.protocol import Conventional, train_arm

    split = _regression_split()
    conv = Conventional(lr=0.05, weight_decay=0.0, steps=40, batch_size=0)
    torch.manual_seed(0)
    res = train_arm(nn.Linear(5, 2), split, conv, [], seed=0, eval_every=10)
    assert res.outcome == "completed" and res.history.step.tolist() == [0, 10, 20, 30, 40]
    assert res.final["train_acc"] >= 0.9 and res.history.train_loss.iloc[-1] < res.history.train_loss.iloc[0]
    assert res.history.lr.iloc[1] == pytest.approx(0.05)  # past the 4-step warm-up
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    expected = ro.mass_step_size(model, (split.x_train, split.y_train), lanczos_tol=1e-3)
    res = train_arm(model, split, Conventional(lr=0.05, weight_decay=0.0, steps=5, batch_size=0), ["mass"], 0,
                    eval_every=5, mass_every=5)
    eta = res.rules[(res.rules.metric == "eta_step") & (res.rules.step == 0)].value.iloc[0]
    assert eta == pytest.approx(expected.step, rel=1e-3)
    assert res.history.lr.iloc[-1] == pytest.approx(eta)
    with pytest.raises(ValueError, match="unknown rules"):
        train_arm(model, split, conv, ["warp"], 0, eval_every=5)


def test_stop_step_reads_rule_9():
    import pandas as pd

    from gradience.rosetta.protocol import stop_step

    h = pd.DataFrame({"step": [0, 10, 20, 30], "train_loss": [2.0, 1.0, 1.0 + 1e-5, 0.5]})
    assert stop_step(h) == (20.0, "loss_stable")
    h = pd.DataFrame({"step": [0, 10], "train_loss": [2.0, 1e-5]})
    assert stop_step(h) == (10.0, "loss_below_sqrt_eps")
    s, why = stop_step(pd.DataFrame({"step": [0, 10], "train_loss": [2.0, 1.0]}))
    assert math.isnan(s) and why == ""


def test_lora_plan_model_and_spectral_init_on_a_tiny_bert():
    from gradience.rosetta.protocol import LoraArm, lora_budget_ratios, lora_model, lora_plan

    model = _tiny_bert()
    plan = lora_plan(model, LoraArm().candidates)
    assert len(plan.table) == 6  # query, key, value, attention.output.dense, intermediate, output.dense
    for row in plan.table.itertuples():
        w = dict(model.named_modules())[row.module].weight.detach()
        assert row.tail_dims == ro.tail_dims(w) and row.rank == row.tail_dims
        assert row.dropout == pytest.approx(ro.geometric_dropout(w, row.rank))
    assert plan.dropout == pytest.approx(plan.table[plan.table.target].dropout.mean())
    assert lora_plan(model, LoraArm().candidates, r_max=2).table["rank"].max() <= 2
    with pytest.raises(ValueError, match="no linear module"):
        lora_plan(model, "nothing")

    conv, chosen = lora_model(_tiny_bert(), LoraArm(), seed=0)
    ranks = chosen[chosen.metric == "lora_rank"]
    assert len(ranks) == 2 and set(ranks.value) == {8.0}  # query + value, r 8
    assert set(chosen[chosen.metric == "lora_scale"].value) == {2.0}
    assert (lora_budget_ratios(conv).budget_ratio == 0).all()  # B = 0 at initialisation

    geo, chosen = lora_model(_tiny_bert(), LoraArm(rules=("rank", "targets", "dropout", "init", "scale"), r_max=3), 0)
    assert chosen[chosen.metric == "n_targets"].value.iloc[0] == plan.table.target.sum()
    ratios = lora_budget_ratios(geo)
    np.testing.assert_allclose(ratios.budget_ratio, 1.0, rtol=1e-4)  # ‖1·BA‖₂ = σ_k at step 0
    with pytest.raises(ValueError, match="unknown LoRA rules"):
        lora_model(_tiny_bert(), LoraArm(rules=("warp",)), 0)


def test_spread():
    from gradience.rosetta.protocol import spread

    assert spread([1.0, 3.0, math.nan]) == (2.0, pytest.approx(math.sqrt(2)))
    assert spread([4.0]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in spread([]))


def test_budget_monitor_matches_the_dense_budget_ratio():
    from gradience.lora import finetune
    from gradience.rosetta.protocol import BudgetMonitor, LoraArm, lora_budget_ratios, lora_model

    model, _ = lora_model(_tiny_bert(), LoraArm(rules=("init", "scale")), seed=0)
    g = torch.Generator().manual_seed(0)
    data = finetune.Encoded(torch.randint(3, 384, (16, 6), generator=g), torch.ones(16, 6, dtype=torch.long),
                            torch.randint(0, 2, (16,), generator=g))
    mon = BudgetMonitor()
    finetune.train(model, data, steps=4, batch_size=8, lr=0.05, seed=0, recorder=mon)
    assert len(mon.ratios) == 5 and mon.ratios[0] == pytest.approx(1.0, rel=1e-4)  # spectral init: ‖BA‖₂ = σ_k
    assert mon.ratios[-1] == pytest.approx(lora_budget_ratios(model).budget_ratio.max(), rel=1e-6)
    first = next(i for i, r in enumerate(mon.ratios) if i > 0 and r > 0.9)
    assert mon.halt_step == first == 1
    assert mon._handles == []  # detached by finetune.train
