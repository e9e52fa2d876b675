"""One plain fixed-width table printer for the perf scripts (plain text, so a printed table pastes into Markdown)."""

from __future__ import annotations

from typing import Any


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """Print a plain fixed-width table (plain text so it pastes into Markdown as is)."""
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
