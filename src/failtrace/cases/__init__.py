"""Cases: clean pairs turned into explained units (context, target/contrast, segments, per-method relevance)."""

from failtrace.cases.record import MASK_RULES, Case, MaskingSpec, MethodResult, case_id

__all__ = ["MASK_RULES", "Case", "MaskingSpec", "MethodResult", "case_id"]
