"""The cost model of :mod:`gradience.cost`: the 6·N·T rule against counted FLOPs, runs and steps
against the params, the LoRA rule on a tiny PEFT model, and the estimate ``gradience profile paper`` prints."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gradience import cost
from gradience.profiles import profile_params


def _step_flops(model, *inputs, loss) -> int:
    """FLOPs FlopCounterMode counts in one training step (forward, loss, backward)."""
    with FlopCounterMode(display=False) as counter:
        loss(model(*inputs)).backward()
    return counter.get_total_flops()


def test_dense_rule_matches_counted_flops_of_an_mlp():
    from gradience.models.mlp import MLP

    torch.manual_seed(0)
    model, batch = MLP(64, [128, 128], 10), 128
    x, y = torch.randn(batch, 64), torch.randint(0, 10, (batch,))
    counted = _step_flops(model, x, loss=lambda out: torch.nn.functional.cross_entropy(out, y))
    n = cost.dense_params(model)
    assert n == 64 * 128 + 128 * 128 + 128 * 10
    # exact: 2NB forward, 2NB weight gradients, 2NB input gradients except the first layer's (x needs none)
    assert counted == 6 * n * batch - 2 * 64 * 128 * batch
    # the 6·N·B rule over-counts by that first layer only: 11.8 % here
    assert 6 * n * batch / counted - 1 == pytest.approx(2 * 64 * 128 / (6 * n - 2 * 64 * 128))
    assert abs(6 * n * batch / counted - 1) < 0.12
    assert cost.RunCost("r", 3, n, 0, batch).train_flops == 3 * 6 * n * batch


def test_lora_rule_matches_counted_flops_of_a_tiny_peft_model():
    from transformers import MistralForCausalLM

    from gradience.lora import adapters as ad

    torch.manual_seed(0)
    config = ad.tiny_mistral_config(hidden_size=64, intermediate_size=256, head_dim=16)
    spec = ad.LoraSpec(4, 2.0, 1e-4, "all")
    model = ad.apply_lora(MistralForCausalLM(config), spec)
    n_adapter, n_base = cost.dense_params(model, trainable=True), cost.dense_params(model, trainable=False)
    assert (n_adapter, n_base) == cost.lora_counts(ad.tiny_mistral_config(hidden_size=64, intermediate_size=256,
                                                                          head_dim=16), ad.lora_config(spec), False)
    batch, length = 4, 16
    ids = torch.randint(3, config.vocab_size, (batch, length))
    counted = _step_flops(model, ids, loss=lambda out: out.logits.float().logsumexp(-1).mean())
    rule = cost.RunCost("r", 1, n_adapter, n_base, batch * length).train_flops
    # the rule leaves out attention scores (∝ length²) and over-counts the input gradient of layer 0's
    # frozen projections (their input needs none): 2.8 % here, within 5 %
    assert abs(rule / counted - 1) < 0.05


def test_runs_and_steps_follow_the_params(data_dir):
    params = profile_params("default")["grokking"]["runs"]
    costs = cost.run_costs("grokking", profile_params("default"), data_dir)
    seeds = [len(c.get("seeds") or params["seeds"]) for c in params["conditions"]]
    steps = [c.get("steps") or params["steps"] for c in params["conditions"]]
    assert len(costs) == sum(seeds)
    assert sum(c.steps for c in costs) == sum(s * n for s, n in zip(steps, seeds, strict=True))
    assert {c.tokens for c in costs} == {params["batch_size"]}
    paper = profile_params("paper")["lora_gsm8k"]["runs"]
    lora = cost.run_costs("lora_gsm8k", profile_params("paper"), data_dir)
    assert len(lora) == len(paper["configs"]) * len(paper["seeds"]) + 1  # + the zero-shot reference
    assert sum(c.steps for c in lora) == (len(lora) - 1) * paper["steps"]
    # Mistral-7B's published size (7,241,732,096) less its input embedding (32000 × 4096) and norms
    base = {c.n_frozen for c in lora if c.steps}
    assert base == {7_241_732_096 - 32000 * 4096 - 65 * 4096}


def test_profile_paper_prints_the_estimate(tmp_path, capsys, data_dir):
    from gradience.cli import main

    main(["profile", "paper", "--params", str(tmp_path / "params.yaml"), "--data", str(data_dir)])
    out = capsys.readouterr().out
    assert (tmp_path / "params.yaml").is_file()
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    for study in cost.STAGES:
        assert study in rows, f"{study} missing from the estimate:\n{out}"
    gsm = rows["lora_gsm8k"]
    assert gsm[1] == "28" and gsm[-3:-1] == ["bf16", "40%"]
    assert float(rows["TOTAL"][-1]) > 0


def test_profile_default_prints_no_estimate_unless_asked(tmp_path, capsys):
    from gradience.cli import main

    main(["profile", "default", "--params", str(tmp_path / "params.yaml")])
    assert "Estimated cost" not in capsys.readouterr().out


def test_measured_cpu_sums_the_default_run_tables_only(tmp_path):
    import pandas as pd

    for study, profile in (("grokking", "default"), ("rank_survey", "smoke")):
        (tmp_path / study / "tables").mkdir(parents=True)
        pd.DataFrame({"profile": [profile] * 2, "wall_seconds": [3.0, 4.0], "cpu_seconds": [1.5, 2.0]}).to_parquet(
            tmp_path / study / "tables" / "runs.parquet")
    m = cost.measured_cpu(tmp_path).set_index("study")
    assert len(m) == len(cost.STAGES)
    assert (m.loc["grokking", "cpu_seconds"], m.loc["grokking", "wall_seconds"]) == (3.5, 7.0)
    assert m.drop(index="grokking").cpu_seconds.isna().all()  # smoke tables and missing ones: NaN


@pytest.mark.parametrize("classifier", [False, True])
def test_layer_extrapolated_lora_counts_equal_a_full_mistral_build(classifier):
    from gradience.lora import adapters as ad

    lc = ad.lora_config(ad.SEED_CONFIGS["attn_only"], task_type="SEQ_CLS" if classifier else "CAUSAL_LM")
    full = cost._lora_counts(ad.mistral_7b_config(), lc, classifier)
    assert cost._lora_counts_by_layers(ad.mistral_7b_config(), lc, classifier) == full
    # frozen: Mistral-7B less its input embedding and norms; the classifier swaps the 32000-way LM head
    # for a 2-way score head (PEFT keeps a frozen original beside its trainable copy)
    lm_base = 7_241_732_096 - 32000 * 4096 - 65 * 4096
    assert full[1] == (lm_base - 32000 * 4096 + 2 * 4096 if classifier else lm_base)
    assert full[0] == 32 * 32 * (2 * (4096 + 4096) + 2 * (4096 + 1024)) + (2 * 4096 if classifier else 0)  # r 32 q,k,v,o
