"""Plain-text formatting shared by every side: byte sizes, aligned tables, and text from files made safe to print.

It imports nothing of featx, so the store, extraction and classification
packages all may use it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_bytes", "format_table", "printable"]

# Characters that a terminal acts on rather than shows: C0 controls (ESC starts the
# ANSI sequences that recolour, move the cursor, set the window title), DEL, C1
# controls (0x9b is a one-byte CSI), the Unicode line separators, and the bidi
# overrides and isolates that reorder what is shown ("Trojan source").
_UNSAFE = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F),
           *range(0x2066, 0x206A)]
_ESCAPES = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _UNSAFE}


def printable(text: object) -> str:
    """*text* (a class name, an id, an attribute read from a file) with the characters a terminal acts on escaped.

    Names in stores and classifiers come from whoever made the file; printed
    as they are, an ``ESC [`` sequence recolours or rewrites the terminal and a
    newline forges output lines.  Each such character is shown as its Python
    escape (``\\x1b``, ``\\x0a`` for a newline, ``\\u202e``); everything else, accents and other
    scripts included, is kept.

    Examples
    --------
    >>> printable("ants\\x1b[2J")
    'ants\\\\x1b[2J'
    """
    return str(text).translate(_ESCAPES)


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
