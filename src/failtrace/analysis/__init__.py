"""Analyses built on attributions: masking (faithfulness and flips), segments, patterns, comparisons."""

from failtrace.analysis.masking import masked_objective

__all__ = ["masked_objective"]
