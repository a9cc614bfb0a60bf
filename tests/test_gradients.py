import math

import numpy as np
import pytest
import torch

from gradience.models.mlp import TokenPairMLP
from gradience.models.transformer import LastTokenClassifier, tiny_llama
from gradience.tasks import Split
from gradience.telemetry.gradients import (
    GradientProbe,
    NoiseScaleProbe,
    noise_scale,
    noise_scale_from_moments,
    noise_scale_of_model,
)
from gradience.telemetry.recorder import Cadence, Recorder
from gradience.training import StepContext, TrainConfig, loss_and_accuracy, train


def _pairs(n=12, vocab=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, 2), generator=g), torch.randint(0, vocab, (n,), generator=g)


def _loop_gradients(model, x, y):
    """Reference: one ordinary backward pass per example."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        loss_and_accuracy(model(x[i : i + 1]), y[i : i + 1])[0].backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_noise_scale_of_model_matches_a_loop_of_backward_passes_for_any_chunk(kind):
    torch.manual_seed(0)
    x, y = _pairs(n=30)
    if kind == "mlp":
        model = TokenPairMLP(7, 7, 4, 10)
    else:
        model = LastTokenClassifier(tiny_llama(8, 8, 1, 2, 16, max_len=3), 7)
        x = torch.cat([x, torch.full((x.shape[0], 1), 7)], dim=1)
    ref = noise_scale(_loop_gradients(model, x, y))
    for chunk in (1, 7, 64):
        got = noise_scale_of_model(model, x, y, chunk)
        assert got.trace_cov == pytest.approx(ref.trace_cov, rel=1e-5)
        assert got.mean_grad_sq == pytest.approx(ref.mean_grad_sq, rel=1e-5)


def test_noise_scale_on_a_hand_computed_gradient_matrix():
    # mean (1, 1): |ḡ|² = 2; deviations (±1, ±1): tr Σ̂ = 4·2/3 = 8/3; |G|² = 2 − (8/3)/4 = 4/3; B = 2
    ns = noise_scale(torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [0.0, 0.0]]))
    assert ns.trace_cov == pytest.approx(8 / 3) and ns.grad_sq == pytest.approx(4 / 3)
    assert ns.mean_grad_sq == pytest.approx(2.0) and ns.b_simple == pytest.approx(2.0)
    assert math.isnan(noise_scale(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).b_simple)  # mean below noise
    with pytest.raises(ValueError, match="at least 2"):
        noise_scale_from_moments(1, 1.0, 1.0)


def test_noise_scale_recovers_the_population_value_and_its_gradient_norm_is_unbiased():
    rng = np.random.default_rng(0)
    mu, sd = np.array([1.0, -2.0, 0.5, 0.0]), np.array([3.0, 1.0, 2.0, 4.0])
    b_true = (sd**2).sum() / (mu**2).sum()  # 30 / 5.25
    big = noise_scale(torch.as_tensor(rng.normal(mu, sd, size=(200_000, 4))))
    assert big.b_simple == pytest.approx(b_true, rel=0.02)
    small = [noise_scale(torch.as_tensor(rng.normal(mu, sd, size=(8, 4)))) for _ in range(4000)]
    unbiased, naive = np.mean([s.grad_sq for s in small]), np.mean([s.mean_grad_sq for s in small])
    assert unbiased == pytest.approx(5.25, rel=0.05)
    assert naive == pytest.approx(5.25 + 30 / 8, rel=0.05)  # ‖ḡ‖² is biased up by tr Σ / n


def _ctx(model, step=0):
    return StepContext(step=step, model=model, batch=_pairs(), loss=0.0, lr=0.0, split=None)


def test_gradient_probe_norms_and_cosine_with_the_previous_measured_gradient():
    model = TokenPairMLP(3, 3, 2, 2)
    params = dict(model.named_parameters())
    first = {n: torch.randn_like(p) for n, p in params.items()}
    second = {n: -2 * g if n == "hidden.weight" else g + 1 for n, g in first.items()}
    probe = GradientProbe()
    for n, p in params.items():
        p.grad = first[n].clone()
    out = {(s, m): v for s, m, v in probe(_ctx(model))}
    assert set(out) == {(n, "grad_norm") for n in ("embed.weight", "hidden.weight", "readout.weight")}
    assert out[("hidden.weight", "grad_norm")] == pytest.approx(float(first["hidden.weight"].norm()))
    for n, p in params.items():
        p.grad = second[n].clone()
    out = {(s, m): v for s, m, v in probe(_ctx(model, 1))}
    assert out[("hidden.weight", "grad_cosine")] == pytest.approx(-1.0)
    a = torch.cat([g.flatten() for g in first.values()]).numpy()
    b = torch.cat([g.flatten() for g in second.values()]).numpy()
    expected = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert out[("model", "grad_cosine")] == pytest.approx(expected, rel=1e-5)
    e, f = first["readout.weight"].flatten().numpy(), second["readout.weight"].flatten().numpy()
    assert out[("readout.weight", "grad_cosine")] == pytest.approx(e @ f / np.linalg.norm(e) / np.linalg.norm(f),
                                                                   rel=1e-5)


def test_noise_scale_probe_in_the_training_loop():
    """Full batch: B_simple = tr Σ̂ / ‖G‖² with G the loop's own gradient (its logged grad_norm), and
    tr Σ̂ over the whole training split equals the explicit per-example matrix's; a minibatch run
    falls back to the unbiased subsample estimate of ‖G‖²."""
    torch.manual_seed(0)
    x = _pairs(n=40, vocab=7)[0]
    y = (x[:, 0] > 2).long()  # a learnable rule: the mean gradient stands above the noise
    split = Split(x[:30], y[:30], x[30:], y[30:])
    model, rec = TokenPairMLP(7, 7, 4, 10), Recorder("r")
    ref = noise_scale(_loop_gradients(model, split.x_train, split.y_train))  # at step 0
    train(model, split, TrainConfig(steps=4, lr=1e-2), recorder=rec, cadence=Cadence(1, 4),
          probes=[GradientProbe(), NoiseScaleProbe(1000, seed=0, chunk=8)])
    w = rec.frame().query("scope == 'model'").pivot(index="step", columns="metric", values="value").iloc[:4]
    assert w["grad_noise_trace"].iloc[0] == pytest.approx(ref.trace_cov, rel=1e-5)
    np.testing.assert_allclose(w["grad_noise_trace"] / w["grad_noise_scale"], w["grad_norm"] ** 2, rtol=1e-5)
    assert np.isnan(w["grad_cosine"].iloc[0]) and w["grad_cosine"].iloc[1:].between(-1, 1).all()

    torch.manual_seed(0)
    model, rec = TokenPairMLP(7, 7, 4, 10), Recorder("r")
    train(model, split, TrainConfig(steps=1, lr=1e-2, batch_size=10), recorder=rec, cadence=Cadence(1, 1),
          probes=[NoiseScaleProbe(1000, seed=0)])
    b = rec.frame().query("metric == 'grad_noise_scale'")["value"].iloc[0]
    assert b == pytest.approx(ref.b_simple, rel=1e-5)
