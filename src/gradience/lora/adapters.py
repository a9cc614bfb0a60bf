"""PEFT LoRA configurations of the seed's studies, and trainable-parameter counts on Mistral-7B.

The seed's configurations (r, α/r, learning rate, target modules) are :data:`SEED_CONFIGS`; ``α`` is
``lora_alpha = α/r · r``. Target sets are named ``all`` / ``attention`` / ``mlp`` and resolved per
architecture family by :func:`target_modules`: Llama and Mistral share the projection names
(``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``); BERT-style encoders (MiniLM) use
``query key value attention.output.dense`` for attention and ``intermediate.dense`` plus the layer's
own ``output.dense`` for the MLP, given as a regular expression because PEFT's suffix ``output.dense``
would match both kinds.

:func:`mistral_7b_config` writes Mistral-7B-v0.1's published ``config.json`` values in code, so the
adapters' parameter counts come from PEFT on the real architecture built on the meta device (no
weights, no hub): :func:`trainable_parameters`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

DECODER_TARGETS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
DECODER_TARGETS["all"] = DECODER_TARGETS["attention"] + DECODER_TARGETS["mlp"]
ENCODER_TARGETS = {  # BERT-style module names, full-match regular expressions (PEFT's str form)
    "attention": r".*\.attention\.(self\.(query|key|value)|output\.dense)",
    "mlp": r".*\.layer\.\d+\.(intermediate\.dense|output\.dense)",
    "all": r".*\.(attention\.(self\.(query|key|value)|output\.dense)|layer\.\d+\.(intermediate\.dense|output\.dense))",
}
TARGET_SETS = ("all", "attention", "mlp")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA configuration: rank, α/r, learning rate and target set."""

    r: int
    alpha_over_r: float
    lr: float
    targets: str

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be ≥ 1, got {self.r}")
        if self.alpha_over_r <= 0:
            raise ValueError(f"alpha_over_r must be > 0, got {self.alpha_over_r}")
        if self.targets not in TARGET_SETS:
            raise ValueError(f"targets must be one of {TARGET_SETS}, got {self.targets!r}")

    @property
    def alpha(self) -> float:
        return self.alpha_over_r * self.r


#: The seed's named configurations (its appendix table), GSM8K on Mistral-7B.
SEED_CONFIGS: dict[str, LoraSpec] = {
    "baseline": LoraSpec(32, 1.0, 2e-4, "all"),
    "baseline_lr5e5": LoraSpec(32, 1.0, 5e-5, "all"),
    "low_alpha": LoraSpec(32, 0.25, 2e-4, "all"),
    "small_r8": LoraSpec(8, 1.0, 2e-4, "all"),
    "low_alpha_r8": LoraSpec(8, 0.25, 2e-4, "all"),
    "mlp_only": LoraSpec(32, 1.0, 2e-4, "mlp"),
    "attn_only": LoraSpec(32, 0.25, 2e-4, "attention"),
    "attn_r8_lr5e5": LoraSpec(8, 1.0, 5e-5, "attention"),
}
#: The seed's "Params" column (rounded to 0.1 M in the seed).
SEED_PARAMS_M = {"baseline": 83.9, "baseline_lr5e5": 83.9, "low_alpha": 83.9, "small_r8": 21.0,
                 "low_alpha_r8": 21.0, "mlp_only": 56.6, "attn_only": 27.3, "attn_r8_lr5e5": 6.8}


def target_modules(targets: str, family: str = "decoder") -> list[str] | str:
    """PEFT ``target_modules`` for a target set of an architecture family (``decoder`` or ``encoder``)."""
    if targets not in TARGET_SETS:
        raise ValueError(f"targets must be one of {TARGET_SETS}, got {targets!r}")
    if family == "decoder":
        return list(DECODER_TARGETS[targets])
    if family == "encoder":
        return ENCODER_TARGETS[targets]
    raise ValueError(f"family must be 'decoder' or 'encoder', got {family!r}")


def lora_config(spec: LoraSpec, family: str = "decoder", task_type: str = "CAUSAL_LM",
                dropout: float = 0.0):
    """The ``peft.LoraConfig`` of ``spec`` (``lora_alpha`` = α/r · r; no bias; ``task_type`` as PEFT names it)."""
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, target_modules=target_modules(spec.targets, family),
                      lora_dropout=dropout, bias="none", task_type=task_type)


def apply_lora(model: nn.Module, spec: LoraSpec, family: str = "decoder", task_type: str = "CAUSAL_LM",
               seed: int = 0, dropout: float = 0.0):
    """Wrap ``model`` with a LoRA adapter (``peft.get_peft_model``); A's init is seeded by ``seed``."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(model, lora_config(spec, family, task_type, dropout))


def mistral_7b_config(**overrides):
    """``MistralConfig`` with Mistral-7B-v0.1's published values (``overrides`` replace any of them)."""
    from transformers import MistralConfig

    values = dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4096,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    return MistralConfig(**(values | overrides))


def tiny_mistral_config(**overrides):
    """A tiny ``MistralConfig`` (same architecture class, random weights) for offline tests."""
    values = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                  sliding_window=None, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return mistral_7b_config(**(values | overrides))


def trainable_parameters(spec: LoraSpec, config=None) -> tuple[int, int]:
    """(trainable, total) parameters PEFT reports for ``spec`` on ``config``'s causal LM, built on the
    meta device (no memory, no weights); default: Mistral-7B."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    config = config if config is not None else mistral_7b_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        peft_model = get_peft_model(model, lora_config(spec))
    return peft_model.get_nb_trainable_parameters()


def tiny_tokenizer(texts: list[str], vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on ``texts`` (exact round trip), with ``<pad>``, ``<s>``,
    ``</s>`` as ids 0, 1, 2 — the ids of :func:`tiny_mistral_config`. For offline tests of the paper path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
