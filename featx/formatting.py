"""Plain-text formatting shared by every side: byte sizes and aligned tables.

It imports nothing of featx, so the store, extraction and classification
packages all may use it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_bytes", "format_table"]


def format_bytes(n: float) -> str:
    """A byte count for people: ``'512 B'``, ``'1.5 KiB'``, ``'3.2 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, align: str | None = None) -> str:
    """Rows of text as aligned columns under a ruled header.

    Parameters
    ----------
    header : sequence of str
    rows : sequence of sequence of str
    align : str, optional
        One character per column, ``'<'`` or ``'>'``; the first column is
        left-aligned and the others right-aligned by default.
    """
    align = align or "<" + ">" * (len(header) - 1)
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for k, row in enumerate(table):
        lines.append("  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
