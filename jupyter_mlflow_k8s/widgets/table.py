"""A plain table that shows as aligned text in terminals and logs, and as HTML in notebooks."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence


class Table:
    """Rows of strings under ``columns``; everything is escaped in the HTML form."""

    columns: tuple[str, ...] = ()
    css_class = "jmk-Table"
    empty_message = "Nothing to show."

    def __init__(self, rows: Iterable[Sequence[object]] = ()) -> None:
        self.rows: list[tuple[str, ...]] = [tuple(str(v) for v in row) for row in rows]

    def __repr__(self) -> str:
        if not self.rows:
            return self.empty_message
        table = [self.columns, *self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(self.columns))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table)

    def _repr_html_(self) -> str:
        if not self.rows:
            return f"<p>{html.escape(self.empty_message)}</p>"
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in self.rows)
        return f"<table class='{self.css_class}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
