"""Decoder-only transformers from ``transformers`` (Llama architecture), sized from params.

The Llama block (RMSNorm, rotary positions, SwiGLU MLP, ``q/k/v/o_proj``, ``gate/up/down_proj``)
is the one Mistral-7B uses, so LoRA target names carry over to the paper-scale models.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(vocab: int, d_model: int, n_layers: int, n_heads: int, d_mlp: int, max_len: int) -> LlamaForCausalLM:
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=max_len,
        tie_word_embeddings=False, attention_dropout=0.0, use_cache=False,
    )
    return LlamaForCausalLM(config)


class CausalLM(nn.Module):
    """Wrap a ``transformers`` causal LM so that ``forward(tokens)`` returns logits ``[B, T, V]``."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=tokens).logits


class LastTokenClassifier(nn.Module):
    """Read the class out of the last position's logits (first ``n_classes`` vocabulary entries)."""

    def __init__(self, lm: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.lm, self.n_classes = lm, n_classes

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=tokens).logits[:, -1, : self.n_classes]
