"""Turning a job's raw output into what a cell shows.

Whole lines are printed as they arrive; a line that redraws itself with carriage returns (a
progress bar) is not printed at every redraw: only its latest state is kept for a status
display, and the line is printed once when it ends. This is what keeps a 10,000-step tqdm bar
from flooding a notebook.
"""

from __future__ import annotations

import codecs


def _collapse(line: str) -> str:
    """What a terminal would show for ``line``: the text after its last carriage return."""
    parts = [p for p in line.split("\r") if p]
    return parts[-1] if parts else ""


class ProgressLines:
    """Feed it decoded or raw chunks; get back whole lines, with redraws collapsed."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, chunk: bytes | str) -> str:
        """Whole lines completed by ``chunk`` (each ending in a newline), or ``""``."""
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        text = self._pending + text.replace("\r\n", "\n")
        head, sep, self._pending = text.rpartition("\n")
        if not sep:
            return ""
        return "".join(_collapse(line) + "\n" for line in head.split("\n"))

    @property
    def current(self) -> str:
        """The unfinished line as a terminal would show it now (a progress bar's latest state)."""
        return _collapse(self._pending)

    def flush(self) -> str:
        """Whatever is left at the end of the stream, as a final line."""
        rest = _collapse(self._pending + self._decoder.decode(b"", final=True))
        self._pending = ""
        return rest + "\n" if rest else ""
