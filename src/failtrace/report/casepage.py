"""One case as an HTML section: the context as a token heatmap, target vs contrast, Δℓ, k* per method, category and
pattern with their evidence (and any override), the graph summary, the pruned graph picture and, for NC-IA cases,
the paper's Fig. 3 view of the graph with its ablated nodes.

The heatmap is drawn here rather than with the single-attribution heatmap view because a case carries several
methods and segments: the strip is coloured by one method at a time (buttons switch it, from data embedded in the
section; without script it shows AttnLRP), and each token is underlined in its segment's colour. Colours follow the
package convention: red = pushes towards the (wrong) target, blue = towards the contrast, intensity = R / max|R| over
non-special tokens clipped to [-1, 1]; special tokens are grey whatever their value.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from failtrace.cases.record import CATEGORY_TEXT, PATTERN_TEXT, Case
from failtrace.attribution.record import visible
from failtrace.views.contrast import ink_on
from failtrace.analysis.ablation_view import AblationView
from failtrace.attribution.normalize import normalize
from failtrace.views.evidence_html import dl as evidence
from failtrace.views.verdicts import category_sentence, pattern_sentence
from failtrace.report.tables import Overrides, effective_category, methods_of
from failtrace.views.answers import answer_parts, box_note
from failtrace.views.palette import CATEGORY_COLORS, OTHER_SEGMENT_COLOR, PATTERN_COLORS, SEGMENT_COLORS
from failtrace.views.common import CLIP, SUM_NOTE, WHITE_TEXT_ABOVE, heat_ink, masked_caption, masked_rows, mix

_WS = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def shown_token(tok: str) -> str:
    """A token as HTML: whitespace drawn as faint ·, ↵, →; another control character as its symbol, as failtrace
    show and the explorer print it (␅: it has no glyph of its own); an empty token as ∅ (so it can be hovered)."""
    if tok == "":
        return '<span class="ws">∅</span>'
    return "".join(f'<span class="ws">{_WS[ch]}</span>' if ch in _WS else esc(visible(ch)) for ch in tok)


def _shown_chars(tok: str) -> list[tuple[str, bool]]:
    """A token's characters as :func:`shown_token` draws them, each with whether it is faint (whitespace, ∅)."""
    return [("∅", True)] if tok == "" else [(c, ch in _WS) for ch in tok for c in (_WS.get(ch) or visible(ch))]


def shown_clipped(tokens: str | list[str], keep_end: bool = False, most: int = CLIP) -> str:
    """:func:`shown_token` of a token (or of tokens in a row: a context) cut to ``most`` characters *as shown* (a C1
    code shows as four: \\x85), with '…' (keeping the end when ``keep_end``), so a cell holds exactly the text
    failtrace show and the explorer print there."""
    chars = [x for tok in ([tokens] if isinstance(tokens, str) else tokens) for x in _shown_chars(tok)]
    if len(chars) > most:
        chars = [("…", False)] + chars[-(most - 1):] if keep_end else chars[:most - 1] + [("…", False)]
    return "".join(f'<span class="ws">{c}</span>' if faint else esc(c) for c, faint in chars)


# beside a case whose pair a reviewer rejected (counted in no table or figure): its page's heading, its table row
REJECTED_MARK = (' <span class="rej" title="a reviewer rejected this pair: counted in no table or figure">'
                 "rejected</span>")


def plain_token(tok: str) -> str:
    """A token as plain text with visible whitespace and control characters (for titles and pills)."""
    return visible(tok) or "∅"


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def badge(label: str | None, colors: dict[str, str]) -> str:
    """A category or pattern as a coloured label; its expansion and meaning on hover (CATEGORY_TEXT, PATTERN_TEXT)."""
    label = label or "unlabelled"
    said = CATEGORY_TEXT.get(label) or PATTERN_TEXT.get(label)
    title = f' title="{esc(said[0] + ": " + said[1])}"' if said else ""
    bg = colors.get(label, "#6b7280")  # its text: whichever of white and near-black reads on it (WCAG AA)
    return f'<span class="badge"{title} style="background:{bg};color:{ink_on(bg)}">{esc(label)}</span>'


def _drawable(case: Case) -> list[str]:
    """Methods whose relevance has one value per context token (the others cannot colour the strip)."""
    return [m for m in methods_of([case]) if len(case.methods[m].input_relevance) == len(case.tokens)]


def _finite(x: float, digits: int) -> float | None:
    """A number for the embedded JSON: rounded to ``digits`` significant digits, None (null) when not finite."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def _strip(case: Case, method: str | None) -> str:
    """The token heatmap: one span per context token (data-p = position), then the target/contrast pills."""
    n = len(case.tokens)
    norm = normalize(case.methods[method].input_relevance, case.special_mask) if method else [0.0] * n
    norm = [float(v) if math.isfinite(v) else 0.0 for v in norm]  # not computed (NaN): drawn white
    raw = case.methods[method].input_relevance if method else [0.0] * n
    labels = case.segment_labels()
    parts = []
    for i, tok in enumerate(case.tokens):
        if i == case.prompt_length and 0 < i < n:
            parts.append('<span class="mark" title="tokens from here on were generated by the model">answer ▸</span>')
        special = bool(case.special_mask[i]) if i < len(case.special_mask) else False
        seg = labels[i] if i < len(labels) else ""
        cls = "tok" + (" sp" if special else "") + (" pos" if i == n - 1 else "")
        v = float(norm[i])
        style = "" if special else f"background:rgb{mix(v)};color:{heat_ink(v)};"
        if seg and not special:
            style += f"border-bottom-color:{SEGMENT_COLORS.get(seg, OTHER_SEGMENT_COLOR)}"
        base = f"pos {i} · {seg or 'no segment'}{' · special token id' if special else ''} · ‹{plain_token(tok)}›"
        title = base + (f"\n{method}: R = {float(raw[i]):.4g}, normalised = {v:.3f}" if method else "")
        parts.append(f'<span class="{cls}" data-p="{i}" data-base="{esc(base)}" style="{style}" '
                     f'title="{esc(title)}">{shown_token(tok)}</span>')
        parts.append("<br>" * min(tok.count("\n"), 2))
    parts.append(f'<span class="next">⟶ <span class="pill tgt">{esc(plain_token(case.target_text))}</span> vs '
                 f'<span class="pill ctr">{esc(plain_token(case.contrast_text))}</span></span>')
    return f'<div class="strip">{"".join(parts)}</div>'


def _masked(case: Case, methods: list[str], shown_method: str | None) -> str:
    """Per drawable method, the tokens its flip curve masked, in order, each in a little context, with Δℓ after
    masking the first k and the model's top next token then; the first k* rows (whose masking flips the prediction)
    are marked. One table per method;
    the *colour by* buttons show the chosen method's (report.js), AttnLRP's without script."""
    parts = []
    for method in methods:
        rows = masked_rows(case, method)
        body = []
        for row in rows:
            before = shown_clipped(row["before"], keep_end=True)
            after = shown_clipped(row["after"])
            marked = ' class="flipset"' if row["flips"] else ""
            dl = "—" if row["delta_after"] is None else fmt(row["delta_after"], 3)
            top = "—" if row["top_after"] is None else shown_clipped(row["top_after"])
            body.append(f'<tr data-p="{row["position"]}"{marked}><td class="n">{row["k"]}</td>'
                        f'<td class="ctx">{before}<b>{shown_clipped(row["token"])}</b>'
                        f'{after}</td><td class="n">{row["position"]}</td>'
                        f'<td>{esc(row["segment"] or "—")}</td><td class="n">{fmt(row["relevance"], 4)}</td>'
                        f'<td class="n">{dl}</td><td class="ctx">{top}</td></tr>')
        hidden = "" if method == shown_method else " hidden"
        table = ('<div class="scroll"><table class="t masked"><thead><tr><th class="n">k</th><th>token in context'
                 '</th><th class="n">position</th><th>segment</th><th class="n">R</th><th class="n">Δℓ after k</th>'
                 '<th>top next token after k</th></tr></thead>'
                 f'<tbody>{"".join(body)}</tbody></table></div>') if rows else ""
        parts.append(f'<div class="masked-for" data-method="{esc(method)}"{hidden}>'
                     f"<h4>The top tokens of {esc(method)}, in masking order</h4>{table}"
                     f'<p class="note">{esc(masked_caption(case.methods[method].flip_k, rows, "marked"))}.</p></div>')
    return "".join(parts)


def _legend(case: Case) -> str:
    segs = []
    labels = case.segment_labels()
    drawn = {lab for lab, sp in zip(labels, case.special_mask) if not sp}  # special tokens carry no underline
    for s in case.segments:
        if s not in drawn:
            continue
        rel = " (relevant)" if s in case.relevant_segments else " (chat-template text)" if s == "special" else ""
        segs.append(f'<span><span class="sw" style="background:{SEGMENT_COLORS.get(s, OTHER_SEGMENT_COLOR)}"></span>'
                    f"{esc(s)}{rel}</span>")
    return (f'<div class="legend"><span>supports contrast</span><span class="grad"></span><span>supports target</span>'
            f'<span><span class="sw" style="background:#e5e7eb"></span>special token ids (grey)</span>'
            f'<span>underline = segment:</span>{"".join(segs)}<span>· space ↵ newline → tab</span></div>')


def _case_data(case: Case) -> str:
    """Per method: normalised and raw relevance per token, for the method buttons (compact JSON), and the |R| from
    which a token's text is white (views.common.WHITE_TEXT_ABOVE), so a switch keeps the readable ink."""
    norm, raw = {}, {}
    for m in _drawable(case):
        res = case.methods[m]
        norm[m] = [_finite(round(float(x), 3), 6) for x in normalize(res.input_relevance, case.special_mask)]
        raw[m] = [_finite(float(x), 4) for x in res.input_relevance]
    white = {"red": WHITE_TEXT_ABOVE[1], "blue": WHITE_TEXT_ABOVE[-1]}
    blob = json.dumps({"norm": norm, "raw": raw, "white_above": white}, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" class="case-data">{blob}</script>'


def _curve(curve: list[float]) -> str:
    if not curve:
        return '<span class="dim">not computed</span>'
    cells = [f'<span class="{"neg" if v < 0 else ""}">{v:+.2f}</span>' for v in curve[:11]]
    more = " …" if len(curve) > 11 else ""
    return f'<span class="curve">{" ".join(cells)}{more}</span>'


def _methods_table(case: Case) -> str:
    """k*, Σ input R and the masking curve per method, with the masking rule and what Σ input R compares to."""
    rows = []
    for m in methods_of([case]):
        r = case.methods[m]
        k = "none ≤ K" if r.flip_k is None else str(r.flip_k)
        total = sum(r.input_relevance)
        rows.append(f'<tr><td>{esc(m)}</td><td class="n">{esc(k)}</td><td class="n">{fmt(total)}</td>'
                    f"<td>{_curve(r.flip_curve)}</td></tr>")
    if not rows:
        return '<p class="empty">no attribution methods stored for this case</p>'
    mk = case.masking
    rule = mk.rule + (f" (token id {mk.token_id})" if mk.token_id is not None else "")
    # in a scroll box, as every wide table of the page: the case card clips what overflows it (content-visibility)
    return ('<div class="scroll"><table class="t"><thead><tr><th>method</th><th class="n">k*</th>'
            '<th class="n">Σ input R</th><th>Δℓ after masking the top k = 0, 1, 2, … (negative = flipped)</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table></div><p class="note">Masking: {esc(rule)}, '
            f"K = {mk.max_k}; top-k = the k tokens with the largest positive relevance (ties: lower position), "
            "never special tokens"
            + (" nor the chat template's own text" if mk.skip_template else "") + f". {esc(SUM_NOTE)} "
            f"(Δℓ = {fmt(case.delta_logit)}).</p>")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _labels(case: Case, overrides: Overrides | None) -> str:
    o = (overrides or {}).get(case.case_id)
    over = ""
    if o:
        over = (f'<div class="override"><b>Category overridden</b> to {badge(str(o.get("category")), CATEGORY_COLORS)}'
                f' (automatic: {esc(case.category or "unlabelled")}). Reason: {esc(o.get("reason") or "—")}'
                + (f' <span class="note">({esc(o.get("created_at"))})</span>' if o.get("created_at") else "")
                + "</div>")
    cat = badge(effective_category(case, overrides), CATEGORY_COLORS)
    rel = esc(", ".join(case.relevant_segments) or "—")
    why_cat = category_sentence(case.category, case.category_evidence)  # the evidence below, in words
    why_pat = pattern_sentence(case.pattern, case.pattern_evidence, case.tokens)
    why_cat = f'<p class="why">{"Computed: " if o else ""}{esc(_sentence(why_cat))}.</p>' if why_cat else ""
    why_pat = f'<p class="why">{esc(_sentence(why_pat))}.</p>' if why_pat else ""
    # the sentence first; the evidence it is read from folded under it (a dump of keys such as urt_decidable and
    # theta_share read as the explanation itself, and their meanings are on hover, which a touch screen lacks)
    def folded(ev: dict[str, Any]) -> str:
        return f"<details><summary>the evidence, field by field</summary>{evidence(ev)}</details>"

    return (f'<div class="grid2"><div class="ev"><h4>Category {cat}</h4>{over}{why_cat}'
            f'{folded(case.category_evidence)}</div><div class="ev"><h4>Pattern '
            f'{badge(case.pattern, PATTERN_COLORS)} <span class="note">relevant segments: {rel}</span></h4>{why_pat}'
            f"{folded(case.pattern_evidence)}</div></div>")


def _ablation(case: Case, ablation: tuple[str, AblationView] | None) -> str:
    """The Fig. 3 view of an NC-IA case: its picture, what it shows in numbers, and the ablated nodes."""
    if ablation is None:
        return ""
    src, v = ablation
    lazy = "" if src.startswith("data:") else ' loading="lazy"'
    verdict = "puts the contrast above the target" if v.flipped else "does not flip the prediction"
    rows = "".join(
        f'<tr><td class="n">{j}</td><td>L{a.layer}/{a.position}</td>'
        f"<td>{esc(plain_token(case.tokens[a.position])) if a.position < len(case.tokens) else '—'}</td>"
        f'<td class="n">{a.relevance:.4g}</td><td class="n">{fmt(a.delta_after, 2)}</td>'
        f"<td>{'yes' if a.in_graph else 'no (pruned away)'}</td></tr>" for j, a in enumerate(v.ablated, 1))
    return (f'<div class="ablation"><h4>Ablated graph (paper Fig. 3)</h4>'
            f'<figure><img src="{src}" alt="ablated attribution graph of case {esc(case.case_id)}"{lazy}>'
            f"<figcaption>Zeroing the hidden states of the {v.k} marked node{'s' if v.k != 1 else ''} (×, in "
            f"ablation order) {verdict}: Δℓ {fmt(v.delta_before, 2)} → {fmt(v.delta_after, 2)}. Coloured edges "
            f"are the {len(v.downstream_edges)} kept edges on a path from a marked node to the prediction; "
            f"{v.through_share:.0%} of the prediction's kept |A| mass passes through the marked nodes."
            "</figcaption></figure>"
            '<div class="scroll"><table class="t"><thead><tr><th class="n">#</th><th>node (layer/position)</th>'
            '<th>token</th><th class="n">relevance</th><th class="n">Δℓ after ablating 1…#</th>'
            f"<th>in pruned graph</th></tr></thead><tbody>{rows}</tbody></table></div></div>")


def _answers(answer: dict[str, Any] | None) -> str:
    """What the model wrote, the checker's reason and the answer with the contrast forced (views.common)."""
    rows = [(k, v, box_note(v, n)) for k, v, n in answer_parts(answer)]  # notes below the scroll box, in view
    return ('<dl class="answers">' + "".join(f'<dt>{esc(k)}</dt><dd><div class="text">{esc(v)}</div>'
                                              + (f'<span class="cut">{esc(n)}</span>' if n else "") + "</dd>"
                                              for k, v, n in rows) + "</dl>" if rows else "")


def case_section(case: Case, overrides: Overrides | None = None, graph_src: str | None = None,
                 ablation: tuple[str, AblationView] | None = None, answer: dict[str, Any] | None = None) -> str:
    """The HTML ``<article>`` for one case (``graph_src``: an image URL or data URI of its pruned graph;
    ``ablation``: the picture and data of its Fig. 3 ablation view, for NC-IA cases; ``answer``: its row of
    ``store.cases.case_answers``)."""
    drawable = _drawable(case)
    method = drawable[0] if drawable else None
    n = len(case.tokens)
    buttons = "".join(f'<button type="button" data-method="{esc(m)}" aria-pressed="{str(m == method).lower()}">'
                      f"{esc(m)}</button>" for m in drawable)
    facts = [("benchmark", case.benchmark), ("item", case.item_id), ("model", case.model),
             ("Δℓ = ℓ(target) − ℓ(contrast)", fmt(case.delta_logit)),
             ("tokens", f"{n} ({case.prompt_length} prompt + {n - case.prompt_length} answer)"),
             ("predicts token", f"{case.position} from tokens 0–{case.position - 1}"),
             ("model fingerprint", case.model_fingerprint[:12])]
    if case.review:  # the reviewer's decision in force on the pair (failtrace serve --review)
        r = case.review
        facts.append(("review", f"pair {r['decision']}ed ({r['created_at']} UTC)" + (f": {r['comment']}" if
                                                                                    r.get("comment") else "")
                      + ("; counted in no table or figure" if case.rejected else "")))
    facts_html = "".join(f'<div><span class="k">{esc(k)}</span><span class="v">{esc(v)}</span></div>'
                         for k, v in facts)
    lazy = "" if (graph_src or "").startswith("data:") else ' loading="lazy"'  # a file beside the page
    graph = (f'<figure><img src="{graph_src}" alt="pruned attribution graph of case {esc(case.case_id)}"{lazy}>'
             "<figcaption>Pruned attribution graph: nodes are (layer, token) hidden states, red supports the target, "
             "blue the contrast, grey sits on a special token id (e.g. <|im_start|>); node size = |R| normalised in "
             "its layer; edge width = |relevance flow|. Drawn smaller than its pixels, it opens full size on a click."
             "</figcaption></figure>"
             if graph_src else '<p class="empty">no pruned graph stored for this case</p>')
    search = " ".join(str(x) for x in (case.item_id, case.benchmark, effective_category(case, overrides),
                                         case.pattern, plain_token(case.target_text), plain_token(case.contrast_text),
                                         case.case_id, "rejected" if case.rejected else ""))
    return (
        f'<article class="case" id="case-{esc(case.case_id)}" data-bench="{esc(case.benchmark)}" '
        f'data-search="{esc(search.lower())}">'
        f"<h3>{esc(case.item_id)} "
        f'<span class="pill tgt">{esc(plain_token(case.target_text))}</span> vs '
        f'<span class="pill ctr">{esc(plain_token(case.contrast_text))}</span> '
        f"{badge(effective_category(case, overrides), CATEGORY_COLORS)} {badge(case.pattern, PATTERN_COLORS)}"
        + (REJECTED_MARK if case.rejected else "")
        + f'<span class="id">{esc(case.case_id)}</span></h3>'
        f'<div class="facts">{facts_html}</div>{_answers(answer)}'
        f'<div class="methods"><span class="note">colour by:</span>{buttons}</div>{_legend(case)}{_strip(case, method)}'
        f"{_case_data(case)}{_masked(case, drawable, method)}"
        f"<h4>Faithfulness: k* per method</h4>{_methods_table(case)}{_labels(case, overrides)}"
        f'<details{" open" if graph_src else ""}><summary>Attribution graph</summary>'
        f'{graph}{_ablation(case, ablation)}<h4>Graph summary</h4><div class="ev">{evidence(case.graph_summary)}</div>'
        "</details></article>"
    )
