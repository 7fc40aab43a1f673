"""Concurrent live streams: N encoders, each a 1 MiB segment every 2 s, then
its playlist, then a DELETE of the segment that left the list, as ffmpeg's
``-hls_flags delete_segments`` does.

The same schedule runs once through a relay (default spool mode) and once by
a direct uploader (a thread per stream putting to S3 itself); with the
``floor`` arm, also through the least a relay could spend (bench/floor.py).
What counts is the time from the start of a playlist PUT to that version,
or a newer one of the same playlist, being visible in the bucket.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.client import frame_chunked, request_head, request_once
from bench.context import Bench, loads
from bench.events import md5_b64
from bench.procs import UsageWatch
from bench.stats import percentile, summarize_ms

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PERIOD_S = 2.0
SEGMENT_BYTES = 1024 * 1024
WINDOW = 6
P99_LIMIT_MS = 1000.0
# How long after the last PUT a version may still become visible; past it,
# it counts as never visible (an infinite latency).
DRAIN_S = 30.0
EMPTY_CHUNKED = b"0\r\n\r\n"


@dataclass
class Version:
    stream: int
    step: int
    key: str
    md5: str
    put_ns: int
    # When the encoder had the segment: the step's place in the schedule.
    due_ns: int


@dataclass
class Load:
    versions: list[Version] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


REFINE_STEPS = 2


def playlist_body(stream: int, step: int) -> bytes:
    first = max(0, step - WINDOW + 1)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{PERIOD_S:.0f}",
        f"#EXT-X-MEDIA-SEQUENCE:{first}",
    ]
    for seq in range(first, step + 1):
        lines += [f"#EXTINF:{PERIOD_S:.6f},", segment_name(stream, seq)]
    return ("\n".join(lines) + "\n").encode()


def segment_name(stream: int, seq: int) -> str:
    return f"s{stream}_{seq:05d}.ts"


def _folder(tag: str, stream: int) -> str:
    # Each run of the schedule writes its own keys: playlist bodies repeat
    # from run to run, and a version is known by its key and content.
    return f"live/{tag}/s{stream}"


async def _relay_stream(
    port: int,
    tag: str,
    stream: int,
    steps: int,
    start: float,
    segment: bytes,
    load: Load,
) -> None:
    loop = asyncio.get_running_loop()
    folder = _folder(tag, stream)
    wall_offset = time.time_ns() - int(loop.time() * 1e9)
    for step in range(steps):
        due_ns = wall_offset + int((start + step * PERIOD_S) * 1e9)
        late = loop.time() - (start + step * PERIOD_S)
        if late < 0:
            await asyncio.sleep(-late)
        else:
            load.lag_s.append(late)
        try:
            path = f"/LiveApp/hls-upload/{folder}/{segment_name(stream, step)}"
            answer = await request_once(
                port, request_head("PUT", path, port, None), segment
            )
            if answer.status != 201:
                load.errors.append(f"segment HTTP {answer.status}")
            body = playlist_body(stream, step)
            path = f"/LiveApp/hls-upload/{folder}/index.m3u8"
            put_ns = time.time_ns()
            answer = await request_once(
                port, request_head("PUT", path, port, None), frame_chunked(body)
            )
            if answer.status == 201:
                key = f"streams/{folder}/index.m3u8"
                version = Version(stream, step, key, md5_b64(body), put_ns, due_ns)
                load.versions.append(version)
            else:
                load.errors.append(f"playlist HTTP {answer.status}")
            old = step - WINDOW - 1
            if old >= 0:
                path = f"/LiveApp/hls-upload/{folder}/{segment_name(stream, old)}"
                head = request_head("DELETE", path, port, None)
                answer = await request_once(port, head, EMPTY_CHUNKED)
                if answer.status != 204:
                    load.errors.append(f"delete HTTP {answer.status}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            load.errors.append(f"{type(exc).__name__}: {exc}")


async def _drive_relay(
    port: int, tag: str, streams: int, steps: int, load: Load
) -> None:
    segment = frame_chunked(os.urandom(SEGMENT_BYTES))
    loop = asyncio.get_running_loop()
    base = loop.time() + 0.5
    # Encoders are not in step with each other: spread their starts.
    await asyncio.gather(
        *(
            _relay_stream(
                port, tag, i, steps, base + i * PERIOD_S / streams, segment, load
            )
            for i in range(streams)
        )
    )


def _direct_stream(
    client: S3Client,
    bucket: str,
    tag: str,
    stream: int,
    steps: int,
    start: float,
    segment: bytes,
    load: Load,
) -> None:
    folder = f"streams/{_folder(tag, stream)}"
    wall_offset = time.time_ns() - int(time.monotonic() * 1e9)
    for step in range(steps):
        due_ns = wall_offset + int((start + step * PERIOD_S) * 1e9)
        late = time.monotonic() - (start + step * PERIOD_S)
        if late < 0:
            time.sleep(-late)
        else:
            with load.lock:
                load.lag_s.append(late)
        try:
            client.put_object(
                Bucket=bucket,
                Key=f"{folder}/{segment_name(stream, step)}",
                Body=segment,
                ContentType="video/mp2t",
                CacheControl="max-age=86400",
            )
            body = playlist_body(stream, step)
            key = f"{folder}/index.m3u8"
            put_ns = time.time_ns()
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType="application/vnd.apple.mpegurl",
                CacheControl="max-age=1",
            )
            version = Version(stream, step, key, md5_b64(body), put_ns, due_ns)
            with load.lock:
                load.versions.append(version)
            old = step - WINDOW - 1
            if old >= 0:
                client.delete_object(
                    Bucket=bucket, Key=f"{folder}/{segment_name(stream, old)}"
                )
        except Exception as exc:
            with load.lock:
                load.errors.append(f"{type(exc).__name__}: {exc}")


def _drive_direct(bench: Bench, streams: int, steps: int, load: Load) -> None:
    client = bench.direct_client(max_connections=streams + 4)
    client.head_bucket(Bucket=bench.bucket)
    segment = os.urandom(SEGMENT_BYTES)
    base = time.monotonic() + 0.5
    with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="direct") as pool:
        futures = [
            pool.submit(
                _direct_stream,
                client,
                bench.bucket,
                f"direct-{streams}",
                i,
                steps,
                base + i * PERIOD_S / streams,
                segment,
                load,
            )
            for i in range(streams)
        ]
        for future in futures:
            future.result()


def _latencies(bench: Bench, load: Load) -> tuple[list[float], list[float], int]:
    """Seconds to each version, or a newer one, being visible: from its PUT,
    and from when its segment was due; and how many never showed themselves."""
    by_stream: dict[int, list[Version]] = {}
    for version in load.versions:
        by_stream.setdefault(version.stream, []).append(version)
    deadline = time.monotonic() + DRAIN_S
    for versions in by_stream.values():
        last = max(versions, key=lambda v: v.step)
        bench.events.wait_for(last.key, last.md5, max(0.0, deadline - time.monotonic()))
    latencies: list[float] = []
    from_due: list[float] = []
    superseded = 0
    for versions in by_stream.values():
        versions.sort(key=lambda v: v.step)
        newest_seen = math.inf
        # Walking from the newest back, the earliest stamp of any version at
        # or after this one is when a player first saw this much of the stream.
        for version in reversed(versions):
            stamp = bench.events.visible_at(version.key, version.md5)
            if stamp is None:
                superseded += 1
            else:
                newest_seen = min(newest_seen, stamp)
            latencies.append((newest_seen - version.put_ns) / 1e9)
            from_due.append((newest_seen - version.due_ns) / 1e9)
    return latencies, from_due, superseded


def _level(bench: Bench, arm: str, streams: int, seconds: float) -> dict[str, Any]:
    steps = max(2, int(seconds / PERIOD_S))
    load = Load()
    started = loads()
    if arm in ("relay", "floor"):
        with bench.relay(f"{arm}-{streams}", floor=arm == "floor") as relay:
            with (
                bench.profiled(
                    f"streams-{streams}" if arm == "relay" else f"{arm}-{streams}",
                    relay.pid,
                ),
                UsageWatch(relay.pid, 0.2) as relay_use,
                UsageWatch(bench.s3.pid, 0.5) as s3_use,
                UsageWatch(os.getpid(), 0.5) as own_use,
            ):
                asyncio.run(
                    _drive_relay(relay.port, f"{arm}-{streams}", streams, steps, load)
                )
            latencies, from_due, superseded = _latencies(bench, load)
            drained = relay.wait_drained(DRAIN_S)
            # The floor keeps no metrics of its own.
            relay_metrics = relay.metrics() if arm == "relay" else {}
    else:
        with (
            UsageWatch(bench.s3.pid, 0.5) as s3_use,
            UsageWatch(os.getpid(), 0.5) as own_use,
        ):
            _drive_direct(bench, streams, steps, load)
        latencies, from_due, superseded = _latencies(bench, load)
        relay_use, drained, relay_metrics = None, True, {}
    summary = summarize_ms(latencies)
    lag_p99_ms = round(percentile(load.lag_s, 99) * 1000, 1) if load.lag_s else 0.0
    result: dict[str, Any] = {
        "streams": streams,
        "steps": steps,
        "versions": len(load.versions),
        "latency": summary,
        "latency_from_segment_due": summarize_ms(from_due),
        # An uploader that falls behind its schedule has not carried the
        # streams live, whatever its PUTs then measure.
        "passed": summary["p99_ms"] < P99_LIMIT_MS
        and lag_p99_ms < P99_LIMIT_MS
        and not load.errors,
        "not_visible_themselves": superseded,
        "errors": len(load.errors),
        "first_errors": load.errors[:5],
        "schedule_lag_p99_ms": lag_p99_ms,
        "drained": drained,
        "s3": s3_use.usage.as_dict() if s3_use.usage else {},
        "generator": own_use.usage.as_dict() if own_use.usage else {},
        "load_start": started,
        "load_end": loads(),
    }
    cycles = max(1, len(load.versions))
    if relay_use is not None and relay_use.usage is not None:
        result["relay"] = relay_use.usage.as_dict()
        result["relay_metrics"] = relay_metrics
        # One cycle is a stream's segment, its playlist and its delete.
        result["relay_cpu_ms_per_cycle"] = round(
            relay_use.usage.cpu_s * 1000 / cycles, 2
        )
        result["relay_loop_cpu_ms_per_cycle"] = round(
            relay_use.usage.main_thread_cpu_s * 1000 / cycles, 2
        )
    elif own_use.usage is not None:
        # The direct arm's uploader is this process, load generation included.
        result["uploader_cpu_ms_per_cycle"] = round(
            own_use.usage.cpu_s * 1000 / cycles, 2
        )
    return result


def _refine(bench: Bench, arm: str, done: list[dict[str, Any]], seconds: float) -> None:
    """Narrow the gap between the largest count passed and the first failed.

    The counts tried are far apart (100, then 200); a limit reported as 100
    may be 190. Up to REFINE_STEPS more counts halve the gap, until it is
    within an eighth of the passing count.
    """
    for _ in range(REFINE_STEPS):
        passing = [lv["streams"] for lv in done if lv["passed"]]
        failing = [lv["streams"] for lv in done if not lv["passed"]]
        if not passing or not failing:
            return
        low = max(passing)
        above = [n for n in failing if n > low]
        if not above:
            return
        high = min(above)
        if high - low <= max(2, low // 8):
            return
        middle = (low + high) // 2
        print(
            f"[bench]   {arm} streams={middle} (between {low} and {high})", flush=True
        )
        done.append(_level(bench, arm, middle, seconds))


def run(
    bench: Bench,
    counts: list[int],
    seconds: float,
    arms: tuple[str, ...] = ("direct", "relay", "floor"),
) -> dict[str, Any]:
    started = loads()
    result: dict[str, Any] = {
        "period_s": PERIOD_S,
        "segment_bytes": SEGMENT_BYTES,
        "p99_limit_ms": P99_LIMIT_MS,
        "seconds_per_level": seconds,
    }
    # Arms take turns at each count, so that a change in the machine's load
    # over the run falls on both alike.
    levels: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for streams in counts:
        for arm in arms:
            done = levels[arm]
            if done and not done[-1]["passed"]:
                continue  # more streams would only be slower: the run stays bounded
            print(f"[bench]   {arm} streams={streams}", flush=True)
            done.append(_level(bench, arm, streams, seconds))
    for arm, done in levels.items():
        _refine(bench, arm, done, seconds)
        passing = [level["streams"] for level in done if level["passed"]]
        result[arm] = {
            "levels": done,
            "max_streams_p99_under_1s": max(passing, default=0),
            # Passed every count tried: its limit lies above the largest.
            "limit_not_reached": bool(done) and all(lv["passed"] for lv in done),
        }
    direct_max = result.get("direct", {}).get("max_streams_p99_under_1s")
    for arm in ("relay", "floor"):
        arm_max = result.get(arm, {}).get("max_streams_p99_under_1s")
        result[f"ratio_{arm}_direct"] = (
            round(arm_max / direct_max, 3)
            if direct_max and arm_max is not None
            else None
        )
    result["load_start"], result["load_end"] = started, loads()
    return result
