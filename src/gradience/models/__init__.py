"""Models built from params: MLPs, CNNs and decoder-only transformers."""

import torch


@torch.no_grad()
def scale_init(model: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """Multiply every weight matrix and embedding (parameters of ≥ 2 dimensions) by ``alpha``, in place;
    biases and LayerNorm parameters are left. Large initial weights make a network fit its training set
    by memorising; weight decay then shrinks the weights towards the scale at which it generalises, so
    ``alpha`` > 1 with decay gives a grokking delay on tasks that otherwise generalise at once, and
    without decay a memorising control. (Two lines; no library does it.)"""
    for q in model.parameters():
        if q.dim() >= 2:
            q.mul_(alpha)
    return model
