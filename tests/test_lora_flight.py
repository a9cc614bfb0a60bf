"""The flight recorder on a plain PyTorch loop and on a tiny transformers Trainer run."""

import logging
import math

import pytest
import torch
from transformers import MistralForCausalLM, Trainer, TrainingArguments

from gradience.lora import adapters as ad
from gradience.lora.flight import FlightRecorder, GradienceCallback
from gradience.lora.geometry import ADAPTER_METRICS
from gradience.telemetry.recorder import TELEMETRY_COLUMNS

SPEC = ad.LoraSpec(r=4, alpha_over_r=1.0, lr=1e-2, targets="attention")


def _model(seed=0):
    torch.manual_seed(seed)
    return ad.apply_lora(MistralForCausalLM(ad.tiny_mistral_config()), SPEC, seed=seed)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, 384, (n, 12), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.ids[i]}


def test_plain_loop_hook_records_geometry_and_gradients():
    model = _model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rec = FlightRecorder("loop", every=2).attach(model, opt)
    data = _Tokens(8, 0)
    batch = {k: torch.stack([data[i][k] for i in range(8)]) for k in ("input_ids", "attention_mask", "labels")}
    for _ in range(5):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    rec.finish()
    rec.detach()
    df = rec.frame()
    assert tuple(df.columns) == TELEMETRY_COLUMNS
    geo = df[df["metric"] == "utilization"]
    assert sorted(geo["step"].unique()) == [0, 2, 4, 5]  # cadence 2, plus the final state
    grads = df[df["metric"] == "grad_norm"]
    assert sorted(grads["step"].unique()) == [0, 2, 4]  # gradients of the batch producing the next update
    # per-factor norms combine into the model-scope norm (only LoRA factors are trainable here)
    at0 = grads[grads["step"] == 0]
    per = at0[at0["scope"] != "model"]["value"]
    assert per.size == 2 * 4 * 2  # layers × attention projections × (A, B)
    assert at0[at0["scope"] == "model"]["value"].item() == pytest.approx(math.sqrt((per**2).sum()), rel=1e-9)
    # B = 0 at step 0, so B's gradient is the only non-zero one there; ΔW has grown by step 2
    assert (at0[at0["scope"].str.contains("lora_A")]["value"] == 0).all()
    u = geo.set_index(["step", "scope"])["value"]
    assert (u.loc[0] == 0).all() and (u.loc[2] > 0).all()
    # the hooks are gone after detach: another step records nothing
    n = len(rec.frame())
    model(**batch).loss.backward()
    opt.step()
    assert len(rec.frame()) == n


def test_memorisation_rule_logs_a_warning(caplog):
    rec = FlightRecorder("mon")
    with caplog.at_level(logging.WARNING, logger="gradience.lora"):
        assert not rec.evaluate(10, train_loss=1.0, test_loss=1.0 + math.log(1.4))
        assert rec.evaluate(20, train_loss=1.0, test_loss=1.0 + math.log(1.6))
    assert [r.getMessage() for r in caplog.records] == [rec.warnings[0]["message"]]
    assert "Memorisation detected" in rec.warnings[0]["message"] and rec.warnings[0]["step"] == 20
    wide = rec.frame().pivot(index="step", columns="metric", values="value")
    assert wide.loc[10, "ppl_ratio"] == pytest.approx(1.4) and wide.loc[10, "memorisation"] == 0
    assert wide.loc[20, "ppl_ratio"] == pytest.approx(1.6) and wide.loc[20, "memorisation"] == 1
    assert wide.loc[20, "train_ppl"] == pytest.approx(math.e)
    assert list(rec.warnings_frame().columns) == ["run", "step", "rule", "message"]


def test_trainer_callback_on_a_tiny_run(tmp_path):
    model = _model()
    rec = FlightRecorder("trainer", every=2, memorisation_ratio=1.0 + 1e-9)  # any gap > 0 warns
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4,
                             learning_rate=1e-2, logging_steps=1, eval_strategy="steps", eval_steps=2,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=_Tokens(16, 0),
                      eval_dataset={"train": _Tokens(16, 0), "test": _Tokens(16, 1)},
                      callbacks=[GradienceCallback(rec, path=tmp_path / "telemetry.parquet")])
    trainer.train()
    import pandas as pd

    df = pd.read_parquet(tmp_path / "telemetry.parquet")
    assert tuple(df.columns) == TELEMETRY_COLUMNS and (df["run"] == "trainer").all()
    assert set(ADAPTER_METRICS) <= set(df["metric"])
    assert sorted(df[df["metric"] == "utilization"]["step"].unique()) == [0, 2, 4]
    assert sorted(df[(df["metric"] == "grad_norm") & (df["scope"] == "model")]["step"].unique()) == [0, 2]
    assert sorted(df[df["metric"] == "batch_loss"]["step"].unique()) == [1, 2, 3, 4]
    # perplexities are exp of the Trainer's own evaluation losses, per split
    hist = {(h["step"], k): v for h in trainer.state.log_history for k, v in h.items() if k.startswith("eval_")}
    wide = df[df["scope"] == "model"].pivot(index="step", columns="metric", values="value")
    for step in (2, 4):
        assert wide.loc[step, "train_ppl"] == pytest.approx(math.exp(hist[(step, "eval_train_loss")]), rel=1e-6)
        assert wide.loc[step, "test_ppl"] == pytest.approx(math.exp(hist[(step, "eval_test_loss")]), rel=1e-6)
        # random tokens: the test split is never easier than the memorised training split
        assert wide.loc[step, "memorisation"] == float(wide.loc[step, "ppl_ratio"] > 1.0 + 1e-9)
    assert len(rec.warnings) == int(wide["memorisation"].sum())
