"""What a profile costs: runs, optimiser steps and training FLOPs per study, counted from its params.

Every count comes from the params and the study's own code: the runs are ``len(jobs(p.runs,
data_dir))`` of the study's runs module, the steps are the budgets its ``run_one`` trains for, the
parameters are counted on the models the study's builders make (Mistral-7B from its published
config on the meta device). FLOPs follow the usual dense-layer rule:

- **dense training** (every study but the LoRA ones): forward ≈ 2·N·tokens, backward ≈ 4·N·tokens,
  so one step ≈ **6·N·T**, with N the parameters that multiply activations (every parameter of
  ≥ 2 dims except embedding tables, which are lookups; a convolution kernel counts once per output
  position, its ``H_out·W_out``), T the examples (or token positions) of the step's batch.
  Attention scores (∝ context², small at these contexts), norms, biases and the optimiser are left out.
- **LoRA** (lora_gsm8k, lora_sst2, rosetta's reviews): the frozen base still runs forward and back-
  propagates through its activations (no weight gradient): ≈ **4·N_base·T + 6·N_adapter·T**, with
  N_adapter the trainable parameters PEFT reports (A, B and a fresh classifier head) and T =
  batch × ``max_length`` (an upper bound: padding to the longest sequence of a batch is shorter).
- **telemetry**: counted where the params fix the work — the Hutchinson probes of
  hessian_coevolution (one HVP ≈ 2 gradients ≈ 12·N·T on the full training set, ``hutchinson_probes``
  every ``full_every`` steps) and the per-sample Fisher gradients of fisher_geometry (6·N·T per
  measured window per Fisher kind, every ``cadence_every`` steps). Excluded: tolerance-driven
  Lanczos iterations (and hessian_coevolution's per-step λ_max tracking), SVDs of the weights,
  evaluations and generation, the gradient-noise, gradient-rank and edge probes, rosetta's MASS
  step-size measurements. The counted telemetry is ≈ 2× training for hessian_coevolution and
  ≈ 0.1–0.2× for fisher_geometry (``telemetry_flops``); the FLOPs columns include it.

Early-stopping studies (grokking_transition's stop rule, lm regimes that blow up) are counted at
their step budget: an upper bound.

GPU time assumes one H100 SXM: peak dense bf16 989 TFLOP/s (tensor cores, no sparsity) and fp32
67 TFLOP/s (no TF32), with a per-family utilisation (:data:`FAMILY`): tiny fp32 models at batch
≤ 512 are launch-bound and reach a few per cent of peak (5 % assumed); Mistral-7B LoRA in bf16
is assumed at 40 % (a typical model-FLOPs utilisation of tuned 7B fine-tuning). Both are
assumptions, not measurements: no GPU run has measured them here.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gradience.studies.registry import STAGES

H100_PEAK = {"bf16": 989e12, "fp32": 67e12}
#: per study: (precision, utilisation) on one H100 SXM in the paper profile.
FAMILY = {s: ("fp32", 0.05) for s in STAGES} | {"lora_gsm8k": ("bf16", 0.40), "lora_sst2": ("bf16", 0.40)}
TINY_SHAKESPEARE_VOCAB = 65  # distinct characters of karpathy/tiny_shakespeare (the hub corpus)
MISTRAL_7B = "mistralai/Mistral-7B-v0.1"


@dataclass
class RunCost:
    run: str
    steps: int
    n_dense: int        # trained parameters that multiply activations (6·N·T)
    n_frozen: int       # frozen base parameters (4·N·T, LoRA only)
    tokens: int         # examples or token positions per step
    telemetry_flops: float = 0.0

    @property
    def train_flops(self) -> float:
        return float(self.steps) * self.tokens * (6 * self.n_dense + 4 * self.n_frozen)


# ------------------------------------------------------------------------------ parameter counts


def dense_params(model, trainable: bool | None = None, conv_positions: dict[str, int] | None = None) -> int:
    """Parameters of ≥ 2 dims outside embedding tables (a conv kernel × its output positions);
    ``trainable`` True/False keeps only those that do / do not require grad."""
    from torch import nn

    skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    conv = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            conv[id(m.weight)] = (conv_positions or {}).get(name, 1)
    total = 0
    for q in model.parameters():
        if q.ndim < 2 or id(q) in skip or (trainable is not None and q.requires_grad != trainable):
            continue
        total += q.numel() * conv.get(id(q), 1)
    return total


def cnn_dense(model, image_size: int) -> int:
    """:func:`dense_params` of a :class:`~gradience.models.cnn.DigitsCNN`: each 3×3 same-padded conv
    at its input's resolution (the model halves it once, before ``fc``; see ``models/cnn.py``)."""
    positions = {f"convs.{i}": image_size ** 2 for i in range(len(model.convs))}
    return dense_params(model, conv_positions=positions)


def char_vocab(data_dir: Path, corpus: str) -> int:
    from gradience.tasks.text import HUB_CORPORA, load_corpus

    if corpus in HUB_CORPORA:
        if corpus != "tiny_shakespeare":
            raise ValueError(f"no offline vocabulary size for hub corpus {corpus!r}")
        return TINY_SHAKESPEARE_VOCAB
    return len(set(load_corpus(Path(data_dir), corpus)))


def lm_dense(vocab: int, m, context: int) -> int:
    from gradience.models.transformer import CausalLM, tiny_llama

    return dense_params(CausalLM(tiny_llama(vocab, m.d_model, m.n_layers, m.n_heads, m.d_mlp, max_len=context)))


def base_config(base_model: str):
    """The base model's config: Mistral-7B's published values, else the local folder's config.json."""
    from transformers import AutoConfig

    from gradience.lora import adapters as ad
    from gradience.lora.base_models import resolve

    if base_model == MISTRAL_7B:
        return ad.mistral_7b_config()
    return AutoConfig.from_pretrained(resolve(base_model))


_LORA_CACHE: dict[str, tuple[int, int]] = {}


def lora_counts(config, lora_config, classifier: bool) -> tuple[int, int]:
    """(trainable dense, frozen dense) parameters of a PEFT LoRA model built on the meta device."""
    key = repr((config.to_json_string(), sorted(lora_config.to_dict().items(), key=str), classifier))
    if key not in _LORA_CACHE:
        _LORA_CACHE[key] = _lora_counts_by_layers(config, lora_config, classifier)
    return _LORA_CACHE[key]


def _lora_counts_by_layers(config, lora_config, classifier: bool) -> tuple[int, int]:
    """Counts of the ``L``-layer model from its 1- and 2-layer versions, c(1) + (L − 1)·(c(2) − c(1)):
    exact, since every layer is identical (tests check it against a full build), and ≈ 15× faster
    than wrapping all 32 of Mistral-7B's layers with PEFT."""
    layers = config.num_hidden_layers
    if layers <= 2:
        return _lora_counts(copy.deepcopy(config), lora_config, classifier)
    one, two = (_lora_counts(_with_layers(config, n), lora_config, classifier) for n in (1, 2))
    return tuple(a + (layers - 1) * (b - a) for a, b in zip(one, two, strict=True))


def _with_layers(config, n: int):
    out = copy.deepcopy(config)
    out.num_hidden_layers = n
    if getattr(out, "layer_types", None):
        out.layer_types = out.layer_types[:n]
    return out


def _lora_counts(config, lora_config, classifier: bool) -> tuple[int, int]:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if classifier:
            config.num_labels = 2
            if getattr(config, "pad_token_id", None) is None:
                config.pad_token_id = config.eos_token_id
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
        pm = get_peft_model(model, lora_config)
    return dense_params(pm, trainable=True), dense_params(pm, trainable=False)


# ------------------------------------------------------------------------------ per study


def _grokking(p, jobs, data_dir):
    from gradience.studies.grokking.runs import build_model

    n, tokens = dense_params(build_model(p)), p.batch_size or _modular_train(p)
    return [RunCost(j.run_id, j.spec.run_steps(p.steps), n, 0, tokens * _pair_positions(p)) for j in jobs]


def _pair_positions(p) -> int:
    """Positions per example: 1 for the MLP (one input vector), 3 (a, b, =) for the transformer."""
    return 1 if p.model.kind == "mlp" else 3


def _modular_train(p) -> int:
    return round(p.train_fraction * p.modulus ** 2)


def _grokking_transition(p, jobs, data_dir):
    from gradience.studies.grokking.runs import build_model

    n = dense_params(build_model(p))
    return [RunCost(j.run_id, j.spec.steps or p.steps, n, 0, p.batch_size * _pair_positions(p)) for j in jobs]


def _rank_survey(p, jobs, data_dir):
    from gradience.models.cnn import DigitsCNN
    from gradience.models.mlp import MLP

    n_digits, side = 1797, 8  # sklearn's digits (data/digits/images.npy: 1797 × 8 × 8)
    out = []
    for j in jobs:
        family, _arm = j.spec
        fp = p.family(family)
        if family == "mlp":
            n, t = dense_params(MLP(side * side, fp.widths, 10)), fp.batch_size or round(fp.train_fraction * n_digits)
        elif family == "cnn":
            n, t = cnn_dense(DigitsCNN(fp.channels, fp.d_hidden, 10, image_size=side), side), \
                fp.batch_size or round(fp.train_fraction * n_digits)
        else:
            n, t = lm_dense(char_vocab(data_dir, fp.corpus), fp, fp.context), (fp.batch_size or fp.n_train) * fp.context
        out.append(RunCost(j.run_id, fp.steps, n, 0, t))
    return out


def _lm_regime(p, jobs, data_dir):
    n = lm_dense(char_vocab(data_dir, p.data.corpus), p.model, p.data.context)
    return n, p.data.n_train * p.data.context  # full-batch GD: every window every step


def _hessian_coevolution(p, jobs, data_dir):
    n, t = _lm_regime(p, jobs, data_dir)
    h = p.hessian
    measured = (h.measure_batch or p.data.n_train) * p.data.context
    hutch = (p.steps // h.full_every + 1) * h.hutchinson_probes * 12.0 * n * measured
    return [RunCost(j.run_id, p.steps, n, 0, t, hutch) for j in jobs]


def _fisher_geometry(p, jobs, data_dir):
    n, t = _lm_regime(p, jobs, data_dir)
    f = p.fisher
    measured = (f.measure_batch or p.data.n_train) * p.data.context
    fisher = (p.steps // p.cadence_every + 1) * len(f.kinds) * 6.0 * n * measured
    return [RunCost(j.run_id, p.steps, n, 0, t, fisher) for j in jobs]


def _gradient_rank(p, jobs, data_dir):
    n = lm_dense(char_vocab(data_dir, p.data.corpus), p.model, p.data.context)
    t = (p.train.batch_size or p.data.n_train) * p.data.context
    arms = len(p.adapt.ks) + int(p.adapt.full_control)
    # adapt: the checkpoint's from_step steps, then adapt.steps per arm (a K-basis arm trains k
    # coefficients per matrix, but its forward and backward still run the full model: counted as dense)
    return [RunCost(j.run_id, p.steps if j.condition == "trajectory" else p.adapt.from_step + arms * p.adapt.steps,
                    n, 0, t) for j in jobs]


def _spectral_edge(p, jobs, data_dir):
    from gradience.models.gpt import TokenClassifierGPT
    from gradience.models.seq2seq import Seq2SeqTransformer
    from gradience.tasks import dyck, scan

    dyck_n = dense_params(TokenClassifierGPT(dyck.N_TOKENS + p.variable_length, p.length // 2 + 1, p.length,
                                             p.model.d_model, p.model.n_layers, p.model.n_heads, seed=0))
    s = p.scan
    scan_n = dense_params(Seq2SeqTransformer(len(scan.VOCAB), scan.SRC_LEN, scan.TGT_LEN, s.model.d_model,
                                             s.model.n_layers, s.model.n_heads, pad=scan.PAD, seed=0))
    out = []
    for j in jobs:
        if j.spec.task == "dyck":
            out.append(RunCost(j.run_id, p.steps, dyck_n, 0, (p.batch_size or p.n_train) * p.length))
        else:  # encoder over SRC_LEN + decoder over TGT_LEN positions, weights split between them: ≈ mean length
            out.append(RunCost(j.run_id, s.steps, scan_n, 0,
                               (s.batch_size or s.n_train) * (scan.SRC_LEN + scan.TGT_LEN) // 2))
    return out


def _lora_family(classifier: bool):
    def count(p, jobs, data_dir):
        from gradience.lora import adapters as ad
        from gradience.studies.lora_family.runs import ZERO_SHOT

        config, cache, out = base_config(p.base_model), {}, []
        family = "decoder" if not classifier or config.model_type in ("mistral", "llama") else "encoder"
        for j in jobs:
            if j.condition == ZERO_SHOT:
                out.append(RunCost(j.run_id, 0, 0, 0, 0))
                continue
            spec = j.spec
            key = (spec.r, spec.targets)
            if key not in cache:
                lc = ad.lora_config(spec, family, "SEQ_CLS" if classifier else "CAUSAL_LM")
                cache[key] = lora_counts(base_config(p.base_model), lc, classifier)
            out.append(RunCost(j.run_id, p.steps, *cache[key], p.batch_size * p.data.max_length))
        return out
    return count


def _rosetta(p, jobs, data_dir):
    from peft import LoraConfig

    from gradience.lora.base_models import MINILM
    from gradience.models.cnn import DigitsCNN
    from gradience.models.mlp import TokenPairMLP

    m, d, r = p.modular, p.digits, p.reviews
    side, n_digits = 8, 1797
    mod_n = dense_params(TokenPairMLP(m.modulus, m.modulus, m.d_embed, m.d_hidden))
    dig_n = cnn_dense(DigitsCNN(d.channels, d.d_hidden, 10, image_size=side), side)
    lora = None
    out = []
    for j in jobs:
        task, _arm = j.spec
        if task == "modular":
            out.append(RunCost(j.run_id, m.steps, mod_n, 0, m.batch_size or round(m.train_fraction * m.modulus ** 2)))
        elif task == "digits":
            out.append(RunCost(j.run_id, d.steps, dig_n, 0, d.batch_size or round(d.train_fraction * n_digits)))
        else:  # the geometric arm picks its rank from the weights: counted at the conventional r
            if lora is None:
                lc = LoraConfig(r=r.r, lora_alpha=r.r * r.alpha_over_r, target_modules=r.targets, bias="none",
                                task_type="SEQ_CLS")
                lora = lora_counts(base_config(MINILM), lc, classifier=True)
            out.append(RunCost(j.run_id, r.steps, *lora, r.batch_size * r.max_length))
    return out


COUNTERS = {"grokking": _grokking, "rank_survey": _rank_survey, "hessian_coevolution": _hessian_coevolution,
            "fisher_geometry": _fisher_geometry, "grokking_transition": _grokking_transition,
            "spectral_edge": _spectral_edge, "gradient_rank": _gradient_rank,
            "lora_gsm8k": _lora_family(False), "lora_sst2": _lora_family(True), "rosetta": _rosetta}


# ------------------------------------------------------------------------------ tables


def runs_modules() -> dict:
    """Each study's runs module, imported by name (so the pipeline's import closure sees them)."""
    from gradience.studies.fisher_geometry import runs as fisher_geometry
    from gradience.studies.gradient_rank import runs as gradient_rank
    from gradience.studies.grokking import runs as grokking
    from gradience.studies.grokking_transition import runs as grokking_transition
    from gradience.studies.hessian_coevolution import runs as hessian_coevolution
    from gradience.studies.lora_gsm8k import runs as lora_gsm8k
    from gradience.studies.lora_sst2 import runs as lora_sst2
    from gradience.studies.rank_survey import runs as rank_survey
    from gradience.studies.rosetta import runs as rosetta
    from gradience.studies.spectral_edge import runs as spectral_edge

    found = {"grokking": grokking, "rank_survey": rank_survey, "hessian_coevolution": hessian_coevolution,
             "fisher_geometry": fisher_geometry, "grokking_transition": grokking_transition,
             "spectral_edge": spectral_edge, "gradient_rank": gradient_rank, "lora_gsm8k": lora_gsm8k,
             "lora_sst2": lora_sst2, "rosetta": rosetta}
    missing = set(STAGES) - set(found)
    if missing:
        raise KeyError(f"gradience.cost has no runs module for {sorted(missing)}: add it to runs_modules()")
    return found


def run_costs(study: str, params: dict, data_dir: str | Path) -> list[RunCost]:
    """One :class:`RunCost` per job of ``study`` under ``params`` (a profile's full params)."""
    runs = runs_modules()[study]
    p = runs.RunParams.model_validate(params[study]["runs"])
    jobs = runs.jobs(p, str(data_dir))
    import torch

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return COUNTERS[study](p, jobs, Path(data_dir))


def study_costs(profile: str, data_dir: str | Path) -> pd.DataFrame:
    """Per study of ``profile``: runs, optimiser steps (total, and the longest run), training and
    telemetry FLOPs, and its GPU estimate on one H100 (:data:`FAMILY`)."""
    from gradience.profiles import profile_params

    params, rows = profile_params(profile), []
    for study in STAGES:
        costs = run_costs(study, params, data_dir)
        precision, util = FAMILY[study]
        train = sum(c.train_flops for c in costs)
        tele = sum(c.telemetry_flops for c in costs)
        gpu_s = (train + tele) / (H100_PEAK[precision] * util)
        rows.append({"study": study, "runs": len(costs), "steps": sum(c.steps for c in costs),
                     "max_steps": max(c.steps for c in costs), "params_max": max(c.n_dense + c.n_frozen for c in costs),
                     "train_flops": train, "telemetry_flops": tele, "flops": train + tele,
                     "precision": precision, "utilisation": util, "gpu_hours": gpu_s / 3600})
    return pd.DataFrame(rows)


def measured_cpu(reports_dir: str | Path = "reports", profile: str = "default") -> pd.DataFrame:
    """Per study: the summed ``wall_seconds`` and ``cpu_seconds`` of its ``tables/runs.parquet``
    (NaN where the training stage has not produced it yet, or ran another profile than ``profile``)."""
    rows = []
    for study in STAGES:
        path = Path(reports_dir) / study / "tables" / "runs.parquet"
        runs = pd.read_parquet(path) if path.is_file() else None
        if runs is not None and "profile" in runs and (runs.profile == profile).all():
            rows.append({"study": study, "wall_seconds": float(runs.wall_seconds.sum()),
                         "cpu_seconds": float(runs.cpu_seconds.sum())})
        else:
            rows.append({"study": study, "wall_seconds": math.nan, "cpu_seconds": math.nan})
    return pd.DataFrame(rows)


def cost_table(data_dir: str | Path = "data", reports_dir: str | Path | None = "reports") -> pd.DataFrame:
    """Default vs paper per study: runs, steps, FLOPs, the default's measured CPU time and the
    FLOP/s it implies, the paper's estimated H100 time (``reports_dir`` None: no measured columns)."""
    d, p = study_costs("default", data_dir), study_costs("paper", data_dir)
    out = pd.DataFrame({"study": d.study, "default_runs": d.runs, "default_steps": d.steps,
                        "default_flops": d.flops, "paper_runs": p.runs, "paper_steps": p.steps,
                        "paper_flops": p.flops, "paper_precision": p.precision,
                        "paper_utilisation": p.utilisation, "paper_gpu_hours": p.gpu_hours})
    if reports_dir is not None:
        m = measured_cpu(reports_dir)
        out["default_cpu_hours"] = m.cpu_seconds.to_numpy() / 3600
        out["default_cpu_flop_per_s"] = d.flops.to_numpy() / m.cpu_seconds.to_numpy()
    return out


def display_table(t: pd.DataFrame) -> pd.DataFrame:
    """:func:`cost_table` with readable cells (FLOPs in scientific notation, "n/a" for a study
    whose default tables are missing) and a total row, for the synthesis notebook."""
    total = {"study": "all"} | {c: t[c].sum(min_count=len(t)) for c in t.columns
                                 if c.endswith(("_runs", "_steps", "_flops", "_hours"))}
    t = pd.concat([t, pd.DataFrame([total])], ignore_index=True)
    sci = lambda v: "n/a" if pd.isna(v) else f"{v:.2e}"  # noqa: E731
    g3 = lambda v: "n/a" if pd.isna(v) else f"{v:.3g}"  # noqa: E731
    out = pd.DataFrame({
        "study": t.study, "runs (default)": t.default_runs.astype(int), "steps (default)": t.default_steps.astype(int),
        "FLOPs (default)": t.default_flops.map(sci), "runs (paper)": t.paper_runs.astype(int),
        "steps (paper)": t.paper_steps.astype(int), "FLOPs (paper)": t.paper_flops.map(sci)})
    if "default_cpu_hours" in t:
        out["CPU hours (default, measured)"] = t.default_cpu_hours.map(g3)
        out["CPU FLOP/s (default)"] = t.default_cpu_flop_per_s.map(sci)
    out["H100 (paper)"] = [("" if pd.isna(p) else f"{p} at {u:.0%}") for p, u in
                           zip(t.paper_precision, t.paper_utilisation, strict=True)]
    out["GPU hours (paper)"] = t.paper_gpu_hours.map(g3)
    return out


def format_profile(profile: str, data_dir: str | Path = "data") -> str:
    """What ``gradience profile NAME`` prints: :func:`study_costs` of one profile as text."""
    t = study_costs(profile, data_dir)
    total = {"study": "TOTAL"} | {c: t[c].sum() for c in ("runs", "steps", "train_flops", "telemetry_flops",
                                                           "flops", "gpu_hours")}
    t = pd.concat([t, pd.DataFrame([total])], ignore_index=True)
    fmt = {c: "{:.2e}".format for c in ("train_flops", "telemetry_flops", "flops")}
    fmt |= {"params_max": lambda v: "" if pd.isna(v) else f"{v:.3g}",
           "max_steps": lambda v: "" if pd.isna(v) else f"{v:.0f}", "gpu_hours": "{:.3g}".format,
           "utilisation": lambda v: "" if pd.isna(v) else f"{v:.0%}"}
    head = f"Estimated cost of profile {profile} (flops = train + counted telemetry; GPU hours on one H100 SXM):"
    return "\n".join([head, t.to_string(index=False, formatters=fmt, na_rep=""), NOTE])


NOTE = (f"H100 SXM peak: bf16 {H100_PEAK['bf16'] / 1e12:.0f}, fp32 {H100_PEAK['fp32'] / 1e12:.0f} TFLOP/s, "
        "at the utilisation shown; FLOPs ≈ 6·N·tokens per step (LoRA: 4·N_base + 6·N_adapter; "
        "see gradience.cost for what is counted).")


def format_table(t: pd.DataFrame) -> str:
    """The table as fixed-width text (FLOPs in scientific notation), with a total row and the assumptions."""
    shown = t.copy()
    total = {"study": "TOTAL"} | {c: shown[c].sum() for c in shown.columns
                                  if c.endswith(("_runs", "_steps", "_flops", "_hours"))}
    shown = pd.concat([shown, pd.DataFrame([total])], ignore_index=True)
    fmt = {c: "{:.2e}".format for c in shown.columns if c.endswith(("_flops", "flop_per_s"))}
    fmt |= {c: "{:.3g}".format for c in shown.columns if c.endswith("_hours")}
    fmt |= {"paper_utilisation": lambda v: "" if pd.isna(v) else f"{v:.0%}"}
    return shown.to_string(index=False, formatters=fmt, na_rep="") + "\n" + NOTE
