"""Real ffmpeg through the real relay into SeaweedFS, watched as a player sees
the bucket: no playlist version may name a missing object, and what is left
at the end must decode."""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pytest
from conftest import FFmpeg, Relay, RelayFactory
from watcher import BucketWatcher, referenced_uris, resolve_reference

from app.locals3 import LocalS3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

SETTLE_TIMEOUT_S = 30.0
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
}
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-sc_threshold", "0"]


def list_keys(client: S3Client, bucket: str, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix
    ):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def read_text(client: S3Client, bucket: str, key: str) -> str:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def wait_for_endlist(
    client: S3Client, bucket: str, playlist_keys: Iterable[str]
) -> dict[str, str]:
    """Wait until each media playlist has its ENDLIST and every object it
    names is stored: the relay acknowledges from its spool and uploads after."""
    wanted = list(playlist_keys)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    texts: dict[str, str] = {}
    while True:
        keys = list_keys(client, bucket)
        texts = {key: read_text(client, bucket, key) for key in wanted if key in keys}
        done = len(texts) == len(wanted) and all(
            "#EXT-X-ENDLIST" in text
            and all(
                resolve_reference(key, uri) in keys for uri in referenced_uris(text)
            )
            for key, text in texts.items()
        )
        if done:
            return texts
        if time.monotonic() > deadline:
            pytest.fail(
                f"playlists {wanted} were not complete in the bucket after "
                f"{SETTLE_TIMEOUT_S:g} s; last seen: {texts}"
            )
        time.sleep(0.2)


def assert_relay_log_clean(relay: Relay) -> None:
    text = relay.log_text()
    assert "Traceback" not in text, text[-6000:]
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert not errors, "\n".join(errors[:20])


def assert_content_types(client: S3Client, bucket: str, keys: Iterable[str]) -> None:
    wrong = []
    for key in sorted(keys):
        head = client.head_object(Bucket=bucket, Key=key)
        expected = CONTENT_TYPES.get(posixpath.splitext(key)[1])
        if expected is not None and head.get("ContentType") != expected:
            wrong.append(f"{key}: {head.get('ContentType')!r}, want {expected!r}")
        # Players re-read live playlists every target duration; a cached
        # copy older than that shows a stalled stream (CASES C11).
        if key.endswith(".m3u8"):
            cache = head.get("CacheControl", "")
            match = re.search(r"max-age=(\d+)", cache)
            fresh = "no-cache" in cache or "no-store" in cache
            if not fresh and (match is None or int(match.group(1)) > 1):
                wrong.append(f"{key}: Cache-Control {cache!r} lets players go stale")
    assert not wrong, "\n".join(wrong)


def assert_decodes(ffmpeg: FFmpeg, url: str) -> None:
    result = ffmpeg.decode(url)
    assert result.returncode == 0, f"{url}: {result.stderr[-3000:]}"
    assert not result.stderr.strip(), f"{url}: {result.stderr[-3000:]}"


def assert_no_violations(watcher: BucketWatcher, min_versions: int) -> None:
    assert not watcher.errors, watcher.errors[:5]
    assert not watcher.violations, "\n".join(map(str, watcher.violations[:20]))
    assert len(watcher.versions_seen) >= min_versions, (
        f"only {len(watcher.versions_seen)} playlist versions were observed"
    )


def test_live_ts_stream_with_deleted_segments(
    local_s3: LocalS3,
    bucket: str,
    relay_factory: RelayFactory,
    ffmpeg: FFmpeg,
) -> None:
    relay = relay_factory()
    client = local_s3.client()
    watcher = BucketWatcher(local_s3.client(), bucket, prefix="streams/")

    with watcher:
        result = ffmpeg.run(
            "-re", *ffmpeg.test_source(seconds=12), *X264, "-c:a", "aac",
            "-f", "hls", "-hls_time", "1", "-hls_list_size", "4",
            "-hls_flags", "delete_segments",
            "-method", "PUT", relay.base_url_for("LiveApp", "live.m3u8"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        final = wait_for_endlist(client, bucket, ["streams/live.m3u8"])

    assert_no_violations(watcher, min_versions=5)
    keys = list_keys(client, bucket)
    final_segments = [
        resolve_reference("streams/live.m3u8", uri)
        for uri in referenced_uris(final["streams/live.m3u8"])
    ]
    assert len(final_segments) == 4
    assert set(final_segments) <= keys
    # The first segments left the list long ago; ffmpeg DELETEd them and the
    # relay must have passed that on.
    seen_segments = {key for key in watcher.keys_seen if key.endswith(".ts")}
    deleted = seen_segments - keys
    assert "streams/live0.ts" in deleted
    assert len(deleted) >= 5, sorted(deleted)
    assert all(key.endswith((".ts", ".m3u8")) for key in keys), sorted(keys)
    assert_content_types(client, bucket, keys)
    assert_decodes(ffmpeg, local_s3.url_for(bucket, "streams/live.m3u8"))
    assert_relay_log_clean(relay)


def test_event_playlist_keeps_every_segment_in_order(
    local_s3: LocalS3,
    bucket: str,
    relay_factory: RelayFactory,
    ffmpeg: FFmpeg,
) -> None:
    relay = relay_factory()
    client = local_s3.client()
    watcher = BucketWatcher(local_s3.client(), bucket, prefix="streams/")

    with watcher:
        result = ffmpeg.run(
            "-re", *ffmpeg.test_source(seconds=10), *X264, "-c:a", "aac",
            "-f", "hls", "-hls_time", "1", "-hls_playlist_type", "event",
            "-method", "PUT", relay.base_url_for("LiveApp", "ev.m3u8"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        final = wait_for_endlist(client, bucket, ["streams/ev.m3u8"])

    assert_no_violations(watcher, min_versions=5)
    text = final["streams/ev.m3u8"]
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text
    uris = referenced_uris(text)
    assert uris == [f"ev{n}.ts" for n in range(len(uris))]
    assert len(uris) >= 9
    keys = list_keys(client, bucket)
    assert {f"streams/{uri}" for uri in uris} <= keys
    # An event playlist only grows: each version must extend the one before.
    previous: list[str] = []
    for version in watcher.versions_of("streams/ev.m3u8"):
        current = list(version.references)
        assert current[: len(previous)] == previous, version.text
        previous = current
    assert_content_types(client, bucket, keys)
    assert_decodes(ffmpeg, local_s3.url_for(bucket, "streams/ev.m3u8"))
    assert_relay_log_clean(relay)


def test_fmp4_variants_with_master_playlist_under_a_sub_folder(
    local_s3: LocalS3,
    bucket: str,
    relay_factory: RelayFactory,
    ffmpeg: FFmpeg,
) -> None:
    relay = relay_factory()
    client = local_s3.client()
    watcher = BucketWatcher(local_s3.client(), bucket, prefix="streams/")
    variants = ["streams/sub/stream_0.m3u8", "streams/sub/stream_1.m3u8"]

    with watcher:
        result = ffmpeg.run(
            "-re", *ffmpeg.test_source(seconds=12),
            "-map", "0:v", "-map", "1:a", "-map", "0:v", "-map", "1:a",
            *X264, "-b:v:0", "600k", "-s:v:1", "160x120", "-b:v:1", "150k",
            "-c:a", "aac", "-b:a", "64k",
            "-f", "hls", "-hls_time", "1", "-hls_list_size", "4",
            "-hls_segment_type", "fmp4",
            "-hls_fmp4_init_filename", "d_%v_init.mp4",
            "-hls_flags", "delete_segments", "-http_persistent", "1",
            "-var_stream_map", "v:0,a:0 v:1,a:1",
            "-master_pl_name", "master.m3u8",
            "-method", "PUT", relay.base_url_for("LiveApp", "sub/stream_%v.m3u8"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        final = wait_for_endlist(client, bucket, variants)
        assert "streams/sub/master.m3u8" in list_keys(client, bucket)

    assert_no_violations(watcher, min_versions=10)
    keys = list_keys(client, bucket)
    outside = sorted(
        k for k in keys | watcher.keys_seen if not k.startswith("streams/sub/")
    )
    assert not outside, outside
    # Each init is PUT once at the start; losing it makes the variant unplayable.
    assert {"streams/sub/d_0_init.mp4", "streams/sub/d_1_init.mp4"} <= keys
    for key in variants:
        assert any(uri.endswith(".m4s") for uri in referenced_uris(final[key]))
    master = read_text(client, bucket, "streams/sub/master.m3u8")
    assert sorted(referenced_uris(master)) == ["stream_0.m3u8", "stream_1.m3u8"]
    # The first segments left the list long ago and were deleted.
    deleted = {k for k in watcher.keys_seen if k.endswith(".m4s")} - keys
    assert len(deleted) >= 8, sorted(deleted)
    assert_content_types(client, bucket, keys)
    for key in ["streams/sub/master.m3u8", *variants]:
        assert_decodes(ffmpeg, local_s3.url_for(bucket, key))
    assert_relay_log_clean(relay)
