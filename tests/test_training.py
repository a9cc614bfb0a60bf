import pandas as pd
import pytest
import torch

from gradience.models.mlp import TokenPairMLP
from gradience.tasks.modular import modular_split
from gradience.telemetry.recorder import Cadence, Recorder
from gradience.training import TrainConfig, loss_and_accuracy, train


def _run(data_dir, seed=0, **cfg):
    split = modular_split(data_dir, 23, "add", 0.5, seed)
    torch.manual_seed(seed)
    model = TokenPairMLP(23, 23, 8, 24)
    rec = Recorder("r")
    res = train(model, split, TrainConfig(**{"steps": 30, "lr": 3e-3, "seed": seed} | cfg),
                recorder=rec, cadence=Cadence(10, cfg.get("steps", 30)))
    return res, rec.frame()


def test_same_seed_gives_identical_telemetry(data_dir):
    _, a = _run(data_dir)
    _, b = _run(data_dir)
    pd.testing.assert_frame_equal(a, b)
    _, c = _run(data_dir, seed=1)
    assert not a["value"].equals(c["value"])


def test_training_fits_the_training_set(data_dir):
    res, df = _run(data_dir, steps=300, lr=1e-2, weight_decay=0.0)
    assert res.outcome == "completed" and res.steps_run == 300
    assert res.final["train_acc"] > 0.95
    model = df[df.scope == "model"]
    first = model[(model.metric == "train_loss") & (model.step == 0)].value.item()
    assert res.final["train_loss"] < 0.1 * first


def test_divergence_is_recorded_not_raised(data_dir):
    res, df = _run(data_dir, lr=1e30, steps=50)
    assert res.outcome == "diverged" and res.diverged_at is not None
    assert ((df.metric == "diverged") & (df.value == 1.0)).sum() == 1


def test_minibatch_and_clipping_run_and_record_grad_norm(data_dir):
    res, df = _run(data_dir, batch_size=32, grad_clip=0.5)
    assert res.outcome == "completed"
    grad = df[df.metric == "grad_norm"]
    assert len(grad) == 3 and (grad.value > 0).all()


def test_loss_and_accuracy_ignores_masked_targets():
    logits = torch.tensor([[[5.0, 0.0], [0.0, 5.0]], [[5.0, 0.0], [5.0, 0.0]]])
    targets = torch.tensor([[0, 1], [-100, 1]])
    loss, acc = loss_and_accuracy(logits, targets)
    assert acc.item() == pytest.approx(2 / 3)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 2)[[0, 1, 3]], torch.tensor([0, 1, 1]))
    assert loss.item() == pytest.approx(expected.item())
