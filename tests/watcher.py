"""A player's-eye check of the relay's ordering promise: poll a bucket while a
stream is pushed and report every playlist version that named an object which
was not in the bucket while that version was the current one."""

from __future__ import annotations

import logging
import posixpath
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import m3u8  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlaylistVersion:
    key: str
    etag: str
    references: tuple[str, ...]
    text: str
    seen_at: float


@dataclass(frozen=True)
class Violation:
    playlist_key: str
    etag: str
    missing_key: str
    reason: str = "missing"

    def __str__(self) -> str:
        return (
            f"{self.playlist_key} (etag {self.etag}): {self.reason} {self.missing_key}"
        )


def is_absolute_reference(uri: str) -> bool:
    # RFC 3986: a scheme or a network-path reference leaves the bucket, and so
    # does a path-absolute one, which resolves against the host, not the key.
    parsed = urllib.parse.urlsplit(uri)
    return bool(parsed.scheme or parsed.netloc or uri.startswith("/"))


def resolve_reference(playlist_key: str, uri: str) -> str:
    """The object key that `uri` in the playlist stored at `playlist_key` names."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(uri).path)
    return posixpath.normpath(posixpath.join(posixpath.dirname(playlist_key), path))


def referenced_uris(text: str) -> list[str]:
    """URIs a player must fetch, per RFC 8216 sections 4.3.2.5, 4.3.4.1 and
    4.3.4.2, plus LL-HLS parts; keys and preload hints are not required to
    exist yet, so they are left out."""
    playlist: Any = m3u8.loads(text)
    uris: list[str | None] = []
    if playlist.is_variant:
        uris += [variant.uri for variant in playlist.playlists]
        uris += [variant.uri for variant in playlist.iframe_playlists]
        uris += [media.uri for media in playlist.media]
    else:
        uris += [section.uri for section in playlist.segment_map]
        for segment in playlist.segments:
            uris.append(segment.uri)
            uris += [part.uri for part in segment.parts]
    seen: dict[str, None] = {}
    for uri in uris:
        if uri and not is_absolute_reference(uri):
            seen.setdefault(uri, None)
    return list(seen)


@dataclass
class _State:
    etags: dict[str, str] = field(default_factory=dict)
    keys_seen: set[str] = field(default_factory=set)


class BucketWatcher:
    """Polls `bucket` under `prefix` in a thread between `start()` and `stop()`.

    Each new ETag of a `.m3u8` object is fetched and every object it references
    is HEADed. A missing one counts as a violation only if the playlist still
    has that ETag afterwards: a newer version may have dropped the reference,
    and the relay may then have deleted the file.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        interval_s: float = 0.03,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.interval_s = interval_s
        self.violations: list[Violation] = []
        self.versions_seen: list[PlaylistVersion] = []
        self.errors: list[str] = []
        self._state = _State()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="watch-head")

    @property
    def keys_seen(self) -> set[str]:
        """Every key listed at least once while watching."""
        with self._lock:
            return set(self._state.keys_seen)

    def versions_of(self, key: str) -> list[PlaylistVersion]:
        return [version for version in self.versions_seen if version.key == key]

    def start(self) -> BucketWatcher:
        self._thread = threading.Thread(
            target=self._run, name="bucket-watcher", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after one last pass, so the final playlists are checked too."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self.errors.append(f"watcher did not stop within {timeout_s:g} s")
        self._pool.shutdown(wait=True)

    def __enter__(self) -> BucketWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            started = time.monotonic()
            try:
                self.poll_once()
            except (BotoCoreError, ClientError) as exc:
                # An outage test freezes S3 on purpose; keep watching.
                self.errors.append(f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                # A dead thread would report zero violations: a false pass.
                log.exception("watcher pass failed")
                self.errors.append(f"{type(exc).__name__}: {exc}")
            if stopping:
                return
            elapsed = time.monotonic() - started
            self._stop.wait(max(0.0, self.interval_s - elapsed))

    def poll_once(self) -> None:
        listing = self._list()
        with self._lock:
            self._state.keys_seen.update(listing)
        for key, etag in listing.items():
            if not key.endswith(".m3u8") or self._state.etags.get(key) == etag:
                continue
            self._check_playlist(key)

    def _list(self) -> dict[str, str]:
        found: dict[str, str] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = item["ETag"]
        return found

    def _check_playlist(self, key: str) -> None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return  # deleted since the listing: nothing left to judge
            raise
        # The body and ETag of one GET belong together; the listing's may not.
        etag = response["ETag"]
        body = response["Body"].read()
        found = self._judge(key, etag, body)

        # Recorded only once judged: a check cut short by an S3 error is
        # retried on the next pass instead of being skipped for good.
        self._state.etags[key] = etag
        self.violations += found

    def _judge(self, key: str, etag: str, body: bytes) -> list[Violation]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return [Violation(key, etag, key, "not UTF-8")]
        if not text.startswith("#EXTM3U"):
            return [Violation(key, etag, key, "no #EXTM3U")]

        references = tuple(resolve_reference(key, uri) for uri in referenced_uris(text))
        exists = list(self._pool.map(self._exists, references))
        missing = [ref for ref, ok in zip(references, exists, strict=True) if not ok]
        if missing and self._current_etag(key) != etag:
            missing = []
        self.versions_seen.append(
            PlaylistVersion(key, etag, references, text, time.monotonic())
        )
        for ref in missing:
            log.info("violation playlist=%s etag=%s missing=%s", key, etag, ref)
        return [Violation(key, etag, ref) for ref in missing]

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    def _current_etag(self, key: str) -> str | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ETag"]
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise


def _is_not_found(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("404", "NoSuchKey", "NotFound")
