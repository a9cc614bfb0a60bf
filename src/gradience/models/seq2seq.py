"""An encoder–decoder pre-LN transformer (``torch.nn.Transformer``, learned positions) for SCAN.

``forward(x)`` takes one tensor ``x = [source | decoder input]`` (the layout of
:func:`gradience.tasks.scan.encode`: ``src_len`` source tokens, then ``<bos>`` + shifted targets),
so the repository's loss, evaluation and causal tests (which call ``model(x)``) apply unchanged.
Padding (token ``pad``) is masked as a key in both attentions; the decoder is causal.
"""

from __future__ import annotations

import torch
from torch import nn


class Seq2SeqTransformer(nn.Module):
    def __init__(self, vocab: int, src_len: int, tgt_len: int, d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 4, d_ff: int | None = None, pad: int = 0, seed: int = 0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        torch.manual_seed(seed)
        self.src_len, self.pad = src_len, pad
        self.tok = nn.Embedding(vocab, d_model)
        self.src_pos = nn.Embedding(src_len, d_model)
        self.tgt_pos = nn.Embedding(tgt_len, d_model)
        block = dict(d_model=d_model, nhead=n_heads, dim_feedforward=d_ff or 4 * d_model, dropout=0.0,
                     activation="gelu", batch_first=True, norm_first=True)
        encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**block), n_layers, nn.LayerNorm(d_model),
                                        enable_nested_tensor=False)  # nested tensors do not apply to pre-LN
        self.core = nn.Transformer(d_model, n_heads, custom_encoder=encoder, num_decoder_layers=n_layers,
                                   dim_feedforward=block["dim_feedforward"], dropout=0.0, activation="gelu",
                                   batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("causal", torch.ones(tgt_len, tgt_len, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src, tgt = x[:, : self.src_len], x[:, self.src_len :]
        s = self.tok(src) + self.src_pos.weight[: src.shape[1]]
        t = self.tok(tgt) + self.tgt_pos.weight[: tgt.shape[1]]
        src_pad = src == self.pad
        n = tgt.shape[1]
        h = self.core(s, t, tgt_mask=self.causal[:n, :n], src_key_padding_mask=src_pad,
                      tgt_key_padding_mask=tgt == self.pad, memory_key_padding_mask=src_pad, tgt_is_causal=True)
        return self.head(self.norm(h))
