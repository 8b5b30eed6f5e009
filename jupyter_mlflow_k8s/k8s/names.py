"""Kubernetes names, labels and keys: who manages an object, safe label values, file paths as data keys.

Pure functions; nothing from Kubernetes is imported.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import string
import unicodedata

MANAGED_BY = "jupyter-mlflow-k8s"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

_LABEL_MAX_LENGTH = 63


def _ascii(text: str) -> str:
    """``text`` with accents dropped and other non-ASCII characters removed: 'Zoë' -> 'Zoe'."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def dns_slug(text: str) -> str:
    """Lowercase letters and digits of ``text``, every other run of characters one '-'."""
    return re.sub("[^a-z0-9]+", "-", _ascii(text).lower()).strip("-")


def label_value(text: str) -> str:
    """Any text as a valid label value, still recognisable.

    Accents are dropped, each run of characters other than letters, digits, '-', '_' and '.'
    becomes '-', and the ends are trimmed to a letter or digit. Text longer than 63 characters
    keeps its first 54 and a hash of the whole, so that long values stay distinct.

    Args:
        text: e.g. a user or notebook file name.

    Returns:
        e.g. ``Training-v2.ipynb`` for ``Training v2.ipynb``; empty when nothing is usable.
    """
    value = re.sub("[^A-Za-z0-9_.-]+", "-", _ascii(text)).strip("-_.")
    if len(value) <= _LABEL_MAX_LENGTH:
        return value
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{value[: _LABEL_MAX_LENGTH - len(digest) - 1].rstrip('-_.')}-{digest}"


_KEY_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-.")


def payload_key(path: str) -> str:
    """The Secret key of a payload file: its path, with each byte but ASCII letters, digits, '-' and '.' as ``_xx``.

    ``xx`` is the byte in hex, so the mapping is one-to-one: ``jobs/1a2b/payload.json`` is stored as
    ``jobs_2f1a2b_2fpayload.json`` and ``a_b`` as ``a_5fb``.

    Args:
        path: A relative, normalized path such as ``blobs/sha256/ab/ab12...``.

    Returns:
        A valid Secret key.

    Raises:
        ValueError: ``path`` is absolute, not normalized, or starts with '..'.
    """
    if path.startswith(("/", "..")) or path in ("", ".") or posixpath.normpath(path) != path:
        raise ValueError(f"payload file path {path!r} must be relative and normalized, e.g. 'jobs/1a2b/payload.json'")
    return "".join(chr(byte) if chr(byte) in _KEY_CHARACTERS else f"_{byte:02x}" for byte in path.encode())
