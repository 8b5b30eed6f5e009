r"""Results through the job's log, for Kubernetes jobs without object storage.

Without storage both sides can reach, a small payload travels to the pod in a Secret mounted read-only
(``JMK_PAYLOAD_ROOT``), and what the runner would write back (the result document and the pickled
values) is printed at the end of the job as frames, one log line each::

    \x1eJMK-FRAME-1 <key> <index> <count> <base64 of up to 8 KiB>

A line stays under the 16 KiB at which container runtimes split log lines. The notebook side
(:class:`FrameCollector`) takes the frames out of the log it shows and keeps, and writes each value
into its own storage under the same key once all its frames have arrived. Frames are kept on disk as
they come, so a log stream that reconnects midway loses nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, TextIO

from .storage import LocalStorage, Storage
from .storage.kept import KEPT_FOLDER

MARK = "\x1eJMK-FRAME-1 "
CHUNK = 8 * 1024
PAYLOAD_ROOT_ENV = "JMK_PAYLOAD_ROOT"


class LogChannelStorage(Storage):
    """Reads from the mounted payload; writes go to a scratch directory and leave through the log."""

    is_local = True

    def __init__(self, payload_root: str) -> None:
        self.inputs = LocalStorage(payload_root)
        self.scratch = LocalStorage(tempfile.mkdtemp(prefix="jmk-results-"))
        self.url = self.inputs.url
        self.written: list[str] = []

    def _reader(self, key: str) -> LocalStorage:
        return self.scratch if self.scratch.exists(key) else self.inputs

    def exists(self, key: str) -> bool:
        """Whether ``key`` was written by this job or came with the payload."""
        return self.scratch.exists(key) or self.inputs.exists(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Keep ``data`` for the log."""
        self.scratch.put_bytes(key, data)
        self._note(key)

    def get_bytes(self, key: str) -> bytes:
        """A value written by this job, else one from the payload."""
        return self._reader(key).get_bytes(key)

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        """Reads from either side; writes go to the scratch directory."""
        if "w" in mode:
            self._note(key)
            return self.scratch.open(key, mode)
        return self._reader(key).open(key, mode)

    def move(self, source: str, target: str) -> None:
        """Rename within the scratch directory."""
        self.scratch.move(source, target)
        self.written = [k for k in self.written if k != source]
        self._note(target)

    def _note(self, key: str) -> None:
        if key not in self.written:
            self.written.append(key)

    def emit(self, out: TextIO | None = None, last: str | None = None) -> None:
        """Print every written value as frames; ``last`` (the result document) goes at the end."""
        out = out or sys.stdout
        out.flush()
        keys = [k for k in self.written if k != last and not k.endswith(".partial")]
        for key in [*keys, *([last] if last in self.written else [])]:
            data = self.scratch.get_bytes(key)
            count = max(1, -(-len(data) // CHUNK))
            for index in range(count):
                chunk = base64.b64encode(data[index * CHUNK : (index + 1) * CHUNK]).decode()
                out.write(f"{MARK}{key} {index} {count} {chunk}\n")
        out.flush()


class FrameCollector:
    """Takes frames out of a job's log and stores each finished value in ``storage``.

    A value ``storage`` does not take (its endpoint is down now) is kept in the job's folder, next to
    ``parts_dir``, where the job service looks for kept results: the log is read only once.
    """

    def __init__(self, storage: Storage, parts_dir: Path) -> None:
        self.storage = storage
        self.parts = parts_dir
        self.kept = LocalStorage(str(parts_dir.parent / KEPT_FOLDER))
        self.refused: str | None = None

    def feed(self, line: str) -> bool:
        """Whether ``line`` was a frame (then it is not part of the log the user sees)."""
        if not line.startswith(MARK):
            return False
        key, index, count, chunk = line[len(MARK) :].split(" ", 3)
        folder = self.parts / hashlib.sha256(key.encode()).hexdigest()[:32]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{int(index):08d}").write_bytes(base64.b64decode(chunk))
        pieces = sorted(folder.iterdir())
        if len(pieces) == int(count):
            self._store(key, b"".join(p.read_bytes() for p in pieces))
            for piece in pieces:
                os.remove(piece)
        return True

    def _store(self, key: str, data: bytes) -> None:
        """Into ``storage`` (one attempt); once it has refused a value, the rest go to the kept folder."""
        if self.refused is None:
            try:
                self.storage.fail_fast().put_bytes(key, data)
                return
            except Exception as exc:  # the value would be lost with the log line: keep it here
                self.refused = f"{type(exc).__name__}: {exc}"
                print(f"[jmk] {self.storage.url} did not take the job's results ({self.refused}); "
                      f"they are kept in {self.kept.url}", file=sys.stderr)
        self.kept.put_bytes(key, data)
