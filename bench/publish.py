"""Publish latency: one body at a time, relay against a direct put of the same bytes.

Per round and size, in a rotating order so that drift in the machine's load
falls on every arm alike: a direct boto3 ``put_object`` from a warmed client
built as the relay builds the one it streams these bodies with (the limit),
a PUT to a relay with ``HLSRELAY_ACK=upload`` (answered once S3 has it), and
a PUT to a relay in the default spool mode (answered once it is fsynced;
visible once the filer reports it), and a PUT to the floor (bench/floor.py,
the least a relay could spend) in upload mode.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.client import BlockingClient, request_head
from bench.context import Bench, loads
from bench.events import md5_b64
from bench.stats import ratio, summarize_ms

SIZES = {"100KiB": 100 * 1024, "1MiB": 1024 * 1024, "5MiB": 5 * 1024 * 1024}
ARMS = ("direct", "upload", "spool", "floor")
CONTENT_TYPE = "video/mp2t"
# What the relay sends for a segment with the default settings, so the
# direct put carries the same headers.
CACHE_CONTROL = "max-age=86400"
VISIBLE_TIMEOUT_S = 30.0


def run(bench: Bench, rounds: int, warmup: int) -> dict[str, Any]:
    started = loads()
    # Every size here is below the multipart threshold and has a
    # Content-Length, so the relay streams it with its unsigned-payload
    # client; the direct put is signed the same way.
    client = bench.direct_client(streamed=True)
    client.head_bucket(Bucket=bench.bucket)  # warm: connection and signer
    samples: dict[str, dict[str, list[float]]] = {
        size: {
            "direct": [],
            "upload": [],
            "spool_ack": [],
            "spool_visible": [],
            "floor": [],
        }
        for size in SIZES
    }
    failures: list[str] = []
    with (
        bench.relay("publish-upload", {"HLSRELAY_ACK": "upload"}) as upload_relay,
        bench.relay("publish-spool") as spool_relay,
        bench.relay(
            "publish-floor", {"HLSRELAY_ACK": "upload"}, floor=True
        ) as floor_relay,
    ):
        https = {
            "upload": BlockingClient(upload_relay.port),
            "spool": BlockingClient(spool_relay.port),
            "floor": BlockingClient(floor_relay.port),
        }
        for size_name, size in SIZES.items():
            body = os.urandom(size)
            md5 = md5_b64(body)
            timed = samples[size_name]
            with bench.profiled(f"publish-{size_name}", upload_relay.pid):
                for round_no in range(warmup + rounds):
                    keep = round_no >= warmup
                    shift = round_no % len(ARMS)
                    for arm in ARMS[shift:] + ARMS[:shift]:
                        path = f"bench/{size_name}/{arm}-{round_no}.ts"
                        if arm == "direct":
                            started_at = time.perf_counter()
                            client.put_object(
                                Bucket=bench.bucket,
                                Key=f"streams/{path}",
                                Body=body,
                                ContentType=CONTENT_TYPE,
                                CacheControl=CACHE_CONTROL,
                            )
                            elapsed = time.perf_counter() - started_at
                            if keep:
                                timed["direct"].append(elapsed)
                            continue
                        http = https[arm]
                        head = request_head(
                            "PUT", f"/LiveApp/hls-upload/{path}", http.port, size
                        )
                        wall_ns = time.time_ns()
                        started_at = time.perf_counter()
                        answer = http.request(head, body)
                        elapsed = time.perf_counter() - started_at
                        if answer.status != 201:
                            failures.append(f"{arm} {path}: HTTP {answer.status}")
                            continue
                        if arm in ("upload", "floor"):
                            if keep:
                                timed[arm].append(elapsed)
                            continue
                        # The next round must not share the machine with this
                        # body's upload: wait until the bucket has it.
                        seen = bench.events.wait_for(
                            f"streams/{path}", md5, VISIBLE_TIMEOUT_S
                        )
                        if seen is None:
                            failures.append(f"spool {path}: never visible")
                        elif keep:
                            timed["spool_ack"].append(elapsed)
                            timed["spool_visible"].append((seen - wall_ns) / 1e9)
        for http in https.values():
            http.close()

    result: dict[str, Any] = {"rounds": rounds, "warmup": warmup, "sizes": {}}
    for size_name, timed in samples.items():
        summary: dict[str, Any] = {
            arm: summarize_ms(values) for arm, values in timed.items()
        }
        direct, upload = summary["direct"], summary["upload"]
        summary["ratio_upload_direct_p50"] = ratio(upload["p50_ms"], direct["p50_ms"])
        summary["ratio_upload_direct_p99"] = ratio(upload["p99_ms"], direct["p99_ms"])
        floor = summary["floor"]
        summary["ratio_floor_direct_p50"] = ratio(floor["p50_ms"], direct["p50_ms"])
        summary["ratio_floor_direct_p99"] = ratio(floor["p99_ms"], direct["p99_ms"])
        summary["ratio_spool_visible_direct_p50"] = ratio(
            summary["spool_visible"]["p50_ms"], direct["p50_ms"]
        )
        summary["samples_ms"] = {
            arm: [round(value * 1000, 2) for value in values]
            for arm, values in timed.items()
        }
        result["sizes"][size_name] = summary
    result["failures"] = failures[:20]
    result["load_start"], result["load_end"] = started, loads()
    return result
