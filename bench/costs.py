"""CPU costs behind a stream cycle, one piece at a time: ``python -m bench.costs``.

The streams section says how much CPU the relay spends per cycle (a segment,
its playlist, a delete); this says what the pieces of such a cycle cost when
each runs alone in this process: the body's hashes, the three boto3 calls
against a SeaweedFS started for it, and one request through the relay's ASGI
stack with and without FastAPI's routing. CPU time (user + system) of this
process, medians of repeated rounds, so other load on the machine moves the
numbers less than it moves wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import resource
import statistics
import tempfile
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from app.access import AccessMiddleware
from app.limits import RequestLimits
from app.main import create_app
from app.paths import parse_upload
from app.storage import S3Storage
from app.transport import CompleteBodyMiddleware
from bench.context import Bench
from bench.machine import describe_machine

MIB = 1024 * 1024
ROUNDS = 5


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cost_ms(func: Callable[[], object], calls: int) -> float:
    """Median over ROUNDS of the CPU milliseconds one call of ``func`` takes."""
    for _ in range(max(2, calls // 10)):
        func()
    rounds = []
    for _ in range(ROUNDS):
        started = _cpu_s()
        for _ in range(calls):
            func()
        rounds.append((_cpu_s() - started) * 1000 / calls)
    return round(statistics.median(rounds), 3)


def body_costs() -> dict[str, float]:
    data = os.urandom(MIB)
    return {
        "sha256_ms_per_mib": _cost_ms(lambda: hashlib.sha256(data).digest(), 50),
        "crc32_ms_per_mib": _cost_ms(lambda: zlib.crc32(data), 50),
        "md5_ms_per_mib": _cost_ms(lambda: hashlib.md5(data).digest(), 50),
    }


def s3_costs(bench: Bench, calls: int) -> dict[str, float]:
    """One PutObject of a spooled 1 MiB file, signed and not; a playlist; a delete."""
    bucket = bench.bucket
    signed = bench.direct_client()
    unsigned = bench.direct_client(streamed=True)
    path = bench.work_dir / "segment.ts"
    path.write_bytes(os.urandom(MIB))
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n" + b"#EXTINF:2.0,\nseg.ts\n" * 6

    def put_file(client: Any) -> Callable[[], object]:
        def put() -> object:
            with path.open("rb") as body:
                return client.put_object(
                    Bucket=bucket, Key="costs/seg.ts", Body=body, ContentLength=MIB
                )

        return put

    return {
        "put_1mib_file_signed_ms": _cost_ms(put_file(signed), calls),
        "put_1mib_file_unsigned_ms": _cost_ms(put_file(unsigned), calls),
        "put_playlist_signed_ms": _cost_ms(
            lambda: signed.put_object(
                Bucket=bucket, Key="costs/index.m3u8", Body=playlist
            ),
            calls,
        ),
        "delete_ms": _cost_ms(
            lambda: signed.delete_object(Bucket=bucket, Key="costs/gone.ts"), calls
        ),
    }


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-length", b"1")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5080),
        "state": {},
    }


async def _drive(app: Callable[..., Awaitable[None]], calls: int) -> float:
    """CPU ms per refused PUT: routed, checked by its handler, answered 415."""
    path = "/LiveApp/hls-upload/costs/file.exe"
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"x", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    rounds = []
    for _ in range(ROUNDS + 1):
        started = _cpu_s()
        for _ in range(calls):
            await app(_scope(path), receive, send)
        rounds.append((_cpu_s() - started) * 1000 / calls)
    if set(statuses) != {415}:
        raise RuntimeError(f"expected only 415 answers, got {sorted(set(statuses))}")
    return round(statistics.median(rounds[1:]), 4)


def request_costs(bench: Bench, calls: int) -> dict[str, float]:
    """The relay's whole ASGI stack against its own middleware and a bare handler.

    The request is refused by the handler (an extension not accepted), so it
    passes routing, the write check and the error handler, and no uploader
    or S3 work is mixed in.
    """
    settings = bench.settings(spool_dir=Path(tempfile.mkdtemp(dir=bench.work_dir)))
    app = create_app(settings, storage=S3Storage(settings))
    relay = app.state.relay

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        # What the upload route itself checks first, answered as it would be.
        application, _, path = scope["path"][1:].partition("/hls-upload/")
        try:
            parse_upload(application, path, scope["raw_path"], settings.extensions)
        except Exception as exc:
            body = str(exc).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 415,
                    "headers": [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})

    ours = CompleteBodyMiddleware(
        AccessMiddleware(
            RequestLimits(bare, settings=settings),
            relay.metrics,
            relay.guard.trusted_proxies,
        )
    )

    async def both() -> dict[str, float]:
        return {
            "request_full_stack_ms": await _drive(app, calls),
            "request_own_middleware_bare_handler_ms": await _drive(ours, calls),
        }

    logging.disable(logging.INFO)
    try:
        return asyncio.run(both())
    finally:
        logging.disable(logging.NOTSET)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.costs")
    parser.add_argument("--calls", type=int, default=100, help="calls per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hlsrelay-costs-") as work:
        machine = describe_machine(Path(work))
        bench = Bench(Path(work), quick=True, profile_dir=None).start()
        # Its event feed is read by a thread of this process: not wanted here.
        bench.events.stop()
        try:
            results = {
                **body_costs(),
                **s3_costs(bench, args.calls),
                **request_costs(bench, args.calls * 10),
            }
        finally:
            bench.stop()
    print(
        f"{machine['cpu_model']}, {machine['cores']} cores, load average "
        f"{machine['load_start']}; CPU ms, medians of {ROUNDS} rounds"
    )
    for name, value in results.items():
        print(f"  {name:42s} {value:8.3f}")


if __name__ == "__main__":
    main()
