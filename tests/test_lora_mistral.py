"""The paper-profile path offline: PEFT on Mistral-7B's architecture (meta device) and a tiny Mistral."""

import math

import pytest
import torch
from transformers import MistralForCausalLM, MistralForSequenceClassification

from gradience.lora import adapters as ad
from gradience.lora import finetune as ft
from gradience.lora.flight import FlightRecorder
from gradience.tasks import gsm, reviews
from gradience.tasks.jsonl import write_records

# PEFT's trainable parameters on Mistral-7B (the numbers behind the seed's "Params" column)
MISTRAL_COUNTS = {(32, "all"): 83_886_080, (8, "all"): 20_971_520, (32, "mlp"): 56_623_104,
                  (32, "attention"): 27_262_976, (8, "attention"): 6_815_744}


def test_trainable_parameters_on_meta_mistral_7b():
    seen = {}
    for name, spec in ad.SEED_CONFIGS.items():
        key = (spec.r, spec.targets)
        if key not in seen:
            seen[key] = ad.trainable_parameters(spec)
        trainable, total = seen[key]
        assert trainable == MISTRAL_COUNTS[key]
        assert total - trainable == 7_241_732_096  # Mistral-7B-v0.1's own size
        assert round(trainable / 1e6, 1) == ad.SEED_PARAMS_M[name]
    # closed form: r · Σ (in + out) over adapted projections × 32 layers
    h, kv, ff = 4096, 1024, 14336
    assert MISTRAL_COUNTS[(8, "attention")] == 8 * 32 * (2 * (h + h) + 2 * (h + kv))
    assert MISTRAL_COUNTS[(32, "mlp")] == 32 * 32 * 3 * (h + ff)


def test_lora_spec_validation():
    with pytest.raises(ValueError, match="targets must be one of"):
        ad.LoraSpec(8, 1.0, 1e-4, "everything")
    with pytest.raises(ValueError, match="rank r"):
        ad.LoraSpec(0, 1.0, 1e-4, "all")
    assert ad.SEED_CONFIGS["low_alpha"].alpha == 8.0


def _arithmetic(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for a, b in torch.randint(1, 10, (n, 2), generator=g).tolist():
        out.append({"question": f"What is {a} plus {b}?", "answer": f"{a}+{b}={a + b}\n#### {a + b}"})
    return out


def test_paper_path_gsm8k_schema_on_tiny_mistral(tmp_path):
    torch.manual_seed(0)
    path = write_records(_arithmetic(8, 0), tmp_path / "train.jsonl")
    records = gsm.read_jsonl(path)  # a small local file in GSM8K's schema
    tok = ad.tiny_tokenizer([ft.PROMPT.format(question=r["question"]) + " " + r["answer"] for r in records])
    model = ad.apply_lora(MistralForCausalLM(ad.tiny_mistral_config(hidden_size=64, intermediate_size=128)),
                          ad.LoraSpec(r=8, alpha_over_r=2.0, lr=1e-2, targets="all"), seed=0)
    data = ft.encode_qa(tok, records, max_length=64)
    assert (data.labels[data.attention_mask == 0] == ft.IGNORE).all()
    ppl0 = ft.perplexity(model, data)
    acc0, _ = ft.qa_accuracy(model, tok, records, max_new_tokens=12)
    rec = FlightRecorder("tiny", every=50)
    losses = ft.train(model, data, steps=150, batch_size=8, lr=1e-2, seed=0, recorder=rec)
    ppl1 = ft.perplexity(model, data)
    acc1, preds = ft.qa_accuracy(model, tok, records, max_new_tokens=12)
    assert acc0 == 0.0 and acc1 >= 0.75, preds  # memorised by exact match after '####'
    # (a random tiny base keeps its logits small: the argmax is right long before the loss is low)
    assert ppl1 < ppl0 / 3 and losses[-1] < losses[0] - 1.0
    assert ft.mean_token_loss(model, data) == pytest.approx(math.log(ppl1), rel=1e-12)
    assert sorted(rec.frame().query("metric == 'utilization' and scope == 'model'")["step"]) == [0, 50, 100, 150]


def test_paper_path_sst2_schema_on_tiny_mistral(tmp_path):
    words = {1: ["great", "lovely", "tasty", "superb"], 0: ["awful", "stale", "bland", "rotten"]}
    g = torch.Generator().manual_seed(0)
    records = [{"sentence": f"this snack is {words[lab][int(torch.randint(4, (1,), generator=g))]} really",
                "label": lab} for lab in (0, 1) * 16]
    path = tmp_path / "sst2.jsonl"
    write_records(records, path)
    records = reviews.read_jsonl(path)
    tok = ad.tiny_tokenizer([r["sentence"] for r in records])
    torch.manual_seed(0)
    base = MistralForSequenceClassification(ad.tiny_mistral_config(num_labels=2))
    model = ad.apply_lora(base, ad.SEED_CONFIGS["attn_r8_lr5e5"], task_type="SEQ_CLS", seed=0)
    data = ft.encode_classification(tok, records, max_length=16)
    ft.train(model, data, steps=60, batch_size=16, lr=1e-2, seed=0)
    assert ft.classification_accuracy(model, data) == 1.0
    with pytest.raises(ValueError, match="'label' in"):
        write_records([{"sentence": "x", "label": 3}], path)
        reviews.read_jsonl(path)
