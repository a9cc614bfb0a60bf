"""Multi-layer perceptrons."""

from __future__ import annotations

from collections.abc import Sequence

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


class MLP(nn.Module):
    """``[linear → norm → ReLU] × len(widths)`` → linear readout, on flat feature vectors.

    ``norm=True`` puts a ``LayerNorm`` after each hidden linear map (``False`` removes it).
    Weight matrices: ``hidden.i`` (widths[i] × widths[i-1], widths[-1] = d_in) and ``readout``.
    """

    def __init__(self, d_in: int, widths: Sequence[int], n_classes: int, norm: bool = True) -> None:
        super().__init__()
        dims = [d_in, *widths]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False))
        self.norms = nn.ModuleList(nn.LayerNorm(w) if norm else nn.Identity() for w in widths)
        self.readout = nn.Linear(dims[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear, norm in zip(self.hidden, self.norms, strict=True):
            x = torch.relu(norm(linear(x)))
        return self.readout(x)
