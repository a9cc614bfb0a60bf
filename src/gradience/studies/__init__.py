"""The studies: one module per protocol, all following the stage protocol of :mod:`.base`."""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES = ("grokking", "rank_survey", "hessian_coevolution", "fisher_geometry", "grokking_transition",
          "spectral_edge", "gradient_rank", "lora_gsm8k", "lora_sst2", "rosetta")


def study(stage: str) -> ModuleType:
    """The study module of ``stage``; unknown stages name the known ones."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(f"gradience.studies.{stage}")
