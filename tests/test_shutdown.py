"""Stopping and recovering, one unit at a time: the grace period counted from
the signal, retries that end on stop with their work left in the spool, an
outage told from a failed try, and /readyz's view of S3 and of the spool."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError
from s3script import Reply, Sent, error, ok, scripted_uploader

import app.readiness
from app.config import Settings
from app.paths import parse_upload
from app.readiness import Readiness
from app.shutdown import ShutdownClock, graceful_timeout
from app.spool import Spool
from app.uploader import (
    BACKOFF_CAP_S,
    STORAGE_DOWN_AFTER_S,
    backoff_delay,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "s3_bucket": "live-bucket",
        "s3_endpoint": "http://127.0.0.1:9",
        "s3_access_key": "k",
        "s3_secret_key": "s",
        "s3_addressing": "path",
        "spool_dir": tmp_path / "spool",
        "spool_max_bytes": 1000,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


# -- the grace period --------------------------------------------------------


def test_shutdown_clock_counts_from_the_first_signal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr("app.shutdown.time.monotonic", clock)
    shutdown = ShutdownClock(6.0)
    assert shutdown.remaining() == 6.0  # no signal: the whole grace

    shutdown.begin()
    clock.now += 4
    shutdown.begin()  # a second SIGTERM does not buy more time
    assert shutdown.remaining() == 2.0
    clock.now += 5
    assert shutdown.remaining() == 0.0


@pytest.mark.parametrize(("grace", "seconds"), [(0.0, 0), (0.5, 0), (6.0, 6), (6.9, 6)])
def test_shutdown_graceful_timeout_never_passes_grace_nor_waits_for_ever(
    grace: float, seconds: int
) -> None:
    # uvicorn takes None as "wait for ever"; 0 must stay 0.
    assert graceful_timeout(grace) == seconds


@pytest.mark.anyio
async def test_uploader_stop_ends_retries_and_keeps_the_entry_spooled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    uploader, s3 = scripted_uploader(
        settings, lambda sent: error(503, "ServiceUnavailable")
    )
    await uploader.start()
    upload = parse_upload("LiveApp", "s_1.ts", b"/LiveApp/hls-upload/s_1.ts", ["ts"])
    await uploader.receive_delete(upload)
    with anyio.fail_after(30):
        while len(s3.sent) < 3:
            await anyio.sleep(0.05)

    # The grace is long; a retry loop that only a cancel could end would
    # hold stop() for all of it.
    with caplog.at_level(logging.WARNING), anyio.fail_after(15):
        await uploader.stop(grace_s=120)

    assert "shutdown left operations" not in caplog.text
    entries = Spool(settings.spool_dir, settings.spool_max_bytes).open()
    assert [(e.action, e.key) for e in entries] == [("delete", "streams/s_1.ts")]


def test_uploader_storage_is_down_only_after_failing_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr("app.uploader.time.monotonic", clock)
    uploader, _ = scripted_uploader(make_settings(tmp_path))

    uploader.storage_ok = False  # one failed call
    assert uploader.storage_ok
    clock.now += STORAGE_DOWN_AFTER_S - 0.1
    uploader.storage_ok = False  # failing still: the clock does not restart
    assert uploader.storage_ok
    clock.now += 0.2
    assert not uploader.storage_ok
    uploader.storage_ok = True  # a call worked
    assert uploader.storage_ok


def test_uploader_counts_and_logs_every_failed_try_within_botocore(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tries: list[Sent] = []

    def refuse_twice(sent: Sent) -> Reply:
        tries.append(sent)
        return error(503, "SlowDown") if len(tries) <= 2 else ok(sent)

    settings = make_settings(tmp_path)
    uploader, _ = scripted_uploader(settings, refuse_twice)
    body = tmp_path / "body"
    body.write_bytes(b"x" * 10)

    with caplog.at_level(logging.WARNING, logger="app.uploader"):
        uploader.storage.put_file("streams/a.ts", body, 10, "video/mp2t", "no-cache")

    assert len(tries) == 3
    assert caplog.text.count("S3 try failed op=PutObject key=streams/a.ts") == 2
    retries = uploader.metrics.retries.labels("SlowDown")._value.get()
    assert retries == 2


# -- readiness ---------------------------------------------------------------


@pytest.mark.parametrize("percent", [0, -1, 100.5])
def test_settings_refuse_a_ready_threshold_outside_0_to_100(
    tmp_path: Path, percent: float
) -> None:
    with pytest.raises(ValidationError, match="spool_ready_percent"):
        make_settings(tmp_path, spool_ready_percent=percent)


@pytest.mark.anyio
async def test_readiness_spool_threshold_both_sides(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, spool_ready_percent=50)
    uploader, _ = scripted_uploader(settings)
    uploader.spool.open()
    readiness = Readiness(settings, uploader.spool, uploader, uploader.storage)
    await readiness._probe_once()

    uploader.spool.reserve(500)  # exactly 50% of 1000
    assert readiness.problems() == []
    uploader.spool.reserve(1)
    assert readiness.problems() == [
        "the spool holds 501 of 1000 bytes, over "
        "HLSRELAY_SPOOL_READY_PERCENT=50%; S3 is behind"
    ]


@pytest.mark.anyio
async def test_readiness_reports_a_probe_that_hangs_then_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.readiness, "PROBE_INTERVAL_S", 0.05)
    released = threading.Event()

    def hang(sent: Sent) -> Reply:
        released.wait(30)  # S3 frozen until the test lets it answer
        return ok(sent)

    settings = make_settings(tmp_path)
    uploader, _ = scripted_uploader(settings, hang)
    uploader.spool.open()
    readiness = Readiness(settings, uploader.spool, uploader, uploader.storage)
    readiness.start()
    try:
        with anyio.fail_after(20):
            while not any("has not answered" in p for p in readiness.problems()):
                await anyio.sleep(0.05)
        released.set()
        with anyio.fail_after(20):
            while readiness.problems():
                await anyio.sleep(0.05)
    finally:
        released.set()
        await readiness.stop()


# -- backoff -----------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 8, 1024, 1025, 100_000])
def test_backoff_delay_stays_within_the_cap_however_long_s3_is_away(
    attempt: int,
) -> None:
    # At the cap, attempt 1025 comes after about four hours of one outage.
    delays = [backoff_delay(attempt) for _ in range(200)]

    assert all(0 <= delay <= BACKOFF_CAP_S for delay in delays)
    assert max(delays) > 0


@pytest.mark.anyio
async def test_uploader_stop_past_its_grace_counts_what_the_spool_keeps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    release = threading.Event()

    def hang(sent: Sent) -> Reply:
        release.wait(30)  # S3 that takes the request and never answers
        return ok(sent)

    uploader, s3 = scripted_uploader(settings, hang)
    await uploader.start()
    upload = parse_upload("LiveApp", "a.ts", b"/LiveApp/hls-upload/a.ts", ["ts"])
    await uploader.receive_delete(upload)
    with anyio.fail_after(30):
        while not s3.sent:
            await anyio.sleep(0.05)
    # The second waits behind the first on its key: spooled, with no task.
    await uploader.receive_delete(upload)

    try:
        with caplog.at_level(logging.WARNING), anyio.fail_after(15):
            await uploader.stop(grace_s=0.3)
    finally:
        release.set()

    # Both deletes stay spooled, the one under way and the one behind it.
    assert "shutdown left operations in the spool for the next start count=2" in (
        caplog.text
    )
    entries = Spool(settings.spool_dir, settings.spool_max_bytes).open()
    assert [e.key for e in entries] == ["streams/a.ts", "streams/a.ts"]
