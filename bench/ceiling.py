"""Ingest ceiling: how fast the relay takes segments when S3 is out of the path,
against nginx's dav module writing the same files to disk.

The relay runs in spool mode with SeaweedFS frozen (SIGSTOP), so every PUT is
received, fsynced and queued, and no upload competes for the CPU; the spool
limit is set high enough to hold the whole run. Both servers get the same
requests from the same generator: kept-alive connections sending chunked
bodies with unique paths, for a bounded time and a bounded number of bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from pathlib import Path
from typing import Any

from bench.client import AsyncConnection, frame_chunked, request_head
from bench.context import Bench, loads
from bench.procs import NginxDav, UsageWatch, cpu_times, find_nginx

SIZES = {"100KiB": 100 * 1024, "1MiB": 1024 * 1024}
WARMUP_S = 0.5


async def _blast(
    port: int, prefix: str, body: bytes, concurrency: int, seconds: float, cap: int
) -> dict[str, Any]:
    payload = frame_chunked(body)
    numbers = itertools.count()
    done = {"puts": 0, "bytes": 0, "errors": 0, "warm_puts": 0}
    statuses: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + WARMUP_S
    stop_at = measure_from + seconds
    sent = 0

    async def worker() -> None:
        nonlocal sent
        connection = AsyncConnection(port)
        try:
            while loop.time() < stop_at and sent < cap:
                # The cap bounds the measured window; the warm-up is bounded
                # by its own time, and must not use the cap up.
                if loop.time() >= measure_from:
                    sent += len(body)
                path = f"{prefix}/{next(numbers):07d}.ts"
                try:
                    answer = await connection.request(
                        request_head("PUT", path, port, None), payload
                    )
                except (OSError, asyncio.IncompleteReadError):
                    done["errors"] += 1
                    continue
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
                if not 200 <= answer.status < 300:
                    done["errors"] += 1
                elif loop.time() < measure_from:
                    done["warm_puts"] += 1
                else:
                    done["puts"] += 1
                    done["bytes"] += len(body)
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = min(loop.time(), stop_at) - measure_from
    return {
        "seconds": round(elapsed, 3),
        "puts_per_s": round(done["puts"] / elapsed, 1) if elapsed > 0 else 0.0,
        "mib_per_s": round(done["bytes"] / 2**20 / elapsed, 1) if elapsed > 0 else 0.0,
        "puts": done["puts"],
        "warm_puts": done["warm_puts"],
        "errors": done["errors"],
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
    }


def _measure(
    pids: list[int], port: int, body: bytes, concurrency: int, seconds: float, cap: int
) -> dict[str, Any]:
    before = [cpu_times(pid) for pid in pids]
    with UsageWatch(os.getpid(), 0.5) as own:
        result = asyncio.run(
            _blast(port, "/LiveApp/hls-upload/ceiling", body, concurrency, seconds, cap)
        )
    after = [cpu_times(pid) for pid in pids]
    cpu = sum(sum(times) for times in after) - sum(sum(times) for times in before)
    system = sum(times[1] for times in after) - sum(times[1] for times in before)
    assert own.usage is not None
    result["server_cores"] = round(cpu / own.usage.wall_s, 2)
    result["server_system_share"] = round(system / cpu, 2) if cpu else 0.0
    # The warm-up's PUTs cost CPU too, inside the same readings.
    puts = result["puts"] + result["warm_puts"]
    if puts:
        result["server_cpu_ms_per_put"] = round(1000 * cpu / puts, 3)
    result["generator_cores"] = round(own.usage.cores, 2)
    return result


def _clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    # What nginx left in the page cache must not be written back while the
    # next server is measured.
    os.sync()


def run(bench: Bench, seconds: float, concurrency: int) -> dict[str, Any]:
    started = loads()
    cap = (256 if bench.quick else 4096) * 2**20
    result: dict[str, Any] = {
        "concurrency": concurrency,
        "seconds": seconds,
        "byte_cap_mib": cap // 2**20,
        "sizes": {},
    }
    if find_nginx() is None:
        raise RuntimeError(
            "nginx is not installed: apt-get install -y nginx-light (Debian)"
        )
    workers_auto = os.cpu_count() or 1
    for size_name, size in SIZES.items():
        body = os.urandom(size)
        entry: dict[str, Any] = {}
        for workers in sorted({1, workers_auto}):
            with NginxDav(bench.work_dir, workers) as nginx:
                pids = [nginx.pid, *nginx.worker_pids()]
                entry[f"nginx_{workers}w"] = _measure(
                    pids, nginx.port, body, concurrency, seconds, cap
                )
                entry[f"nginx_{workers}w"]["workers"] = workers
            _clear(nginx.root)
        env = {
            "HLSRELAY_SPOOL_MAX_BYTES": str(64 * 2**30),
            # Uploads hang on the frozen store instead of failing fast, so no
            # retries and no retry logging run during the measurement.
            "HLSRELAY_S3_READ_TIMEOUT_S": "600",
        }
        with bench.relay(f"ceiling-{size_name}", env) as relay:
            bench.s3.freeze()
            try:
                with bench.profiled(f"ceiling-{size_name}", relay.pid):
                    entry["relay"] = _measure(
                        [relay.pid], relay.port, body, concurrency, seconds, cap
                    )
                # Gone before S3 comes back, so its backlog never uploads; a
                # SIGTERM would wait for uploads hung on the frozen store.
                relay.kill()
            finally:
                bench.s3.thaw()
        _clear(relay.spool_dir)
        nginx_one = entry["nginx_1w"]["mib_per_s"]
        entry["ratio_relay_nginx_1w"] = (
            round(entry["relay"]["mib_per_s"] / nginx_one, 3) if nginx_one else None
        )
        best = max(
            value["mib_per_s"]
            for key, value in entry.items()
            if key.startswith("nginx")
        )
        entry["ratio_relay_nginx_best"] = (
            round(entry["relay"]["mib_per_s"] / best, 3) if best else None
        )
        result["sizes"][size_name] = entry
    result["load_start"], result["load_end"] = started, loads()
    return result
