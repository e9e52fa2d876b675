"""Evidence dictionaries (category, pattern, graph summary) as readable HTML, whatever their exact keys.

Rules, applied recursively: a dict becomes a definition list; a list of dicts that share keys becomes a small table
(at most ``MAX_ROWS`` rows, then "… N more"); a list of scalars becomes one line (``nodes``/``path`` lists are joined
with arrows, as paths through the graph, the stages at one position folded: ``emb–L15/26 → L16–L29/42``; a token list
folds repeats, ``‹·cat› ×17``, as a path's nodes repeat a token); numbers are shown with 4 significant digits;
strings are escaped and tokens keep visible whitespace where the key says they are tokens; a field name the
glossary knows shows its meaning on hover.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from failtrace.attribution.record import visible

MAX_ROWS = 12
_PATH_KEYS = {"nodes", "path"}
_TOKEN_KEYS = {"token", "tokens", "text", "input_token_text"}
# What an empty list means where a bare "none" reads as a contradiction (the ablation table beside it lists nodes)
_EMPTY = {"ablated_nodes": "none: no ablation of the top nodes within the budget flipped the prediction",
          "oit_tokens": "none: no irrelevant token among the top supporters"}
# A count left empty because nothing flipped: "none", as the case's header and `show` say it ("—" is "not computed")
_NO_FLIP = {"k_star": "none (no flip within max-k)", "ablation_k": "none (no flip within the budget)"}


# What an evidence field means, shown on hover (definitions: docs/ANALYSES.md). Only names with one meaning wherever
# they appear; "nodes" (a count, an ablation list, a path) is left without one.
GLOSSARY = {
    "k_star": "AttnLRP's k*: the fewest top input tokens whose masking flips the prediction",
    "k_ia": "M-IA threshold: k* at most this makes the case M-IA (masking input tokens explains it)",
    "ablation": "zeroing the strongest graph nodes (hidden states) together, k = 0 … budget",
    "ablation_k": "the fewest ablated nodes that flip the prediction",
    "ablated_nodes": "the nodes whose ablation flips the prediction",
    "ablation_budget": "the most nodes ablated", "budget": "the most nodes ablated",
    "curve": "Δℓ after ablating the first k nodes, k = 0 … budget (below 0: flipped)",
    "flipped": "whether Δℓ fell below 0 within the budget",
    "rule": "how the nodes were chosen and zeroed",
    "relevant_sum": "Σ normalised R over the relevant segments' content tokens; URT when it is at least −θ "
                    "(empty: undecided)",
    "relevant_segments": "the segments that should decide the answer on this benchmark",
    "relevant_tokens": "content tokens in the relevant segments",
    "relevant_not_finite": "relevant tokens whose relevance is not finite (URT is then undecided)",
    "urt_decidable": "whether URT could be decided (some relevant token, every one finite)",
    "theta": "θ: URT holds when relevant_sum ≥ −θ",
    "theta_share": "θ': OIT holds when a top supporter outside the relevant segments has at least this share",
    "m": "how many top supporters OIT looks at",
    "top_supporters": "the m content tokens with the largest positive relevance",
    "oit_tokens": "positions of the top supporters outside the relevant segments with a share of at least θ' (OIT)",
    "positions": "the token position of each node of the path",
    "share": "in a band: flow / R_final (≈ Δℓ), above 1 or below 0 when segments push both ways; "
             "in top_supporters: r / Σ positive r",
    "bands": "decoder layers in contiguous groups, plus the input: relevance per segment in each",
    "flow": "in a band: mean Σ R per segment over its layers (units of Δℓ); on a path: sign · score · |R_final|",
    "kept_nodes": "pruned-graph nodes per segment in the band", "layers": "the decoder layers of the band",
    "total": "Σ of the band's flow over segments",
    "final_relevance": "relevance of the final node (≈ Δℓ)", "objective": "Δℓ, the attributed quantity",
    "edges": "edges kept in the pruned graph",
    "strongest_path": "the supporting path from an input token to the prediction with the largest score",
    "strongest_opposing_path": "the opposing path with the largest score",
    "strongest_content_path": "the strongest supporting path that starts at a content token (not template text)",
    "strongest_opposing_content_path": "the strongest opposing path that starts at a content token",
    "path_score": "how a path is scored", "score": "path score: the share of the final node's |A| mass that "
                                                   "reaches the input token (product of edge fractions)",
    "bottleneck": "the smallest edge fraction on the path", "sign": "+1 supports the prediction, −1 opposes it",
    "input_token": "the position the path starts at", "tokens": "the token at each node of the path",
}


# A table column whose name means another thing in another table: its header there, and what it means on hover
# (a top supporter's "relevance" is normalised, an ablated node's is a hidden state's own: both read as "R").
COLUMNS = {
    ("top_supporters", "relevance"): ("R / max|R|", "the token's relevance divided by the largest |R| over the "
                                                    "case's non-special tokens (the heatmap's scale), as θ is"),
    **{(table, "relevance"): ("R (hidden state)", "the node's own relevance: the hidden state's Σ R, in units of Δℓ")
       for table in ("nodes", "ablated_nodes")},  # an ablation's nodes, and those whose ablation flips
}


def _key(tag: str, k: Any, table: str = "") -> str:
    """A field name as a ``dt``/``th`` cell, with its meaning on hover when the glossary has it (a column of the
    table ``table`` may have its own header: :data:`COLUMNS`)."""
    name, tip = COLUMNS.get((table, str(k)), (str(k), GLOSSARY.get(str(k))))
    return f'<{tag} title="{_esc(tip)}">{_esc(name)}</{tag}>' if tip else f"<{tag}>{_esc(name)}</{tag}>"


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def scalar(v: Any, key: str = "") -> str:
    """One value as text: 4 significant digits for floats, visible whitespace and control characters for token
    strings."""
    if isinstance(v, bool) or v is None:
        return _esc(_NO_FLIP.get(key, "—") if v is None else str(v).lower())
    if isinstance(v, float):
        return _esc(f"{v:.4g}" if math.isfinite(v) else str(v))
    if isinstance(v, str) and key in _TOKEN_KEYS:  # as failtrace show prints a token (control characters too)
        return _esc("‹" + (visible(v) or "∅") + "›")
    return _esc(v)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _table(rows: Sequence[Mapping[str, Any]], name: str = "") -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(_key("th", c, name) for c in cols)
    body = []
    for r in rows[:MAX_ROWS]:
        cells = []
        for c in cols:
            v = r.get(c)
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f'<td class="{"n" if num else ""}">{value(v, c)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<tr><td colspan="{len(cols)}" class="dim">… {len(rows) - MAX_ROWS} more</td></tr>' \
        if len(rows) > MAX_ROWS else ""
    return (f'<div class="scroll"><table class="t ev-t"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}{more}'
            "</tbody></table></div>")


def _token_runs(tokens: Sequence[Any], key: str = "tokens") -> str:
    """A token (or position) list, e.g. one per node of a path, with repeats folded: ‹·cat› ×17, ‹↵› ×13."""
    runs: list[list[Any]] = []
    for t in tokens:
        if runs and runs[-1][0] == t:
            runs[-1][1] += 1
        else:
            runs.append([t, 1])
    shown = [scalar(t, "token" if key in _TOKEN_KEYS else "") + (f" ×{n}" if n > 1 else "")
             for t, n in runs[: MAX_ROWS * 4]]
    more = f" … ({len(runs)} runs in all)" if len(runs) > MAX_ROWS * 4 else ""
    return ", ".join(shown) + more


def _path_runs(nodes: Sequence[str]) -> str:
    """A path's ``stage/position`` nodes with the stages at one position folded: emb–L15/26 → L16–L29/42."""
    runs: list[list[str]] = []  # [first stage, last stage, position]
    for node in nodes:
        stage, pos = node.split("/")
        if runs and runs[-1][2] == pos:
            runs[-1][1] = stage
        else:
            runs.append([stage, stage, pos])
    return " → ".join(_esc(f"{a}/{p}" if a == b else f"{a}–{b}/{p}") for a, b, p in runs)


def value(v: Any, key: str = "") -> str:
    """Any evidence value as HTML (module docstring)."""
    if _is_scalar(v):
        return scalar(v, key)
    if isinstance(v, Mapping):
        return dl(v)
    if isinstance(v, Sequence):
        items = list(v)
        if not items:
            return f'<span class="dim">{_esc(_EMPTY.get(key, "none"))}</span>'
        if all(isinstance(x, Mapping) for x in items):
            return _table(items, key)
        if all(_is_scalar(x) for x in items) and key in _TOKEN_KEYS | {"positions"}:
            return _token_runs(items, key)
        if key == "layers" and len(items) > 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in items) \
                and items == list(range(items[0], items[0] + len(items))):
            return _esc(f"{items[0]}–{items[-1]}")  # a band's consecutive layers
        if key in _PATH_KEYS and all(isinstance(x, str) and x.count("/") == 1 for x in items):
            return _path_runs(items)
        if all(_is_scalar(x) for x in items):
            sep = " → " if key in _PATH_KEYS else ", "
            shown = [scalar(x, "") for x in items[: MAX_ROWS * 4]]
            more = f" … ({len(items)} in all)" if len(items) > MAX_ROWS * 4 else ""
            return sep.join(shown) + more
        return "; ".join(value(x, key) for x in items[:MAX_ROWS]) + (" …" if len(items) > MAX_ROWS else "")
    return _esc(v)


def dl(d: Mapping[str, Any]) -> str:
    """A dict as a definition list; an empty one as 'none stored'."""
    if not d:
        return '<span class="empty">none stored</span>'
    return "<dl>" + "".join(f"{_key('dt', k)}<dd>{value(v, str(k))}</dd>" for k, v in d.items()) + "</dl>"
