"""The Geometric Hyperparameter Rosetta Stone: 15 hyperparameters and their geometric replacements.

Each rule is a function of a model's weights, gradients or dtype; the readings chosen where the
source is vague are stated in the submodules: :mod:`~gradience.rosetta.precision` (constants, σ_k),
:mod:`~gradience.rosetta.optimizer` (rules 1–9), :mod:`~gradience.rosetta.lora` (rules 10–14),
:mod:`~gradience.rosetta.residual` (rule 15). :data:`RULES` maps each rule to its function(s).
"""

from __future__ import annotations

from gradience.rosetta.lora import (
    geometric_dropout,
    lora_scale_bound,
    peft_scale_excess,
    scale_claim_summary,
    scale_excess,
    select_target_modules,
    spectral_decay_table,
    spectral_init,
    tail_dims,
)
from gradience.rosetta.optimizer import (
    adam_epsilon,
    budget_ratio,
    cayley_retraction,
    ceiling_step,
    critical_batch_size,
    decay_scale,
    lr_multiplier,
    mass_step,
    mass_step_size,
    polyak_step,
    scaled_gd_directions,
    should_stop,
    weight_decays,
    weyl_step,
)
from gradience.rosetta.precision import eigengap, precision_constants, sigma_k
from gradience.rosetta.residual import (
    apply_residual_scales,
    llama_branches,
    llama_residual_scales,
    residual_scale,
)

#: rule number → (hyperparameter, geometric replacement, function names in this package)
RULES: dict[int, tuple[str, str, tuple[str, ...]]] = {
    1: ("learning rate", "min(η_ceiling, η_sps, η_weyl)", ("mass_step_size", "mass_step", "ceiling_step",
                                                            "polyak_step", "weyl_step")),
    2: ("Adam ε", "max(σ_k², √ε·σ_max²)", ("adam_epsilon",)),
    3: ("Adam β / momentum", "ScaledGD (historical), Cayley–Stiefel retraction", ("scaled_gd_directions",
                                                                                   "cayley_retraction")),
    4: ("weight decay", "λ₀·σ_k/σ_max", ("decay_scale", "weight_decays")),
    5: ("gradient clipping", "removed; spectral budget monitor", ("budget_ratio",)),
    6: ("warm-up", "removed", ("lr_multiplier",)),
    7: ("LR schedule", "optional cosine", ("lr_multiplier",)),
    8: ("batch size", "B_crit = tr Σ / ‖G‖²", ("critical_batch_size",)),
    9: ("early stopping", "loss < √ε or |ΔL| < √ε or budget > 0.9", ("should_stop", "budget_ratio")),
    10: ("LoRA scale", "σ_k(W)/‖BA‖₂", ("lora_scale_bound", "scale_excess", "peft_scale_excess",
                                        "scale_claim_summary")),
    11: ("LoRA rank", "min(m, n) − ⌊erank⌋", ("tail_dims",)),
    12: ("LoRA target modules", "tail_dims > 0", ("select_target_modules", "spectral_decay_table")),
    13: ("LoRA dropout", "redundancy × adapter fraction", ("geometric_dropout",)),
    14: ("LoRA init", "‖A‖₂ = ‖B‖₂ = √σ_k, ‖BA‖₂ = σ_k", ("spectral_init",)),
    15: ("residual scaling", "σ_max(x)/σ_max(f(x)) in [√ε, 1/√ε]", ("llama_residual_scales", "residual_scale",
                                                                    "apply_residual_scales")),
}

__all__ = [
    "RULES",
    "adam_epsilon",
    "apply_residual_scales",
    "budget_ratio",
    "cayley_retraction",
    "ceiling_step",
    "critical_batch_size",
    "decay_scale",
    "eigengap",
    "geometric_dropout",
    "llama_branches",
    "llama_residual_scales",
    "lora_scale_bound",
    "lr_multiplier",
    "mass_step",
    "mass_step_size",
    "peft_scale_excess",
    "polyak_step",
    "precision_constants",
    "residual_scale",
    "scale_claim_summary",
    "scale_excess",
    "scaled_gd_directions",
    "select_target_modules",
    "should_stop",
    "sigma_k",
    "spectral_decay_table",
    "spectral_init",
    "tail_dims",
    "weight_decays",
    "weyl_step",
]
