"""The terminal view of one attribution (rich): a summary table, a coloured token strip, top-k token tables.

Token backgrounds use truecolor red/blue scaled by the normalised relevance (rich downgrades on simpler terminals);
tokens with |normalised| < 0.05 keep the terminal's own background, special tokens are dim. Token text is passed as
:class:`rich.text.Text`, never as markup, so a token such as ``[bold]`` prints as itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from failtrace.attribution.record import Attribution
from failtrace.views.common import (
    clipped,
    fmt,
    heat_ink,
    mix,
    quoted,
    spans_worth_showing,
    segments_note,
    shown,
    special_of,
    sum_rows,
    value_row,
    with_gaps,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

FAINT_BELOW = 0.05  # |normalised R| below which a token keeps the terminal's background


def _summary(attr: Attribution) -> Table:
    from rich.table import Table
    from rich.text import Text

    n = len(attr.tokens)
    table = Table(show_header=False, box=None, pad_edge=False, padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    rows = [
        ("model", attr.model),
        ("target", f"{quoted(attr.target)}  (id {attr.target.id})"),
        ("contrast", f"{quoted(attr.contrast)}  (id {attr.contrast.id})" if attr.contrast else "—"),
        ("objective / method", f"{attr.objective} / {attr.method}"),
        value_row(attr), *sum_rows(attr),
        ("tokens", f"{n}  (prompt {attr.prompt_length}, answer {max(0, n - attr.prompt_length)}, "
                   f"explained position {attr.position})"),
    ]
    for k, v in rows:
        table.add_row(Text(k), Text(v))
    return table


def _token_style(value: float, special: bool, explained: bool) -> str:
    if special:
        style = "dim italic"
    elif abs(value) < FAINT_BELOW:
        style = ""
    else:
        r, g, b = mix(value)
        style = f"{heat_ink(value)} on rgb({r},{g},{b})"
    return (style + " bold underline").strip() if explained else style


def _strip(attr: Attribution, max_tokens: int) -> Text:
    from rich.text import Text

    n = len(attr.tokens)
    strip = Text()
    if not n:
        strip.append("no tokens", style="italic dim")
        return strip
    segments = spans_worth_showing(attr, max_tokens)
    values, special = clipped(attr), special_of(attr)
    for gap, a, b in with_gaps(segments, n):
        if gap:
            strip.append(f" [… {gap} tokens …] ", style="italic dim")
        for i in range(a, b):
            if i == attr.prompt_length and i > 0:
                strip.append(" answer▸ ", style="bold white on rgb(124,58,237)")
            tok = attr.tokens[i]
            strip.append(shown(tok), style=_token_style(values[i], bool(special[i]), i == attr.position) or None)
            if i == attr.position:
                strip.append(f" ⟶ {quoted(attr.target)}", style="bold red")
                if attr.contrast is not None:
                    strip.append(" vs ", style="bold")
                    strip.append(quoted(attr.contrast), style="bold blue")
            if "\n" in tok:
                strip.append("\n" * min(tok.count("\n"), 2))
    note = segments_note(segments, n)
    if note:
        strip.append(f"\n({note})", style="italic dim")
    return strip


def _top_table(attr: Attribution, k: int, sign: int, title: str, color: str) -> Table:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_style=f"bold {color}", show_lines=False, header_style="bold")
    t.add_column("pos", justify="right")
    t.add_column("token")
    t.add_column("R", justify="right")
    t.add_column("norm.", justify="right")
    rows = attr.top_tokens(k, sign=sign)
    for p, tok, r in rows:  # normalised values lie in [-1, 1]: three decimals, never an exponent
        t.add_row(Text(str(p)), Text(shown(tok)), Text(fmt(r, 4)), Text(f"{r / attr.scale:.3f}"))
    if not rows:
        t.add_row("", Text("(none)", style="dim"), "", "")
    return t


def render_terminal(attr: Attribution, console: Console | None = None, top_k: int = 10,
                    max_strip_tokens: int = 600) -> None:
    """Print the summary, the token strip (at most ``max_strip_tokens`` positions, with a note) and the top tokens."""
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    contrast_title = f"supports {quoted(attr.contrast)}" if attr.contrast else "against the target"
    tops = Table.grid(padding=(0, 4))
    tops.add_row(_top_table(attr, top_k, 1, f"supports {quoted(attr.target)}", "red"),
                 _top_table(attr, top_k, -1, contrast_title, "blue"))
    legend = Text()
    legend.append(" +1 supports target ", style="white on rgb(220,38,38)")
    legend.append(" ")
    legend.append(" −1 supports contrast ", style="white on rgb(37,99,235)")
    legend.append("  special", style="dim italic")
    legend.append("  · space ↵ newline → tab", style="dim")
    if console.color_system is None:  # piped or NO_COLOR: the strip below carries no colour
        legend.append("\n(no colours here: the tables below list the strongest tokens; --html or --png draws the "
                      "heatmap)", style="dim")
    console.print(Panel(_summary(attr), title="failtrace attribution", title_align="left"))
    console.print(Panel(Group(legend, Text(""), _strip(attr, max_strip_tokens)), title="input relevance (normalised)",
                        title_align="left"))
    if attr.tokens:
        console.print(tops)
