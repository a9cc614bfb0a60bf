import json
import math

import numpy as np
import pandas as pd
import pytest

from gradience.config import ParamsError
from gradience.profiles import profile_params
from gradience.reporting import VERDICTS, claims
from gradience.rosetta.protocol import OPTIMIZER_RULES
from gradience.studies import notebook
from gradience.studies.protocol import Tables
from gradience.studies.rosetta import analysis as rs
from gradience.studies.rosetta import findings as rs_findings
from gradience.studies.rosetta import runs as rs_runs
from gradience.telemetry.glossary import undefined

STAGE = "rosetta"


@pytest.fixture
def section():
    return profile_params("smoke")[STAGE]


@pytest.fixture
def smoke(section):
    return notebook.load_params(STAGE, section)


def test_params_reject_bad_values_with_the_key(section):
    runs = section["runs"]
    with pytest.raises(ParamsError, match="the first arm must be 'conventional'"):
        notebook.load_params(STAGE, section | {"runs": runs | {"arms": [{"name": "mass", "rules": ["mass"]}]}})
    with pytest.raises(ParamsError, match=r"arm 'x': unknown rules \['warp'\]"):
        notebook.load_params(STAGE, section | {"runs": runs | {"arms": [{"name": "conventional"},
                                                                     {"name": "x", "rules": ["warp"]}]}})
    with pytest.raises(ParamsError, match=r"unknown rules \['mass'\]"):  # an optimizer rule is no LoRA rule
        notebook.load_params(STAGE, section | {"runs": runs | {"lora_arms": [{"name": "conventional"},
                                                                          {"name": "g", "rules": ["mass"]}]}})
    with pytest.raises(ParamsError, match="tasks must be unique"):
        notebook.load_params(STAGE, section | {"runs": runs | {"tasks": ["digits", "digits"]}})
    with pytest.raises(ParamsError, match=r"rosetta.runs.modular.lr"):
        notebook.load_params(STAGE, section | {"runs": runs | {"modular": runs["modular"] | {"lr": -1}}})
    with pytest.raises(ParamsError, match="arm names must be unique"):
        notebook.load_params(STAGE, section | {"runs": runs | {"arms": [{"name": "conventional"}, {"name": "conventional"}]}})


def test_jobs_cover_tasks_arms_seeds(smoke):
    r = smoke.runs
    jobs = rs_runs.jobs(r, "data")
    assert len(jobs) == len(r.seeds) * (2 * len(r.arms) + len(r.lora_arms))
    assert len({j.run_id for j in jobs}) == len(jobs)
    assert {j.spec[0] for j in jobs} == {"modular", "digits", "reviews"}


def test_default_profile_is_a_complete_comparison():
    p = notebook.load_params(STAGE, profile_params("default")[STAGE])
    assert len(p.runs.seeds) >= p.report.min_seeds == 3
    assert {x for a in p.runs.arms for x in a.rules} == set(OPTIMIZER_RULES)
    assert p.runs.reviews.steps >= p.report.lora_steps_needed


def test_every_claim_is_registered_and_every_logged_metric_defined():
    f = rs_findings
    ids = [*f.ARM_CLAIMS.values(), f.SCALE_CLAIM, f.STOP_CLAIM, f.BATCH_CLAIM, f.BUDGET_CLAIM]
    assert set(ids) <= set(claims())
    metrics = {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "batch_loss", "adam_eps", "weight_decay",
               "eta_ceiling", "eta_sps", "eta_weyl", "eta_step", "binding_weyl", "binding_lr_max", "lora_rank",
               "lora_scale", "tail_dims", "lora_dropout", "n_targets", "budget_ratio_max"}
    assert undefined(metrics) == set()


def test_each_claim_function_states_its_claim():
    registry = claims()
    ids = [*rs_findings.ARM_CLAIMS.values(), rs_findings.STOP_CLAIM, rs_findings.BATCH_CLAIM, rs_findings.SCALE_CLAIM,
           rs_findings.BUDGET_CLAIM]
    assert [f.__doc__ for f in rs_findings.CLAIMS] == [registry[i]["claim"] + "." for i in ids]


def test_run_one_small_tasks(smoke, data_dir):
    r = smoke.runs.model_copy(update={"modular": smoke.runs.modular.model_copy(update={"steps": 40}),
                                      "digits": smoke.runs.digits.model_copy(update={"steps": 40})})
    jobs = {j.condition: j for j in rs_runs.jobs(r, str(data_dir))}
    conv = rs_runs.run_one(jobs["digits.conventional"])
    rec, hist = conv.record, conv.tables["history"]
    assert rec["outcome"] == "completed" and rec["final_test_acc"] > 0.5  # digits learn in 40 steps
    assert rec["b_crit_init"] > 0 and math.isfinite(rec["b_crit_final"])
    assert set(hist.metric) == {"train_loss", "train_acc", "test_loss", "test_acc", "lr"}
    assert hist[hist.metric == "test_acc"].step.tolist() == [0, 20, 40]
    assert undefined(set(conv.tables["rules"].metric)) == set()
    again = rs_runs.run_one(jobs["digits.conventional"])  # same params + seed → same telemetry on CPU
    pd.testing.assert_frame_equal(hist, again.tables["history"])
    decay = rs_runs.run_one(jobs["modular.decay"])
    wd = decay.tables["rules"].query("metric == 'weight_decay'").value
    assert (wd < r.modular.weight_decay).all() and (wd > 0).all()  # λ₀·σ_k/σ_max < λ₀
    mass = rs_runs.run_one(jobs["digits.mass"])
    eta = mass.tables["rules"].query("metric == 'eta_step'")
    assert len(eta) == r.digits.steps // r.mass_every and (eta.value > 0).all()


def test_run_one_reviews_on_a_tiny_bert(smoke, tmp_path, monkeypatch):
    from transformers import BertConfig, BertForSequenceClassification

    import gradience.lora.base_models as bm
    from gradience.lora.adapters import tiny_tokenizer

    rng = np.random.default_rng(0)
    words = ["good", "bad", "tasty", "bland", "great", "awful", "fine", "sweet"]
    recs = [{"sentence": " ".join(rng.choice(words, 6)), "label": int(i % 2)} for i in range(40)]
    folder = tmp_path / "reviews"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    tok = tiny_tokenizer([r["sentence"] for r in recs])

    def load(_folder, num_labels=2):
        cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, num_labels=num_labels)
        return BertForSequenceClassification(cfg), tok

    monkeypatch.setattr(bm, "load_classifier", load)
    monkeypatch.setattr(bm, "minilm_folder", lambda: tmp_path)
    jobs = {j.condition: j for j in rs_runs.jobs(smoke.runs, str(tmp_path))}
    conv = rs_runs.run_one(jobs["reviews.conventional"])
    lora = conv.tables["lora"]
    assert len(lora) == 2 and (lora.scale == 2.0).all() and (lora.excess > 0).all()
    assert conv.record["n_targets"] == 2 and 0 <= conv.record["final_test_acc"] <= 1
    geo = rs_runs.run_one(jobs["reviews.geometric"])
    assert geo.record["n_targets"] == 6 and (geo.tables["lora"].scale == 1.0).all()
    ratios = geo.tables["history"].query("metric == 'budget_ratio_max'").value
    assert len(ratios) == smoke.runs.reviews.steps + 1 and ratios.iloc[0] == pytest.approx(1.0, rel=1e-4)
    assert geo.record["budget_halt_step"] == 1  # spectral init starts at the bound: the first update passes 0.9
    assert undefined(set(geo.tables["history"].metric) | set(geo.tables["rules"].metric)) == set()
    assert (geo.tables["lora"].r <= smoke.runs.reviews.r_max).all()


def _synthetic(acc: dict[str, list[float]], task="digits", lora=None) -> Tables:
    p = notebook.load_params(STAGE, profile_params("default")[STAGE]).runs
    rows = []
    for arm, values in acc.items():
        for seed, v in enumerate(values):
            rows.append({"run": f"{task}.{arm}/s{seed}", "condition": f"{task}.{arm}", "seed": seed, "task": task,
                         "arm": arm, "outcome": "completed" if math.isfinite(v) else "diverged",
                         "final_test_acc": v, "final_train_loss": 0.1, "batch_size": 128,
                         "stop_step": 200.0 if arm == "conventional" else math.nan, "stop_reason": "loss_stable",
                         "stop_test_acc": v - 0.001, "b_crit_init": 100.0, "b_crit_final": 90.0})
    runs = pd.DataFrame(rows)
    hist = pd.DataFrame([{"run": r, "step": s, "scope": "model", "metric": "test_acc", "value": 0.5}
                         for r in runs.run for s in (0, 100)])
    rules = pd.DataFrame([{"rule": "decay", "scope": "fc.weight", "metric": "weight_decay", "value": 0.004,
                           "step": 0, "run": r} for r in runs.run])
    return Tables(p, runs, {"history": hist, "rules": rules, "lora": lora if lora is not None else pd.DataFrame()})


def test_findings_verdicts_on_synthetic_tables():
    P = rs.ReportParams()
    t = _synthetic({"conventional": [0.98, 0.97, 0.98], "decay": [0.98, 0.975, 0.98], "mass": [0.1, 0.09, math.nan],
                    "adam_epsilon": [0.5, 0.48, 0.49]})
    a = rs.analyse(t, P)
    by_claim = {r["id"]: r for r in rs_findings.findings(a, P)}
    assert by_claim["rosetta.weight_decay"]["verdict"] == "reproduced"
    assert "weight_decay 0.004" in by_claim["rosetta.weight_decay"]["measured"]
    # a comparison's negative needs power: the seeds agree closely (2·SE of the gap ≈ 0.012 for mass,
    # 0.013 for adam_epsilon, ≤ the 0.02 tolerance), so a gap this large is a real loss
    assert by_claim["rosetta.lr_mass"]["verdict"] == "not reproduced"
    assert "1 diverged" in by_claim["rosetta.lr_mass"]["measured"]
    assert "smallest detectable test-accuracy gap at n 2 vs 3" in by_claim["rosetta.lr_mass"]["why"]
    assert by_claim["rosetta.adam_epsilon"]["verdict"] == "not reproduced"
    assert by_claim["rosetta.early_stopping"]["verdict"] == "reproduced"
    assert by_claim["rosetta.critical_batch"]["verdict"] == "inconclusive"
    assert all(r["verdict"] in VERDICTS for r in rs_findings.findings(a, P))
    m = rs.metrics(a, P)
    assert m["digits"]["mass"]["diverged"] == 1 and m["digits"]["decay"]["acc_gap"] == pytest.approx((0.98 + 0.975 + 0.98) / 3 - (0.98 + 0.97 + 0.98) / 3)
    # a conventional arm that did not learn the task: the comparison is not comparable, whatever the arm did
    # (a comparison: a short budget blocks a positive too)
    weak = rs.analyse(_synthetic({"conventional": [0.5, 0.5, 0.5], "decay": [0.5, 0.5, 0.5]}), P)
    assert {r["id"]: r for r in rs_findings.findings(weak, P)}["rosetta.weight_decay"]["verdict"] == "not comparable"
    # two seeds only: not comparable either (a comparison: too few seeds block a negative too)
    few = rs.analyse(_synthetic({"conventional": [0.98, 0.98], "mass": [0.1, 0.1]}), P)
    assert {r["id"]: r for r in rs_findings.findings(few, P)}["rosetta.lr_mass"]["verdict"] == "not comparable"
    # seeds that scatter: 2·SE of the gap ≈ 0.11 > the 0.02 tolerance, so a loss (mass, gap −0.08) is
    # inconclusive, not a negative; low power does not block a positive (decay, gap −0.013, 2·SE ≈ 0.064)
    noisy = rs.analyse(_synthetic({"conventional": [0.98, 0.97, 0.98], "mass": [0.9, 0.99, 0.8],
                                   "decay": [0.99, 0.9, 1.0]}), P)
    by_claim = {r["id"]: r for r in rs_findings.findings(noisy, P)}
    assert by_claim["rosetta.lr_mass"]["verdict"] == "inconclusive"
    assert "too little power for a negative" in by_claim["rosetta.lr_mass"]["why"]
    assert by_claim["rosetta.weight_decay"]["verdict"] == "reproduced"
    # every arm run diverged: the arm lost the task outright, a negative that needs no spread to see
    gone = rs.analyse(_synthetic({"conventional": [0.98, 0.97, 0.98], "mass": [math.nan] * 3}), P)
    row = {r["id"]: r for r in rs_findings.findings(gone, P)}["rosetta.lr_mass"]
    assert row["verdict"] == "not reproduced" and "all 3 arm runs diverged" in row["why"], row
    curves = rs.curves(a, P)
    assert set(curves.curve) == {f"test_acc_digits_{arm}" for arm in ("conventional", "decay", "mass", "adam_epsilon")}


def test_scale_claim_on_synthetic_lora_tables():
    P = rs.ReportParams()
    runs = [f"reviews.{arm}/s{s}" for arm in ("conventional", "geometric") for s in range(3)]
    lora = pd.DataFrame([{"run": r, "module": f"m{i}", "r": 8, "scale": 2.0 if "conv" in r else 1.0,
                          "ba_norm": 1.0, "sigma_k": 0.01, "bound": 0.01, "excess": 200.0 if "conv" in r else 3.0,
                          "budget_ratio": 400.0 if "conv" in r else 0.5} for r in runs for i in range(4)])
    t = _synthetic({"conventional": [0.7] * 3, "geometric": [0.71] * 3}, task="reviews", lora=lora)
    by_claim = {r["id"]: r for r in rs_findings.findings(rs.analyse(t, P), P)}
    assert by_claim["rosetta.lora_scale_excess"]["verdict"] == "reproduced"
    assert "median 200" in by_claim["rosetta.lora_scale_excess"]["measured"]
    assert by_claim["rosetta.lora_budget_held"]["verdict"] == "reproduced"
    assert by_claim["rosetta.lora_geometric"]["verdict"] == "reproduced"
    lora.loc[lora.scale == 2.0, "excess"] = 5.0  # the conventional adapters (s = α/r = 2)
    t = _synthetic({"conventional": [0.7] * 3, "geometric": [0.71] * 3}, task="reviews", lora=lora)
    assert {r["id"]: r for r in rs_findings.findings(rs.analyse(t, P), P)}["rosetta.lora_scale_excess"]["verdict"] == "not reproduced"
