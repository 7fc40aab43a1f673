"""Growth: an EVENT playlist recorded whole up to 10,000 segments, and many
live streams side by side.

CPU per playlist version is measured in two windows of single-entry versions,
right after 10 entries and right before the last: the segments of a window
are stored first, then each version is PUT and waited for until the bucket
has it, so the window's CPU (from /proc/PID/stat) is that of the versions
alone. Between the windows the list grows in strides, as a real encoder's
would but without rewriting every version. Memory per stream is the relay's
RSS growth over many live streams once their segments are stored.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bench.client import AsyncConnection, BlockingClient, frame_chunked, request_head
from bench.context import Bench, loads
from bench.events import md5_b64
from bench.procs import RelayProcess, cpu_seconds, rss_bytes
from bench.streams import EMPTY_CHUNKED, WINDOW, playlist_body, segment_name

SEGMENT_BYTES = 1024
FIRST_ENTRIES = 10
STRIDE = 500
PARALLEL = 8
VISIBLE_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 120.0
IDLE_S = 3.0
HEADER = b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n" + (
    b"#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-MEDIA-SEQUENCE:0\n"
)
FOLDER = "rec"
PLAYLIST_KEY = f"streams/{FOLDER}/event.m3u8"


def _entry(seq: int) -> bytes:
    return b"#EXTINF:2.000000,\nev_%05d.ts\n" % seq


class EventStream:
    """One growing EVENT playlist pushed to a relay, each version waited for."""

    def __init__(self, bench: Bench, relay: RelayProcess) -> None:
        self.bench = bench
        self.relay = relay
        self.http = BlockingClient(relay.port)
        self.body = bytearray(HEADER)
        self.entries = 0
        self.segment = frame_chunked(os.urandom(SEGMENT_BYTES))

    def put_segment(self, seq: int) -> None:
        path = f"/LiveApp/hls-upload/{FOLDER}/ev_{seq:05d}.ts"
        answer = self.http.request(
            request_head("PUT", path, self.relay.port, None), self.segment
        )
        if answer.status != 201:
            raise RuntimeError(f"segment {seq}: HTTP {answer.status}")

    async def _put_segments_async(self, first: int, last: int) -> None:
        numbers = iter(range(first, last))

        async def worker() -> None:
            connection = AsyncConnection(self.relay.port)
            try:
                for seq in numbers:
                    path = f"/LiveApp/hls-upload/{FOLDER}/ev_{seq:05d}.ts"
                    head = request_head("PUT", path, self.relay.port, None)
                    answer = await connection.request(head, self.segment)
                    if answer.status != 201:
                        raise RuntimeError(f"segment {seq}: HTTP {answer.status}")
            finally:
                await connection.close()

        await asyncio.gather(*(worker() for _ in range(PARALLEL)))

    def put_segments(self, first: int, last: int) -> None:
        asyncio.run(self._put_segments_async(first, last))

    def put_version(self, entries: int) -> None:
        """Extend the list to ``entries`` and PUT it; return once it is visible."""
        while self.entries < entries:
            self.body += _entry(self.entries)
            self.entries += 1
        body = bytes(self.body)
        path = f"/LiveApp/hls-upload/{FOLDER}/event.m3u8"
        answer = self.http.request(
            request_head("PUT", path, self.relay.port, len(body)), body
        )
        if answer.status != 201:
            raise RuntimeError(f"playlist of {entries} entries: HTTP {answer.status}")
        if (
            self.bench.events.wait_for(PLAYLIST_KEY, md5_b64(body), VISIBLE_TIMEOUT_S)
            is None
        ):
            raise RuntimeError(f"playlist of {entries} entries never became visible")

    def window(self, versions: int) -> dict[str, Any]:
        """CPU per version over ``versions`` single-entry versions from here."""
        first = self.entries
        self.put_segments(first, first + versions)
        if not self.relay.wait_drained(DRAIN_TIMEOUT_S):
            raise RuntimeError("the relay did not drain before a window")
        cpu_before = cpu_seconds(self.relay.pid)
        began = time.monotonic()
        for entries in range(first + 1, first + versions + 1):
            self.put_version(entries)
        self.relay.wait_drained(DRAIN_TIMEOUT_S)
        cpu = cpu_seconds(self.relay.pid) - cpu_before
        wall = time.monotonic() - began
        return {
            "entries_from": first + 1,
            "entries_to": first + versions,
            "versions": versions,
            "playlist_bytes": len(self.body),
            "cpu_ms_per_version": round(1000 * cpu / versions, 3),
            "wall_ms_per_version": round(1000 * wall / versions, 2),
            "rss_mib": round(rss_bytes(self.relay.pid) / 2**20, 1),
        }


def _idle_cpu_ms_per_s(relay: RelayProcess) -> float:
    before = cpu_seconds(relay.pid)
    time.sleep(IDLE_S)
    return round(1000 * (cpu_seconds(relay.pid) - before) / IDLE_S, 2)


def _grow(bench: Bench, entries: int, window: int) -> dict[str, Any]:
    with bench.relay("growth") as relay:
        stream = EventStream(bench, relay)
        idle = _idle_cpu_ms_per_s(relay)
        for seq in range(FIRST_ENTRIES):
            stream.put_segment(seq)
            stream.put_version(seq + 1)
        small = stream.window(window)
        with bench.profiled("growth-grow", relay.pid):
            target = entries - window
            while stream.entries < target:
                upto = min(stream.entries + STRIDE, target)
                stream.put_segments(stream.entries, upto)
                stream.put_version(upto)
        with bench.profiled("growth-large", relay.pid):
            large = stream.window(window)
        stream.http.close()
    ratio = (
        round(large["cpu_ms_per_version"] / small["cpu_ms_per_version"], 3)
        if small["cpu_ms_per_version"]
        else None
    )
    return {
        "entries": stream.entries,
        "idle_cpu_ms_per_s": idle,
        "small": small,
        "large": large,
        "ratio_cpu_large_small": ratio,
        "rss_growth_per_1000_entries_kib": round(
            (large["rss_mib"] - small["rss_mib"])
            * 1024
            / max(1, (large["entries_to"] - small["entries_to"]) / 1000),
            1,
        ),
    }


async def _live_steps(
    port: int, streams: int, first_step: int, steps: int, segment: bytes
) -> None:
    limit = asyncio.Semaphore(32)

    async def one(stream: int) -> None:
        async with limit:
            connection = AsyncConnection(port)
            folder = f"/LiveApp/hls-upload/many/s{stream}"
            try:
                for step in range(first_step, first_step + steps):
                    head = request_head(
                        "PUT", f"{folder}/{segment_name(stream, step)}", port, None
                    )
                    await connection.request(head, segment)
                    body = playlist_body(stream, step)
                    head = request_head("PUT", f"{folder}/index.m3u8", port, len(body))
                    await connection.request(head, body)
                    old = step - WINDOW - 1
                    if old >= 0:
                        head = request_head(
                            "DELETE",
                            f"{folder}/{segment_name(stream, old)}",
                            port,
                            None,
                        )
                        await connection.request(head, EMPTY_CHUNKED)
            finally:
                await connection.close()

    await asyncio.gather(*(one(stream) for stream in range(streams)))


def _per_stream(bench: Bench, streams: int) -> dict[str, Any]:
    segment = frame_chunked(os.urandom(SEGMENT_BYTES))
    with bench.relay("per-stream") as relay:
        asyncio.run(_live_steps(relay.port, 1, 0, WINDOW, segment))
        relay.wait_drained(DRAIN_TIMEOUT_S)
        base = rss_bytes(relay.pid)
        asyncio.run(_live_steps(relay.port, streams, 0, WINDOW + 2, segment))
        drained_first = relay.wait_drained(DRAIN_TIMEOUT_S)
        first = rss_bytes(relay.pid)
        asyncio.run(_live_steps(relay.port, streams, WINDOW + 2, WINDOW, segment))
        drained_second = relay.wait_drained(DRAIN_TIMEOUT_S)
        second = rss_bytes(relay.pid)
    return {
        "streams": streams,
        "rss_baseline_mib": round(base / 2**20, 1),
        "rss_after_mib": round(first / 2**20, 1),
        "rss_after_more_versions_mib": round(second / 2**20, 1),
        "kib_per_stream": round((first - base) / 1024 / streams, 1),
        "kib_per_stream_after_more_versions": round(
            (second - first) / 1024 / streams, 1
        ),
        "drained": drained_first and drained_second,
    }


def run(bench: Bench, entries: int, window: int, streams: int) -> dict[str, Any]:
    started = loads()
    result = _grow(bench, entries, window)
    result["per_stream"] = _per_stream(bench, streams)
    result["load_start"], result["load_end"] = started, loads()
    return result
