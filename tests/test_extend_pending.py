"""A playlist version that arrives while the one before it is still waiting
(S3 slow, or the encoder quicker than the upload) is read from where that one
ended, not from the top, and still waits for everything that one waited for.

An EVENT playlist of 10,000 entries would otherwise be parsed whole at every
version exactly when the relay is already behind."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from s3script import Reply, ScriptedS3, Sent, ok

from app import playlist
from app.config import Settings
from app.metrics import Metrics
from app.paths import parse_upload
from app.spool import Spool
from app.storage import S3Storage, build_client
from app.uploader import Uploader

HEADER = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"
HEADER += "#EXT-X-PLAYLIST-TYPE:EVENT\n"


def _event_playlist(segments: int) -> bytes:
    lines = [f"#EXTINF:2.0,\ns{n}.ts\n" for n in range(segments)]
    return (HEADER + "".join(lines)).encode()


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


class HeldS3:
    """Answers every request at once, except PUTs of held keys until released."""

    def __init__(self, held: str) -> None:
        self.held = held
        self.release = threading.Event()

    def __call__(self, sent: Sent) -> Reply:
        if sent.method == "PUT" and sent.path.endswith(self.held):
            # Bounded, so a broken test ends instead of hanging a worker.
            self.release.wait(timeout=30)
        return ok(sent)


def _uploader(tmp_path: Path, answer: HeldS3) -> tuple[Uploader, ScriptedS3]:
    values: dict[str, object] = {
        "s3_bucket": "live-bucket",
        "s3_endpoint": "http://127.0.0.1:9",
        "s3_access_key": "k",
        "s3_secret_key": "s",
        "s3_addressing": "path",
        "spool_dir": tmp_path / "spool",
        "segment_wait_s": 60,
    }
    settings = Settings(**values)  # type: ignore[arg-type]
    client = build_client(settings)
    script = ScriptedS3(client, answer)
    spool = Spool(settings.spool_dir, settings.spool_max_bytes)
    storage = S3Storage(settings, client=client)
    return Uploader(settings, spool, storage, Metrics()), script


def _puts(s3: ScriptedS3, name: str) -> list[bytes]:
    return [s.body for s in s3.sent if s.method == "PUT" and s.path.endswith(name)]


async def _put(uploader: Uploader, path: str, data: bytes) -> None:
    raw = f"/LiveApp/hls-upload/{path}".encode()
    upload = parse_upload("LiveApp", path, raw, ["ts", "m3u8"])
    await uploader.receive_put(upload, _body(data), 1 << 20)


async def _until(check: object) -> None:
    with anyio.fail_after(10):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_version_after_a_waiting_one_scans_only_its_new_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldS3("s1.ts")
    uploader, s3 = _uploader(tmp_path, held)
    scanned: list[int] = []
    real_extract = playlist.extract_references

    def counting_extract(text: str, start: int = 0) -> list[str]:
        scanned.append(len(text) - start)
        return real_extract(text, start)

    monkeypatch.setattr(playlist, "extract_references", counting_extract)
    await uploader.start()
    try:
        await _put(uploader, "s0.ts", b"zero")
        await _put(uploader, "ev.m3u8", _event_playlist(1))
        await _until(lambda: _puts(s3, "ev.m3u8"))

        # s1 is spooled but S3 holds it: the version naming it waits.
        await _put(uploader, "s1.ts", b"one")
        await _put(uploader, "ev.m3u8", _event_playlist(2))
        await _put(uploader, "s2.ts", b"two")
        await _until(lambda: _puts(s3, "s2.ts"))
        scanned.clear()
        third = _event_playlist(3)
        await _put(uploader, "ev.m3u8", third)

        # Only the line appended to the waiting version was read.
        new_lines = len(third) - len(_event_playlist(2))
        assert scanned == [new_lines]
    finally:
        held.release.set()
        await uploader.stop(grace_s=5)


@pytest.mark.anyio
async def test_version_extending_a_waiting_one_still_waits_for_its_files(
    tmp_path: Path,
) -> None:
    held = HeldS3("s1.ts")
    uploader, s3 = _uploader(tmp_path, held)
    await uploader.start()
    try:
        await _put(uploader, "s0.ts", b"zero")
        await _put(uploader, "ev.m3u8", _event_playlist(1))
        await _until(lambda: _puts(s3, "ev.m3u8"))
        await _put(uploader, "s1.ts", b"one")
        await _put(uploader, "ev.m3u8", _event_playlist(2))
        await _put(uploader, "s2.ts", b"two")
        await _until(lambda: _puts(s3, "s2.ts"))
        # This version makes the waiting one moot; s1, which only that one
        # named as new, must still be stored before it.
        await _put(uploader, "ev.m3u8", _event_playlist(3))
        await anyio.sleep(0.3)
        assert _puts(s3, "ev.m3u8") == [_event_playlist(1)]

        held.release.set()
        await _until(lambda: len(_puts(s3, "ev.m3u8")) == 2)
        assert _puts(s3, "ev.m3u8")[-1] == _event_playlist(3)
        assert _puts(s3, "s1.ts") == [b"one"]
    finally:
        held.release.set()
        await uploader.stop(grace_s=5)
