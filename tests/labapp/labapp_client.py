"""Helpers for the server extension's tests: a raw HTTP client (no token unless given) and an SSE reader."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Event:
    event: str
    data: Any
    id: str | None = None


class EventStream:
    """A raw HTTP/1.0 connection to an event stream: no client library between the test and the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int,
                 headers: dict[str, str]) -> None:
        self.reader, self.writer, self.status, self.headers = reader, writer, status, headers
        self.comments = 0

    @classmethod
    async def open(cls, port: int, path: str, token: str | None = None) -> EventStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        auth = f"Authorization: token {token}\r\n" if token else ""
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{auth}Accept: text/event-stream\r\n\r\n"
                     .encode())
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := (await reader.readline()).decode().strip()):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return cls(reader, writer, status, headers)

    async def next(self, timeout: float = 30.0) -> Event | None:
        """The next event; ``None`` at the end of the stream."""
        fields: dict[str, str] = {}
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if not line:
                if "event" in fields or "data" in fields:
                    return Event(fields.get("event", "message"), json.loads(fields.get("data", "null")),
                                 fields.get("id"))
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value

    async def body(self) -> Any:
        return json.loads(await self.reader.read())

    def close(self) -> None:
        self.writer.close()


async def raw_request(port: int, method: str, path: str, token: str | None = None, body: bytes = b"") -> int:
    """The status of one request sent by hand (HTTP/1.0, no cookies, a token only when given)."""
    stream = await EventStream.open(port, path, token) if method == "GET" else None
    if stream is not None:
        stream.close()
        return stream.status
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: token {token}\r\n" if token else ""
    writer.write(f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status
