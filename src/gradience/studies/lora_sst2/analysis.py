"""LoRA on SST-2: the report keys; the analyses are the family's (:mod:`gradience.studies.lora_family.analysis`)."""

from __future__ import annotations

from pydantic import Field

from gradience.studies.lora_family import analysis as family
from gradience.studies.lora_family.analysis import Analysis, analyse, curves

__all__ = ["Analysis", "ReportParams", "analyse", "curves", "metrics"]


class ReportParams(family.FamilyReportParams):
    easy_spread: float = Field(default=0.03, gt=0, description="'any config works': best − worst "
                                  "configuration accuracy at most this (seed: 0.02)")


def metrics(a: Analysis, p: ReportParams) -> dict:
    return family.metrics(a, p)
