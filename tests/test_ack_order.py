"""In upload mode the answer goes out as soon as S3 has the body; the spool's
clean-up after it is the relay's own business, yet still comes before the next
operation on the same key may start."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from s3script import ScriptedS3

from app.config import Settings
from app.metrics import Metrics
from app.paths import parse_upload
from app.spool import Spool, SpoolEntry
from app.storage import S3Storage, build_client
from app.uploader import Uploader


class HeldRemoveSpool(Spool):
    """A spool whose clean-up of uploaded entries waits until released."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        super().__init__(root, max_bytes)
        self.release_removes = threading.Event()
        self.removes_started = 0

    def remove(self, entry: SpoolEntry, *, recycle: bool = False) -> None:
        self.removes_started += 1
        # Bounded, so a broken test ends instead of hanging a worker thread.
        self.release_removes.wait(timeout=30)
        super().remove(entry, recycle=recycle)


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _uploader(tmp_path: Path) -> tuple[Uploader, HeldRemoveSpool, ScriptedS3]:
    values: dict[str, object] = {
        "s3_bucket": "live-bucket",
        "s3_endpoint": "http://127.0.0.1:9",
        "s3_access_key": "k",
        "s3_secret_key": "s",
        "s3_addressing": "path",
        "spool_dir": tmp_path / "spool",
        "ack": "upload",
    }
    settings = Settings(**values)  # type: ignore[arg-type]
    client = build_client(settings)
    script = ScriptedS3(client)
    spool = HeldRemoveSpool(settings.spool_dir, settings.spool_max_bytes)
    uploader = Uploader(settings, spool, S3Storage(settings, client=client), Metrics())
    return uploader, spool, script


@pytest.mark.anyio
async def test_upload_ack_answers_before_spool_cleanup_and_keeps_key_order(
    tmp_path: Path,
) -> None:
    uploader, spool, s3 = _uploader(tmp_path)
    await uploader.start()
    upload = parse_upload("LiveApp", "a.ts", b"/LiveApp/hls-upload/a.ts", ["ts"])
    try:
        # Answered while the clean-up of its entry is still held back.
        with anyio.fail_after(10):
            receipt = await uploader.receive_put(upload, _body(b"first"), 100)
        assert receipt.key == "streams/a.ts"
        assert [s.body for s in s3.sent if s.method == "PUT"] == [b"first"]
        with anyio.fail_after(10):
            while spool.removes_started < 1:
                await anyio.sleep(0.01)
        assert spool.entry_count == 1

        # A newer body of the key is spooled but not uploaded while the older
        # entry is still in the spool: a crash now replays both, in order.
        second = anyio.Event()

        async def put_second() -> None:
            await uploader.receive_put(upload, _body(b"second"), 100)
            second.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(put_second)
            with anyio.fail_after(10):
                while spool.entry_count < 2:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.2)
            assert [s.body for s in s3.sent if s.method == "PUT"] == [b"first"]

            spool.release_removes.set()
            with anyio.fail_after(10):
                await second.wait()
        assert [s.body for s in s3.sent if s.method == "PUT"] == [b"first", b"second"]
    finally:
        spool.release_removes.set()
        await uploader.stop(grace_s=5)
