"""What the relay puts on the wire in each HLSRELAY_S3_CHECKSUM mode, recorded
by a proxy between a real relay process and SeaweedFS.

Over TLS, botocore's newer default (when_supported) turns every upload into
an aws-chunked body with a CRC32 trailer, which several S3-compatible
providers refuse or mis-sign; when_required must send a plain, signed body.
"""

from __future__ import annotations

import base64
import hashlib
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import RelayFactory
from test_check import relay_env, run_cli
from wireproxy import LocalCA, Recorded, RecordingProxy, make_local_ca

from app.locals3 import LocalS3

pytestmark = pytest.mark.integration

SEGMENT = bytes(range(256)) * 40  # 10 KiB
PLAYLIST = (
    b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"
    b"#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:2.0,\nseg_000.ts\n"
)
STORED_WITHIN_S = 60.0


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return make_local_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(params=["https", "http"])
def proxy(
    request: pytest.FixtureRequest, local_s3: LocalS3, test_ca: LocalCA
) -> Iterator[RecordingProxy]:
    ca = test_ca if request.param == "https" else None
    with RecordingProxy(local_s3.endpoint, ca) as running:
        yield running


def push_stream(
    relay_factory: RelayFactory,
    proxy: RecordingProxy,
    test_ca: LocalCA,
    local_s3: LocalS3,
    bucket: str,
    *,
    chunked: bool = False,
    **settings: str,
) -> None:
    """A segment and its playlist through a relay whose S3 is the proxy.

    With a Content-Length the segment is sent to S3 while it arrives (a
    streamed upload); ``chunked`` sends it as ffmpeg does, uploaded once whole.
    """
    env = {
        "HLSRELAY_S3_ENDPOINT": proxy.url,
        "HLSRELAY_S3_CA_BUNDLE": str(test_ca.ca_path),
        **settings,
    }
    relay = relay_factory(extra_env=env)
    for path, body in (("wire/seg_000.ts", SEGMENT), ("wire/index.m3u8", PLAYLIST)):
        content = iter([body]) if chunked else body
        answer = httpx.put(relay.base_url_for("LiveApp", path), content=content)
        assert answer.status_code == 201, answer.text

    client = local_s3.client()
    deadline = time.monotonic() + STORED_WITHIN_S
    while time.monotonic() < deadline:
        listing = client.list_objects_v2(Bucket=bucket, Prefix="streams/wire/")
        if len(listing.get("Contents", [])) == 2:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"not stored within {STORED_WITHIN_S:g} s; {relay.log_text()}")
    stored = client.get_object(Bucket=bucket, Key="streams/wire/seg_000.ts")
    # Whatever the framing on the wire, SeaweedFS must have kept the bytes.
    assert stored["Body"].read() == SEGMENT


def segment_put(proxy: RecordingProxy, bucket: str) -> Recorded:
    found = proxy.find("PUT", f"/{bucket}/streams/wire/seg_000.ts")
    assert len(found) == 1, [(r.method, r.path) for r in proxy.records]
    return found[0]


def checksum_headers(record: Recorded) -> list[str]:
    return sorted(
        name
        for name in record.headers
        if name.startswith("x-amz-checksum-") or name == "x-amz-sdk-checksum-algorithm"
    )


def assert_plain(put: Recorded) -> None:
    """The segment went as it is: its own length, no framing, no checksums."""
    assert checksum_headers(put) == []
    assert "content-encoding" not in put.headers
    assert "transfer-encoding" not in put.headers
    assert put.headers["content-length"] == str(len(SEGMENT))
    assert put.body == SEGMENT
    assert put.headers["content-type"] == "video/mp2t"


def crc32_of(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_wire_when_required_upload_is_plain_and_signed(
    relay_factory: RelayFactory,
    proxy: RecordingProxy,
    test_ca: LocalCA,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    push_stream(relay_factory, proxy, test_ca, local_s3, bucket, chunked=True)

    put = segment_put(proxy, bucket)
    assert_plain(put)
    assert "x-amz-trailer" not in put.headers
    assert put.headers["x-amz-content-sha256"] == hashlib.sha256(SEGMENT).hexdigest()
    # Nothing is sent for what the operator did not configure (C16).
    assert "x-amz-acl" not in put.headers
    assert "x-amz-storage-class" not in put.headers


def test_wire_streamed_upload_is_plain_with_its_headers_signed(
    relay_factory: RelayFactory,
    proxy: RecordingProxy,
    test_ca: LocalCA,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    push_stream(relay_factory, proxy, test_ca, local_s3, bucket)

    put = segment_put(proxy, bucket)
    assert_plain(put)
    # The payload cannot be hashed before it has arrived; the headers are
    # signed, the length among them, so S3 takes nothing shorter or longer.
    assert put.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    signed = put.headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert "content-length" in signed.split(";")


def test_wire_when_supported_upload_over_tls_is_aws_chunked(
    relay_factory: RelayFactory,
    proxy: RecordingProxy,
    test_ca: LocalCA,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    push_stream(
        relay_factory,
        proxy,
        test_ca,
        local_s3,
        bucket,
        HLSRELAY_S3_CHECKSUM="when_supported",
    )

    put = segment_put(proxy, bucket)
    if proxy.scheme == "https":
        assert put.headers["content-encoding"] == "aws-chunked"
        assert put.headers["x-amz-trailer"] == "x-amz-checksum-crc32"
        assert put.headers["x-amz-decoded-content-length"] == str(len(SEGMENT))
        assert (
            put.headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        )
        assert "content-length" not in put.headers
        trailer = f"x-amz-checksum-crc32:{crc32_of(SEGMENT)}\r\n".encode()
        assert trailer in put.decoded
    else:
        # Without TLS botocore signs the body and sends the CRC32 as a header.
        assert put.headers["x-amz-checksum-crc32"] == crc32_of(SEGMENT)
        assert "content-encoding" not in put.headers
        assert put.body == SEGMENT
    assert put.headers["x-amz-sdk-checksum-algorithm"] == "CRC32"


def test_wire_acl_and_storage_class_sent_only_when_set(
    relay_factory: RelayFactory,
    proxy: RecordingProxy,
    test_ca: LocalCA,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    push_stream(
        relay_factory,
        proxy,
        test_ca,
        local_s3,
        bucket,
        HLSRELAY_S3_ACL="public-read",
        HLSRELAY_S3_STORAGE_CLASS="STANDARD_IA",
        HLSRELAY_SEGMENT_CACHE_CONTROL="public, max-age=31536000, immutable",
    )

    put = segment_put(proxy, bucket)
    assert put.headers["x-amz-acl"] == "public-read"
    assert put.headers["x-amz-storage-class"] == "STANDARD_IA"
    assert put.headers["cache-control"] == "public, max-age=31536000, immutable"
    playlist = proxy.find("PUT", f"/{bucket}/streams/wire/index.m3u8")[0]
    assert playlist.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert playlist.headers["cache-control"] == "max-age=1"


@pytest.mark.parametrize("mode", ["when_required", "when_supported"])
def test_wire_put_bucket_cors_checksum_per_mode(
    proxy: RecordingProxy,
    test_ca: LocalCA,
    local_s3: LocalS3,
    bucket: str,
    tmp_path: Path,
    mode: str,
) -> None:
    # PutBucketCors is one of the calls S3 demands a checksum for, like the
    # DeleteObjects of a stream's clean-up.
    env = relay_env(
        local_s3,
        bucket,
        HLSRELAY_S3_ENDPOINT=proxy.url,
        HLSRELAY_S3_CA_BUNDLE=str(test_ca.ca_path),
        HLSRELAY_S3_CHECKSUM=mode,
        HLSRELAY_SPOOL_DIR=str(tmp_path),
    )
    result = run_cli(env, "--origin", "https://player.example.com", command="cors")
    assert result.returncode == 0, result.stdout + result.stderr

    put = proxy.find("PUT", f"/{bucket}?cors")
    assert len(put) == 1, [(r.method, r.path) for r in proxy.records]
    headers = put[0].headers
    if mode == "when_required":
        md5 = base64.b64encode(hashlib.md5(put[0].body).digest()).decode()
        assert headers["content-md5"] == md5
        assert checksum_headers(put[0]) == []
    else:
        assert "content-md5" not in headers
        assert headers["x-amz-checksum-crc32"] == crc32_of(put[0].body)
