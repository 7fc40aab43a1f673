"""The watcher must catch a relay that publishes playlists before their
segments, or its zero violations in the real tests would prove nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import FFmpeg, free_port
from watcher import BucketWatcher, referenced_uris, resolve_reference

from app.locals3 import REGION, LocalS3

NAIVE_RELAY = Path(__file__).with_name("naive_relay.py")


@pytest.fixture
def naive_relay_url(local_s3: LocalS3, bucket: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLSRELAY_")}
    env.update(
        HLSRELAY_S3_BUCKET=bucket,
        HLSRELAY_S3_ENDPOINT=local_s3.endpoint,
        HLSRELAY_S3_REGION=REGION,
        HLSRELAY_S3_ACCESS_KEY=local_s3.access_key,
        HLSRELAY_S3_SECRET_KEY=local_s3.secret_key,
    )
    log_path = tmp_path / "naive-relay.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(NAIVE_RELAY), "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "naive relay did not start"
            time.sleep(0.05)
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def test_references_resolve_against_the_playlist_folder() -> None:
    text = (
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n"
        '#EXT-X-MAP:URI="init.mp4"\n#EXT-X-KEY:METHOD=AES-128,URI="k.key"\n'
        "#EXTINF:2,\nseg%201.m4s?token=1\n#EXTINF:2,\n../up.ts\n"
        "#EXTINF:2,\nhttps://cdn.example/x.ts\n#EXTINF:2,\n/root.ts\n"
        '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="next.m4s"\n'
    )
    keys = [resolve_reference("streams/sub/a.m3u8", u) for u in referenced_uris(text)]

    assert keys == ["streams/sub/init.mp4", "streams/sub/seg 1.m4s", "streams/up.ts"]


def test_multivariant_references_include_renditions() -> None:
    text = (
        "#EXTM3U\n"
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",URI="audio/en.m3u8"\n'
        '#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID="c",NAME="c",INSTREAM-ID="CC1"\n'
        "#EXT-X-STREAM-INF:BANDWIDTH=100000\nv0.m3u8\n"
        '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1000,URI="if.m3u8"\n'
    )

    assert sorted(referenced_uris(text)) == ["audio/en.m3u8", "if.m3u8", "v0.m3u8"]


@pytest.mark.integration
def test_watcher_catches_playlist_published_before_segments(
    local_s3: LocalS3, bucket: str, naive_relay_url: str, ffmpeg: FFmpeg
) -> None:
    watcher = BucketWatcher(local_s3.client(), bucket, prefix="streams/")

    with watcher:
        result = ffmpeg.run(
            "-re",
            *ffmpeg.test_source(seconds=7),
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
            "-c:a", "aac",
            "-f", "hls", "-hls_time", "1", "-hls_list_size", "4",
            "-method", "PUT",
            f"{naive_relay_url}/LiveApp/hls-upload/stream.m3u8",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        # The naive relay's last segments land up to a second late.
        time.sleep(1.5)

    assert not watcher.errors, watcher.errors[:5]
    assert len(watcher.versions_of("streams/stream.m3u8")) >= 4
    assert watcher.violations, "the naive relay's early playlists went unnoticed"
    assert all(v.reason == "missing" for v in watcher.violations)
    assert all(v.missing_key.endswith(".ts") for v in watcher.violations)
