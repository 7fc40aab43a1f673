"""C13: ffmpeg's ``append_list`` reads the playlist back from the upload URL, so a
second run on the same URL continues the EVENT playlist instead of starting over
and overwriting the first run's segments."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
import pytest
from botocore.exceptions import ClientError
from conftest import FFmpeg, RelayFactory

from app.locals3 import LocalS3

pytestmark = pytest.mark.integration

WAIT_S = 120.0
_SEGMENT = re.compile(r"^ev(\d+)\.ts$", re.MULTILINE)


def _wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {WAIT_S:g} s waiting for {what}")
        time.sleep(0.1)


def _object(local_s3: LocalS3, bucket: str, key: str) -> tuple[bytes, str] | None:
    try:
        response = local_s3.client().get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    return response["Body"].read(), response["ETag"]


def _segments(text: str) -> list[int]:
    return [int(n) for n in _SEGMENT.findall(text)]


def _settled(local_s3: LocalS3, bucket: str, at_least: int) -> Callable[[], bool]:
    """True once the playlist is ended and every segment it names is stored."""

    def check() -> bool:
        found = _object(local_s3, bucket, "streams/ev.m3u8")
        if found is None:
            return False
        text = found[0].decode()
        numbers = _segments(text)
        return (
            text.rstrip().endswith("#EXT-X-ENDLIST")
            and len(numbers) >= at_least
            and all(
                _object(local_s3, bucket, f"streams/ev{n}.ts") is not None
                for n in numbers
            )
        )

    return check


def _push(ffmpeg: FFmpeg, url: str) -> None:
    result = ffmpeg.run(
        *ffmpeg.test_source(4),
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p",
        "-c:a", "aac",
        "-f", "hls", "-hls_time", "1",
        "-hls_playlist_type", "event", "-hls_flags", "append_list",
        "-method", "PUT",
        url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_append_list_second_run_continues_and_overwrites_nothing(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, ffmpeg: FFmpeg
) -> None:
    relay = relay_factory()
    url = relay.base_url_for("LiveApp", "ev.m3u8")

    before = httpx.get(url, timeout=30)
    assert before.status_code == 404
    assert before.json()["error"] == "not_found"

    _push(ffmpeg, url)
    _wait_for("the first run in the bucket", _settled(local_s3, bucket, 3))
    first_text = httpx.get(url, timeout=30).text
    first = _segments(first_text)
    etags = {}
    for n in first:
        found = _object(local_s3, bucket, f"streams/ev{n}.ts")
        assert found is not None
        etags[n] = found[1]

    _push(ffmpeg, url)
    _wait_for(
        "the second run in the bucket", _settled(local_s3, bucket, len(first) + 3)
    )

    stored = _object(local_s3, bucket, "streams/ev.m3u8")
    assert stored is not None
    final_text = stored[0].decode()
    assert httpx.get(url, timeout=30).text == final_text
    numbers = _segments(final_text)
    # The first run's entries stay as they were, the second run's follow them
    # after a discontinuity, numbered on from where the first stopped.
    assert numbers[: len(first)] == first
    assert numbers == list(range(first[0], first[0] + len(numbers)))
    head, _, tail = final_text.partition(f"ev{first[-1]}.ts")
    assert head.startswith(first_text.partition(f"ev{first[-1]}.ts")[0])
    assert tail.lstrip().startswith("#EXT-X-DISCONTINUITY")
    for n, etag in etags.items():
        found = _object(local_s3, bucket, f"streams/ev{n}.ts")
        assert found is not None and found[1] == etag, f"ev{n}.ts was overwritten"
    # Every version waited only for what it named, and found it stored.
    assert "missing references" not in relay.log_text()
