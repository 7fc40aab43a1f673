"""What a restart must not forget: deletes held for a playlist, and empty bodies."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from botocore.exceptions import ClientError

from app.locals3 import LocalS3

pytestmark = pytest.mark.integration


def exists(local_s3: LocalS3, bucket: str, key: str) -> bool:
    try:
        local_s3.client().head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_delete_held_for_a_playlist_stays_held_after_restart(
    relay_factory: Callable[..., object], local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    url = relay.base_url_for  # type: ignore[attr-defined]
    assert (
        httpx.put(url("LiveApp", "r/segA.ts"), content=b"a" * 1000).status_code == 201
    )
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nsegA.ts\n"
    assert httpx.put(url("LiveApp", "r/r.m3u8"), content=playlist).status_code == 201
    wait_for(lambda: exists(local_s3, bucket, "streams/r/r.m3u8"))

    assert httpx.delete(url("LiveApp", "r/segA.ts")).status_code == 204
    relay.terminate()  # type: ignore[attr-defined]
    relay.start()  # type: ignore[attr-defined]
    time.sleep(3)
    assert exists(local_s3, bucket, "streams/r/segA.ts"), "a named segment was deleted"
    assert "replayed deletes count=1" in relay.log_text()  # type: ignore[attr-defined]

    # Once the written playlist no longer names it, the delete goes through.
    assert (
        httpx.put(url("LiveApp", "r/segB.ts"), content=b"b" * 1000).status_code == 201
    )
    newer = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nsegB.ts\n"
    assert httpx.put(url("LiveApp", "r/r.m3u8"), content=newer).status_code == 201
    wait_for(lambda: not exists(local_s3, bucket, "streams/r/segA.ts"))


def test_empty_media_body_is_refused_and_keeps_stored_object(
    relay_factory: Callable[..., object], local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    url = relay.base_url_for("LiveApp", "e/seg.ts")  # type: ignore[attr-defined]
    assert httpx.put(url, content=b"x" * 500).status_code == 201
    wait_for(lambda: exists(local_s3, bucket, "streams/e/seg.ts"))

    for method in ("PUT", "POST"):
        response = httpx.request(method, url, content=b"")
        assert response.status_code == 400
        assert response.json()["error"] == "empty_body"
    assert httpx.put(url.replace("seg.ts", "one.ts"), content=b"1").status_code == 201
    wait_for(lambda: exists(local_s3, bucket, "streams/e/one.ts"))
    body = local_s3.client().get_object(Bucket=bucket, Key="streams/e/seg.ts")["Body"]
    assert body.read() == b"x" * 500
