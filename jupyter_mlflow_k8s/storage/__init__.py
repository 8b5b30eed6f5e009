"""Content-addressed storage for payloads and results, on any fsspec URL.

``file://`` under the state directory by default; ``s3://bucket/prefix`` (s3fs) or any other
fsspec scheme when configured. Blobs are keyed by their SHA-256, so a value is written once no
matter how many jobs use it. This module knows nothing about jobs or pickles.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..registry import Registry


def blob_key(digest: str) -> str:
    """Storage key of the blob with this SHA-256 hex digest."""
    return f"blobs/sha256/{digest[:2]}/{digest}"


class Storage:
    """A folder of keys on one fsspec filesystem."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, key: str) -> str:
        """Filesystem path of ``key`` (no scheme)."""
        return f"{self.root.rstrip('/')}/{key}"

    def url_of(self, key: str) -> str:
        """Full URL of ``key``, usable by :func:`open_url` in another process."""
        return f"{self.url}/{key}"

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""
        return bool(self.fs.exists(self.path(key)))

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``; readers never see a partial value."""
        if self.is_local:
            target = Path(self.path(key))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(self.path(key), data)

    def get_bytes(self, key: str) -> bytes:
        """The value stored at ``key``."""
        return bytes(self.fs.cat_file(self.path(key)))

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        """A file object for ``key`` (writing goes straight to the store)."""
        if "w" in mode:
            self.fs.makedirs(self.path(key).rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(self.path(key), mode)  # type: ignore[no-any-return]


storages: Registry[type[Storage]] = Registry("storage scheme", "jupyter_mlflow_k8s.storage")


def get_storage(url: str, **storage_options: Any) -> Storage:
    """The storage for ``url``; schemes without a registered class use plain fsspec."""
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    cls = storages.get(scheme) if scheme in storages.names() else Storage
    return cls(url, **storage_options)


def read_url(url: str) -> bytes:
    """Bytes at a full URL such as one from :meth:`Storage.url_of`."""
    with fsspec.open(url, "rb") as handle:
        return handle.read()  # type: ignore[no-any-return]
