"""The colours every view gives a segment, an outcome category and a failure pattern: the report's figures and
pages, and the explorer (which gets them from ``/api/meta``), so a label has one colour wherever it is drawn."""

from __future__ import annotations

from failtrace.analysis.segments import SEGMENT_NAMES
from failtrace.views.contrast import darkened_for_white

# One colour per segment name (failtrace.analysis.segments.SEGMENT_NAMES, in order), so "query" is the same colour
# in every case, the legend, and the explorer (which gets this map from /api/meta).
# Any two lie ≥ 20 apart in CIELAB (ΔE*76; tests/test_label_contrast.py): as thin underlines, violet and fuchsia
# (instruction, answer), violet and indigo (instruction, examples) and two oranges (system, docstring) read as one.
SEGMENT_COLORS = dict(zip(SEGMENT_NAMES, ("#0d9488", "#d97706", "#7c3aed", "#db2777", "#65a30d", "#0284c7", "#664219",
                                          "#162582", "#be123c", "#0891b2", "#4d7c0f", "#111827", "#cc99aa"),
                           strict=True))
OTHER_SEGMENT_COLOR = "#6b7280"  # a segment name outside the registry (never produced by the segmenters)
# a segment's label: white text on its colour darkened to WCAG AA (the explorer's segment boxes)
SEGMENT_LABEL_COLORS = {name: darkened_for_white(c) for name, c in {**SEGMENT_COLORS, "": OTHER_SEGMENT_COLOR}.items()}

# neither red nor blue: those mean "supports the target" and "supports the contrast" in every heatmap, and a blue
# M-IA bar in the segment figure read as pushing towards the contrast
CATEGORY_COLORS = {"M-IA": "#15803d", "NC-IA+M-AG": "#a16207", "NC-IA+AG": "#52525b", "unlabelled": "#cbd5e1"}
PATTERN_COLORS = {"URT": "#7c3aed", "OIT": "#0d9488", "URT+OIT": "#db2777", "none": "#9ca3af",
                  "unlabelled": "#cbd5e1"}

# One colour per attribution method: the report's faithfulness figure and the explorer's flip curves
METHOD_COLORS = {"attnlrp": "#dc2626", "cp-lrp": "#f97316", "gradxinput": "#2563eb", "ig": "#16a34a",
                 "attention": "#7c3aed", "random": "#6b7280"}
