"""Cases: clean pairs turned into explained units (context, target/contrast, segments, per-method relevance)."""

from failtrace.cases.record import CATEGORIES, MASK_RULES, PATTERNS, Case, MaskingSpec, CaseMethod, case_id

__all__ = ["CATEGORIES", "MASK_RULES", "PATTERNS", "Case", "MaskingSpec", "CaseMethod", "case_id"]
