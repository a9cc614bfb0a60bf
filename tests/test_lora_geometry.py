"""Adapter geometry from the r × r core against the dense SVD of the materialised ΔW."""

import math

import numpy as np
import pytest
import torch
from transformers import MistralForCausalLM

from gradience.lora import adapters as ad
from gradience.lora.geometry import (
    ADAPTER_METRICS,
    AdapterGeometry,
    adapter_metrics,
    delta_singular_values,
    geometry_frame,
    lora_adapters,
)
from gradience.telemetry.recorder import TELEMETRY_COLUMNS
from gradience.telemetry.spectral import spectral_metrics


def _perturbed_model(spec: ad.LoraSpec, seed: int = 0):
    torch.manual_seed(seed)
    model = ad.apply_lora(MistralForCausalLM(ad.tiny_mistral_config()), spec, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # B = 0 at init: give every adapter a non-trivial update
        for a in lora_adapters(model):
            a.B.copy_(torch.randn(a.B.shape, generator=g) * 0.1)
    return model


def test_core_singular_values_match_dense_svd():
    g = torch.Generator().manual_seed(0)
    for out_dim, in_dim, r in [(40, 24, 4), (16, 64, 8), (7, 5, 5)]:
        A, B = torch.randn(r, in_dim, generator=g), torch.randn(out_dim, r, generator=g)
        dense = np.linalg.svd(0.25 * (B.double() @ A.double()).numpy(), compute_uv=False)[:r]
        np.testing.assert_allclose(delta_singular_values(A, B, 0.25), dense, rtol=1e-10)
    with pytest.raises(ValueError, match="expected A"):
        delta_singular_values(torch.zeros(3, 5), torch.zeros(4, 2), 1.0)


def test_adapter_metrics_match_dense_delta_w():
    spec = ad.LoraSpec(r=4, alpha_over_r=0.25, lr=1e-4, targets="all")
    model = _perturbed_model(spec)
    adapters = list(lora_adapters(model))
    assert len(adapters) == 2 * 7  # 2 layers × 7 projections
    assert {a.r for a in adapters} == {4} and {a.scaling for a in adapters} == {0.25}
    for a in adapters:
        got = adapter_metrics(a)
        dense = a.delta()  # float64 ΔW = s·B·A
        ref = spectral_metrics(dense)
        w = a.base.double()
        sig = np.linalg.svd(dense.numpy(), compute_uv=False)[:4]
        assert got["lora_stable_rank"] == pytest.approx(ref["stable_rank"], rel=1e-5)
        assert got["utilization"] == pytest.approx(ref["stable_rank"] / 4, rel=1e-5)
        assert got["lora_effective_rank"] == pytest.approx(
            math.exp(-(p := sig / sig.sum()) @ np.log(p)), rel=1e-5)
        assert got["lora_kappa"] == pytest.approx(sig[0] / sig[-1], rel=1e-5)
        assert got["lora_spectral_norm"] == pytest.approx(ref["spectral_norm"], rel=1e-5)
        assert got["lora_frobenius_norm"] == pytest.approx(ref["frobenius_norm"], rel=1e-5)
        assert got["lora_numerical_rank"] == 4 == ref["numerical_rank"]
        assert got["dominance"] == pytest.approx(ref["spectral_norm"] / float(torch.linalg.matrix_norm(w, 2)), rel=1e-5)
        assert got["dominance_fro"] == pytest.approx(ref["frobenius_norm"] / float(torch.linalg.matrix_norm(w)), rel=1e-5)
    # rank-deficient core: two identical columns of B → rank 3, κ infinite, κ_r finite
    a = adapters[0]
    with torch.no_grad():
        a.B[:, 1] = a.B[:, 0]
    m = adapter_metrics(a)
    assert m["lora_numerical_rank"] == 3 and m["lora_kappa"] == math.inf and math.isfinite(m["lora_kappa_r"])


def test_zero_update_at_init_and_tidy_rows():
    spec = ad.SEED_CONFIGS["attn_r8_lr5e5"]
    torch.manual_seed(0)
    model = ad.apply_lora(MistralForCausalLM(ad.tiny_mistral_config()), spec)
    df = geometry_frame(model, run="r", step=0)
    assert tuple(df.columns) == TELEMETRY_COLUMNS
    assert set(df["metric"]) == set(ADAPTER_METRICS)
    per = df[df["scope"] != "model"]
    assert per["scope"].nunique() == 2 * 4  # attention only
    assert per["scope"].str.startswith("model.layers.").all()  # PEFT's base_model.model. prefix removed
    wide = per.pivot(index="scope", columns="metric", values="value")
    assert (wide["lora_spectral_norm"] == 0).all() and (wide["utilization"] == 0).all()
    assert wide["lora_stable_rank"].isna().all()


def test_model_scope_aggregates():
    model = _perturbed_model(ad.LoraSpec(r=8, alpha_over_r=1.0, lr=1e-4, targets="mlp"))
    measured = AdapterGeometry().measure(model)
    per = [v for k, v in measured.items() if k != "model"]
    assert len(per) == 2 * 3
    assert measured["model"]["utilization"] == pytest.approx(np.mean([m["utilization"] for m in per]))
    assert measured["model"]["dominance"] == pytest.approx(max(m["dominance"] for m in per))
    assert 0 < measured["model"]["utilization"] <= 1
