"""What a restart must not forget: deletes held for a playlist, and empty bodies."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Callable

import httpx
import pytest
from botocore.exceptions import ClientError
from conftest import RelayFactory

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


def test_a_body_still_arriving_when_the_grace_ends_is_dropped_in_one_line(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory(extra_env={"HLSRELAY_SHUTDOWN_GRACE_S": "1"})
    incoming = relay.spool_dir / "incoming"
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
        sock.sendall(
            b"PUT /LiveApp/hls-upload/g/seg1.ts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 1048576\r\n\r\n" + b"g" * (300 * 1024)
        )
        # The body's file is open in the spool, and the client keeps it open.
        wait_for(lambda: any(incoming.iterdir()))
        assert relay.terminate() == -signal.SIGTERM

    assert list(incoming.iterdir()) == []
    assert not exists(local_s3, bucket, "streams/g/seg1.ts")
    lines = [line for line in relay.log_text().splitlines() if "g/seg1.ts" in line]
    assert len(lines) == 1, lines
    assert re.search(
        r"WARNING .*status=499 .*error=cancelled: cancelled after \d+ bytes, before "
        r"the body was whole; not acknowledged, nothing of it kept",
        lines[0],
    ), lines[0]
    assert "Traceback" not in relay.log_text()
    # uvicorn's own word on it, at the level of the line above.
    assert re.search(
        r"WARNING uvicorn shutdown grace passed with 1 request\(s\) running: "
        r"cancelled",
        relay.log_text(),
    ), relay.log_text()[-2000:]
    assert " ERROR " not in relay.log_text()
    assert "stopping signal=SIGTERM: no new connections" in relay.log_text()
