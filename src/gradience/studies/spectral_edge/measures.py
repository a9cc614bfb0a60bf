"""Spectral edge, training side: what a run measures in its loop and at its end besides the edge tracker.

Scores (loss, per-token accuracy and SCAN's exact match), the depth probes of Dyck-1's final hidden state,
and the Fourier analyses of a trained Dyck-1 model (:mod:`gradience.telemetry.fourier`).
"""

from __future__ import annotations

import numpy as np
import torch

from gradience.tasks import Split, scan
from gradience.telemetry import edge, fourier
from gradience.training import IGNORE_INDEX, loss_and_accuracy


def scores(model, x, y, trim: bool) -> dict[str, float]:
    """Loss and per-token accuracy; for SCAN also ``seq_acc``, exact match of the whole action sequence
    (teacher-forced argmax right at every target, which is the same as greedy decoding being exact)."""
    if trim:
        x, y = scan.trim(x, y)
    logits = model(x)
    loss, acc = loss_and_accuracy(logits, y)
    if not trim:
        return {"loss": float(loss), "acc": float(acc)}
    exact = ((logits.argmax(-1) == y) | (y == IGNORE_INDEX)).all(1).float().mean()
    return {"loss": float(loss), "acc": float(acc), "seq_acc": float(exact)}


def probe_rows(model, split, n_pos: int, seed: int) -> dict[str, float]:
    """Held-out R² of the depth probes (:func:`gradience.telemetry.edge.probe_scores`) from the final hidden
    state: fitted on ``n_pos`` random scored positions of the training words, scored on as many of the test words."""
    rng = np.random.default_rng(seed)

    def feats(x, y):
        h = edge.residual_stream(model, x)[-1].reshape(-1, model.lm.config.n_embd).double().cpu().numpy()
        t = y.reshape(-1).double().cpu().numpy()
        h, t = h[t != IGNORE_INDEX], t[t != IGNORE_INDEX]  # padding of variable-length words
        i = rng.choice(len(t), size=min(n_pos, len(t)), replace=False)
        return h[i], t[i]

    Htr, ytr = feats(split.x_train, split.y_train)
    Hte, yte = feats(split.x_test, split.y_test)
    return edge.probe_scores(Htr, ytr, Hte, yte, seed=seed)


@torch.no_grad()
def fourier_rows(model, split: Split, v_full: torch.Tensor, v_random: torch.Tensor, eps: float,
                 n_seq: int = 1000) -> list[tuple]:
    """Dyck-1 at the end of a run: positional power of the final hidden state, layer-wise attention KL from
    uniform, and the depth-basis concentration of the response ‖Δh‖² to θ + eps·v̂ on test words, for the edge
    and for a random unit direction of the same subspace (the control)."""
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    x, depth = split.x_test[:n_seq], split.y_test[:n_seq]
    full = (depth != IGNORE_INDEX).all(1)  # words without padding: the positional analyses need every position
    h0 = edge.residual_stream(model, x)[-1]
    rows = [("positional", k, float(s)) for k, s in enumerate(fourier.positional_power(h0[full].cpu().numpy()))]
    model.lm.set_attn_implementation("eager")
    att = model.lm(input_ids=x[full], output_attentions=True).attentions
    model.lm.set_attn_implementation("sdpa")
    rows += [("attention_kl", layer, float(fourier.attention_uniformity(a.cpu().numpy()).mean()))
             for layer, a in enumerate(att)]
    params = [q for q in model.parameters() if q.requires_grad]
    theta = parameters_to_vector(params).clone()
    for name, v in (("depth", v_full), ("depth_random", v_random)):
        vector_to_parameters(theta + eps * v.to(theta), params)
        h1 = edge.residual_stream(model, x)[-1]
        vector_to_parameters(theta, params)
        valid = depth != IGNORE_INDEX
        response = ((h1 - h0) ** 2).sum(-1)[valid].cpu().numpy()
        c = fourier.group_concentration(response, depth[valid].cpu().numpy(), int(depth.max()) + 1)
        rows += [(f"{name}_share", k + 1, float(s)) for k, s in enumerate(c.shares)]
        rows += [(f"{name}_elevation", c.peak, c.elevation)]
    return rows
