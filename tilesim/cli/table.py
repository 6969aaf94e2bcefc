"""Plain aligned text tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(rows: Sequence[dict[str, object]], right: Sequence[str] = ()) -> str:
    """Rows of dicts with the same keys as an aligned table; `right` columns align right."""
    if not rows:
        return "(no rows)"
    headers = list(rows[0])
    cells = [[str(row.get(h, "")) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if h in right else v.ljust(w) for v, w, h in zip(values, widths, headers, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def print_table(rows: Sequence[dict[str, object]], right: Sequence[str] = ()) -> None:
    print(format_table(rows, right))
