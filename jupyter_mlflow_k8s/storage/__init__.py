"""Content-addressed storage for payloads and results, on any fsspec URL.

``file://`` under the state directory by default; ``s3://bucket/prefix`` (s3fs, see
:mod:`.s3`, imported only when such a URL is used) or any other fsspec scheme when configured.
Blobs are keyed by their SHA-256, so a value is written once no matter how many jobs use it.
``file://`` is served with pathlib alone: a job's runner starts without importing fsspec
(70 ms) when storage is local. This module knows nothing about jobs or pickles.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from ..exceptions import UnknownPlugin
from ..registry import Registry


def blob_key(digest: str) -> str:
    """Storage key of the blob with this SHA-256 hex digest."""
    return f"blobs/sha256/{digest[:2]}/{digest}"


class Storage:
    """A folder of keys on one fsspec filesystem."""

    is_local = False

    def __init__(self, url: str, **storage_options: Any) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)

    def check(self) -> None:
        """Raise :class:`JMKUsageError` if the store cannot be used (credentials, bucket).

        Called before a job is created, so that a bad configuration leaves nothing behind.
        """

    def job_environment(self) -> dict[str, str]:
        """Environment variables a job's runner needs to reach this store with these options.

        The runner rebuilds its storage from the URL alone, so options given to this process
        (``c.JMKSettings.storage_options``) reach a job only through variables like these.
        """
        return {}

    def fail_fast(self) -> Storage:
        """The same store, with each call giving up quickly when the store does not answer.

        For writes the caller retries on its own terms (:func:`.kept.with_retries`), so that its
        bound in seconds holds; the default has no retries of its own to cut.
        """
        return self

    def path(self, key: str) -> str:
        """Filesystem path of ``key`` (no scheme)."""
        return f"{self.root.rstrip('/')}/{key}"

    def url_of(self, key: str) -> str:
        """Full URL of ``key``, usable by :func:`read_url` in another process."""
        return f"{self.url}/{key}"

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""
        return bool(self.fs.exists(self.path(key)))

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``; readers never see a partial value."""
        self.fs.pipe_file(self.path(key), data)

    def get_bytes(self, key: str) -> bytes:
        """The value stored at ``key``."""
        return bytes(self.fs.cat_file(self.path(key)))

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        """A file object for ``key`` (writing goes straight to the store)."""
        if "w" in mode:
            self.fs.makedirs(self.path(key).rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(self.path(key), mode)  # type: ignore[no-any-return]

    def move(self, source: str, target: str) -> None:
        """Rename ``source`` to ``target`` within the store."""
        self.fs.mv(self.path(source), self.path(target))


class LocalStorage(Storage):
    """``file://`` storage with pathlib: no fsspec import, atomic renames."""

    is_local = True

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url.rstrip("/")
        self.root = local_path(self.url)

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""
        return Path(self.path(key)).exists()

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write to a temporary name, then rename: readers never see a partial value."""
        target = Path(self.path(key))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def get_bytes(self, key: str) -> bytes:
        """The value stored at ``key``."""
        return Path(self.path(key)).read_bytes()

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        """A file object for ``key``."""
        path = Path(self.path(key))
        if "w" in mode:
            path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, mode)  # type: ignore[return-value]

    def move(self, source: str, target: str) -> None:
        """Rename ``source`` to ``target`` (atomic on one filesystem)."""
        shutil.move(self.path(source), self.path(target))


def local_path(url: str) -> str:
    """The path of a ``file://`` URL (or of a plain path)."""
    if "://" not in url:
        return str(Path(url).resolve())
    parsed = urlparse(url)
    return unquote(parsed.path)


# A scheme maps to a class or factory called as ``factory(url, **storage_options)``; built-ins are
# named, so s3fs is imported only when an s3:// URL is used.
BUILTIN_STORAGES = {
    "file": "jupyter_mlflow_k8s.storage:LocalStorage",
    "s3": "jupyter_mlflow_k8s.storage.s3:S3Storage",
}
storages: Registry[Callable[..., Storage]] = Registry("storage scheme", "jupyter_mlflow_k8s.storage",
                                                      BUILTIN_STORAGES)


def get_storage(url: str, **storage_options: Any) -> Storage:
    """The storage for ``url``; schemes without a registered class use plain fsspec."""
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme == "file":  # the common case: no entry-point scan in every job process
        return LocalStorage(url, **storage_options)
    try:
        factory = storages.get(scheme)  # built-ins first; plugins are scanned only for other schemes
    except UnknownPlugin:
        factory = Storage
    return factory(url, **storage_options)


def read_url(url: str) -> bytes:
    """Bytes at a full URL such as one from :meth:`Storage.url_of`, read by that scheme's storage."""
    if url.startswith("file://") or "://" not in url:
        return Path(local_path(url)).read_bytes()
    parent, _, name = url.rpartition("/")
    return get_storage(parent).get_bytes(name)
