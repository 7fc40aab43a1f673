"""Memory under one big body: relay RSS while a 1 GiB chunked PUT arrives and
is uploaded (``HLSRELAY_ACK=upload``, so the answer waits for S3 and the
whole life of the body falls inside the request)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from bench.client import BlockingClient, frame_chunked, request_head
from bench.context import Bench, loads
from bench.procs import cpu_seconds, rss_bytes

BLOCK = 1024 * 1024
CHUNK = 256 * 1024
SAMPLE_S = 0.02
LIMIT_MIB = 64


class RssTrace:
    """RSS of a process every SAMPLE_S seconds, with the time of each sample."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.samples.append((time.monotonic(), rss_bytes(self.pid)))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), rss_bytes(self.pid)))

    def peak(self, since: float, until: float) -> int:
        inside = [rss for at, rss in self.samples if since <= at <= until]
        return max(inside, default=0)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.samples.append((time.monotonic(), rss_bytes(self.pid)))


def _big_body(mib: int) -> Iterator[bytes]:
    block = frame_chunked(os.urandom(BLOCK), CHUNK)[: -len(b"0\r\n\r\n")]
    for _ in range(mib):
        yield block
    yield b"0\r\n\r\n"


def run(bench: Bench, mib: int) -> dict[str, Any]:
    started = loads()
    env = {"HLSRELAY_ACK": "upload", "HLSRELAY_ACK_TIMEOUT_S": "900"}
    with bench.relay("memory", env) as relay:
        # One small PUT first, so that the baseline includes a warmed client.
        warm = BlockingClient(relay.port)
        warm.request(
            request_head("PUT", "/LiveApp/hls-upload/big/warm.ts", relay.port, 4),
            b"warm",
        )
        warm.close()
        time.sleep(0.5)
        trace = RssTrace(relay.pid)
        cpu_before = cpu_seconds(relay.pid)
        trace.start()
        began = time.monotonic()
        client = BlockingClient(relay.port, timeout_s=900)
        head = request_head(
            "PUT", "/LiveApp/hls-upload/big/record.mp4", relay.port, None
        )
        answer, body_done = client.stream(head, _big_body(mib))
        answered = time.monotonic()
        client.close()
        trace.stop()
        cpu = cpu_seconds(relay.pid) - cpu_before
    baseline = trace.samples[0][1]
    peak_body = trace.peak(began, body_done)
    peak_upload = trace.peak(body_done, answered)
    peak = max(peak_body, peak_upload)
    return {
        "body_mib": mib,
        "status": answer.status,
        "ack": "upload",
        "rss_baseline_mib": round(baseline / 2**20, 1),
        "rss_peak_mib": round(peak / 2**20, 1),
        "rss_growth_mib": round((peak - baseline) / 2**20, 1),
        "rss_growth_receiving_mib": round((peak_body - baseline) / 2**20, 1),
        "rss_growth_uploading_mib": round((peak_upload - baseline) / 2**20, 1),
        "receive_s": round(body_done - began, 2),
        "upload_s": round(answered - body_done, 2),
        "relay_cpu_s": round(cpu, 2),
        "samples": len(trace.samples),
        "limit_mib": LIMIT_MIB,
        "load_start": started,
        "load_end": loads(),
    }
