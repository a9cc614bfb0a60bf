import math

import numpy as np
import pytest
import torch

from gradience.telemetry.spectral import power_law_alpha, spectral_metrics, weight_matrices


def matrix_with_spectrum(sigma, shape, seed=0):
    rng = np.random.default_rng(seed)
    m, n = shape
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.zeros(shape)
    s[: len(sigma), : len(sigma)] = np.diag(sigma)
    return u @ s @ v.T


def test_metrics_match_closed_forms_on_a_known_spectrum():
    sigma = np.array([10.0, 4.0, 2.0, 1.0, 0.5])
    w = matrix_with_spectrum(sigma, (7, 5))
    m = spectral_metrics(w)
    p = sigma / sigma.sum()
    assert m["kappa"] == pytest.approx(20.0, rel=1e-10)
    assert m["kappa_r"] == pytest.approx(20.0, rel=1e-10)
    assert m["numerical_rank"] == 5
    assert m["stable_rank"] == pytest.approx((sigma**2).sum() / 100.0, rel=1e-10)
    assert m["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-10)
    assert m["nuclear_norm"] == pytest.approx(17.5, rel=1e-10)
    assert m["spectral_norm"] == pytest.approx(10.0, rel=1e-10)
    assert m["frobenius_norm"] == pytest.approx(np.linalg.norm(w), rel=1e-10)


def test_metrics_agree_with_numpy_on_a_random_matrix():
    w = np.random.default_rng(1).standard_normal((40, 25))
    s = np.linalg.svd(w, compute_uv=False)
    m = spectral_metrics(torch.tensor(w, dtype=torch.float32))
    assert m["kappa"] == pytest.approx(np.linalg.cond(w), rel=1e-4)  # float32 input
    assert m["nuclear_norm"] == pytest.approx(s.sum(), rel=1e-5)
    assert m["numerical_rank"] == np.linalg.matrix_rank(w)


def test_rank_deficient_matrix_has_infinite_kappa_and_finite_kappa_r():
    w = matrix_with_spectrum([8.0, 2.0, 1.0], (6, 6))  # rank 3 of 6
    m = spectral_metrics(w)
    assert math.isinf(m["kappa"])
    assert m["kappa_r"] == pytest.approx(8.0, rel=1e-8)
    assert m["numerical_rank"] == 3


def test_effective_rank_of_identity_is_its_size_and_of_rank_one_is_one():
    assert spectral_metrics(np.eye(9))["effective_rank"] == pytest.approx(9.0)
    assert spectral_metrics(np.outer(np.arange(1, 5), np.arange(1, 4)))["effective_rank"] == pytest.approx(1.0)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.3])
def test_power_law_alpha_recovers_exact_exponent(alpha):
    sigma = np.arange(1, 31, dtype=float) ** -alpha
    assert power_law_alpha(sigma) == pytest.approx(alpha, rel=1e-10)
    w = matrix_with_spectrum(sigma, (30, 30))
    assert spectral_metrics(w)["alpha"] == pytest.approx(alpha, rel=1e-6)


def test_zero_matrix_and_bad_shapes():
    m = spectral_metrics(np.zeros((3, 4)))
    assert m["spectral_norm"] == 0.0 and math.isnan(m["kappa"])
    with pytest.raises(ValueError, match="2-D"):
        spectral_metrics(np.zeros(5))


def test_weight_matrices_skips_biases_and_frozen_and_matricises_convs():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    net[2].weight.requires_grad_(False)
    found = dict(weight_matrices(net))
    assert list(found) == ["0.weight"]
    assert tuple(found["0.weight"].shape) == (8, 27)
