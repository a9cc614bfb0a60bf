"""Multi-layer perceptrons."""

from __future__ import annotations

import torch
from torch import nn


class TokenPairMLP(nn.Module):
    """Embed two tokens, concatenate, one hidden ReLU layer, unembed: the grokking MLP.

    Weight matrices: ``embed`` (vocab × d_embed), ``hidden`` (d_hidden × 2·d_embed),
    ``readout`` (n_classes × d_hidden).
    """

    def __init__(self, vocab: int, n_classes: int, d_embed: int = 128, d_hidden: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_embed)
        self.hidden = nn.Linear(2 * d_embed, d_hidden)
        self.readout = nn.Linear(d_hidden, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens).flatten(1)
        return self.readout(torch.relu(self.hidden(h)))
