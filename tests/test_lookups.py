"""A playlist naming many files the relay never received: asking S3 about
them is bounded, and holds back no other stream."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import pytest
from s3script import Reply, Sent, live_settings, ok, receive, scripted_uploader

from app.uploader import LOOKUPS_AT_ONCE

NEVER_SENT = 3000
LOOKUP_S = 0.02


class SlowLookups:
    """Answers HEADs (the relay's lookups) slowly with a 404, counting how
    many are under way at once; takes every other request at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.answered = 0

    def __call__(self, sent: Sent) -> Reply:
        if sent.method != "HEAD":
            return ok(sent)
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(LOOKUP_S)
        with self._lock:
            self.running -= 1
            self.answered += 1
        return Reply(404)


def _playlist(names: list[str]) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2"]
    for name in names:
        lines += ["#EXTINF:2.0,", name]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.anyio
async def test_lookups_run_a_few_at_a_time_and_hold_back_no_other_stream(
    tmp_path: Path,
) -> None:
    lookups = SlowLookups()
    uploader, s3 = scripted_uploader(live_settings(tmp_path), lookups)
    calm = _playlist(["seg0.ts"])
    await uploader.start()
    try:
        names = [f"s{n:05d}.ts" for n in range(NEVER_SENT)]
        await receive(uploader, "flood/index.m3u8", _playlist(names))
        tasks_during_flood = len(uploader._tasks)

        await receive(uploader, "calm/seg0.ts", b"ts")
        await receive(uploader, "calm/index.m3u8", calm)
        # Published while the flood's lookups (15 s of them at 4 at once)
        # are still under way, behind at most a few of them, not after all.
        with anyio.fail_after(10):
            while calm not in {sent.body for sent in s3.sent}:
                await anyio.sleep(0.01)
        assert lookups.answered < NEVER_SENT / 2
    finally:
        await uploader.stop(grace_s=1)

    assert lookups.most <= LOOKUPS_AT_ONCE
    # A task a lookup would be one per name the playlist gives.
    assert tasks_during_flood <= LOOKUPS_AT_ONCE + 10
