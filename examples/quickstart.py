"""Quickstart: one contrastive attribution on the bundled model, printed and written as HTML/PNG/JSON.

Run:  .venv/bin/python examples/quickstart.py
"""

from pathlib import Path

import failtrace
from failtrace.views import heatmap_html, render_terminal, save_heatmap_png

lm = failtrace.load_model()  # bundled SmolLM2-135M-Instruct
attr = failtrace.attribute(
    lm,
    "How many legs does a spider have?",
    chat=True,
    answer_prefix="A spider has",
    target=" six",  # the wrong answer we want explained ...
    contrast=" eight",  # ... against the right one
)
render_terminal(attr)
out = Path("out")
attr.save_json(out / "spider.json")
(out / "spider.html").write_text(heatmap_html(attr), encoding="utf-8")
save_heatmap_png(attr, out / "spider.png")
print(f"Δℓ = {attr.delta_logit:.3f}; input relevance sums to {attr.relevance_sum:.3f}; wrote {out}/spider.*")
