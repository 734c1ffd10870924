"""Plain-text formatting shared by every side: byte sizes, aligned tables, and text from files made safe to print.

It imports nothing of featx, so the store, extraction and classification
packages all may use it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["csv_text", "csv_text_cells", "csv_value", "format_bytes", "format_table", "printable"]

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


# What a spreadsheet reads as the start of a formula (or of a cell it re-parses), and the quote
# itself, so that every quoted cell is one quote longer than its value: the quoting can be undone.
_CSV_QUOTED_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_text(value: str) -> str:
    """*value* as a CSV text cell: with a ``'`` in front when a spreadsheet would run it as a formula.

    Ids and class names come from file names anyone can choose; a cell such as
    ``=HYPERLINK(...)`` or ``+cmd|...`` would run in a spreadsheet (CSV
    injection; OWASP's advice is this quote).  A cell that starts with ``=``,
    ``+``, ``-``, ``@``, a tab, a carriage return or a ``'`` is quoted, so
    :func:`csv_value` gives every value back.

    Examples
    --------
    >>> csv_text("=1+1"), csv_text("ants/1.jpg"), csv_text("'a")
    ("'=1+1", 'ants/1.jpg', "''a")
    """
    return "'" + value if value.startswith(_CSV_QUOTED_START) else value


def csv_text_cells(values: Sequence[str]) -> Sequence[str]:
    """:func:`csv_text` of each value: *values* itself when none needs a quote (the usual case, no copy), else a list."""
    if not any(value.startswith(_CSV_QUOTED_START) for value in values):
        return values
    return [csv_text(value) for value in values]


def csv_value(cell: str) -> str:
    """The value a :func:`csv_text` cell was written from (its quote, if any, removed)."""
    return cell[1:] if cell.startswith("'") else cell
