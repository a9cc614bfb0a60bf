"""lora_sst2: the paper path (a decoder classifier) on a tiny random Mistral, the default path on MiniLM."""

import json

import pandas as pd
import pytest
import torch
from transformers import MistralForSequenceClassification

from gradience.lora import adapters as ad
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS
from gradience.studies import grid, notebook
from gradience.studies.lora_family import analysis as lfa
from gradience.studies.lora_family import runs as lf
from gradience.studies.lora_sst2 import analysis as study
from gradience.studies.lora_sst2 import findings as study_findings
from gradience.studies.lora_sst2 import runs as study_runs
from gradience.tasks.jsonl import write_records

STAGE = "lora_sst2"
WORDS = {1: ["great", "lovely", "tasty", "superb"], 0: ["awful", "stale", "bland", "rotten"]}


def _reviews(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [{"sentence": f"this snack is {WORDS[lab][int(torch.randint(4, (1,), generator=g))]} really", "label": lab}
            for lab in (0, 1) * (n // 2)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sst")
    write_records(_reviews(64, 0), root / "reviews" / "train.jsonl")
    write_records(_reviews(24, 1)[:23], root / "reviews" / "test.jsonl")  # 12 negatives, 11 positives
    return root


@pytest.fixture(scope="module")
def tiny(data):
    tok = ad.tiny_tokenizer([r["sentence"] for r in _reviews(64, 0)])
    torch.manual_seed(0)
    MistralForSequenceClassification(ad.tiny_mistral_config(num_labels=2)).save_pretrained(data / "model")
    tok.save_pretrained(data / "model")
    return data / "model"


def test_profiles_validate_and_keep_the_seed_configurations():
    for name in ("default", "smoke", "paper"):
        p = notebook.load_params(STAGE, profile_params(name)[STAGE])
        assert study_runs.jobs(p.runs, "data")
    paper = notebook.load_params(STAGE, profile_params("paper")[STAGE]).runs
    assert paper.data.test_split == "validation" and paper.dtype == "bfloat16" and set(paper.configs) == set(lf.CONFIGS)
    default = notebook.load_params(STAGE, profile_params("default")[STAGE]).runs
    assert set(study_findings.SEED_SST2) <= set(default.configs)
    assert len(default.seeds) >= 2 and default.base_model == "minilm"


def test_paper_path_end_to_end_on_tiny_mistral_classifier(tiny, data, tmp_path):
    section = profile_params("paper")[STAGE]
    section["runs"] |= {"base_model": str(tiny), "device": "cpu", "seeds": [0], "steps": 40, "batch_size": 16,
                        "geometry_every": 20, "eval_every": 20, "lr_scale": 50.0, "configs": ["attn_r8_lr5e5", "baseline"],
                        "first_seed_configs": [],
                        "data": {"source": "local", "folder": "reviews", "test_split": "test", "test_examples": 23,
                                 "eval_examples": 16, "max_length": 16}}
    p = notebook.load_params(STAGE, section)
    t = notebook.load_tables(STAGE, grid.train(STAGE, p, tmp_path, data))
    a = study.analyse(t, p.report)
    runs = a.summary.set_index("run")
    assert runs.majority_share.iloc[0] == pytest.approx(12 / 23)
    assert runs.loc["attn_r8_lr5e5/s0", "accuracy"] == 1.0  # the words decide the label
    assert runs.loc["baseline/s0", "ppl_ratio"] == pytest.approx(runs.loc["baseline/s0", "test_ppl"] /
                                                                 runs.loc["baseline/s0", "train_ppl"])
    assert lf.module_family(MistralForSequenceClassification(ad.tiny_mistral_config(num_labels=2))) == "decoder"
    rows = study_findings.findings(a, p.report)
    ids = [r["id"] for r in rows]
    assert ids[:3] == ["lora_sst2.any_config_works", "lora_sst2.low_lr_best", "lora_sst2.attn_r8_efficient"]
    assert ids == [f"lora_sst2.{c.__name__}" for c in study_findings.CLAIMS] and {r["verdict"] for r in rows} <= set(VERDICTS)
    notebook.write_report(STAGE, a, p.report, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["configs"]["attn_r8_lr5e5"]["accuracy"] == 1.0


def test_default_path_on_minilm_records_encoder_adapters(data):
    p = notebook.load_params(STAGE, profile_params("smoke")[STAGE]).runs
    p = p.model_copy(update={"data": p.data.model_copy(update={"test_examples": 8, "eval_examples": 4})})
    job = [j for j in study_runs.jobs(p, str(data)) if j.condition != lf.ZERO_SHOT][0]
    out = study_runs.run_one(job)
    tel = out.tables["telemetry"]
    scopes = set(tel[tel.metric == "utilization"].scope) - {"model"}
    assert len(scopes) == 6 * 4 and all(".attention." in s for s in scopes)  # attention targets of 6 BERT layers
    assert out.record["trainable_params"] == 6 * 8 * 4 * (384 + 384) + 384 * 2 + 2  # LoRA + the new head
    again = study_runs.run_one(job)
    pd.testing.assert_frame_equal(tel, again.tables["telemetry"])


def _seed_table(a, p):
    """The rows of the seed's SST-2 table (its three claims)."""
    return [row for claim in (study_findings.any_config_works, study_findings.low_lr_best,
                              study_findings.attn_r8_efficient) for row in claim(a, p)]


def _synthetic(acc, n_test=872):
    """Fine-tuned runs with these accuracies per configuration (SST-2's 872 validation examples)."""
    rows = [{"run": f"{c}/s{s}", "condition": c, "seed": s, "accuracy": a, "n_test": n_test, "ppl_ratio": 1.1,
             "lora_stable_rank": 2.0, "utilization": 0.1, "dominance": 0.1, "lora_effective_rank": 2.0,
             "train_ppl": 1.2, "test_ppl": 1.3, "r": lf.CONFIGS[c].r, "alpha_over_r": lf.CONFIGS[c].alpha_over_r,
             "lr": lf.CONFIGS[c].lr, "seed_lr": lf.CONFIGS[c].lr, "targets": lf.CONFIGS[c].targets,
             "trainable_params": 1, "majority_share": 0.5} for c, v in acc.items() for s, a in enumerate(v)]
    df = pd.DataFrame(rows)
    return lfa.Analysis(None, pd.DataFrame(), df, df, lfa.config_table(df), pd.DataFrame(), pd.DataFrame())


def test_seed_table_verdicts():
    runs = _synthetic

    seed = {"baseline_lr5e5": [0.960, 0.961], "attn_r8_lr5e5": [0.956, 0.955], "baseline": [0.950, 0.951],
            "low_alpha": [0.940, 0.941]}
    rows = {r["id"]: r["verdict"] for r in _seed_table(runs(seed), study.ReportParams())}
    assert set(rows.values()) == {"reproduced"}
    bad = seed | {"low_alpha": [0.80, 0.81]}
    rows = {r["id"]: r["verdict"] for r in _seed_table(runs(bad), study.ReportParams())}
    assert rows["lora_sst2.any_config_works"] == "not reproduced" and rows["lora_sst2.low_lr_best"] == "reproduced"
    # every configuration stuck at the majority class: nothing was learned, so no ranking can be judged
    stuck = {c: [0.5, 0.5] for c in seed}
    rows = {r["id"]: r for r in _seed_table(runs(stuck), study.ReportParams())}
    assert {r["verdict"] for r in rows.values()} == {"not comparable"}
    assert "compared configurations that learned (> majority class 50.0 % by 2 SE) 0 (needs ≥ 4)" in \
        rows["lora_sst2.low_lr_best"]["why"]


def test_a_negative_needs_the_power_to_see_the_seed_one_point():
    """The seed's SST-2 gain of the lower LR is 1.0 point (96.0 % vs 95.0 %): a negative needs 2 SE ≤ 1 point."""
    same = {"baseline_lr5e5": [0.950, 0.951], "baseline": [0.950, 0.951], "low_alpha": [0.940, 0.941]}
    # 872 examples × 2 seeds: 2 SE ≈ 1.5 points, so "the lower LR is no better" is inconclusive
    [row] = study_findings.lr_dominates_alpha(_synthetic(same), study.ReportParams())
    assert row["verdict"] == "inconclusive" and "too little power for a negative" in row["why"], row
    assert "smallest detectable accuracy difference baseline_lr5e5 − baseline (points, 2 SE) 1.48 vs claimed 1" in \
        row["why"]
    # 20 000 examples per run: 2 SE ≈ 0.3 points could have seen it, so the same result is a negative
    [row] = study_findings.lr_dominates_alpha(_synthetic(same, n_test=20_000), study.ReportParams())
    assert row["verdict"] == "not reproduced", row
    # no gain stated for SST-2 (α/r's published SST-2 difference runs the other way): a negative is inconclusive
    flat = same | {"low_alpha_r8": [0.90, 0.90], "small_r8": [0.95, 0.95]}
    [row] = study_findings.alpha_controls_generalisation(_synthetic(flat, n_test=20_000), study.ReportParams())
    assert row["verdict"] == "inconclusive" and "a negative needs power" in row["why"], row
