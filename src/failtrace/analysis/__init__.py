"""Analyses built on attributions: today masking (how the objective moves when chosen input positions are zeroed)."""

from failtrace.analysis.masking import masked_objective

__all__ = ["masked_objective"]
