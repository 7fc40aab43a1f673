"""A raw HTTP/1.1 client over plain sockets, for requests no polite client would
send, and helpers to start a relay shared by a whole test module."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pusher
from conftest import Relay, free_port

from app.locals3 import REGION, LocalS3

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

HOST = "127.0.0.1"


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(data: bytes) -> RawResponse | None:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)", lines[0])
    if match is None:
        return None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    response = RawResponse(int(match[1]), match[2], headers, rest)
    if response.status == 100:
        return parse_response(rest)
    length = response.header("content-length")
    if length is not None:
        response.body = rest[: int(length)]
    return response


def _is_complete(data: bytes) -> bool:
    response = parse_response(data)
    if response is None:
        return False
    length = response.header("content-length")
    return length is not None and len(response.body) >= int(length)


def send_raw(
    port: int,
    data: bytes,
    *,
    timeout_s: float = 30.0,
    close_write: bool = False,
) -> RawResponse | None:
    """Send ``data`` as is and read one response; None if none came.

    The socket stays open for writing unless ``close_write``, so a request
    that stops short looks like a client that stalls, not one that left.
    """
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the relay answered early and closed; its answer may be read
        received = b""
        deadline = time.monotonic() + timeout_s
        while not _is_complete(received) and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
    return parse_response(received)


def request_bytes(
    method: str,
    target: bytes | str,
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
    length: int | None = None,
) -> bytes:
    """A whole request; ``length`` overrides the Content-Length sent."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [b"Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}".encode("latin-1"))
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        lines.append(b"Content-Length: %d" % (len(body) if length is None else length))
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def bucket_keys(client: S3Client, bucket: str) -> set[str]:
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def spool_files(spool_dir: Path) -> set[str]:
    return {str(p.relative_to(spool_dir)) for p in spool_dir.rglob("*") if p.is_file()}


def wait_settled(relay: Relay, timeout_s: float = 60.0) -> None:
    """Poll /metrics until nothing received is still waiting for S3."""
    pusher.wait_settled(relay.url, timeout_s)


def start_relay(
    local_s3: LocalS3, workdir: Path, extra_env: dict[str, str] | None = None
) -> tuple[Relay, str]:
    """A relay on a bucket of its own, for fixtures wider than one test;
    the caller stops it. Returns the relay and its bucket."""
    bucket = f"m-{uuid.uuid4().hex[:20]}"
    local_s3.create_bucket(bucket)
    spool = workdir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLSRELAY_")}
    env.update(
        HLSRELAY_S3_BUCKET=bucket,
        HLSRELAY_S3_ENDPOINT=local_s3.endpoint,
        HLSRELAY_S3_REGION=REGION,
        HLSRELAY_S3_ACCESS_KEY=local_s3.access_key,
        HLSRELAY_S3_SECRET_KEY=local_s3.secret_key,
        HLSRELAY_S3_ADDRESSING="path",
        HLSRELAY_SPOOL_DIR=str(spool),
    )
    env.update(extra_env or {})
    relay = Relay(env, spool, workdir / "relay.log", free_port())
    return relay.start(), bucket


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the relay sends until it closes (or resets) the socket."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return received
        if not chunk:
            return received
        received += chunk
