"""Quickstart: explain one real failure of the bundled model, printed and written as HTML/PNG/JSON.

Asked to wrap its answer in double quotes, SmolLM2-135M-Instruct starts with ``Water`` (target, the wrong first
token); starting with ``"`` (contrast) passes IFEval's check (the demo's item ``if-water-quote``, docs/DEMO.md). The
attribution says which prompt tokens push the model to ``Water`` rather than ``"``: red for the target, blue for the
contrast; the strongest is the prompt's own ``water``, the token whose masking flips this prediction in the demo.
``failtrace demo`` finds such pairs itself; this is one by hand.

Run:  .venv/bin/python examples/quickstart.py
"""

from pathlib import Path

import failtrace
from failtrace.views import heatmap_html, render_terminal, save_heatmap_png

lm = failtrace.load_model()  # bundled SmolLM2-135M-Instruct
attr = failtrace.attribute(
    lm,
    'Say what water is made of, in one sentence wrapped in double quotes ("like this").',
    chat=True,  # target: by default the model's own next token, here its wrong first answer token
    contrast='"',  # the token that would have satisfied the instruction
)
render_terminal(attr)
out = Path("out")
attr.save_json(out / "water.json")
(out / "water.html").write_text(heatmap_html(attr), encoding="utf-8")
save_heatmap_png(attr, out / "water.png")
print(f"target {attr.target.text!r} vs contrast {attr.contrast.text!r}: Δℓ = {attr.delta_logit:.3f} (> 0: the model "
      f"prefers its wrong token); input relevance sums to {attr.relevance_sum:.3f}; wrote {out}/water.*")
