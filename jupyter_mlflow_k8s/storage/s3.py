"""``s3://bucket/prefix`` storage through s3fs: big blobs in concurrent parts, a check before jobs.

Connection settings come from where boto3 looks for them: the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``,
``AWS_PROFILE``, and ``AWS_ENDPOINT_URL`` for MinIO or any other non-AWS endpoint, which MLflow's
S3 client honours as well), the shared config files, or an instance/pod role.
``c.JMKSettings.storage_options`` adds s3fs options (``endpoint_url``, ``key``, ``secret``,
``client_kwargs``, ``default_block_size``, ``max_concurrency``, ...) in the notebook's process
only. A job's runner is another process that builds its storage from the URL alone and inherits
the environment: :meth:`S3Storage.job_environment` turns the options into AWS variables, which
the job service hands to the backend for each job (the local backend sets them in the job's
processes; they are never written into the job record).

Transfers are shaped for big pickles. A blob larger than one part is written as a multipart
upload whose parts (``default_block_size``, 16 MiB by default) go up ``max_concurrency`` (8) at
a time while the pickler keeps writing; at most that many parts are held in memory. A big read
is split into at most ``max_concurrency`` ranged GETs of at least one part, fetched at once and
streamed straight into the reader's buffer. A small blob is one PUT or one GET. s3fs is
imported when a storage is created, never when this module is.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import IO, TYPE_CHECKING, Any, TypeVar

from ..errors import JMKUsageError, NotFoundError
from . import Storage

if TYPE_CHECKING:
    from s3fs import S3FileSystem

T = TypeVar("T")
MIB = 2**20
DEFAULT_PART_SIZE = 16 * MIB
DEFAULT_CONCURRENCY = 8
MIN_PART_SIZE = 5 * MIB  # S3's lower bound for every part but the last
MAX_PART_SIZE = 5 * 2**30
CHECKSUM = "CRC32"  # of every part of a multipart upload
READ_CHUNK = MIB  # a ranged GET's body is copied into place this much at a time
WHOLE = 2**62  # a range end past any object: S3 answers up to the object's end
PARTS_PER_SIZE_STEP = 1000  # the part size doubles every 1,000 parts: S3 allows 10,000 parts
# botocore reads these when a client is made: a client made under other values is not reused.
_AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
_CREDENTIAL_ERRORS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
}
_filesystems: dict[tuple[Any, ...], S3FileSystem] = {}


def s3_filesystem(options: dict[str, Any]) -> S3FileSystem:
    """An s3fs filesystem for these options and the current AWS variables, made once per process.

    Not s3fs' own instance cache, which is keyed by the arguments alone: a process whose AWS variables
    change (another endpoint, other credentials) would be given the filesystem made for the old ones.
    """
    import s3fs

    key = (os.getpid(), repr(sorted(options.items())), tuple(os.environ.get(v) for v in _AWS_VARIABLES))
    if key not in _filesystems:
        _filesystems[key] = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    return _filesystems[key]


class S3Storage(Storage):
    """Content-addressed storage in an S3 bucket (AWS, MinIO, or any S3 endpoint)."""

    is_local = False

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url.rstrip("/")
        self.options = dict(storage_options)
        fs_options: dict[str, Any] = {"default_block_size": DEFAULT_PART_SIZE, "max_concurrency": DEFAULT_CONCURRENCY}
        fs_options.update(storage_options)
        self._fs_options = fs_options
        self.fs = s3_filesystem(fs_options)
        self.root = str(self.fs._strip_protocol(self.url)).rstrip("/")
        self.bucket, _, self.prefix = self.root.partition("/")
        if not self.bucket:
            raise JMKUsageError(f"The storage URL {url!r} names no bucket. Use s3://BUCKET/PREFIX, e.g. s3://team-bucket/jmk.")
        self.part_size = max(int(self.fs.default_block_size), MIN_PART_SIZE)
        self.concurrency = max(int(self.fs.max_concurrency), 1)

    # -- plumbing -------------------------------------------------------------------------------

    def _run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a coroutine function on s3fs's event loop and wait for it."""
        from fsspec.asyn import sync

        return sync(self.fs.loop, func, *args)  # type: ignore[no-any-return]

    def _split(self, key: str) -> tuple[str, str]:
        """``(bucket, object key)`` of a storage key."""
        bucket, _, name = self.path(key).partition("/")
        return bucket, name

    def part_size_for(self, part_number: int) -> int:
        """Size of part ``part_number`` (1-based): grows so that 10,000 parts hold any value."""
        step = (part_number - 1) // PARTS_PER_SIZE_STEP
        return min(self.part_size << step, MAX_PART_SIZE)

    async def _request_range(self, bucket: str, name: str, start: int, stop: int) -> dict[str, Any] | None:
        """The GET response for bytes ``[start, stop)``; None for an empty object."""
        try:
            return await self.fs._call_s3(  # type: ignore[no-any-return]
                "get_object", Bucket=bucket, Key=name, Range=f"bytes={start}-{stop - 1}"
            )
        except OSError as exc:
            if start == 0 and _error_code(exc) in ("InvalidRange", "416"):  # an empty object has no byte 0
                return None
            raise

    async def _get_range(self, bucket: str, name: str, start: int, stop: int) -> tuple[bytes, int]:
        """Bytes ``[start, stop)`` of an object (fewer at its end) and the object's total size."""
        response = await self._request_range(bucket, name, start, stop)
        if response is None:
            return b"", 0
        body = response["Body"]
        try:
            data = await body.read()
        finally:
            body.close()
        content_range = response.get("ContentRange") or ""
        if "/" not in content_range:  # the whole object came back, not the range asked for
            return data[start:stop], len(data)
        return data, int(content_range.rpartition("/")[2])

    async def _copy_range(self, bucket: str, name: str, start: int, dest: memoryview) -> tuple[int, int]:
        """Stream bytes from ``start`` into ``dest`` (no copy of the range held in memory).

        Returns ``(bytes copied, object size)``; fewer bytes only at the object's end.
        """
        response = await self._request_range(bucket, name, start, start + len(dest))
        if response is None:
            return 0, 0
        body = response["Body"]
        try:
            content_range = response.get("ContentRange") or ""
            if "/" not in content_range:  # the whole object came back, not the range asked for
                data = await body.read()
                piece = data[start : start + len(dest)]
                dest[: len(piece)] = piece
                return len(piece), len(data)
            copied = 0
            while copied < len(dest):
                chunk = await body.read(min(READ_CHUNK, len(dest) - copied))
                if not chunk:
                    break
                dest[copied : copied + len(chunk)] = chunk
                copied += len(chunk)
        finally:
            body.close()
        return copied, int(content_range.rpartition("/")[2])

    async def _read_into(
        self, bucket: str, name: str, dest: memoryview, offset: int, total: int | None = None
    ) -> tuple[int, int]:
        """Fill ``dest`` from the object at ``offset``; returns ``(bytes read, object size)``.

        Unless the size is known, a first GET of one part tells it. The rest is split into at
        most ``max_concurrency`` ranges of at least one part, fetched at once and streamed into
        place: few requests, and no range held in memory. With ``max_concurrency=1`` a read is
        one GET, for endpoints where every ranged request costs a read of the whole object.
        """
        done = 0
        if total is None:
            first = min(len(dest), self.part_size) if self.concurrency > 1 else len(dest)
            done, total = await self._copy_range(bucket, name, offset, dest[:first])
        wanted = max(min(len(dest), total - offset), 0)
        if done >= wanted:
            return wanted, total
        rest = wanted - done
        size = max(self.part_size, -(-rest // self.concurrency)) if self.concurrency > 1 else rest
        gate = asyncio.Semaphore(self.concurrency)

        async def fetch(start: int) -> None:
            async with gate:
                part = dest[start - offset : min(start + size, offset + wanted) - offset]
                copied, _ = await self._copy_range(bucket, name, start, part)
                if copied != len(part):
                    raise OSError(f"s3://{bucket}/{name} changed while it was read")

        await asyncio.gather(*(fetch(s) for s in range(offset + done, offset + wanted, size)))
        return wanted, total

    # -- Storage --------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored: one HEAD request."""
        bucket, name = self._split(key)

        async def head() -> bool:
            try:
                await self.fs._call_s3("head_object", Bucket=bucket, Key=name)
            except FileNotFoundError:
                return False
            return True

        return self._run(head)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data``: one PUT up to a part, else a concurrent multipart upload (atomic either way)."""
        if len(data) <= self.part_size:
            bucket, name = self._split(key)
            self.fs.call_s3("put_object", Bucket=bucket, Key=name, Body=bytes(data))
            self.fs.invalidate_cache(self.path(key))
            return
        with self.open(key, "wb") as handle:
            handle.write(data)

    def get_bytes(self, key: str) -> bytes:
        """The value at ``key``: one GET up to a part, else ranged GETs in parallel."""
        bucket, name = self._split(key)

        async def read_all() -> bytes:
            first, total = await self._get_range(bucket, name, 0, self.part_size if self.concurrency > 1 else WHOLE)
            if total <= len(first):
                return first
            buffer = bytearray(total)
            buffer[: len(first)] = first
            await self._read_into(bucket, name, memoryview(buffer)[len(first) :], len(first), total)
            return bytes(buffer)

        try:
            return self._run(read_all)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url_of(key)} does not exist") from None

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        """A buffered reader, or a writer whose parts upload in the background.

        A writer used as a context manager aborts its upload when the block raises: a
        half-written value never appears under its key.
        """
        bucket, name = self._split(key)
        if mode == "rb":
            return io.BufferedReader(_RangeReader(self, bucket, name), buffer_size=MIB)  # type: ignore[return-value]
        if mode == "wb":
            return _MultipartWriter(self, bucket, name)  # type: ignore[return-value]
        raise ValueError(f"S3Storage.open: mode {mode!r} is not supported (use 'rb' or 'wb')")

    def check(self) -> None:
        """One LIST of the prefix; a failure becomes a :class:`JMKUsageError` that says what to set.

        Missing or refused credentials, a missing bucket and an endpoint that does not answer are
        told apart. Retries are cut short here, so a dead endpoint is reported within seconds.
        """
        probe_options = dict(self._fs_options)
        config = dict(probe_options.get("config_kwargs") or {})
        config["retries"] = {"max_attempts": 2, "mode": "standard"}
        probe_options["config_kwargs"] = config
        probe_fs = s3_filesystem(probe_options)
        prefix = f"{self.prefix}/" if self.prefix else ""

        async def probe() -> None:
            await probe_fs.set_session()
            client = await probe_fs.get_s3(self.bucket)
            await client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)

        try:
            self._run(probe)
        except Exception as exc:  # every failure here means jobs cannot use this storage
            raise self._explain(exc, probe_fs) from None

    def fail_fast(self) -> S3Storage:
        """The same storage with botocore's and s3fs's own retries switched off: one attempt per call.

        Against a dead endpoint a default call retries for 4-13 s inside botocore and s3fs; the
        caller's own retries (a bound in seconds) are the ones that count.
        """
        options = dict(self.options)
        config = dict(options.get("config_kwargs") or {})
        config["retries"] = {"max_attempts": 1, "mode": "standard"}
        options["config_kwargs"] = config
        storage = S3Storage(self.url, **options)
        storage.fs.retries = 1  # a class attribute of s3fs, not an option; this filesystem is ours alone
        return storage

    def job_environment(self) -> dict[str, str]:
        """AWS variables carrying this storage's connection options to a job's runner.

        Empty when the options hold no connection settings (the job inherits the variables).
        """
        options = self.options
        client = dict(options.get("client_kwargs") or {})
        pairs = {
            "AWS_ENDPOINT_URL": options.get("endpoint_url") or client.get("endpoint_url"),
            "AWS_ACCESS_KEY_ID": options.get("key") or client.get("aws_access_key_id"),
            "AWS_SECRET_ACCESS_KEY": options.get("secret") or client.get("aws_secret_access_key"),
            "AWS_SESSION_TOKEN": options.get("token") or client.get("aws_session_token"),
            "AWS_DEFAULT_REGION": client.get("region_name"),
            "AWS_PROFILE": options.get("profile"),
        }
        return {name: str(value) for name, value in pairs.items() if value}

    # -- errors ---------------------------------------------------------------------------------

    def _explain(self, exc: BaseException, fs: S3FileSystem) -> JMKUsageError:
        """A message naming what is wrong, where, and what to set."""
        client = getattr(fs, "_s3", None)
        endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None) or "the AWS default endpoint"
        where = f"Cannot use the job storage {self.url} (S3 endpoint {endpoint})"
        after = " Nothing was submitted."
        name = type(exc).__name__
        code = _error_code(exc)
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return JMKUsageError(
                f"{where}: no AWS credentials were found ({exc}). Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "in the environment the notebook server and its jobs start from (or "
                "c.JMKSettings.storage_options = {'key': ..., 'secret': ...}, which reaches this kernel only)." + after
            )
        if code in _CREDENTIAL_ERRORS:
            return JMKUsageError(
                f"{where}: the endpoint refused the credentials ({code}: {_error_message(exc)}). Check "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (or the key/secret in "
                "c.JMKSettings.storage_options)." + after
            )
        if code in ("NoSuchBucket", "404"):
            return NotFoundError(
                f"{where}: the bucket {self.bucket!r} does not exist there. Create it, or point JMK_STORAGE_URL "
                "(c.JMKSettings.storage_url) at an existing bucket; if the bucket lives elsewhere, set "
                "AWS_ENDPOINT_URL." + after
            )
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return JMKUsageError(
                f"{where}: the credentials are valid but may not list s3://{self.root}/ ({code}). Grant them "
                f"s3:ListBucket, s3:GetObject and s3:PutObject on the bucket {self.bucket!r}, or set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to credentials that have them." + after
            )
        if _is_connection_error(exc):
            return JMKUsageError(
                f"{where}: the endpoint does not answer ({name}: {exc}). Set AWS_ENDPOINT_URL to the S3 "
                "endpoint's URL (e.g. http://minio:9000), or c.JMKSettings.storage_options = "
                "{'endpoint_url': ...} for this kernel only; unset it to use AWS." + after
            )
        return JMKUsageError(
            f"{where}: {name}: {exc}. Check the AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_ENDPOINT_URL) or c.JMKSettings.storage_options." + after
        )


def _error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore error, or of the one an s3fs error was translated from."""
    for error in (exc, exc.__cause__):
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def _error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)


def _is_connection_error(exc: BaseException) -> bool:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    return isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionError, asyncio.TimeoutError))


class _RangeReader(io.RawIOBase):
    """Raw reads of one object by range; a large ``readinto`` fetches its parts concurrently."""

    def __init__(self, storage: S3Storage, bucket: str, name: str) -> None:
        super().__init__()
        self.storage, self.bucket, self.name = storage, bucket, name
        self.position = 0
        self.size: int | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            if self.size is None:
                self.size = int(self.storage.fs.size(f"{self.bucket}/{self.name}"))
            offset += self.size
        elif whence == io.SEEK_CUR:
            offset += self.position
        self.position = max(offset, 0)
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.size is not None:
            view = view[: max(self.size - self.position, 0)]
        if not len(view):
            return 0
        storage = self.storage
        count, self.size = storage._run(storage._read_into, self.bucket, self.name, view, self.position, self.size)
        self.position += count
        return count

    def readall(self) -> bytes:
        """The rest of the object in one go (RawIOBase's default reads 8 KiB per request)."""
        head = bytearray(self.storage.part_size if self.size is None else 0)
        count = self.readinto(head) if head else 0  # learns the size
        rest = bytearray(max((self.size or 0) - self.position, 0))
        done = 0
        while done < len(rest):
            got = self.readinto(memoryview(rest)[done:])
            if not got:
                break
            done += got
        return bytes(head[:count]) + bytes(rest[:done])


class _MultipartWriter(io.RawIOBase):
    """Writes one object: a PUT if it stays under a part, else parts uploaded in the background.

    At most ``concurrency`` parts are in flight; ``write`` waits for the oldest beyond that.
    Closing completes the upload (the object appears whole, at once); leaving a ``with`` block
    by an exception aborts it, so no partial object is ever visible.
    """

    def __init__(self, storage: S3Storage, bucket: str, name: str) -> None:
        super().__init__()
        self.storage, self.bucket, self.name = storage, bucket, name
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.pending: list[tuple[int, Future[Any]]] = []
        self.parts: list[dict[str, Any]] = []
        self.written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.written

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed S3 writer")
        view = memoryview(data).cast("B")
        offset = 0
        while offset < len(view):
            limit = self.storage.part_size_for(len(self.parts) + len(self.pending) + 1)
            if not self.buffer and len(view) - offset >= limit:  # a whole part at once: one copy
                self._send(bytes(view[offset : offset + limit]))
                offset += limit
                continue
            take = min(limit - len(self.buffer), len(view) - offset)
            self.buffer += view[offset : offset + take]
            offset += take
            if len(self.buffer) >= limit:
                self._send(bytes(self.buffer))
                self.buffer = bytearray()
        self.written += len(view)
        return len(view)

    def _send(self, data: bytes) -> None:
        """Upload one part in the background, after waiting for room."""
        storage = self.storage
        if self.upload_id is None:
            # CRC32 per part, composed by the server: what boto3's transfer manager asks for too,
            # and cheaper for the server than a checksum over the whole object at completion.
            started = storage.fs.call_s3(
                "create_multipart_upload", Bucket=self.bucket, Key=self.name, ChecksumAlgorithm=CHECKSUM
            )
            self.upload_id = str(started["UploadId"])
        while len(self.pending) >= storage.concurrency:
            self._collect(self.pending.pop(0))
        number = len(self.parts) + len(self.pending) + 1
        call = storage.fs._call_s3(
            "upload_part",
            Bucket=self.bucket,
            Key=self.name,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm=CHECKSUM,
        )
        self.pending.append((number, asyncio.run_coroutine_threadsafe(call, storage.fs.loop)))

    def _collect(self, item: tuple[int, Future[Any]]) -> None:
        number, future = item
        response = future.result()
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if response.get(f"Checksum{CHECKSUM}"):
            part[f"Checksum{CHECKSUM}"] = response[f"Checksum{CHECKSUM}"]
        self.parts.append(part)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._commit()
        except BaseException:
            self.abort()
            raise
        finally:
            super().close()

    def _commit(self) -> None:
        fs = self.storage.fs
        if self.upload_id is None:
            fs.call_s3("put_object", Bucket=self.bucket, Key=self.name, Body=bytes(self.buffer))
        else:
            if self.buffer or not (self.parts or self.pending):
                self._send(bytes(self.buffer))
            self.buffer = bytearray()
            while self.pending:
                self._collect(self.pending.pop(0))
            parts = sorted(self.parts, key=lambda p: int(p["PartNumber"]))
            fs.call_s3(
                "complete_multipart_upload",
                Bucket=self.bucket,
                Key=self.name,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
            )
        fs.invalidate_cache(f"{self.bucket}/{self.name}")

    def abort(self) -> None:
        """Drop what was uploaded; nothing appears under the key."""
        self.buffer = bytearray()
        for _, future in self.pending:
            future.cancel()
            try:
                future.result()
            except BaseException:  # noqa: S110 - the upload is dropped anyway
                pass
        self.pending = []
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            try:
                self.storage.fs.call_s3("abort_multipart_upload", Bucket=self.bucket, Key=self.name, UploadId=upload_id)
            except Exception:  # noqa: S110 - a stale upload is reclaimed by the bucket's lifecycle rules
                pass
        if not self.closed:
            super().close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
