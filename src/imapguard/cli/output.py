"""How the CLI prints what it did not write itself: escaped text, tables, JSON.

Account names, labels, client IDs, addresses, reasons and audit fields are
stored or client-supplied text: they reach the terminal only through `shown`
(control, format and bidi characters as escapes, so a name cannot move the
cursor or reorder a line, and a tab or line feed cannot forge a row) and, in
tables, as rich `Text` on a console without markup, so `[/x]` is printed
rather than parsed (a MarkupError there was a crash of `blocks list`).
Escapes rather than `imapguard.text.clean`'s "?": an administrator must be
able to tell which character a name holds.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Sequence
from typing import Any

from imapguard.text import escape

__all__ = ["print_json", "shown", "table", "when"]


def when(ts: float | None) -> str:
    """A timestamp in local time, or "never"."""
    if ts is None:
        return "never"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def shown(value: object) -> str:
    """`value` as text fit for a terminal line or a tab-separated cell: each
    character that is not `imapguard.text.safe` (tabs and line feeds included) as
    a `\\xNN` / `\\uNNNN` escape."""
    return escape(str(value))


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table on a terminal, tab-separated lines (a header first) on a pipe."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # Text cells and a console without markup, emoji codes or highlighting:
        # what the store holds is shown as it is, never interpreted.
        rich_table = Table(title=Text(shown(title)))
        for column in columns:
            rich_table.add_column(Text(column))
        for row in rows:
            rich_table.add_row(*(Text(shown(cell)) for cell in row))
        Console(markup=False, emoji=False, highlight=False).print(rich_table)
    else:
        print("\t".join(columns))
        for row in rows:
            print("\t".join(shown(cell) for cell in row))


def print_json(document: Any) -> None:
    """One JSON document (`--json`)."""
    print(json.dumps(document, indent=2, sort_keys=True))
