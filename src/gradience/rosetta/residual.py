"""Rule 15 of the Rosetta Stone: residual scaling α = σ_max(x)/σ_max(f(x)), clamped to [√ε, 1/√ε].

Reading chosen: per residual *branch* of a Llama decoder layer (attention and MLP, each ``x + f(x)``),
x the residual stream entering that addition and f(x) the branch output, each flattened to a
(tokens × d) matrix; σ_max exactly (``torch.linalg.matrix_norm(·, 2)``) rather than the document's
3-iteration power method, which only approximates it. Scales are applied non-invasively by forward
hooks that multiply the branch outputs (:func:`apply_residual_scales`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradience.rosetta.precision import precision_constants


def _smax(t: Tensor) -> float:
    return float(torch.linalg.matrix_norm(t.detach().reshape(-1, t.shape[-1]).double(), ord=2))


def residual_scale(x: Tensor, fx: Tensor, dtype: torch.dtype = torch.float32) -> float:
    """σ_max(x)/σ_max(f(x)) clamped to [√ε, 1/√ε] (1/√ε when f(x) = 0)."""
    c = precision_constants(dtype)
    fn = _smax(fx)
    alpha = _smax(x) / fn if fn > 0 else c.residual_max
    return min(max(alpha, c.residual_min), c.residual_max)


def _layers(model: nn.Module) -> list[nn.Module]:
    layers = [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]
    if not layers:
        raise ValueError("no decoder layer with `self_attn` and `mlp` found (Llama-style model expected)")
    return layers


@torch.no_grad()
def llama_branches(model: nn.Module, tokens: Tensor) -> dict[int, dict[str, Tensor]]:
    """Per decoder layer ``{"x", "attn", "mlp"}``: the layer's input residual stream and the two branch
    outputs, from one forward pass (the MLP branch's residual stream is ``x + attn``)."""
    seen: dict[int, dict[str, Tensor]] = {}
    hooks = []
    for i, layer in enumerate(_layers(model)):
        store = seen.setdefault(i, {})
        hooks.append(layer.register_forward_pre_hook(
            lambda m, a, kw, s=store: s.__setitem__("x", kw.get("hidden_states", a[0] if a else None)),
            with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(lambda m, a, out, s=store: s.__setitem__("attn", out[0])))
        hooks.append(layer.mlp.register_forward_hook(lambda m, a, out, s=store: s.__setitem__("mlp", out)))
    try:
        model(tokens)
    finally:
        for h in hooks:
            h.remove()
    return seen


def llama_residual_scales(model: nn.Module, tokens: Tensor, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """α of every branch, ``"<layer index>.attn"`` / ``"<layer index>.mlp"``, on one forward pass."""
    out = {}
    for i, s in llama_branches(model, tokens).items():
        out[f"{i}.attn"] = residual_scale(s["x"], s["attn"], dtype)
        out[f"{i}.mlp"] = residual_scale(s["x"] + s["attn"], s["mlp"], dtype)
    return out


def apply_residual_scales(model: nn.Module, scales: dict[str, float]) -> list:
    """Multiply each branch output by its α (forward hooks); returns the handles (``.remove()`` undoes)."""
    handles = []
    for i, layer in enumerate(_layers(model)):
        if f"{i}.attn" in scales:
            a = scales[f"{i}.attn"]
            handles.append(layer.self_attn.register_forward_hook(lambda m, args, out, a=a: (out[0] * a, *out[1:])))
        if f"{i}.mlp" in scales:
            a = scales[f"{i}.mlp"]
            handles.append(layer.mlp.register_forward_hook(lambda m, args, out, a=a: out * a))
    return handles
