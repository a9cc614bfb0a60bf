"""LoRA on GSM8K: the report keys; the analyses are the family's (:mod:`gradience.studies.lora_family.analysis`)."""

from __future__ import annotations

from gradience.studies.lora_family import analysis as family
from gradience.studies.lora_family.analysis import Analysis, analyse, curves

__all__ = ["Analysis", "ReportParams", "analyse", "curves", "metrics"]


class ReportParams(family.FamilyReportParams):
    pass


def metrics(a: Analysis, p: ReportParams) -> dict:
    return family.metrics(a, p)
