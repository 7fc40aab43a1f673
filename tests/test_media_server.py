"""The media server's naming, audio-only renditions and WebVTT subtitles pass
the relay unchanged and wait in the barrier like any other media."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import FFmpeg, Relay, RelayFactory
from watcher import BucketWatcher

from app.locals3 import LocalS3
from app.uploader import WRITE_SLICE

pytestmark = pytest.mark.integration

WAIT_S = 120.0


def _wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {WAIT_S:g} s waiting for {what}")
        time.sleep(0.05)


def _keys(local_s3: LocalS3, bucket: str, prefix: str = "") -> set[str]:
    pages = local_s3.client().get_paginator("list_objects_v2")
    return {
        item["Key"]
        for page in pages.paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    }


def _put(relay: Relay, path: str, body: bytes | Iterator[bytes]) -> int:
    url = relay.base_url_for("LiveApp", path)
    return httpx.put(url, content=body, timeout=WAIT_S).status_code


@pytest.mark.parametrize(
    "path",
    [
        "stream123.m3u8",
        "stream123_360p800kbps0001.ts",
        "stream123_adaptive.m3u8",
        "stream123_2024-05-01_10-00-00.000.mp4",
        "stream123_2024-05-01_10-00-00.webm",
        "previews/stream123.png",
        "sub/folder/stream123_240p300kbps.m3u8",
        "stream123_subs0001.vtt",
        "stream123_audio0001.aac",
    ],
)
def test_media_server_names_are_stored_unchanged(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, path: str
) -> None:
    relay = relay_factory()
    body = b"#EXTM3U\n" if path.endswith(".m3u8") else b"media"

    assert _put(relay, path, body) == 201

    _wait_for(path, lambda: f"streams/{path}" in _keys(local_s3, bucket))


def test_media_server_post_upload_is_taken_as_put(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    url = relay.base_url_for("LiveApp", "stream123_360p800kbps_vtt.m3u8")

    response = httpx.post(url, content=b"#EXTM3U\n", timeout=WAIT_S)

    assert response.status_code == 201
    _wait_for(
        "the POSTed playlist",
        lambda: "streams/stream123_360p800kbps_vtt.m3u8" in _keys(local_s3, bucket),
    )


def test_media_server_renditions_wait_for_their_segments(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    segments = [
        "live/stream123_360p800kbps0001.ts",
        "live/stream123_audio0001.aac",
        "live/stream123_subs0001.vtt",
    ]
    release = threading.Event()
    statuses: list[int] = []

    def held(path: str) -> None:
        def body() -> Iterator[bytes]:
            first = b"WEBVTT\n\n" if path.endswith(".vtt") else b"first half, "
            # A whole slice, so that the relay writes it: the file appears.
            yield first.ljust(WRITE_SLICE, b"\n")
            release.wait(WAIT_S)
            yield b"second half\n"

        statuses.append(_put(relay, path, body()))

    senders = [threading.Thread(target=held, args=(path,)) for path in segments]
    with BucketWatcher(local_s3.client(), bucket, "streams/live/") as watcher:
        for sender in senders:
            sender.start()
        # Each PUT takes its place in line before its body file is written.
        _wait_for(
            "the held bodies to be spooling",
            lambda: len(list((relay.spool_dir / "incoming").glob("*.part"))) == 3,
        )
        media = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{}\n#EXT-X-ENDLIST\n"
        playlists = {
            "live/stream123_360p800kbps.m3u8": media.format(
                "stream123_360p800kbps0001.ts"
            ),
            "live/stream123_audio.m3u8": media.format("stream123_audio0001.aac"),
            "live/stream123_subs.m3u8": media.format("stream123_subs0001.vtt"),
            "live/stream123_adaptive.m3u8": (
                "#EXTM3U\n"
                '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",'
                'URI="stream123_audio.m3u8"\n'
                '#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="s",NAME="en",'
                'URI="stream123_subs.m3u8"\n'
                '#EXT-X-STREAM-INF:BANDWIDTH=800000,AUDIO="a",SUBTITLES="s"\n'
                "stream123_360p800kbps.m3u8\n"
                '#EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS="mp4a.40.2",AUDIO="a"\n'
                "stream123_audio.m3u8\n"
            ),
        }
        for path, text in playlists.items():
            assert _put(relay, path, text.encode()) == 201
        # Received after the playlists: once it is stored, the uploader has had
        # its chance to write any playlist that was (wrongly) free to go.
        assert _put(relay, "live/sentinel.ts", b"s") == 201
        _wait_for(
            "the sentinel",
            lambda: "streams/live/sentinel.ts" in _keys(local_s3, bucket),
        )
        held_back = _keys(local_s3, bucket, "streams/live/")

        release.set()
        for sender in senders:
            sender.join(WAIT_S)
        _wait_for(
            "the multivariant playlist",
            lambda: "streams/live/stream123_adaptive.m3u8" in _keys(local_s3, bucket),
        )

    assert statuses == [201, 201, 201]
    assert held_back == {"streams/live/sentinel.ts"}
    assert watcher.errors == []
    assert watcher.violations == []
    assert {f"streams/{p}" for p in [*segments, *playlists]} <= _keys(local_s3, bucket)
    head = local_s3.client().head_object(
        Bucket=bucket, Key="streams/live/stream123_subs0001.vtt"
    )
    assert head["ContentType"] == "text/vtt"


def test_media_server_ffmpeg_push_with_audio_only_and_subtitles(
    relay_factory: RelayFactory,
    local_s3: LocalS3,
    bucket: str,
    ffmpeg: FFmpeg,
    tmp_path: Path,
) -> None:
    relay = relay_factory()
    subtitles = tmp_path / "subs.srt"
    subtitles.write_text(
        "".join(
            f"{n + 1}\n00:00:{n:02d},000 --> 00:00:{n:02d},900\nline {n}\n\n"
            for n in range(8)
        )
    )
    base = relay.base_url_for("LiveApp", "sub")

    with BucketWatcher(local_s3.client(), bucket, "streams/sub/") as watcher:
        result = ffmpeg.run(
            # test_source() ends with -t, which must follow every input.
            "-re", *ffmpeg.test_source(6)[:-2], "-i", str(subtitles), "-t", "6",
            "-map", "0:v", "-map", "1:a", "-map", "2:s",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-c:s", "webvtt",
            "-f", "hls", "-hls_time", "1", "-hls_list_size", "3",
            "-hls_flags", "delete_segments", "-method", "PUT",
            "-var_stream_map",
            "v:0,s:0,agroup:aud,sgroup:subs,name:360p800kbps a:0,agroup:aud,name:audio",
            "-master_pl_name", "stream123_adaptive.m3u8",
            "-hls_segment_filename", f"{base}/stream123_%v%04d.ts",
            f"{base}/stream123_%v.m3u8",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        expected = {
            "streams/sub/stream123_adaptive.m3u8",
            "streams/sub/stream123_360p800kbps.m3u8",
            "streams/sub/stream123_360p800kbps_vtt.m3u8",
            "streams/sub/stream123_audio.m3u8",
        }
        _wait_for("every playlist", lambda: expected <= _keys(local_s3, bucket))
        _wait_for(
            "the spool to drain",
            lambda: not [p for p in relay.spool_dir.rglob("*.json")],
        )

    assert watcher.errors == []
    assert watcher.violations == []
    # ffmpeg POSTs the subtitle playlist; refused, the master would wait for it.
    assert "missing references" not in relay.log_text()
    seen = watcher.keys_seen
    assert any(key.endswith(".vtt") for key in seen)
    assert any(key.startswith("streams/sub/stream123_audio0") for key in seen)
    assert any(key.startswith("streams/sub/stream123_360p800kbps0") for key in seen)
    master = watcher.versions_of("streams/sub/stream123_adaptive.m3u8")
    assert master and set(master[0].references) >= expected - {master[0].key}
