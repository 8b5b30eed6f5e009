"""Reading and writing a batch prediction's files through fsspec (s3fs for ``s3://``): list, read, write atomically.

An object is never seen half written: it is written under :data:`~.plan.STATE_FOLDER`'s ``writing/``
first, then moved to its name (a rename on a local disk; a copy, which S3 makes visible at once, then
a delete). Nothing here knows about models or shards.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import fsspec

from ..exceptions import JMKUsageError
from .plan import FORMATS, STATE_FOLDER, InputFile

GLOB_CHARACTERS = "*?["


def filesystem(url: str, **options: Any) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path in it (S3: the one of the current AWS variables)."""
    if url.startswith("s3://"):
        from ..storage.s3 import s3_filesystem

        fs = s3_filesystem(dict(options))
        return fs, fs._strip_protocol(url)
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def _url(fs: Any, path: str) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def list_inputs(pattern: str, **options: Any) -> list[InputFile]:
    """The CSV and Parquet files ``pattern`` names: a glob, a folder (``s3://b/in/``), or one file."""
    fs, path = filesystem(pattern, **options)
    fs.invalidate_cache()  # a listing cached by an earlier call in this process would hide new files
    if any(c in path for c in GLOB_CHARACTERS):
        found = fs.glob(path, detail=True)
    elif pattern.endswith("/") or fs.isdir(path):
        found = {
            p: i
            for p, i in fs.find(path, detail=True).items()
            if p.lower().endswith(tuple(FORMATS)) and "/_" not in p[len(path.rstrip("/")) :]
        }
    else:
        found = {path: fs.info(path)} if fs.exists(path) else {}
    files = [
        InputFile(_url(fs, p), int(info.get("size") or 0), _version(info))
        for p, info in sorted(found.items())
        if info.get("type", "file") == "file"
    ]
    if not files:
        raise JMKUsageError(
            f"--input {pattern!r} matches no file. Give a glob such as 's3://bucket/in/*.parquet', "
            "a folder ending in / (every .csv and .parquet file under it), or one file."
        )
    return files


def _version(info: dict[str, Any]) -> str:
    """What changes when a file's content does: its ETag, else its modification time."""
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def read_frame(url: str, kind: str) -> Any:
    """The rows of one file as a pandas DataFrame (CSV as text columns are inferred by pandas)."""
    import pandas as pd

    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        if kind == "csv":
            return pd.read_csv(handle)
        return pd.read_parquet(handle)


def frame_bytes(frame: Any, kind: str) -> bytes:
    """A DataFrame as the bytes of a CSV or Parquet file (no index)."""
    buffer = io.BytesIO()
    if kind == "csv":
        buffer.write(frame.to_csv(index=False).encode())
    else:
        frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def join(prefix: str, name: str) -> str:
    """``prefix`` (a folder URL) and a relative name."""
    return prefix.rstrip("/") + "/" + name


def write_atomic(prefix: str, name: str, data: bytes, **options: Any) -> None:
    """Write ``prefix/name`` so that it appears whole or not at all."""
    fs, root = filesystem(prefix, **options)
    root = root.rstrip("/")
    temporary = f"{root}/{STATE_FOLDER}/writing/{name.replace('/', '_')}.{uuid.uuid4().hex}"
    fs.makedirs(temporary.rsplit("/", 1)[0], exist_ok=True)  # a local folder must exist; on S3 nothing happens
    fs.pipe_file(temporary, data)
    try:
        fs.makedirs(f"{root}/{name}".rsplit("/", 1)[0], exist_ok=True)
        fs.mv(temporary, f"{root}/{name}")
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)


def read_json(prefix: str, name: str, **options: Any) -> dict[str, Any] | None:
    """The JSON object at ``prefix/name``; None when there is none."""
    fs, root = filesystem(prefix, **options)
    try:
        data = fs.cat_file(f"{root.rstrip('/')}/{name}")
    except FileNotFoundError:
        return None
    value = json.loads(data)
    return value if isinstance(value, dict) else None


def write_json(prefix: str, name: str, value: dict[str, Any], **options: Any) -> None:
    """Write a JSON object atomically."""
    write_atomic(prefix, name, json.dumps(value, indent=1, sort_keys=True).encode(), **options)


def remove_outputs(prefix: str, **options: Any) -> None:
    """Remove what an earlier batch prediction wrote under ``prefix`` (its parts, quarantine, markers, plan)."""
    fs, root = filesystem(prefix, **options)
    root = root.rstrip("/")
    if not fs.exists(root):
        return
    for path in fs.find(root):
        name = path[len(root) + 1 :]
        if name.startswith(("part-", "_quarantine/", f"{STATE_FOLDER}/")) or name == "_SUCCESS":
            fs.rm(path)
