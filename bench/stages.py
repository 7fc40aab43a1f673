"""Where an upload-mode PUT spends its time, stage by stage: ``python -m bench.stages``.

The relay runs in this process under uvicorn, with the spool's and storage's
steps wrapped to note when each starts and ends; sequential PUTs of one size
then give the median moment of each stage, counted from the request's start,
beside a direct put of the same bytes. This is the profile behind the publish
latency ratio: what is serial in the relay and absent from a direct put.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from app import spool as spool_module
from app import storage as storage_module
from app.config import Settings
from app.locals3 import REGION, LocalS3, free_port
from app.main import create_app
from app.protocol import protocol_for
from bench.client import BlockingClient, request_head

# (object, method, stage name), in the order they happen.
STAGES: list[tuple[Any, str, str]] = [
    (spool_module.BodyWriter, "finish", "fsync body"),
    (spool_module.Spool, "_write_meta", "write + fsync metadata"),
    (storage_module.S3Storage, "put_streamed", "S3 PutObject, streamed"),
    (storage_module.S3Storage, "put_file", "S3 PutObject"),
    (spool_module.Spool, "remove", "remove spool entry"),
]
_marks: dict[str, list[float]] = {}


def _wrap(owner: Any, name: str, stage: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        _marks.setdefault(f"{stage} start", []).append(time.perf_counter())
        try:
            return original(*args, **kwargs)
        finally:
            _marks.setdefault(f"{stage} end", []).append(time.perf_counter())

    setattr(owner, name, timed)


def measure(size: int, rounds: int, ack: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hlsrelay-stages-") as work:
        s3 = LocalS3(Path(work) / "s3", volume_size_mb=1024).start()
        try:
            return _measure(s3, Path(work), size, rounds, ack)
        finally:
            s3.stop()


def _measure(
    s3: LocalS3, work: Path, size: int, rounds: int, ack: str
) -> dict[str, Any]:
    s3.create_bucket("stages")
    values: dict[str, object] = {
        "s3_bucket": "stages",
        "s3_endpoint": s3.endpoint,
        "s3_region": REGION,
        "s3_access_key": s3.access_key,
        "s3_secret_key": s3.secret_key,
        "s3_addressing": "path",
        "spool_dir": work / "spool",
        "ack": ack,
    }
    settings = Settings(**values)  # type: ignore[arg-type]
    for owner, name, stage in STAGES:
        _wrap(owner, name, stage)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_config=None,
        log_level="warning",
        access_log=False,
        http=protocol_for(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)

    body = os.urandom(size)
    http = BlockingClient(port)
    # Signed as the relay signs its upload of this body.
    direct = storage_module.build_client(
        settings,
        streamed=settings.stream_uploads and size < settings.multipart_threshold_bytes,
    )
    timelines: list[dict[str, float]] = []
    direct_s: list[float] = []
    for round_no in range(rounds + 3):
        _marks.clear()
        head = request_head("PUT", f"/LiveApp/hls-upload/s/{round_no}.ts", port, size)
        began = time.perf_counter()
        answer = http.request(head, body)
        answered = time.perf_counter() - began
        if answer.status != 201:
            raise RuntimeError(f"relay answered {answer.status}")
        # The last stage may still run after the answer; wait for it.
        deadline = time.monotonic() + 5
        while "remove spool entry end" not in _marks and time.monotonic() < deadline:
            time.sleep(0.001)
        timeline = {stage: at[0] - began for stage, at in _marks.items()}
        timeline["answer"] = answered
        started = time.perf_counter()
        direct.put_object(Bucket="stages", Key=f"direct/{round_no}", Body=body)
        if round_no >= 3:
            timelines.append(timeline)
            direct_s.append(time.perf_counter() - started)
    http.close()
    server.should_exit = True
    thread.join(timeout=10)

    names = [f"{stage} {edge}" for _, _, stage in STAGES for edge in ("start", "end")]
    medians = {
        name: round(1000 * statistics.median(t[name] for t in timelines), 2)
        for name in [*names, "answer"]
        if all(name in t for t in timelines)
    }
    return {
        "size": size,
        "ack": ack,
        "rounds": rounds,
        "median_ms_from_request_start": medians,
        "direct_put_median_ms": round(1000 * statistics.median(direct_s), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stages")
    parser.add_argument("--size-kib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--ack", choices=("upload", "spool"), default="upload")
    args = parser.parse_args()
    result = measure(args.size_kib * 1024, args.rounds, args.ack)
    print(f"{args.size_kib} KiB PUT, ack={args.ack}, {args.rounds} rounds")
    for name, at in result["median_ms_from_request_start"].items():
        print(f"  {at:8.2f} ms  {name}")
    print(f"  direct put_object of the same bytes: {result['direct_put_median_ms']} ms")


if __name__ == "__main__":
    main()
