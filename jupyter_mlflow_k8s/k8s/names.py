"""Kubernetes names, labels and keys: who manages an object, file paths as data keys (safe names: ``util.names``).

Pure functions; nothing from Kubernetes is imported.
"""

from __future__ import annotations

import posixpath
import string

from ..util.names import dns_slug, label_value

__all__ = ["MANAGED_BY", "MANAGED_BY_LABEL", "dns_slug", "label_value", "payload_key"]

MANAGED_BY = "jupyter-mlflow-k8s"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

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
