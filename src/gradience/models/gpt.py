"""A GPT-2-style causal pre-LN transformer (learned positions) with a per-position classification
head, built from ``transformers.GPT2Config`` (the spectral-edge study's Dyck-1 model)."""

from __future__ import annotations

import torch
from torch import nn


class TokenClassifierGPT(nn.Module):
    """``lm`` = ``transformers.GPT2Model``; ``head`` maps each position's final hidden state to classes."""

    def __init__(self, vocab: int, n_classes: int, n_positions: int, d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 4, seed: int = 0):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        torch.manual_seed(seed)
        cfg = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=d_model, n_layer=n_layers,
                         n_head=n_heads, bos_token_id=None, eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        self.lm = GPT2Model(cfg)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lm(input_ids=x).last_hidden_state)
