"""Field case C11: a stream pushed by ffmpeg through the relay, then HEAD of
every object in SeaweedFS. Safari and AVPlayer refuse playlists of the wrong
type, and browsers replay cached playlists, so type and caching must hold."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from conftest import FFmpeg, RelayFactory

from app.locals3 import LocalS3

pytestmark = pytest.mark.integration

TYPES = {
    "m3u8": "application/vnd.apple.mpegurl",
    "ts": "video/mp2t",
    "m4s": "video/iso.segment",
    "mp4": "video/mp4",
    "vtt": "text/vtt",
    "aac": "audio/aac",
}
SETTLE_S = 60.0
WEBVTT = b"WEBVTT\n\n00:00.000 --> 00:01.000\nhello\n"
ADTS_FRAME = bytes.fromhex("fff15080021ffc") + b"\x00" * 9


def max_age(cache_control: str) -> int | None:
    found = re.search(r"max-age=(\d+)", cache_control)
    return int(found.group(1)) if found else None


def push(ffmpeg: FFmpeg, url: str, *hls: str) -> None:
    result = ffmpeg.run(
        *FFmpeg.test_source(3),
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
        "-c:a", "aac", "-f", "hls", "-hls_time", "1", "-method", "PUT",
        *hls, url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_objects_pushed_by_ffmpeg_have_type_and_caching(
    relay_factory: RelayFactory, ffmpeg: FFmpeg, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    push(ffmpeg, relay.base_url_for("LiveApp", "c11/ts/index.m3u8"))
    push(
        ffmpeg,
        relay.base_url_for("LiveApp", "c11/fmp4/index.m3u8"),
        "-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4",
    )  # fmt: skip
    for path, body in (
        ("c11/subs/sub_0.vtt", WEBVTT),
        ("c11/audio/a_0.aac", ADTS_FRAME),
    ):
        answer = httpx.put(relay.base_url_for("LiveApp", path), content=body)
        assert answer.status_code == 201, answer.text

    client = local_s3.client()
    extensions: set[str] = set()
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and extensions != set(TYPES):
        listing = client.list_objects_v2(Bucket=bucket, Prefix="streams/c11/")
        keys = [item["Key"] for item in listing.get("Contents", [])]
        extensions = {key.rsplit(".", 1)[1] for key in keys}
        time.sleep(0.2)
    assert extensions == set(TYPES), keys

    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        extension = key.rsplit(".", 1)[1]
        assert head["ContentType"] == TYPES[extension], key
        age = max_age(head.get("CacheControl", ""))
        if extension == "m3u8":
            assert "no-cache" in head["CacheControl"] or (
                age is not None and age <= 1
            ), (key, head["CacheControl"])
        else:
            assert age is not None and age >= 3600, (key, head.get("CacheControl"))
