"""S3 storage through s3fs (``S3Storage``) against plain boto3 on the same local S3 endpoint.

Starts its own ``moto_server`` on 127.0.0.1 (moto's server mode, no authentication), then in one
run and on the same endpoint measures:

- one big object (1 GiB of random bytes): upload and download through ``S3Storage``
  (``put_bytes``, ``open('wb')``, ``get_bytes``, ``open('rb')``), through the generic fsspec
  ``Storage`` on plain s3fs defaults (what ``s3://`` got before ``S3Storage``), and through boto3
  (``upload_fileobj`` / ``download_fileobj`` with boto3's default ``TransferConfig``,
  ``put_object`` / ``get_object``): the peer for every ratio is boto3;
- a 1 GiB float64 numpy array staged with ``stage_value`` (first time: hash + pickle + upload;
  again: hash + HEAD) and read back with ``load_value``;
- 1,000 objects of 100 KB: upload, existence check (present and absent keys) and download, one
  by one, through ``S3Storage``, the plain-s3fs ``Storage`` and boto3.

``--sweep`` adds the big-object upload and download with other part sizes and concurrencies.
Prints tables with MB/s (10^6 bytes per second) and the ratio to boto3. No timing is asserted
anywhere; this prints.

    python benchmarks/storage.py [--gib 1] [--small-count 1000] [--small-kb 100] [--repeat 3] [--sweep]
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from jupyter_mlflow_k8s.payload import load_value, stage_value
from jupyter_mlflow_k8s.storage import Storage, get_storage

MIB = 2**20
BUCKET = "jmk-bench"
# (part MiB, max_concurrency) tried by --sweep; S3Storage's defaults are (16, 8), s3fs's (50, 10).
SWEEP = [(8, 8), (16, 1), (16, 4), (16, 8), (32, 8), (64, 8)]


# ---------------------------------------------------------------------------- the endpoint


def start_moto(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``moto_server`` on a free port; its spooled objects go to ``tmp``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "TMPDIR": str(tmp), "AWS_EC2_METADATA_DISABLED": "true"}
    log = open(tmp / "moto.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited: {(tmp / 'moto.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1):
                return proc, endpoint
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"moto_server not ready in 30 s: {(tmp / 'moto.log').read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's process group, then kill it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------- measuring


class Table:
    """Rows of (what, bytes moved, seconds per repeat), printed against a peer row per group."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, int, list[float], str | None]] = []

    def add(self, name: str, nbytes: int, times: list[float], peer: str | None = None) -> None:
        self.rows.append((name, nbytes, times, peer))
        print(f"  {name}: {', '.join(f'{t:.2f}' for t in times)} s", file=sys.stderr, flush=True)

    def print(self) -> None:
        medians = {name: statistics.median(times) for name, _, times, _ in self.rows}
        print(f"\n{self.title}")
        print(f"| {'what':58} | {'median s':>8} | {'min-max s':>11} | {'MB/s':>7} | {'x boto3':>7} |")
        print(f"|{'-' * 60}|{'-' * 9}:|{'-' * 12}:|{'-' * 8}:|{'-' * 8}:|")
        for name, nbytes, times, peer in self.rows:
            median = medians[name]
            ratio = f"{medians[peer] / median:.2f}" if peer else "1.00"
            spread = f"{min(times):.2f}-{max(times):.2f}"
            print(f"| {name:58} | {median:8.2f} | {spread:>11} | {nbytes / 1e6 / median:7.1f} | {ratio:>7} |")


def timed(func: Callable[[], Any], before: Callable[[], Any] | None = None) -> float:
    if before is not None:
        before()
    gc.collect()
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


# ---------------------------------------------------------------------------- cases


def big_object(client: Any, storages: dict[str, tuple[str, Storage]], data: bytes, repeat: int) -> Table:
    """``storages``: label -> (its prefix in the bucket, the storage)."""
    from boto3.s3.transfer import TransferConfig

    table = Table(f"One object of {len(data) / 2**30:.2f} GiB (random bytes), upload then download")
    size = len(data)
    config = TransferConfig()  # boto3's defaults, named for the record
    buffer = bytearray(size)

    def delete(key: str) -> Callable[[], None]:
        return lambda: client.delete_object(Bucket=BUCKET, Key=key)

    peer_up = "boto3 upload_fileobj (TransferConfig defaults)"
    peer_down = "boto3 get_object().read()"
    uploads: dict[str, list[float]] = {}
    downloads: dict[str, list[float]] = {}
    for _ in range(repeat):  # interleaved, so drift hits every row alike
        boto_upload = lambda: client.upload_fileobj(io.BytesIO(data), BUCKET, "boto3/big", Config=config)  # noqa: E731
        uploads.setdefault(peer_up, []).append(timed(boto_upload, delete("boto3/big")))
        uploads.setdefault("boto3 put_object (one PUT)", []).append(
            timed(lambda: client.put_object(Bucket=BUCKET, Key="boto3/big", Body=data), delete("boto3/big"))
        )
        for label, (prefix, storage) in storages.items():
            uploads.setdefault(f"{label}: put_bytes", []).append(
                timed(lambda s=storage: s.put_bytes("big", data), delete(f"{prefix}/big"))
            )

            def write(s: Storage = storage) -> None:
                with s.open("big", "wb") as handle:
                    for start in range(0, size, MIB):  # a pickler writes in pieces
                        handle.write(data[start : start + MIB])

            uploads.setdefault(f"{label}: open('wb'), 1 MiB writes", []).append(timed(write, delete(f"{prefix}/big")))
        downloads.setdefault(peer_down, []).append(
            timed(lambda: client.get_object(Bucket=BUCKET, Key="boto3/big")["Body"].read())
        )
        downloads.setdefault("boto3 download_fileobj (TransferConfig defaults)", []).append(
            timed(lambda: client.download_fileobj(BUCKET, "boto3/big", io.BytesIO(), Config=config))
        )
        for label, (_, storage) in storages.items():
            downloads.setdefault(f"{label}: get_bytes", []).append(timed(lambda s=storage: s.get_bytes("big")))

            def read(s: Storage = storage) -> None:
                with s.open("big", "rb") as handle:
                    handle.readinto(buffer)  # as the unpickler reads a big buffer

            downloads.setdefault(f"{label}: open('rb').readinto", []).append(timed(read))
    for name, times in uploads.items():
        table.add(f"up: {name}", size, times, None if name == peer_up else f"up: {peer_up}")
    for name, times in downloads.items():
        table.add(f"down: {name}", size, times, None if name == peer_down else f"down: {peer_down}")
    for prefix, _ in storages.values():
        client.delete_object(Bucket=BUCKET, Key=f"{prefix}/big")
    client.delete_object(Bucket=BUCKET, Key="boto3/big")
    return table


def big_array(client: Any, storage: Storage, gib: float, repeat: int) -> Table:
    import cloudpickle
    from boto3.s3.transfer import TransferConfig

    array = np.random.default_rng(0).random(int(gib * 2**30 // 8))
    pickled = cloudpickle.dumps(array, protocol=5)
    table = Table(f"A {array.nbytes / 2**30:.2f} GiB float64 numpy array: stage_value / load_value")
    peer_up, peer_down = "boto3 upload_fileobj of its pickle", "boto3 get_object + pickle.loads"
    rows: dict[str, list[float]] = {}
    entry: Any = None

    def delete_blobs() -> None:
        listing = client.list_objects_v2(Bucket=BUCKET, Prefix="array/")
        for item in listing.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])

    for _ in range(repeat):
        rows.setdefault(peer_up, []).append(
            timed(lambda: client.upload_fileobj(io.BytesIO(pickled), BUCKET, "boto3/array", Config=TransferConfig()))
        )
        delete_blobs()
        gc.collect()
        start = time.perf_counter()
        entry = stage_value(storage, "array", array)
        rows.setdefault("stage_value, new (hash, pickle again, upload)", []).append(time.perf_counter() - start)
        rows.setdefault("stage_value, unchanged (hash, HEAD)", []).append(
            timed(lambda: stage_value(storage, "array", array))
        )
        rows.setdefault(peer_down, []).append(
            timed(lambda: cloudpickle.loads(client.get_object(Bucket=BUCKET, Key="boto3/array")["Body"].read()))
        )
        rows.setdefault("load_value", []).append(timed(lambda e=entry: load_value(storage, e.__dict__)))
    assert np.array_equal(load_value(storage, entry.__dict__), array)
    size = len(pickled)
    for name, times in rows.items():
        peer = peer_up if name.startswith("stage") else peer_down if name == "load_value" else None
        table.add(name, size, times, peer)
    delete_blobs()
    client.delete_object(Bucket=BUCKET, Key="boto3/array")
    return table


def small_objects(client: Any, storages: dict[str, Storage], count: int, kb: int, repeat: int) -> Table:
    values = [os.urandom(kb * 1000) for _ in range(count)]
    total = count * kb * 1000
    table = Table(f"{count:,} objects of {kb} KB, one by one")
    keys = [f"small/{i:05d}" for i in range(count)]
    buffer = bytearray(kb * 1000)

    def boto_put() -> None:
        for key, value in zip(keys, values, strict=True):
            client.put_object(Bucket=BUCKET, Key=f"boto3/{key}", Body=value)

    def boto_head() -> None:
        for key in keys:
            client.head_object(Bucket=BUCKET, Key=f"boto3/{key}")

    def boto_get() -> None:
        for key in keys:
            client.get_object(Bucket=BUCKET, Key=f"boto3/{key}")["Body"].read()

    def boto_head_missing() -> None:
        for key in keys:
            try:
                client.head_object(Bucket=BUCKET, Key=f"absent/{key}")
            except client.exceptions.ClientError:
                pass

    def missing(storage: Storage) -> None:
        for key in keys:
            storage.exists(f"absent/{key}")

    def put(storage: Storage) -> None:
        for key, value in zip(keys, values, strict=True):
            storage.put_bytes(key, value)

    def exists(storage: Storage) -> None:
        for key in keys:
            storage.exists(key)

    def get(storage: Storage) -> None:
        for key in keys:
            storage.get_bytes(key)

    def read(storage: Storage) -> None:
        for key in keys:
            with storage.open(key, "rb") as handle:
                handle.readinto(buffer)

    peers = {
        "up": "boto3 put_object",
        "exists": "boto3 head_object",
        "missing": "boto3 head_object (404)",
        "down": "boto3 get_object().read()",
    }
    cases: list[tuple[str, Callable[[], None], str | None]] = [
        (f"up: {peers['up']}", boto_put, None),
        (f"exists: {peers['exists']}", boto_head, None),
        (f"missing: {peers['missing']}", boto_head_missing, None),
        (f"down: {peers['down']}", boto_get, None),
    ]
    for label, storage in storages.items():
        cases += [
            (f"up: {label}.put_bytes", lambda s=storage: put(s), f"up: {peers['up']}"),
            (f"exists: {label}.exists", lambda s=storage: exists(s), f"exists: {peers['exists']}"),
            (f"missing: {label}.exists", lambda s=storage: missing(s), f"missing: {peers['missing']}"),
            (f"down: {label}.get_bytes", lambda s=storage: get(s), f"down: {peers['down']}"),
            (f"down: {label}.open('rb').readinto", lambda s=storage: read(s), f"down: {peers['down']}"),
        ]
    rows: dict[str, list[float]] = {}
    for _ in range(repeat):
        for name, func, _peer in cases:
            rows.setdefault(name, []).append(timed(func))
    order = sorted(cases, key=lambda case: ["up", "exists", "missing", "down"].index(case[0].split(":")[0]))
    for name, _func, peer in order:
        table.add(name, total, rows[name], peer)
    return table


def sweep(client: Any, url: str, data: bytes) -> Table:
    """The big object through S3Storage under other part sizes and concurrencies (one run each)."""
    table = Table(f"Sweep: one {len(data) / 2**30:.2f} GiB object through S3Storage, by part size and concurrency")
    peer_up, peer_down = "up: boto3 upload_fileobj", "down: boto3 get_object().read()"
    table.add(peer_up, len(data), [timed(lambda: client.upload_fileobj(io.BytesIO(data), BUCKET, "boto3/big"))])
    table.add(
        peer_down, len(data), [timed(lambda: client.get_object(Bucket=BUCKET, Key="boto3/big")["Body"].read())]
    )
    client.delete_object(Bucket=BUCKET, Key="boto3/big")
    for part_mib, concurrency in SWEEP:
        storage = get_storage(url, default_block_size=part_mib * MIB, max_concurrency=concurrency)
        label = f"{part_mib} MiB parts, {concurrency} at a time"
        table.add(f"up: {label}", len(data), [timed(lambda s=storage: s.put_bytes("sweep", data))], peer_up)
        table.add(f"down: {label}", len(data), [timed(lambda s=storage: s.get_bytes("sweep"))], peer_down)
        client.delete_object(Bucket=BUCKET, Key="sweep")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the big object and of the array")
    parser.add_argument("--small-count", type=int, default=1000)
    parser.add_argument("--small-kb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sweep", action="store_true", help="also try other part sizes and concurrencies")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below: stop moto
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start_moto(Path(tmp))
        try:
            os.environ.update(
                {
                    "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_EC2_METADATA_DISABLED": "true",
                }
            )
            import boto3

            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            url = f"s3://{BUCKET}"
            ours = get_storage(f"{url}/ours")
            plain = Storage(f"{url}/plain")  # the generic fsspec storage, s3fs defaults
            print(
                f"machine: {_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
                f"s3fs {version('s3fs')}, aiobotocore {version('aiobotocore')}, boto3 {version('boto3')}, "
                f"botocore {version('botocore')}, moto {version('moto')}, numpy {version('numpy')}",
            )
            print(
                f"S3Storage: parts of {ours.part_size // MIB} MiB, {ours.concurrency} at a time "
                f"(max_concurrency); plain s3fs: block {plain.fs.default_block_size // MIB} MiB, "
                f"max_concurrency {plain.fs.max_concurrency}; endpoint {endpoint} (moto_server); repeat {args.repeat}"
            )
            tables = []
            data = np.random.default_rng(1).bytes(int(args.gib * 2**30))
            both = {"S3Storage": ("ours", ours), "plain s3fs": ("plain", plain)}
            tables.append(big_object(client, both, data, args.repeat))
            if args.sweep:
                tables.append(sweep(client, f"{url}/sweep", data))
            del data
            gc.collect()
            tables.append(big_array(client, get_storage(f"{url}/array"), args.gib, args.repeat))
            gc.collect()
            small = {"S3Storage": ours, "plain s3fs": plain}
            tables.append(small_objects(client, small, args.small_count, args.small_kb, args.repeat))
            for table in tables:
                table.print()
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
