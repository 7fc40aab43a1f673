"""S3 calls as configured: what reaches each request, and which refusals retry.

Stubber checks the parameters of each call exactly (an extra one fails the
test); the scripted provider sees the request as signed, headers and all.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
import time
import zlib
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    SSLError,
)
from botocore.stub import ANY, Stubber
from pydantic import ValidationError
from s3script import Reply, ScriptedS3, Sent, error

from app.config import Settings
from app.errors import RetryableStorageError, StorageError
from app.storage import S3Storage, build_client, map_error

KEY = "streams/live/seg_001.ts"


@pytest.fixture(autouse=True)
def _no_operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own HLSRELAY_* or AWS_* settings must not change the tests.
    import os

    for name in list(os.environ):
        if name.startswith(("HLSRELAY_", "AWS_")):
            monkeypatch.delenv(name)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "spool_dir": tmp_path,
        "s3_bucket": "bkt",
        "s3_endpoint": "https://s3.example.test",
        "s3_region": "us-east-1",
        "s3_access_key": "AKIDEXAMPLE",
        "s3_secret_key": "not-a-real-secret",
        "s3_addressing": "path",
    }
    values.update(overrides)
    return Settings(**values)


def scripted(settings: Settings, answer: Any = None) -> tuple[S3Storage, ScriptedS3]:
    storage = S3Storage(settings)
    script = (
        ScriptedS3(storage.client)
        if answer is None
        else ScriptedS3(storage.client, answer)
    )
    return storage, script


def segment(tmp_path: Path, size: int = 100) -> Path:
    path = tmp_path / "body"
    path.write_bytes(b"G" * size)
    return path


# -- parameters, exactly as configured --------------------------------------


def test_put_file_unset_acl_and_class_sends_only_type_and_cache(tmp_path: Path) -> None:
    storage = S3Storage(make_settings(tmp_path))
    body = segment(tmp_path)
    with Stubber(storage.client) as stub:
        stub.add_response(
            "put_object",
            {},
            {
                "Bucket": "bkt",
                "Key": KEY,
                "Body": ANY,
                "ContentLength": 100,
                "ContentType": "video/mp2t",
                "CacheControl": "max-age=86400",
            },
        )
        storage.put_file(KEY, body, 100, "video/mp2t", "max-age=86400")
        stub.assert_no_pending_responses()


def test_put_file_acl_and_class_set_reach_the_call(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, s3_acl="public-read", s3_storage_class="STANDARD_IA"
    )
    storage = S3Storage(settings)
    with Stubber(storage.client) as stub:
        stub.add_response(
            "put_object",
            {},
            {
                "Bucket": "bkt",
                "Key": "streams/live/index.m3u8",
                "Body": ANY,
                "ContentLength": 100,
                "ContentType": "application/vnd.apple.mpegurl",
                "CacheControl": "no-cache",
                "ACL": "public-read",
                "StorageClass": "STANDARD_IA",
            },
        )
        storage.put_file(
            "streams/live/index.m3u8",
            segment(tmp_path),
            100,
            "application/vnd.apple.mpegurl",
            "no-cache",
        )
        stub.assert_no_pending_responses()


def test_put_bytes_unset_acl_sends_no_acl(tmp_path: Path) -> None:
    storage = S3Storage(make_settings(tmp_path, s3_acl=""))
    with Stubber(storage.client) as stub:
        stub.add_response(
            "put_object",
            {},
            {
                "Bucket": "bkt",
                "Key": KEY,
                "Body": b"abc",
                "ContentType": "video/mp2t",
                "CacheControl": "max-age=60",
            },
        )
        storage.put_bytes(KEY, b"abc", "video/mp2t", "max-age=60")
        stub.assert_no_pending_responses()


# -- headers, as signed ---------------------------------------------------------


def test_put_headers_unset_options_carry_no_acl_or_class(tmp_path: Path) -> None:
    storage, script = scripted(make_settings(tmp_path))
    storage.put_file(KEY, segment(tmp_path), 100, "video/mp2t", "max-age=86400")

    sent = script.only("PUT")
    assert sent.headers["content-type"] == "video/mp2t"
    assert sent.headers["cache-control"] == "max-age=86400"
    assert "x-amz-acl" not in sent.headers
    assert "x-amz-storage-class" not in sent.headers
    assert sent.body == b"G" * 100


def test_put_headers_acl_and_class_set_are_sent(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, s3_acl="bucket-owner-full-control", s3_storage_class="ONEZONE_IA"
    )
    storage, script = scripted(settings)
    storage.put_file(KEY, segment(tmp_path), 100, "video/mp2t", "max-age=86400")

    sent = script.only("PUT")
    assert sent.headers["x-amz-acl"] == "bucket-owner-full-control"
    assert sent.headers["x-amz-storage-class"] == "ONEZONE_IA"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_put_when_required_sends_no_checksum_nor_chunking(
    tmp_path: Path, scheme: str
) -> None:
    settings = make_settings(tmp_path, s3_endpoint=f"{scheme}://s3.example.test")
    storage, script = scripted(settings)
    storage.put_file(KEY, segment(tmp_path), 100, "video/mp2t", "max-age=86400")

    headers = script.only("PUT").headers
    assert not [name for name in headers if name.startswith("x-amz-checksum-")]
    assert "x-amz-sdk-checksum-algorithm" not in headers
    assert "x-amz-trailer" not in headers
    assert "content-encoding" not in headers
    assert "transfer-encoding" not in headers
    assert headers["content-length"] == "100"
    # The body is signed instead: SigV4's payload hash covers it.
    assert headers["x-amz-content-sha256"] == hashlib.sha256(b"G" * 100).hexdigest()


def test_put_when_supported_over_https_sends_crc32_trailer(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, s3_checksum="when_supported")
    storage, script = scripted(settings)
    storage.put_file(KEY, segment(tmp_path), 100, "video/mp2t", "max-age=86400")

    sent = script.only("PUT")
    assert sent.headers["content-encoding"] == "aws-chunked"
    assert sent.headers["x-amz-trailer"] == "x-amz-checksum-crc32"
    assert sent.headers["x-amz-decoded-content-length"] == "100"
    assert sent.headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    crc = base64.b64encode(zlib.crc32(b"G" * 100).to_bytes(4, "big")).decode()
    assert f"x-amz-checksum-crc32:{crc}".encode() in sent.body


def test_put_when_supported_over_http_sends_crc32_header(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, s3_checksum="when_supported", s3_endpoint="http://127.0.0.1:9"
    )
    storage, script = scripted(settings)
    storage.put_bytes(KEY, b"abc", "video/mp2t", "max-age=60")

    headers = script.only("PUT").headers
    crc = base64.b64encode(zlib.crc32(b"abc").to_bytes(4, "big")).decode()
    assert headers["x-amz-checksum-crc32"] == crc
    assert "content-encoding" not in headers


def _delete_result(sent: Sent) -> Reply:
    return Reply(200, b"<DeleteResult></DeleteResult>")


def test_delete_objects_when_required_sends_content_md5(tmp_path: Path) -> None:
    storage, script = scripted(make_settings(tmp_path), _delete_result)
    storage.client.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": KEY}]})

    sent = script.only("POST")
    md5 = base64.b64encode(hashlib.md5(sent.body).digest()).decode()
    assert sent.headers["content-md5"] == md5
    assert not [name for name in sent.headers if name.startswith("x-amz-checksum-")]
    assert "x-amz-sdk-checksum-algorithm" not in sent.headers


def test_delete_objects_when_supported_sends_crc32(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, s3_checksum="when_supported")
    storage, script = scripted(settings, _delete_result)
    storage.client.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": KEY}]})

    sent = script.only("POST")
    assert "content-md5" not in sent.headers
    crc = base64.b64encode(zlib.crc32(sent.body).to_bytes(4, "big")).decode()
    assert sent.headers["x-amz-checksum-crc32"] == crc


def test_delete_objects_algorithm_chosen_by_caller_is_kept(tmp_path: Path) -> None:
    storage, script = scripted(make_settings(tmp_path), _delete_result)
    storage.client.delete_objects(
        Bucket="bkt", Delete={"Objects": [{"Key": KEY}]}, ChecksumAlgorithm="SHA256"
    )

    sent = script.only("POST")
    assert "x-amz-checksum-sha256" in sent.headers
    assert "content-md5" not in sent.headers


def test_get_sends_no_checksum_mode(tmp_path: Path) -> None:
    def answer(sent: Sent) -> Reply:
        return Reply(200, b"#EXTM3U\n", {"Content-Length": "8"})

    storage, script = scripted(make_settings(tmp_path), answer)
    assert storage.get("streams/a.m3u8", 1024) == b"#EXTM3U\n"
    assert "x-amz-checksum-mode" not in script.only("GET").headers


def test_clock_takes_s3s_time_from_the_date_of_its_answers(tmp_path: Path) -> None:
    replies = [
        Reply(200),
        Reply(200, headers={"Date": formatdate(time.time() - 30, usegmt=True)}),
        error(403, "AccessDenied"),
        Reply(200, headers={"Date": "not a date"}),
    ]
    replies[2].headers["Date"] = formatdate(time.time() + 30, usegmt=True)
    storage, _ = scripted(make_settings(tmp_path), lambda sent: replies.pop(0))

    storage.check_bucket()
    assert storage.clock.to_s3(time.time()) is None  # no Date yet

    # Date drops the fraction of a second: S3's time is early, never late.
    storage.check_bucket()
    now = time.time()
    assert now - 32 < (storage.clock.to_s3(now) or 0) <= now - 30

    # A refusal tells the time as well; a Date that is not one is passed over.
    with pytest.raises(StorageError):
        storage.check_bucket()
    storage.check_bucket()
    now = time.time()
    assert now + 28 < (storage.clock.to_s3(now) or 0) <= now + 30


def test_multipart_upload_carries_every_setting(tmp_path: Path) -> None:
    size = 5 * 1024**2 + 10
    settings = make_settings(
        tmp_path,
        s3_acl="private",
        s3_storage_class="STANDARD_IA",
        multipart_threshold_bytes=5 * 1024**2,
    )

    def answer(sent: Sent) -> Reply:
        if sent.method == "POST" and sent.query == "uploads":
            return Reply(
                200,
                b"<InitiateMultipartUploadResult><Bucket>bkt</Bucket>"
                b"<Key>k</Key><UploadId>u1</UploadId></InitiateMultipartUploadResult>",
            )
        if sent.method == "PUT":
            return Reply(200, b"", {"ETag": '"e"'})
        return Reply(200, b"<CompleteMultipartUploadResult/>")

    storage, script = scripted(settings, answer)
    storage.put_file(KEY, segment(tmp_path, size), size, "video/mp4", "max-age=600")

    create = next(s for s in script.sent if s.query == "uploads")
    assert create.headers["content-type"] == "video/mp4"
    assert create.headers["cache-control"] == "max-age=600"
    assert create.headers["x-amz-acl"] == "private"
    assert create.headers["x-amz-storage-class"] == "STANDARD_IA"
    parts = [s for s in script.sent if s.method == "PUT"]
    assert sum(len(p.body) for p in parts) == size
    for part in parts:
        assert not [n for n in part.headers if n.startswith("x-amz-checksum-")]
        assert "content-encoding" not in part.headers


def test_ca_bundle_set_is_what_the_client_verifies_with(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("unused")
    client = build_client(make_settings(tmp_path, s3_ca_bundle=str(bundle)))
    endpoint: Any = client._endpoint  # type: ignore[attr-defined]
    assert endpoint.http_session._verify == str(bundle)


# -- settings that are refused at start -----------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"s3_endpoint": "s3.gra.io.cloud.ovh.net"}, "https://"),
        ({"s3_endpoint": "ftp://s3.example.test"}, "https://"),
        ({"s3_endpoint": "https://s3.example.test/?x=1"}, "query"),
        ({"s3_endpoint": None, "s3_region": "auto"}, "needs HLSRELAY_S3_ENDPOINT"),
        (
            {"s3_endpoint": "https://bkt.ams3.digitaloceanspaces.com"},
            "holds the bucket",
        ),
        ({"s3_endpoint": "https://s3.amazonaws.com/bkt"}, "holds the bucket"),
    ],
)
def test_settings_bad_s3_location_is_refused(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        make_settings(tmp_path, **overrides)


def test_settings_endpoint_trailing_slash_is_dropped(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, s3_endpoint="https://storage.googleapis.com/", s3_region="auto"
    )
    assert settings.s3_endpoint == "https://storage.googleapis.com"
    assert settings.s3_ca_bundle is None


# -- refusals: retryable or final ---------------------------------------------------


def client_error(status: int, code: str, message: str = "") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message or code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (503, "SlowDown"),
        (503, "ServiceUnavailable"),
        (500, "InternalError"),
        (502, "BadGateway"),
        (429, "TooManyRequests"),
        (400, "RequestTimeout"),
        (409, "OperationAborted"),
    ],
)
def test_map_error_transient_refusal_is_retryable(status: int, code: str) -> None:
    mapped = map_error(client_error(status, code), "PUT 'k'")
    assert isinstance(mapped, RetryableStorageError)
    assert mapped.code == code


@pytest.mark.parametrize(
    ("status", "code", "setting"),
    [
        (404, "NoSuchBucket", "HLSRELAY_S3_BUCKET"),
        (403, "InvalidAccessKeyId", "HLSRELAY_S3_ACCESS_KEY"),
        (403, "SignatureDoesNotMatch", "HLSRELAY_S3_SECRET_KEY"),
        (403, "AccessDenied", "docs/providers.md"),
        (400, "AuthorizationHeaderMalformed", "HLSRELAY_S3_REGION"),
        (301, "PermanentRedirect", "HLSRELAY_S3_REGION"),
        (403, "RequestTimeTooSkewed", "clock"),
        (400, "AccessControlListNotSupported", "HLSRELAY_S3_ACL"),
        (400, "InvalidStorageClass", "HLSRELAY_S3_STORAGE_CLASS"),
        (501, "NotImplemented", "HLSRELAY_S3_CHECKSUM=when_required"),
        (400, "MissingContentMD5", "HLSRELAY_S3_CHECKSUM=when_required"),
    ],
)
def test_map_error_final_refusal_names_the_setting(
    status: int, code: str, setting: str
) -> None:
    mapped = map_error(client_error(status, code), "PUT 'k'")
    assert type(mapped) is StorageError
    assert mapped.code == code
    assert setting in mapped.detail
    assert code in mapped.detail


def test_map_error_gcs_uniform_access_acl_names_acl() -> None:
    exc = client_error(
        400,
        "InvalidArgument",
        "Cannot insert legacy ACL for an object when uniform bucket-level "
        "access is enabled.",
    )
    mapped = map_error(exc, "PUT 'k'")
    assert type(mapped) is StorageError
    assert "HLSRELAY_S3_ACL" in mapped.detail


def test_map_error_unreachable_is_retryable() -> None:
    exc = EndpointConnectionError(endpoint_url="https://s3.example.test")
    mapped = map_error(exc, "PUT 'k'")
    assert isinstance(mapped, RetryableStorageError)
    assert mapped.code == "Unreachable"


def test_map_error_untrusted_certificate_is_final() -> None:
    exc = SSLError(endpoint_url="https://s3.example.test", error=OSError("bad cert"))
    mapped = map_error(exc, "PUT 'k'")
    assert type(mapped) is StorageError
    assert "HLSRELAY_S3_CA_BUNDLE" in mapped.detail


def test_map_error_no_credentials_is_final() -> None:
    mapped = map_error(NoCredentialsError(), "PUT 'k'")
    assert type(mapped) is StorageError
    assert "HLSRELAY_S3_ACCESS_KEY" in mapped.detail


# -- retries over a real socket ---------------------------------------------------


class _Refuser(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's canned refusal, and counts."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        server: Any = self.server
        server.count += 1
        status, code = server.reply
        body = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read what was recorded, not a log."""


@pytest.fixture
def refuser() -> Iterator[Any]:
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuser)
    server.count = 0
    server.reply = (500, "InternalError")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "code", "attempts", "retryable"),
    [
        (503, "SlowDown", 3, True),
        (500, "InternalError", 3, True),
        (403, "AccessDenied", 1, False),
        (404, "NoSuchBucket", 1, False),
        (501, "NotImplemented", 1, False),
    ],
)
def test_client_retries_only_what_retrying_can_fix(
    tmp_path: Path,
    refuser: Any,
    status: int,
    code: str,
    attempts: int,
    retryable: bool,
) -> None:
    refuser.reply = (status, code)
    endpoint = f"http://127.0.0.1:{refuser.server_address[1]}"
    storage = S3Storage(make_settings(tmp_path, s3_endpoint=endpoint))

    with pytest.raises(StorageError) as caught:
        storage.put_bytes(KEY, b"abc", "video/mp2t", "max-age=60")

    assert caught.value.code == code
    assert isinstance(caught.value, RetryableStorageError) is retryable
    assert refuser.count == attempts
