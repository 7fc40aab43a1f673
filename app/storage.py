"""The S3 side: one boto3 client, the calls the relay makes, and their errors.

botocore's exceptions are mapped to ``StorageError`` (retrying cannot help)
or ``RetryableStorageError`` (S3 is down, slow or throttling) here and only
here, so the rest of the relay never imports botocore.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.model import OperationModel

from app.config import Settings
from app.errors import RetryableStorageError, StorageError
from app.growing import BodyAbandoned

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

log = logging.getLogger(__name__)

# S3 error codes that mean "try again later"; every other 4xx is final.
_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    "503",
    "500",
}

# Answers with a 5xx status that no retry can change: the provider does not
# implement what the request asked for (aws-chunked bodies, say).
_FINAL_CODES = {"NotImplemented", "501"}

# What an operator changes when S3 refuses with a given code. Messages of
# S3-compatible providers vary; the codes are the stable part.
_FIXES = {
    "NoSuchBucket": "HLSRELAY_S3_BUCKET: no such bucket at this endpoint and region",
    "404": "HLSRELAY_S3_BUCKET: no such bucket at this endpoint and region",
    "InvalidBucketName": "HLSRELAY_S3_BUCKET: not a valid bucket name",
    "InvalidAccessKeyId": "HLSRELAY_S3_ACCESS_KEY: the provider does not know "
    "this key (or HLSRELAY_S3_ENDPOINT points at another provider)",
    "SignatureDoesNotMatch": "HLSRELAY_S3_SECRET_KEY: it does not belong to "
    "the access key",
    "AccessDenied": "the key's permissions: it needs the policy in "
    "docs/providers.md on this bucket and prefix",
    "403": "the key's permissions or HLSRELAY_S3_ACCESS_KEY/HLSRELAY_S3_SECRET_KEY",
    "AuthorizationHeaderMalformed": "HLSRELAY_S3_REGION: the bucket's provider "
    "expects another region",
    "PermanentRedirect": "HLSRELAY_S3_REGION (or HLSRELAY_S3_ENDPOINT): the "
    "bucket lives in another region",
    "301": "HLSRELAY_S3_REGION (or HLSRELAY_S3_ENDPOINT): the bucket lives in "
    "another region",
    "IllegalLocationConstraintException": "HLSRELAY_S3_REGION: the bucket "
    "lives in another region",
    "InvalidRegion": "HLSRELAY_S3_REGION",
    "RequestTimeTooSkewed": "this machine's clock: it differs from the "
    "provider's by more than 15 minutes; run NTP (chrony, systemd-timesyncd)",
    "AccessControlListNotSupported": "HLSRELAY_S3_ACL: unset it, the bucket "
    "enforces owner and refuses ACLs",
    "InvalidStorageClass": "HLSRELAY_S3_STORAGE_CLASS: the provider does not "
    "offer this class",
    "InvalidObjectState": "HLSRELAY_S3_STORAGE_CLASS: objects of this class "
    "cannot be read back at once",
    "NotImplemented": "HLSRELAY_S3_CHECKSUM=when_required: the provider does "
    "not implement what the request used",
    "501": "HLSRELAY_S3_CHECKSUM=when_required: the provider does not "
    "implement what the request used",
    "XAmzContentSHA256Mismatch": "HLSRELAY_S3_CHECKSUM=when_required",
    "MissingContentMD5": "HLSRELAY_S3_CHECKSUM=when_required",
    "Unreachable": "HLSRELAY_S3_ENDPOINT: nothing answers there",
    "TLS": "HLSRELAY_S3_ENDPOINT or HLSRELAY_S3_CA_BUNDLE: the endpoint's "
    "certificate is not trusted",
    "NoCredentials": "HLSRELAY_S3_ACCESS_KEY and HLSRELAY_S3_SECRET_KEY, or "
    "the AWS default chain (AWS_PROFILE, instance role)",
}


# Parts of one large file sent at once; with HLSRELAY_UPLOAD_CONCURRENCY this
# bounds the connections the pool needs.
MULTIPART_CONCURRENCY = 4
# DeleteObjects takes at most this many keys per call.
BULK_DELETE_MAX = 1000


@dataclass(frozen=True)
class ObjectInfo:
    content_type: str
    cache_control: str


@dataclass(frozen=True)
class CorsRule:
    """One bucket CORS rule, as S3's PutBucketCors takes it."""

    methods: tuple[str, ...]
    origins: tuple[str, ...]
    allowed_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age_s: int | None = None
    rule_id: str | None = None

    def to_s3(self) -> dict[str, Any]:
        rule: dict[str, Any] = {
            "AllowedMethods": list(self.methods),
            "AllowedOrigins": list(self.origins),
        }
        if self.rule_id:
            rule["ID"] = self.rule_id
        if self.allowed_headers:
            rule["AllowedHeaders"] = list(self.allowed_headers)
        if self.expose_headers:
            rule["ExposeHeaders"] = list(self.expose_headers)
        if self.max_age_s is not None:
            rule["MaxAgeSeconds"] = self.max_age_s
        return rule

    @classmethod
    def from_s3(cls, rule: Mapping[str, Any]) -> CorsRule:
        max_age = rule.get("MaxAgeSeconds")
        return cls(
            methods=tuple(rule.get("AllowedMethods", ())),
            origins=tuple(rule.get("AllowedOrigins", ())),
            allowed_headers=tuple(rule.get("AllowedHeaders", ())),
            expose_headers=tuple(rule.get("ExposeHeaders", ())),
            max_age_s=int(max_age) if max_age is not None else None,
            rule_id=rule.get("ID") or None,
        )


def fix_for(code: str, message: str = "") -> str:
    """The setting to change for an S3 refusal with ``code``; "" if unknown."""
    # InvalidArgument and InvalidRequest cover many causes; the message says
    # which. GCS answers an ACL on a bucket with uniform access this way.
    lowered = message.lower()
    if code in ("InvalidArgument", "InvalidRequest", "400"):
        if "acl" in lowered or "uniform bucket-level access" in lowered:
            return _FIXES["AccessControlListNotSupported"]
        if "storage class" in lowered or "storageclass" in lowered:
            return _FIXES["InvalidStorageClass"]
        if "checksum" in lowered or "md5" in lowered or "chunked" in lowered:
            return _FIXES["NotImplemented"]
        if "region" in lowered:
            return _FIXES["InvalidRegion"]
    return _FIXES.get(code, "")


def _md5_where_required(
    model: OperationModel, params: dict[str, Any], **_: Any
) -> None:
    """Send Content-MD5 instead of botocore's default CRC32 where S3 needs a checksum.

    Since botocore 1.36, operations that require a checksum (DeleteObjects,
    PutBucketCors) carry x-amz-checksum-crc32; providers that predate
    flexible checksums answer MissingContentMD5 or InvalidRequest. Content-MD5
    is what AWS and every compatible service accept.
    """
    required = model.http_checksum_required or model.http_checksum.get(
        "requestChecksumRequired"
    )
    headers = params["headers"]
    chosen = any(name.lower() == "x-amz-sdk-checksum-algorithm" for name in headers)
    if not required or chosen:
        return  # not needed, or the caller chose an algorithm itself
    body = params.get("body")
    if not isinstance(body, (bytes, bytearray)):
        return
    checksum = params["context"].get("checksum", {})
    checksum.pop("request_algorithm", None)
    checksum.pop("request_algorithm_header", None)
    digest = hashlib.md5(body, usedforsecurity=False).digest()
    headers["Content-MD5"] = base64.b64encode(digest).decode("ascii")


def build_client(
    settings: Settings,
    *,
    streamed: bool = False,
    session: boto3.session.Session | None = None,
) -> S3Client:
    """A client for the configured provider, pool sized for many streams.

    ``streamed`` is the client of bodies sent while they arrive: SigV4 can
    sign a payload only once all of it is there, so these go as
    UNSIGNED-PAYLOAD (what botocore does itself for streamed bodies over
    HTTPS); the headers, Content-Length included, are signed as always.
    """
    config = Config(
        region_name=settings.s3_region,
        signature_version="s3v4",
        s3=(
            {
                "addressing_style": settings.s3_addressing,
                "payload_signing_enabled": False,
            }
            if streamed
            else {"addressing_style": settings.s3_addressing}
        ),
        # Three tries in all (botocore's max_attempts would count retries
        # only): the uploader keeps retrying acknowledged files itself, and
        # /readyz must answer before a probe times out. A streamed body gets
        # one: the uploader sends it again from the spool once it is whole.
        retries={"mode": "standard", "total_max_attempts": 1 if streamed else 3},
        connect_timeout=settings.s3_connect_timeout_s,
        read_timeout=settings.s3_read_timeout_s,
        max_pool_connections=settings.s3_max_connections,
        request_checksum_calculation=settings.s3_checksum,
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    secret = (
        settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    )
    # A session of its own unless given one: a session is not thread-safe,
    # and clients built from one share its loaded service model (MiBs).
    session = session or boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=secret,
        config=config,
        verify=str(settings.s3_ca_bundle) if settings.s3_ca_bundle else None,
    )
    if settings.s3_checksum == "when_required":
        client.meta.events.register("before-call.s3", _md5_where_required)
    return client


def map_error(exc: Exception, what: str) -> StorageError:
    """Turn a botocore failure into the relay's retryable or final error."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        message = str(error.get("Message", "")) or code
        detail = f"S3 refused {what}: {code} ({status}) {message}".strip()
        if code == str(status):
            # HEAD answers have no body: the code is only the status again.
            detail = f"S3 refused {what}: HTTP {status} {message}".strip()
        if code not in _FINAL_CODES and (
            code in _RETRYABLE_CODES or status >= 500 or status == 429
        ):
            return RetryableStorageError(detail, code=code)
        return _final(detail, code, message)
    if isinstance(exc, SSLError):
        # A certificate that is not trusted today will not be trusted on retry.
        return _final(f"TLS to S3 failed for {what}: {exc}", "TLS")
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return RetryableStorageError(
            f"S3 is unreachable for {what}: {exc}", code="Unreachable"
        )
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return _final(f"no S3 credentials for {what}: {exc}", "NoCredentials")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"S3 client failed for {what}: {exc}", code="ClientError")
    if isinstance(exc, OSError):
        return RetryableStorageError(f"S3 I/O failed for {what}: {exc}", code="IO")
    raise exc


def watch_failed_tries(
    client: S3Client, bucket: str, listener: Callable[[str, str, int, str], None]
) -> None:
    """Tell ``listener(operation, key, try, code)`` of every failed try of a call.

    botocore retries within one call before the relay sees an error, so a
    provider that refuses the first tries of each PutObject would otherwise
    never show in the log or the metrics.
    """

    def on_try(
        attempts: int,
        operation: Any,
        request_dict: Mapping[str, Any],
        response: Any = None,
        caught_exception: Exception | None = None,
        **kwargs: Any,
    ) -> None:
        # Returning None leaves botocore's own retry decision alone.
        if caught_exception is not None:
            if _abandoned(caught_exception):
                return  # the client's body ended short; S3 did nothing wrong
            code = type(caught_exception).__name__
        elif response is not None and response[0].status_code >= 500:
            code = str(response[1].get("Error", {}).get("Code") or "")
            code = code or str(response[0].status_code)
        elif response is not None and response[0].status_code == 429:
            code = "429"
        else:
            return
        # Path style puts the bucket first; virtual-hosted style leaves it out.
        url_path = str(request_dict.get("url_path", "")).partition("?")[0]
        path = unquote(url_path).lstrip("/")
        key = path.removeprefix(f"{bucket}/") if path != bucket else ""
        listener(str(getattr(operation, "name", "")), key, attempts, code)

    client.meta.events.register("needs-retry.s3", on_try)


def _abandoned(exc: BaseException) -> bool:
    """Whether a failed call was stopped by its streamed body (app/growing.py).

    botocore and urllib3 wrap what the body raised: the reader's error is
    found among the causes, the wrapped ``error`` and the exception's args.
    """
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        if isinstance(item, BodyAbandoned):
            return True
        seen.add(id(item))
        todo += [item.__cause__, item.__context__, *item.args]
        todo += list(getattr(item, "kwargs", {}).values())
    return False


def _final(detail: str, code: str, message: str = "") -> StorageError:
    fix = fix_for(code, message)
    return StorageError(f"{detail}; fix: {fix}" if fix else detail, code=code)


class S3Clock:
    """S3's clock against the relay's, from the Date header of S3's answers.

    S3 stamps LastModified by its own clock, which may run ahead of or behind
    the relay's; a time taken here is compared with it only through this.
    """

    def __init__(self) -> None:
        # S3's clock minus the relay's, from the latest answer; None until one.
        self.offset_s: float | None = None

    def watch(self, client: S3Client) -> None:
        """Learn the offset from every answer ``client`` gets, refusals too."""
        client.meta.events.register("after-call.s3", self._on_answer)

    def to_s3(self, relay_time: float) -> float | None:
        """``relay_time`` by S3's clock; None while no answer has been seen.

        Early by less than a second plus the answer's transit, never late:
        Date drops the fraction of a second, and it was stamped before the
        answer arrived.
        """
        offset = self.offset_s
        return None if offset is None else relay_time + offset

    def _on_answer(self, parsed: Mapping[str, Any] | None = None, **_: Any) -> None:
        received_at = time.time()
        headers = (parsed or {}).get("ResponseMetadata", {}).get("HTTPHeaders", {})
        try:
            stamped = parsedate_to_datetime(headers["date"])
        except (KeyError, TypeError, ValueError):
            return  # no Date, or not an HTTP date (RFC 9110 5.6.7)
        if stamped.tzinfo is None:
            # HTTP dates are in UTC; "-0000", or two Date fields a proxy
            # joined, parse without a zone.
            stamped = stamped.replace(tzinfo=datetime.UTC)
        self.offset_s = stamped.timestamp() - received_at


class S3Storage:
    """Blocking S3 calls for the uploader's worker threads."""

    # Set once single deletes worked where DeleteObjects was refused.
    bulk_delete_refused = False

    def __init__(
        self,
        settings: Settings,
        client: S3Client | None = None,
        clock: S3Clock | None = None,
    ) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket or ""
        # A streamed-upload client only beside one of our own making: a
        # test's stubbed or mocked client stands for every call.
        self.stream_client: S3Client | None = None
        if client is not None:
            self.client = client
        else:
            session = boto3.session.Session()
            self.client = build_client(settings, session=session)
            if settings.stream_uploads:
                self.stream_client = build_client(
                    settings, streamed=True, session=session
                )
        self.clock = clock or S3Clock()
        self.clock.watch(self.client)
        self._transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold_bytes,
            multipart_chunksize=settings.multipart_threshold_bytes,
            max_concurrency=MULTIPART_CONCURRENCY,
        )
        # Past the pool size urllib3 drops connections after each request, and
        # every upload pays a new TCP (and TLS) handshake.
        busiest = settings.upload_concurrency * MULTIPART_CONCURRENCY
        if settings.s3_max_connections < busiest:
            log.warning(
                "S3 connection pool smaller than the uploads it serves "
                "max_connections=%d upload_concurrency=%d; set "
                "HLSRELAY_S3_MAX_CONNECTIONS to %d or more",
                settings.s3_max_connections,
                settings.upload_concurrency,
                busiest,
            )

    def _extra_args(self, content_type: str, cache_control: str) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "ContentType": content_type,
            "CacheControl": cache_control,
        }
        # Many buckets (all new AWS buckets since 2023) refuse any ACL header,
        # so none is sent unless the operator asked for one.
        if self.settings.s3_acl:
            extra["ACL"] = self.settings.s3_acl
        if self.settings.s3_storage_class:
            extra["StorageClass"] = self.settings.s3_storage_class
        return extra

    def put_file(
        self,
        key: str,
        path: Path,
        size: int,
        content_type: str,
        cache_control: str,
        *,
        clear_stale: bool = False,
    ) -> None:
        """Upload a spooled body; multipart from the threshold on.

        ``clear_stale`` says an earlier attempt at this key may have died
        mid-way (a crash, an outage), leaving a multipart upload behind.
        """
        extra = self._extra_args(content_type, cache_control)
        if clear_stale and size >= self.settings.multipart_threshold_bytes:
            self.abort_multipart_uploads(key)
        try:
            if size < self.settings.multipart_threshold_bytes:
                # One PutObject streamed from the file: the transfer manager's
                # thread pool per call costs more than the upload itself here.
                with open(path, "rb") as body:
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=body,
                        ContentLength=size,
                        **extra,
                    )
            else:
                self.client.upload_file(
                    str(path), self.bucket, key, ExtraArgs=extra, Config=self._transfer
                )
        except Exception as exc:
            raise map_error(exc, f"PUT {key!r}") from exc

    def put_streamed(
        self, key: str, body: Any, size: int, content_type: str, cache_control: str
    ) -> None:
        """One PutObject whose body is read while the request still sends it.

        ``body`` is a file-like reader (app/growing.py) that blocks for bytes
        not yet received and raises if the request fails; the connection to
        S3 is then dropped short of the Content-Length, and nothing is stored.
        """
        assert self.stream_client is not None
        self._put_object(
            self.stream_client, key, body, content_type, cache_control, size
        )

    def put_bytes(
        self, key: str, data: bytes, content_type: str, cache_control: str
    ) -> None:
        self._put_object(self.client, key, data, content_type, cache_control)

    def _put_object(
        self,
        client: S3Client,
        key: str,
        body: Any,
        content_type: str,
        cache_control: str,
        size: int | None = None,
    ) -> None:
        extra = self._extra_args(content_type, cache_control)
        if size is not None:
            extra["ContentLength"] = size
        try:
            client.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)
        except Exception as exc:
            raise map_error(exc, f"PUT {key!r}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return
            raise map_error(exc, f"DELETE {key!r}") from exc
        except Exception as exc:
            raise map_error(exc, f"DELETE {key!r}") from exc

    def delete_many(self, keys: Sequence[str]) -> dict[str, StorageError]:
        """Delete ``keys`` with DeleteObjects where the provider takes it.

        Returns the keys that failed, with why; absent keys count as deleted.
        A provider that refuses the bulk call itself (GCS's XML API does not
        implement it, older stores want headers botocore no longer sends) gets
        single deletes, and once those work it gets only single deletes.
        """
        failures: dict[str, StorageError] = {}
        singles: list[str] = []
        for start in range(0, len(keys), BULK_DELETE_MAX):
            batch = list(keys[start : start + BULK_DELETE_MAX])
            if self.bulk_delete_refused:
                singles += batch
                continue
            try:
                failures.update(self._delete_batch(batch))
            except RetryableStorageError as exc:
                failures.update(dict.fromkeys(batch, exc))
            except StorageError as exc:
                log.warning(
                    "bulk delete refused bucket=%s code=%s; deleting keys one "
                    "at a time: %s",
                    self.bucket,
                    exc.code,
                    exc.detail,
                )
                self._delete_singly(batch, failures, exc.code)
        if singles:
            self._delete_singly(singles, failures, "")
        return failures

    def _delete_singly(
        self, keys: list[str], failures: dict[str, StorageError], bulk_code: str
    ) -> None:
        deleted = 0
        for key in keys:
            try:
                self.delete(key)
            except StorageError as exc:
                failures[key] = exc
            else:
                deleted += 1
        if bulk_code and deleted and not self.bulk_delete_refused:
            # Single deletes work where the bulk call did not: it is the
            # provider, not the keys or the bucket, so stop asking.
            self.bulk_delete_refused = True
            log.warning(
                "provider refuses DeleteObjects bucket=%s code=%s; single "
                "deletes from now on",
                self.bucket,
                bulk_code,
            )

    def _delete_batch(self, keys: list[str]) -> dict[str, StorageError]:
        try:
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
        except Exception as exc:
            raise map_error(exc, f"DeleteObjects of {len(keys)} keys") from exc
        failures: dict[str, StorageError] = {}
        for error in response.get("Errors", []):
            key, code = error.get("Key", ""), error.get("Code", "")
            if code == "NoSuchKey" or key not in keys:
                continue
            detail = f"S3 refused DELETE {key!r}: {code} {error.get('Message', '')}"
            failures[key] = (
                RetryableStorageError(detail.strip(), code=code)
                if code in _RETRYABLE_CODES
                else _final(detail.strip(), code, error.get("Message", ""))
            )
        return failures

    def list_keys(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``."""
        return [key for key, _ in self.list_objects(prefix)]

    def list_objects(self, prefix: str) -> list[tuple[str, float]]:
        """Every key that starts with ``prefix``, with when S3 last wrote it
        (seconds since the epoch by S3's clock, to the second)."""
        found: list[tuple[str, float]] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                found += [
                    (item["Key"], item["LastModified"].timestamp())
                    for item in page.get("Contents", [])
                ]
        except Exception as exc:
            raise map_error(exc, f"LIST {prefix!r}") from exc
        return found

    def abort_multipart_uploads(self, key: str) -> int:
        """Abort unfinished multipart uploads of exactly ``key``; how many.

        Their parts stay stored, and billed, until aborted. A provider that
        cannot list them must not stop the upload itself, so failures here
        are logged, not raised.
        """
        aborted = 0
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=key):
                for upload in page.get("Uploads", []):
                    if upload.get("Key") != key:
                        continue
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                    )
                    aborted += 1
        except Exception as exc:
            log.warning(
                "could not clear stale multipart uploads key=%s: %s: %s",
                key,
                type(exc).__name__,
                exc,
            )
        if aborted:
            log.info("aborted stale multipart uploads key=%s count=%d", key, aborted)
        return aborted

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in (
                "404",
                "NoSuchKey",
                "NotFound",
            ):
                return False
            raise map_error(exc, f"HEAD {key!r}") from exc
        except Exception as exc:
            raise map_error(exc, f"HEAD {key!r}") from exc
        return True

    def get(self, key: str, limit: int) -> bytes | None:
        """The object's bytes (at most ``limit``), or None when it is absent."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise map_error(exc, f"GET {key!r}") from exc
        except Exception as exc:
            raise map_error(exc, f"GET {key!r}") from exc
        with response["Body"] as body:
            return body.read(limit)

    def head(self, key: str) -> ObjectInfo | None:
        """What the provider stored as the object's metadata; None when absent."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return None
            raise map_error(exc, f"HEAD {key!r}") from exc
        except Exception as exc:
            raise map_error(exc, f"HEAD {key!r}") from exc
        return ObjectInfo(
            content_type=response.get("ContentType", ""),
            cache_control=response.get("CacheControl", ""),
        )

    def check_bucket(self) -> str | None:
        """Raise unless the bucket answers; used by /readyz.

        Returns the bucket's region when the provider tells it (AWS does), so
        ``hlsrelay check`` can point out a region that only works through
        botocore's redirects.
        """
        try:
            response = self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise map_error(exc, f"HEAD bucket {self.bucket!r}") from exc
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        region = headers.get("x-amz-bucket-region")
        return str(region) if region else None

    def get_cors(self) -> list[CorsRule]:
        """The bucket's CORS rules; empty when it has none."""
        try:
            response = self.client.get_bucket_cors(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchCORSConfiguration":
                return []
            raise map_error(exc, f"GET CORS of bucket {self.bucket!r}") from exc
        except Exception as exc:
            raise map_error(exc, f"GET CORS of bucket {self.bucket!r}") from exc
        return [CorsRule.from_s3(rule) for rule in response.get("CORSRules", [])]

    def put_cors(self, rules: Sequence[CorsRule]) -> None:
        """Replace the bucket's CORS rules with ``rules``."""
        configuration: Any = {"CORSRules": [rule.to_s3() for rule in rules]}
        try:
            self.client.put_bucket_cors(
                Bucket=self.bucket, CORSConfiguration=configuration
            )
        except Exception as exc:
            raise map_error(exc, f"PUT CORS of bucket {self.bucket!r}") from exc
