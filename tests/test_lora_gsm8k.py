"""lora_gsm8k: the paper-profile path end to end on a tiny random Mistral and local GSM8K-schema files."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import MistralForCausalLM

from gradience.lora import adapters as ad
from gradience.lora import finetune as ft
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS
from gradience.studies import grid, notebook
from gradience.studies.lora_family import runs as lf
from gradience.studies.lora_gsm8k import analysis as study
from gradience.studies.lora_gsm8k import findings as study_findings
from gradience.studies.lora_gsm8k import runs as study_runs
from gradience.tasks import gsm
from gradience.tasks.jsonl import write_records

STAGE = "lora_gsm8k"


def _sums(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [{"question": f"What is {a} plus {b}?", "answer": f"{a}+{b}={a + b}\n#### {a + b}"}
            for a, b in torch.randint(1, 10, (n, 2), generator=g).tolist()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny Mistral + tokenizer and a data folder in GSM8K's schema: what the paper profile
    reads, with only the weights and the data swapped."""
    root = tmp_path_factory.mktemp("tiny")
    train, test = _sums(64, 0), _sums(16, 1)
    write_records(train, root / "data" / "arithmetic" / "train.jsonl")
    write_records(test, root / "data" / "arithmetic" / "test.jsonl")
    tok = ad.tiny_tokenizer([ft.PROMPT.format(question=r["question"]) + " " + r["answer"] for r in train + test])
    torch.manual_seed(0)
    MistralForCausalLM(ad.tiny_mistral_config(hidden_size=64, intermediate_size=128)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root


def paper_on_tiny(tiny, **runs):
    section = profile_params("paper")[STAGE]
    section["runs"] |= {"base_model": str(tiny / "model"), "device": "cpu", "seeds": [0, 1], "steps": 30,
                        "batch_size": 8, "geometry_every": 10, "eval_every": 15, "max_new_tokens": 12,
                        "lr_scale": 50.0, "configs": ["baseline", "attn_r8_lr5e5"], "first_seed_configs": ["mlp_only"],
                        "data": {"source": "local", "folder": "arithmetic", "test_examples": 16, "eval_examples": 8,
                                 "max_length": 48}} | runs
    return notebook.load_params(STAGE, section)


def test_profiles_validate_and_say_what_runs():
    for name in ("default", "smoke", "paper"):
        p = notebook.load_params(STAGE, profile_params(name)[STAGE])
        assert study_runs.jobs(p.runs, "data")[0].condition == lf.ZERO_SHOT
    paper = notebook.load_params(STAGE, profile_params("paper")[STAGE]).runs
    assert paper.dtype == "bfloat16" and paper.device == "auto" and paper.data.source == "hub"
    assert set(paper.configs) == set(lf.CONFIGS) and paper.lr_scale == 1.0 and len(paper.seeds) >= 2
    default = notebook.load_params(STAGE, profile_params("default")[STAGE]).runs
    assert default.base_model == "reports/weights/smollm2" and study_runs.BASE_MODELS == ("smollm2",)
    assert {"baseline", "low_alpha", "baseline_lr5e5"} <= set(default.configs)  # α/r and LR claims: ≥ 2 seeds
    assert set(default.configs) | set(default.first_seed_configs) == set(ad.SEED_CONFIGS)  # the appendix, all run


def test_params_reject_bad_values_with_the_key():
    section = profile_params("smoke")[STAGE]
    for runs, match in [({"configs": ["baseline", "huge_r"]}, "unknown configurations"),
                        ({"configs": ["baseline"], "first_seed_configs": ["baseline"]}, "must be unique"),
                        ({"steps": 0}, "steps"), ({"data": {"source": "hub"}}, "pinned revision"),
                        ({"lr_scale": 0}, "lr_scale")]:
        bad = {**section, "runs": {**section["runs"], **runs}}
        if "data" in runs:
            bad["runs"]["data"] = {**section["runs"]["data"], **runs["data"]}
        with pytest.raises(Exception, match=match):
            notebook.load_params(STAGE, bad)


def test_arithmetic_data_is_gsm8k_schema_and_disjoint(tmp_path):
    gsm.build_arithmetic(tmp_path, n_train=200, n_test=50)
    train, test = gsm.read_jsonl(tmp_path / "train.jsonl"), gsm.read_jsonl(tmp_path / "test.jsonl")
    assert len(train) == 200 and len(test) == 50
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    r = test[0]
    a, op, b = r["question"].split(":")[-1].strip(" =").split()
    assert gsm.final_number(r["answer"]) == str(int(a) + int(b) if op == "+" else int(a) - int(b))


def test_paper_path_end_to_end_on_tiny_mistral(tiny, tmp_path):
    p = paper_on_tiny(tiny)
    tables = grid.train(STAGE, p, tmp_path, tiny / "data")
    t = notebook.load_tables(STAGE, tables)
    a = study.analyse(t, p.report)
    runs = a.summary.set_index("run")
    assert list(runs.index) == ["zero_shot/s0", "baseline/s0", "baseline/s1", "attn_r8_lr5e5/s0", "attn_r8_lr5e5/s1",
                                "mlp_only/s0"]
    assert runs.loc["zero_shot/s0", "accuracy"] == 0.0 and runs.loc["zero_shot/s0", "trainable_params"] == 0
    assert runs.loc["baseline/s0", "accuracy"] > 0.2  # the tiny model learns the sums' format and some answers
    # PEFT's count on the tiny model: r · Σ(in + out) over the adapted projections × layers
    h, q, kv, ff = 64, 4 * 8, 2 * 8, 128  # hidden, heads × head_dim, kv heads × head_dim, MLP
    assert runs.loc["attn_r8_lr5e5/s0", "trainable_params"] == 8 * 2 * (2 * (h + q) + 2 * (h + kv))
    assert runs.loc["mlp_only/s0", "trainable_params"] == 32 * 2 * 3 * (h + ff)
    assert runs.loc["baseline/s0", "lr"] == pytest.approx(2e-4 * 50)
    series = a.series[a.series.run == "baseline/s0"]
    assert set(series.dropna(subset=["lora_stable_rank"]).step) == {10, 20, 30}  # ΔW = 0 at step 0
    assert set(series.dropna(subset=["ppl_ratio"]).step) == {0, 15, 30}
    last = series[series.step == 30].iloc[0]
    assert last.ppl_ratio == pytest.approx(last.test_ppl / last.train_ppl)
    assert last.utilization == pytest.approx(last.lora_stable_rank / 32)
    assert 0 < last.dominance and 1 <= last.lora_stable_rank <= 32
    assert runs.loc["baseline/s0", "ppl_ratio"] == pytest.approx(last.ppl_ratio)
    assert set(a.modules.kind) == set(ad.DECODER_TARGETS["all"])
    rows = study_findings.findings(a, p.report)
    assert [r["id"] for r in rows] == [f"lora_gsm8k.{c.__name__}" for c in study_findings.CLAIMS]
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
    table = notebook.write_report(STAGE, a, p.report, tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["zero_shot_accuracy"] == 0.0 and set(m["configs"]) == {"zero_shot", "baseline", "attn_r8_lr5e5", "mlp_only"}
    assert len(table) == len(rows) and (tmp_path / "plots" / "ppl_ratio_baseline.csv").exists()


def test_same_params_and_seed_give_the_same_telemetry(tiny):
    p = paper_on_tiny(tiny, steps=4, geometry_every=2, eval_every=2)
    job = [j for j in study_runs.jobs(p.runs, str(tiny / "data")) if j.condition == "baseline"][0]
    a, b = study_runs.run_one(job), study_runs.run_one(job)
    pd.testing.assert_frame_equal(a.tables["telemetry"], b.tables["telemetry"])
    timing = {"scoring_cpu_seconds"}  # CPU time is measured, not reproducible
    assert {k: v for k, v in a.record.items() if k not in timing} == {k: v for k, v in b.record.items() if k not in timing}
    assert np.isfinite(a.record["lora_stable_rank"]) and a.record["scoring_cpu_seconds"] > 0
