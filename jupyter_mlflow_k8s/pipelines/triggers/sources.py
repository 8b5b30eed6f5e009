"""What triggers watch: the objects under an S3 prefix (with their ETags), and a served model's drift.

The object listing goes through the storage layer's s3fs filesystem (the same credentials and
endpoint as the rest of jmk), with its listing cache dropped first: a poll must see what is there
now. Drift is read by a :data:`DriftReader` that the composition root passes in (``jmk scheduler``
gives the serving side's reader of the endpoints' own ``jmk_feature_drift_psi`` gauges): pipelines
and serving are services of the same layer and do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ...exceptions import JMKUsageError


@dataclass(frozen=True)
class DriftReading:
    """One read of a served model's drift: the highest PSI over its features, or None with why not.

    ``endpoints`` names the endpoints read (``serving MODEL@ALIAS``); ``detail`` says what the value
    is (``petal_length 0.41``) or why there is none (no endpoint serves it, no rows in the window).
    """

    value: float | None
    detail: str = ""
    endpoints: tuple[str, ...] = ()


#: ``reader(model, alias)``: the drift now of the endpoints serving ``models:/MODEL@ALIAS``.
DriftReader = Callable[[str, str], DriftReading]


def list_objects(url: str, pattern: str = "*") -> dict[str, str]:
    """``{s3://bucket/key: ETag}`` of the objects under ``url`` whose path below it matches ``pattern``.

    ``pattern`` is a glob matched against the path below the prefix and against the object's own
    name (``*.parquet`` matches ``2026/12/a.parquet``). "Folder" markers (keys ending in ``/``) are
    left out.

    Raises:
        JMKUsageError: The URL is not ``s3://``.
        OSError: The listing failed (s3fs's errors: no such bucket, no access, the endpoint down).
    """
    from ...storage import get_storage
    from ...storage.s3 import S3Storage

    if not url.startswith("s3://"):
        raise JMKUsageError(f"{url!r}: triggers watch S3 prefixes, s3://BUCKET/PREFIX/.")
    storage = get_storage(url.rstrip("/"))
    assert isinstance(storage, S3Storage), storage
    fs = storage.fs
    root = url[len("s3://") :].rstrip("/")
    fs.invalidate_cache(root)
    found: dict[str, str] = {}
    for path, info in fs.find(root, detail=True).items():
        if info.get("type") == "directory" or path.endswith("/"):
            continue
        below = path[len(root) + 1 :] if path.startswith(root + "/") else path
        name = below.rsplit("/", 1)[-1]
        if not (fnmatchcase(below, pattern) or fnmatchcase(name, pattern)):
            continue
        etag = str(info.get("ETag") or info.get("etag") or f"{info.get('size')}:{info.get('LastModified')}")
        found[f"s3://{path}"] = etag.strip('"')
    return found
