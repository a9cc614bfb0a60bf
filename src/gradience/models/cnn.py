"""A small convolutional network for the 8×8 digits, with optional batch normalisation.

``norm="batch"`` puts ``BatchNorm2d`` after each convolution; ``norm="none"`` removes it. Weight matrices as the telemetry sees them (conv
kernels matricised ``out × in·k·k``): ``convs.0`` (c₁ × 9), ``convs.1`` (c₂ × 9·c₁), ``fc``
(d_hidden × c₂·(s/2)²), ``readout`` (n_classes × d_hidden).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Norm = Literal["batch", "none"]


class DigitsCNN(nn.Module):
    """``[conv 3×3 → norm → ReLU] × len(channels)`` → 2×2 max-pool → fc → ReLU → readout."""

    def __init__(self, channels: Sequence[int] = (16, 32), d_hidden: int = 64, n_classes: int = 10,
                 image_size: int = 8, in_channels: int = 1, norm: Norm = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        widths = [in_channels, *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:], strict=False))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) if norm == "batch" else nn.Identity() for c in channels)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(widths[-1] * (image_size // 2) ** 2, d_hidden)
        self.readout = nn.Linear(d_hidden, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = images
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = torch.relu(norm(conv(h)))
        return self.readout(torch.relu(self.fc(self.pool(h).flatten(1))))
