"""The studies of the pipeline, in order, each with its question in one line.

Only the CLI, the pipeline generator and ``gradience verify`` import this module: it is in no
stage's dependencies, so registering a study (or rewording a question) makes nothing stale.
"""

from __future__ import annotations

QUESTIONS = {
    "grokking": "Do κ and κ_recovery of the weights separate runs that grok from runs that stay memorised, "
                "and do the κ monitoring rules flag the failures?",
    "rank_survey": "Does each layer's effective rank follow expansion → compression → plateau, and how do "
                   "learning-rate spikes move it?",
    "hessian_coevolution": "Do the weight spectrum and the Hessian spectrum co-evolve, and does the weight "
                           "spectrum change first on the way to instability?",
    "fisher_geometry": "Is gradient descent close to natural gradient when training is stable, and does "
                       "instability come with an anisotropic Fisher?",
    "grokking_transition": "Is grokking preceded by early-warning signals (autocorrelation, variance) in "
                           "layer-wise spectral metrics?",
    "spectral_edge": "Is the dominant direction of recent updates gradient-driven before grokking and "
                     "decay-aligned after, flat yet ablation-critical?",
    "gradient_rank": "How many directions does the true gradient of a small LM use over training, and how "
                     "well does a K-basis capture it?",
    "lora_gsm8k": "Across LoRA configurations on a reasoning task, do α/r, the learning rate and the targets "
                  "decide accuracy, and does the adapter's geometry track it?",
    "lora_sst2": "On an easy classification task, does any reasonable LoRA configuration work, and is "
                 "attention-only r 8 at a low learning rate enough?",
    "rosetta": "Do the Rosetta Stone's geometric hyperparameters train as well as conventional tuned values?",
}
STAGES = tuple(QUESTIONS)
