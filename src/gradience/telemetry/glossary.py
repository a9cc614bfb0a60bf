"""Every metric name in the telemetry, defined once. ``README.md`` carries this table (a test checks)."""

from __future__ import annotations

GLOSSARY: dict[str, str] = {
    # weights (per matrix; scope = parameter name), telemetry/spectral.py
    "kappa": "σ_max / σ_min of a weight matrix; inf when rank-deficient (σ_min ≤ σ_max·max(m,n)·eps). "
             "At scope `model`: the largest κ over the weight matrices",
    "kappa_r": "σ_max / σ_r, σ_r the smallest singular value above the rank tolerance (finite κ)",
    "numerical_rank": "number of singular values above σ_max·max(m,n)·eps (numpy's matrix_rank rule)",
    "stable_rank": "‖W‖_F² / ‖W‖_2²",
    "effective_rank": "Roy–Vetterli: exp(H(p)), p = σ / ‖σ‖₁. At scope `model`: the mean over matrices",
    "nuclear_norm": "Σ σ_i",
    "spectral_norm": "σ_max",
    "frobenius_norm": "‖W‖_F = (Σ σ_i²)^½",
    "alpha": "power-law decay exponent: least-squares slope of log σ_i on log i over ranks 1..numerical "
             "rank, σ_i ∝ i^-α",
    # training state (scope `model`), training.py
    "train_loss": "mean cross-entropy over the training split (or its first eval_max_examples)",
    "test_loss": "mean cross-entropy over the test split",
    "train_acc": "accuracy over the training split",
    "test_acc": "accuracy over the test split",
    "batch_loss": "loss of the batch that produces the next update",
    "grad_norm": "global L2 norm of that batch's gradient (before clipping)",
    "weight_norm": "global L2 norm of all trainable parameters",
    "lr": "learning rate used for the next update",
    "diverged": "1 at the step where the loss or gradient became non-finite (the run stops there)",
}


def markdown() -> str:
    rows = "\n".join(f"| `{name}` | {text} |" for name, text in GLOSSARY.items())
    return "| metric | definition |\n| --- | --- |\n" + rows
