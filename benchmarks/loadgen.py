"""A closed-loop HTTP/1.1 load generator for the serving benchmarks (one process, asyncio, no dependencies).

Usage::

    .venv/bin/python benchmarks/loadgen.py --url http://127.0.0.1:5000/invocations --body-file req.json \\
        [--concurrency 16] [--duration 10] [--warmup 2] [--cpu 1] [--content-type application/json]
    .venv/bin/python benchmarks/loadgen.py --ceiling [--concurrency 64] [--body-file req.json] \\
        [--server-cpu 0] [--cpu 1]          # its own ceiling, against a trivial local server
    .venv/bin/python benchmarks/loadgen.py --trivial-server --port 8999 [--cpu 0]

Each virtual user holds one keep-alive HTTP/1.1 connection (asyncio streams) and sends the next
request as soon as the answer to the previous one has arrived (closed loop). The request bytes
(request line, headers, body) are encoded once. An answer is read as its header block up to the
empty line, then exactly ``Content-Length`` bytes (chunked bodies are read too); the connection is
reopened when the server closes it or fails. Requests that complete during the warm-up are not
counted; those still in flight when the measured window ends are dropped.

The run prints one JSON object: completed requests, errors (non-200 answers by status, connection
errors), requests/s over the window, latency percentiles (ms), completions and errors per whole
second of the run (for soak tests), and the CPU time this process used during the window (when
it is close to 1 CPU-second per second, the generator, not the server, may be the limit).

``--ceiling`` starts ``--trivial-server`` (an ``asyncio.Protocol`` that answers every request with
a fixed 200 JSON body, without parsing more than the headers) on ``--server-cpu`` and runs the load
against it on ``--cpu``: the rate this generator can drive on one core with the same request body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TRIVIAL_ANSWER = b'{"predictions": [1]}'
DEFAULT_BODY = json.dumps({"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": [[5.1, 3.5, 1.4, 0.2]]}})


# ----------------------------------------------------------------------------- the client


def encode_request(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    """The whole request, headers and body, as the bytes sent for every request."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode("ascii") + body


@dataclass
class Stats:
    """What the virtual users record; only completions inside [start, end] count, except ``per_second``."""

    origin: float
    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    connection_errors: int = 0
    per_second: list[int] = field(default_factory=list)
    errors_per_second: list[int] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    first_body: bytes | None = None

    def second(self, when: float, error: bool) -> None:
        index = int(when - self.origin)
        counts = self.errors_per_second if error else self.per_second
        while len(counts) <= index:
            counts.append(0)
        counts[index] += 1
        if error:
            while len(self.per_second) <= index:
                self.per_second.append(0)

    def sample(self, text: str) -> None:
        if len(self.error_samples) < 5:
            self.error_samples.append(text[:300])


def parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """Status, Content-Length (None if absent), chunked, and whether the server will close."""
    status = int(head[9:12])
    lower = head.lower()
    length = None
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        stop = lower.find(b"\r\n", at + 17)
        length = int(lower[at + 17:stop])
    chunked = b"\r\ntransfer-encoding: chunked" in lower
    close = b"\r\nconnection: close" in lower or head.startswith(b"HTTP/1.0")
    return status, length, chunked, close


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are expected
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def virtual_user(host: str, port: int, request: bytes, stats: Stats) -> None:
    """Send, wait for the answer, send again, until the end of the run."""
    clock = time.perf_counter
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while clock() < stats.end:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as error:
                now = clock()
                if stats.start <= now <= stats.end:
                    stats.connection_errors += 1
                    stats.sample(f"connect: {error!r}")
                stats.second(now, True)
                await asyncio.sleep(0.05)
                continue
        assert reader is not None
        began = clock()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, chunked, close = parse_head(head)
            if chunked:
                body = await read_chunked(reader)
            elif length is not None:
                body = await reader.readexactly(length)
            else:
                body = await reader.read()
                close = True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            now = clock()
            if stats.start <= now <= stats.end:
                stats.connection_errors += 1
                stats.sample(f"during a request: {error!r}")
            stats.second(now, True)
            writer.close()
            writer = None
            continue
        done = clock()
        stats.second(done, status != 200)
        if stats.start <= done <= stats.end:
            stats.latencies.append(done - began)
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            if status != 200:
                stats.sample(f"{status}: {body[:200]!r}")
            elif stats.first_body is None:
                stats.first_body = body
        if close:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (None when empty)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_load(url: str, body: bytes, concurrency: int, duration: float, warmup: float,
                   content_type: str = "application/json") -> dict[str, Any]:
    """Run ``concurrency`` closed-loop users for ``warmup + duration`` seconds; the summary as a dict."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    request = encode_request(host, port, path, body, content_type)
    origin = time.perf_counter()
    stats = Stats(origin=origin, start=origin + warmup, end=origin + warmup + duration)
    tasks = [asyncio.create_task(virtual_user(host, port, request, stats)) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    cpu_start = cpu_seconds()
    await asyncio.sleep(max(0.0, stats.end - time.perf_counter()))
    cpu_window = cpu_seconds() - cpu_start
    _, pending = await asyncio.wait(tasks, timeout=10.0)  # answers still in flight are not counted
    for task in pending:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*pending, return_exceptions=True)
    ordered = sorted(stats.latencies)
    ok = stats.statuses.get(200, 0)
    failed = sum(n for code, n in stats.statuses.items() if code != 200) + stats.connection_errors
    ms = [None if x is None else round(x * 1000, 3) for x in
          (percentile(ordered, 0.5), percentile(ordered, 0.9), percentile(ordered, 0.99), percentile(ordered, 1.0))]
    return {
        "url": url, "concurrency": concurrency, "duration_s": duration, "warmup_s": warmup,
        "body_bytes": len(body), "requests": len(ordered), "ok": ok, "failed": failed,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "connection_errors": stats.connection_errors, "error_samples": stats.error_samples,
        "throughput": ok / duration, "p50_ms": ms[0], "p90_ms": ms[1], "p99_ms": ms[2], "max_ms": ms[3],
        "mean_ms": round(1000 * sum(ordered) / len(ordered), 3) if ordered else None,
        "loadgen_cpu_s_per_s": cpu_window / duration,
        "per_second": stats.per_second, "errors_per_second": stats.errors_per_second,
        "first_body": None if stats.first_body is None else stats.first_body[:500].decode("utf-8", "replace"),
        "pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


# ----------------------------------------------------------------------------- the trivial server


class TrivialProtocol(asyncio.Protocol):
    """Answers each complete request (headers + Content-Length bytes) with a fixed 200 JSON body."""

    ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
              + str(len(TRIVIAL_ANSWER)).encode() + b"\r\n\r\n" + TRIVIAL_ANSWER)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        answers = 0
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].lower()
            at = head.find(b"content-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15:stop if stop >= 0 else len(head)])
            if len(buffer) < end + 4 + length:
                break
            buffer = buffer[end + 4 + length:]
            answers += 1
        self.buffer = buffer
        if answers:
            self.transport.write(self.ANSWER * answers)


async def trivial_server(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(TrivialProtocol, host, port, backlog=1024)
    print(f"trivial server listening on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


# ----------------------------------------------------------------------------- command line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def measure_ceiling(body: bytes, concurrency: int, duration: float, warmup: float, server_cpu: int | None,
                    cpu: int | None, content_type: str) -> dict[str, Any]:
    """Start the trivial server in a child process on ``server_cpu`` and load it from this one."""
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--trivial-server", "--port", str(port)]
    if server_cpu is not None:
        command += ["--cpu", str(server_cpu)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        pin(cpu)
        result = asyncio.run(run_load(f"http://127.0.0.1:{port}/invocations", body, concurrency, duration, warmup,
                                      content_type))
    finally:
        server.terminate()
        server.wait(10)
    result["server"] = "trivial asyncio.Protocol server" + (f" on CPU {server_cpu}" if server_cpu is not None else "")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="e.g. http://127.0.0.1:5000/invocations")
    parser.add_argument("--body-file", type=Path, help="the request body (default: a one-row dataframe_split)")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before the measured window")
    parser.add_argument("--cpu", type=int, help="pin this process to this CPU")
    parser.add_argument("--ceiling", action="store_true", help="measure this generator against a trivial server")
    parser.add_argument("--server-cpu", type=int, default=0, help="with --ceiling: the trivial server's CPU")
    parser.add_argument("--trivial-server", action="store_true", help="only run the trivial server")
    parser.add_argument("--port", type=int, default=8999)
    args = parser.parse_args(argv)
    if args.trivial_server:
        pin(args.cpu)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(trivial_server("127.0.0.1", args.port))
        return 0
    body = args.body_file.read_bytes() if args.body_file else DEFAULT_BODY.encode()
    if args.ceiling:
        result = measure_ceiling(body, args.concurrency, args.duration, args.warmup, args.server_cpu, args.cpu,
                                 args.content_type)
    else:
        if not args.url:
            parser.error("--url is required (or --ceiling, or --trivial-server)")
        pin(args.cpu)
        result = asyncio.run(run_load(args.url, body, args.concurrency, args.duration, args.warmup,
                                      args.content_type))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
