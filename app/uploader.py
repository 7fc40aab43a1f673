"""The uploader: takes bodies into the spool, then applies them to S3 in order.

Requests hand their bodies to ``receive_put`` and ``receive_delete``; the
barrier says what may start; workers run the blocking S3 calls on a bounded
thread pool and retry with capped, jittered backoff for as long as it takes,
since everything here was acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import posixpath
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from app import logs, playlist
from app.barrier import BoundedKeys, Operation, PlaylistVersion, SegmentBarrier
from app.config import Settings
from app.errors import (
    BodyTooLarge,
    EmptyBody,
    PlaylistError,
    RelayError,
    RetryableStorageError,
    SpoolFull,
    StorageError,
    StorageUnavailable,
)
from app.growing import GrowingBody
from app.late import LATE_CODES, LateTries, Rewrite, settle_s
from app.metrics import Metrics
from app.paths import Upload
from app.spool import BodyWriter, Spool, SpoolEntry
from app.storage import S3Storage, watch_failed_tries

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bodies are written to disk in slices of this size: large enough that the
# hop to a worker thread is paid rarely, small enough to keep memory flat.
WRITE_SLICE = 256 * 1024
# Threads for spool I/O, which mostly wait on fsync. 64 instead of 16 moved
# nothing at 75 streams (two pairs of runs: the same CPU, p99 no better).
SPOOL_WRITERS = 16
# Playlist keys remembered as already warned of a reference outside their
# application; past this many, the least recently seen may be warned of again.
WARNED_PLAYLISTS = 10_000
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 30.0
# One failed call is not an outage (C02: a provider that refuses the first
# tries of many requests still takes traffic); this long with nothing but
# failures is, for /readyz and for refusing PUTs in upload mode.
STORAGE_DOWN_AFTER_S = 3.0
# How often a key whose late tries are over is looked at again while an
# operation on it is still pending.
SETTLED_RECHECK_S = 1.0
# botocore calls whose late arrival at S3 can undo a newer write.
WRITING_CALLS = frozenset({"PutObject", "DeleteObject", "CompleteMultipartUpload"})
# S3 lookups of referenced files at once (app/barrier.py asks for them).
LOOKUPS_AT_ONCE = 4
# How long a stop waits for requests uvicorn cancelled (past its graceful
# timeout) to drop their half-received bodies: a few thread hops each.
RECEIVES_SETTLE_S = 1.0


@dataclass
class EarlyUpload:
    """A PutObject reading a body from the spool while the request sends it."""

    body: GrowingBody
    result: asyncio.Future[None]


@dataclass(frozen=True)
class Receipt:
    key: str
    size: int
    seq: int


def backoff_delay(attempt: int) -> float:
    """Full-jitter exponential backoff, capped."""
    # The exponent is bounded too: past attempt 1024 (some hours of an
    # outage at the cap) 2**attempt no longer fits a float, and the
    # OverflowError would end the retries of an acknowledged file.
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempt, 30)))


def _digest(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class Uploader:
    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        storage: S3Storage,
        metrics: Metrics,
        barrier: SegmentBarrier | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.storage = storage
        self.metrics = metrics
        self.barrier = barrier or SegmentBarrier(settings.segment_wait_s)
        self._next_seq = 1
        self._acks: dict[int, asyncio.Future[None]] = {}
        # Told (key, action, seq) of each operation as it is received, before
        # anything is awaited; the clean-up spots a new publish this way.
        self.intake_listeners: list[Callable[[str, str, int], None]] = []
        # The PUTs replayed at start, with when each was spooled: received by
        # an earlier run, so no intake listener heard of them.
        self.replayed_puts: list[tuple[str, float]] = []
        # Deletes of a clean-up, applied together by _run_delete_batch.
        self._bulk: set[int] = set()
        # PUTs whose last attempt may have left a multipart upload behind.
        self._maybe_orphaned: set[int] = set()
        # When each playlist version was spooled, for the barrier-wait metric.
        self._queued_at: dict[int, float] = {}
        # Referenced keys to ask S3 about, and how many asks are under way.
        self._lookup_queue: collections.deque[str] = collections.deque()
        self._lookups_active = 0
        # Playlists already warned of naming a file outside their application.
        self._warned_outside = BoundedKeys(WARNED_PLAYLISTS)
        self._tasks: set[asyncio.Task[None]] = set()
        # The tasks of requests whose bodies are being received.
        self._receiving: set[asyncio.Task[Any]] = set()
        # What the start's replay has still to apply, for its "done" line.
        self._replaying: set[int] = set()
        self._replay_count = 0
        self._replay_started = 0.0
        self._executor = ThreadPoolExecutor(
            max_workers=settings.upload_concurrency, thread_name_prefix="s3"
        )
        # Body slices go to disk here while the request reads the next one.
        self._spool_executor = ThreadPoolExecutor(
            max_workers=SPOOL_WRITERS, thread_name_prefix="spool"
        )
        # Uploads that start while their body arrives hold a thread for as
        # long as the client takes to send it; their own pool, half the size,
        # keeps slow senders from starving the playlists' uploads.
        self._early_slots = max(1, settings.upload_concurrency // 2)
        self._early_bodies: set[GrowingBody] = set()
        # Set when S3 refused a streamed upload outright (not a passing error).
        self._streaming_refused = False
        metrics.stream_uploads_enabled.set(int(self._streaming_on()))
        self._early_executor = ThreadPoolExecutor(
            max_workers=self._early_slots, thread_name_prefix="s3-stream"
        )
        self._deadline_changed = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        # Since when every S3 call has failed; None while the last one worked.
        self._failing_since: float | None = None
        self.storage_problem = ""
        self._logged_refusals: set[str] = set()
        # Set by stop(): a retry ends instead of sleeping, and what it was
        # trying stays in the spool for the next start.
        self._stopping = False
        self._stop_requested = asyncio.Event()
        # Keys with a try that timed out, written again once it is over.
        self._late = LateTries(settle_s(settings.s3_read_timeout_s))
        self._late_changed = asyncio.Event()
        self._late_timer: asyncio.Task[None] | None = None
        # Each says whether a key is about to be deleted anyway (a stream's
        # clean-up), so that writing it again is moot.
        self.resend_vetoes: list[Callable[[str], bool]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set in a worker thread by a DeleteObjects try that timed out: that
        # call names no key, so the batch being sent marks its own.
        self._thread_calls = threading.local()
        # A test may hand in a storage without a botocore client.
        client = getattr(storage, "client", None)
        for watched in (client, getattr(storage, "stream_client", None)):
            if watched is not None:
                watch_failed_tries(watched, storage.bucket, self._note_failed_try)

    @property
    def storage_ok(self) -> bool:
        """False once S3 calls have failed, with no success between, for a while."""
        since = self._failing_since
        return since is None or time.monotonic() - since < STORAGE_DOWN_AFTER_S

    @storage_ok.setter
    def storage_ok(self, ok: bool) -> None:
        if ok:
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = time.monotonic()

    # -- life cycle ------------------------------------------------------

    async def start(self) -> None:
        """Open the spool and replay what an earlier run left, in order."""
        self._loop = asyncio.get_running_loop()
        entries = await anyio.to_thread.run_sync(self.spool.open)
        self.replayed_puts = await anyio.to_thread.run_sync(
            lambda: [
                (entry.key, self.spool.spooled_at(entry))
                for entry in entries
                if entry.action == "put"
            ]
        )
        if entries:
            self._next_seq = entries[-1].seq + 1
            log.info(
                "spool replay entries=%d bytes=%d", len(entries), self.spool.used_bytes
            )
            self._replaying = {entry.seq for entry in entries}
            self._replay_count = len(entries)
            self._replay_started = time.monotonic()
        held = [entry for entry in entries if entry.action == "delete"]
        for entry in entries:
            self.barrier.begin(entry.seq, entry.key, entry.action, _is_playlist(entry))
            # The run before may have left a try of it on its way to S3.
            self._late.timed_out(entry.key, entry.seq)
            if entry.action == "delete":
                continue  # committed by _replay_deletes
            self._maybe_orphaned.add(entry.seq)
            version = None
            if entry.action == "put" and _is_playlist(entry):
                data = await anyio.to_thread.run_sync(self.spool.read_body, entry)
                version = self._version_for(
                    entry.app, entry.path, entry.key, entry.seq, data
                )
            self.barrier.commit(entry.seq, entry, version)
        self._timer = asyncio.create_task(self._deadline_loop())
        self._late_timer = asyncio.create_task(self._settle_loop())
        if held:
            self._spawn(self._replay_deletes(held))
        self._pump()

    async def _replay_deletes(self, held: list[SpoolEntry]) -> None:
        """Commit replayed deletes once the bucket's playlists beside them are known.

        A delete held because a written playlist named its file must stay held
        after a restart; the playlists written before it are in the bucket only.
        Until S3 answers, the deletes wait (and so does anything after them on
        the same keys).
        """
        folders = sorted({posixpath.dirname(entry.key) for entry in held})
        attempt = 0
        while True:
            try:
                found = await self._in_pool(self._read_playlists, folders)
                break
            except Exception as exc:
                attempt += 1
                delay = backoff_delay(attempt)
                log.warning(
                    "replayed deletes wait for the bucket's playlists count=%d "
                    "attempt=%d in_s=%.2f: %s",
                    len(held),
                    attempt,
                    delay,
                    exc,
                )
                if not await self._pause(delay):
                    return
        for key, data in found:
            try:
                uris = playlist.extract_references(playlist.decode_playlist(data))
            except PlaylistError:
                continue
            refs = {
                ref
                for uri in uris
                if (ref := playlist.resolve_reference(key, uri)) is not None
            }
            self.barrier.restore_published(
                key,
                PlaylistVersion(
                    refs=frozenset(refs),
                    extends=False,
                    length=len(data),
                    digest=_digest(data),
                    line_end=data.endswith((b"\n", b"\r")),
                ),
            )
        for entry in held:
            self.barrier.commit(entry.seq, entry)
        log.info(
            "replayed deletes count=%d after reading playlists=%d",
            len(held),
            len(found),
        )
        self._pump()

    def _read_playlists(self, folders: list[str]) -> list[tuple[str, bytes]]:
        found = []
        for folder in folders:
            for key in self.storage.list_keys(f"{folder}/" if folder else ""):
                if key.endswith(".m3u8") and posixpath.dirname(key) == folder:
                    data = self.storage.get(key, self.settings.max_playlist_bytes)
                    if data is not None:
                        found.append((key, data))
        return found

    async def stop(self, grace_s: float) -> None:
        """Return within ``grace_s``: calls under way may finish, retries end.

        What S3 has not taken by then stays in the spool, whole, and the next
        start replays it; S3 applies a PutObject entirely or not at all.
        """
        deadline = time.monotonic() + grace_s
        receiving = [task for task in self._receiving if not task.done()]
        if receiving:
            # Their clean-up needs the loop and the spool's threads, which
            # go below; the process ends soon after this returns.
            await asyncio.wait(receiving, timeout=RECEIVES_SETTLE_S)
        self._stopping = True
        self._stop_requested.set()
        # A body still arriving may never end; its reader must not keep a
        # thread (and the process) alive.
        for body in list(self._early_bodies):
            body.abandon()
        if self._timer is not None:
            self._timer.cancel()
        await self._resend_before_stop()
        # Operations may still start while others finish (a stored segment
        # releases its playlist); those are waited for too, in the same time.
        while self._tasks and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(
                set(self._tasks), timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
        unfinished = [task for task in self._tasks if not task.done()]
        for task in unfinished:
            task.cancel()
        if unfinished:
            # A cancelled task is only waiting on a worker thread or a sleep;
            # S3 calls still in threads are abandoned with the process.
            await asyncio.wait(unfinished, timeout=1.0)
            # Counted in the spool, not in tasks: a cancelled task may still
            # have finished its upload, and entries wait without a task too.
            log.warning(
                "shutdown left operations in the spool for the next start count=%d",
                self.spool.entry_count,
            )
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._early_executor.shutdown(wait=False, cancel_futures=True)
        self._spool_executor.shutdown(wait=False, cancel_futures=True)

    async def _pause(self, delay: float) -> bool:
        """Wait before a retry; False when the relay is stopping instead."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), delay)
        return not self._stopping

    # -- intake ----------------------------------------------------------

    def _allocate(
        self, key: str, action: str, is_playlist: bool, resend: bool = False
    ) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self.barrier.begin(
            seq, key, "put" if action == "put" else "delete", is_playlist
        )
        if not resend:  # the relay's own copy of what it applied is not news
            for listener in self.intake_listeners:
                listener(key, action, seq)
        return seq

    def check_can_accept(self, declared_size: int | None) -> None:
        """Refuse up front what could not be taken (SPEC's 503s)."""
        used, limit = self.spool.used_bytes, self.spool.max_bytes
        if used + (declared_size or 0) > limit or used >= limit:
            raise SpoolFull(
                f"the spool holds {used} bytes, its limit is {limit} "
                "(HLSRELAY_SPOOL_MAX_BYTES); S3 is behind"
            )
        if self.settings.ack == "upload" and not self.storage_ok:
            raise StorageUnavailable(f"S3 is unreachable: {self.storage_problem}")

    async def receive_put(
        self,
        upload: Upload,
        chunks: AsyncIterator[bytes],
        limit: int,
        declared: int | None = None,
        resend: bool = False,
    ) -> Receipt:
        """Spool a body as it arrives; answered once durable (or stored, by ack).

        The request's task is known to ``stop`` while it runs, so that one
        cancelled by the server's shutdown can still drop its body first.
        ``resend`` is the relay writing a playlist again (app/late.py).
        """
        task = asyncio.current_task()
        if task is not None:
            self._receiving.add(task)
        try:
            return await self._receive_put(upload, chunks, limit, declared, resend)
        finally:
            if task is not None:
                self._receiving.discard(task)

    async def _receive_put(
        self,
        upload: Upload,
        chunks: AsyncIterator[bytes],
        limit: int,
        declared: int | None,
        resend: bool,
    ) -> Receipt:
        key = self.settings.key_for(upload.app, upload.path)
        is_playlist = upload.kind == "playlist"
        seq = self._allocate(key, "put", is_playlist, resend)
        writer: BodyWriter | None = None
        early: EarlyUpload | None = None
        writing: Future[None] | None = None
        size = 0
        try:
            writer = self.spool.begin_body(reuse=not is_playlist)
            if declared is not None and self._may_stream(seq, declared):
                early = self._start_early(upload, key, writer, declared)
            kept = bytearray() if is_playlist else None
            pending = bytearray()
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(
                        f"{upload.path!r} passes the limit of {limit} bytes"
                    )
                pending += chunk
                if kept is not None:
                    kept += chunk
                if len(pending) >= WRITE_SLICE:
                    # Written while the next slice arrives; one write at a
                    # time per body keeps the file in order.
                    if writing is not None:
                        await asyncio.wrap_future(writing)
                    writing = self._spool_executor.submit(
                        _write_slice, writer, bytes(pending), early
                    )
                    pending.clear()
            if writing is not None:
                await asyncio.wrap_future(writing)
            if size == 0 and not is_playlist:
                raise EmptyBody(f"{upload.path!r} has an empty body; nothing stored")
            # The body is whole: from here on a client that hangs up, or a
            # middleware that cancels the request, must not undo the work.
            with anyio.CancelScope(shield=True):
                version = None
                if kept is not None:
                    version = self._version_for(
                        upload.app, upload.path, key, seq, bytes(kept)
                    )
                entry = SpoolEntry(
                    seq=seq,
                    action="put",
                    app=upload.app,
                    path=upload.path,
                    key=key,
                    content_type=upload.content_type,
                    size=size,
                    crc32=0,
                )
                entry = await self._on_disk(
                    self._finish_body, writer, bytes(pending), entry, early
                )
                writer = None
                ack = None if resend else self._watch_ack(seq)
                if version is not None:
                    self._queued_at[seq] = time.monotonic()
                    self.metrics.streams.note(upload.app, key)
                self.barrier.commit(seq, entry, version)
                if early is not None:
                    # Committed: S3 may now take the last byte.
                    early.body.complete()
                    self._spawn(self._run(self.barrier.operation(seq), early))
                    early = None
                if not resend:
                    self.metrics.received_bytes.labels(upload.app).inc(size)
                    self.metrics.body_bytes.labels(upload.kind).observe(size)
                log.debug("spooled key=%s seq=%d bytes=%d", key, seq, size)
                self._pump()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                # The server's shutdown (past its graceful timeout) or an
                # operator's middleware; the access line says which upload.
                detail = (
                    f"cancelled after {size} bytes, before the body was whole; "
                    "not acknowledged, nothing of it kept"
                )
                logs.note_refusal("cancelled", detail, logging.WARNING)
            with anyio.CancelScope(shield=True):
                if writing is not None:
                    await _settled(writing)  # before the file is closed
                if early is not None:
                    # The S3 request must be over before anything after this
                    # one on the key may start; it cannot complete, since its
                    # last byte is never released.
                    early.body.abandon()
                    await _settled(early.result)
                    early.body.close()
                    self.metrics.streamed_uploads.labels("abandoned").inc()
                if writer is not None:
                    await self._on_disk(writer.abort)
                self.barrier.abort(seq)
                self._pump()
            raise
        if ack is not None:
            await self._await_ack(ack, key)
        return Receipt(key=key, size=size, seq=seq)

    def _may_stream(self, seq: int, declared: int) -> bool:
        """Whether this body can go to S3 while it arrives (SPEC guarantee 5)."""
        return (
            self._streaming_on()
            and 0 < declared < self.settings.multipart_threshold_bytes
            and len(self._early_bodies) < self._early_slots
            and self.storage_ok
            and self.barrier.start_early(seq)
        )

    def _streaming_on(self) -> bool:
        return (
            self.settings.stream_uploads
            and getattr(self.storage, "stream_client", None) is not None
            and not self._streaming_refused
        )

    def _start_early(
        self, upload: Upload, key: str, writer: BodyWriter, size: int
    ) -> EarlyUpload:
        body = GrowingBody(writer, size)
        self._early_bodies.add(body)
        loop = asyncio.get_running_loop()
        result = loop.run_in_executor(
            self._early_executor,
            self.storage.put_streamed,
            key,
            body,
            size,
            upload.content_type,
            self.settings.segment_cache_control,
        )

        def release(_: asyncio.Future[None]) -> None:
            self._early_bodies.discard(body)

        result.add_done_callback(release)
        return EarlyUpload(body=body, result=result)

    def _finish_body(
        self,
        writer: BodyWriter,
        rest: bytes,
        entry: SpoolEntry,
        early: EarlyUpload | None,
    ) -> SpoolEntry:
        if rest:
            writer.write(rest)
        if early is not None:
            early.body.grow(writer.size)  # while the file is still open
        writer.finish()
        entry = SpoolEntry(**{**entry.__dict__, "crc32": writer.crc32})
        self.spool.commit_put(writer, entry)
        return entry

    async def receive_delete(self, upload: Upload, resend: bool = False) -> str:
        key = self.settings.key_for(upload.app, upload.path)
        seq = self._allocate(key, "delete", upload.kind == "playlist", resend)
        entry = SpoolEntry(
            seq=seq, action="delete", app=upload.app, path=upload.path, key=key
        )
        with anyio.CancelScope(shield=True):
            try:
                await self._on_disk(self.spool.commit_delete, entry)
            except BaseException:
                self.barrier.abort(seq)
                self._pump()
                raise
            self.barrier.commit(seq, entry)
            log.debug("spooled delete key=%s seq=%d", key, seq)
            self._pump()
        return key

    async def receive_deletes(
        self, uploads: Sequence[Upload]
    ) -> list[asyncio.Future[None]]:
        """Queue many deletes at once (a stream's clean-up), applied in bulk.

        Each is spooled and ordered like an encoder's DELETE. Every sequence
        number is taken before the first await, so what the caller checked
        right before the call still held when they were taken. Each future is
        done once its delete is applied, or made moot by a newer PUT.
        """
        loop = asyncio.get_running_loop()
        entries = []
        futures = []
        for upload in uploads:
            key = self.settings.key_for(upload.app, upload.path)
            seq = self._allocate(key, "delete", upload.kind == "playlist")
            self._bulk.add(seq)
            self._acks[seq] = loop.create_future()
            futures.append(self._acks[seq])
            entries.append(
                SpoolEntry(
                    seq=seq, action="delete", app=upload.app, path=upload.path, key=key
                )
            )
        committed = 0
        with anyio.CancelScope(shield=True):
            try:
                for entry in entries:
                    await anyio.to_thread.run_sync(self.spool.commit_delete, entry)
                    committed += 1
            finally:
                for entry in entries[:committed]:
                    self.barrier.commit(entry.seq, entry)
                for entry in entries[committed:]:
                    self.barrier.abort(entry.seq)
                    self._bulk.discard(entry.seq)
                    self._acks.pop(entry.seq).cancel()
                self._pump()
        return futures

    def _version_for(
        self, app: str, path: str, key: str, seq: int, data: bytes
    ) -> PlaylistVersion:
        """Parse a playlist body; only the appended tail when it extends the last.

        An EVENT playlist grows by appending, so comparing a digest of the
        version it follows (published, or still pending) with the same prefix
        of this one lets us read only the new lines: the cost of a version
        stays that of its new entries.
        """
        text = playlist.decode_playlist(data)
        base = self.barrier.base_for(key, seq)
        view = memoryview(data)
        hasher = hashlib.blake2b(digest_size=16)
        start = 0
        if base is not None and base.line_end and len(data) >= base.length:
            hasher.update(view[: base.length])
            if hasher.digest() == base.digest:
                start = base.length
            hasher.update(view[base.length :])
        else:
            hasher.update(view)
        tail = data[start:].decode("utf-8") if start else text
        refs = set()
        for uri in playlist.extract_references(tail):
            ref_path = playlist.resolve_reference(path, uri)
            if ref_path is not None:
                refs.add(self.settings.key_for(app, ref_path))
            elif playlist.is_outside_application(path, uri):
                self._warn_outside(key, uri)
        extends = start > 0
        if extends and isinstance(base, PlaylistVersion):
            # It follows a version still waiting, which it may supersede:
            # what that one waits for, this one waits for too.
            refs |= base.refs
            extends = base.extends
        return PlaylistVersion(
            refs=frozenset(refs),
            extends=extends,
            length=len(data),
            digest=hasher.digest(),
            line_end=data.endswith((b"\n", b"\r")),
        )

    def _warn_outside(self, key: str, uri: str) -> None:
        # A live playlist names it again in every version, every few seconds:
        # one line per playlist key is enough for an operator to hear of it.
        warned = key in self._warned_outside
        self._warned_outside.add(key)  # seen again: the last to be forgotten
        if not warned:
            log.warning(
                "playlist names a file outside its application, not waited for "
                "key=%s reference=%r",
                key,
                uri,
            )

    def _watch_ack(self, seq: int) -> asyncio.Future[None] | None:
        if self.settings.ack != "upload":
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[seq] = future
        return future

    async def _await_ack(self, ack: asyncio.Future[None], key: str) -> None:
        # The future is this request's alone: awaited directly, its result
        # wakes the request in one step (wait_for over a shield takes three).
        # A timeout cancels it, which _applied then passes over.
        try:
            async with asyncio.timeout(self.settings.ack_timeout_s):
                await ack
        except TimeoutError:
            raise StorageUnavailable(
                f"{key!r} is spooled but not yet in S3 after "
                f"{self.settings.ack_timeout_s:g} s ({self.storage_problem or 'busy'})"
            ) from None

    def _applied(self, seq: int) -> None:
        """The operation is in S3, or made moot: its waiters hear of it.

        An upload-mode client waits for its ack; the start's replay counts
        down to its "done" line.
        """
        future = self._acks.pop(seq, None)
        if future is not None and not future.done():
            future.set_result(None)
        if seq in self._replaying:
            self._replaying.discard(seq)
            if not self._replaying:
                log.info(
                    "spool replay done entries=%d in_s=%.1f",
                    self._replay_count,
                    time.monotonic() - self._replay_started,
                )

    def newest_spooled(self, key: str) -> SpoolEntry | None:
        """The newest version of ``key`` received but maybe not yet in S3."""
        payload = self.barrier.newest_payload(key)
        return payload if isinstance(payload, SpoolEntry) else None

    # -- applying operations ---------------------------------------------

    def _pump(self, rearm: bool = True) -> None:
        """Start whatever the barrier now allows; called after every change."""
        barrier = self.barrier
        for op in barrier.take_dropped():
            self.metrics.superseded.inc()
            log.debug("superseded key=%s seq=%d", op.key, op.seq)
            self._spawn(self._drop(op))
        self._lookup_queue.extend(barrier.take_lookups())
        self._start_lookups()
        ready = barrier.take_ready()
        batch = [op for op in ready if op.seq in self._bulk]
        if batch:
            self._spawn(self._run_delete_batch(batch))
        for op in ready:
            if op.seq not in self._bulk:
                self._spawn(self._run(op))
        self.metrics.pending.set(barrier.pending_count())
        self.metrics.spool_bytes.set(self.spool.used_bytes)
        self.metrics.spool_files.set(self.spool.entry_count)
        if rearm:
            self._deadline_changed.set()

    def _spawn(self, coro: Any) -> None:
        # Started from whichever request changed the barrier, the task must
        # not log under that request's id.
        task = asyncio.get_running_loop().create_task(
            coro, context=logs.detached_context()
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_disk(self, func: Callable[..., T], *args: Any) -> T:
        """Run spool I/O in a worker thread; a cancelled caller still waits for it.

        The same pool as the body slices a request writes without waiting
        (which anyio's to_thread cannot do), so one body's file operations
        never wait behind other work in anyio's shared threads.
        """
        work = self._spool_executor.submit(func, *args)
        try:
            return await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            await _settled(work)
            raise

    async def _in_pool(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, func, *args)

    async def _drop(self, op: Operation) -> None:
        self._bulk.discard(op.seq)
        self._maybe_orphaned.discard(op.seq)
        self._queued_at.pop(op.seq, None)
        entry = op.payload
        if isinstance(entry, SpoolEntry):
            await anyio.to_thread.run_sync(self.spool.remove, entry)
        self._applied(op.seq)
        self._pump()

    def _start_lookups(self) -> None:
        """Ask S3 about referenced files the relay knows nothing of, a few at
        a time: they share the upload threads, and one playlist may name
        150,000 files that never come, which must not hold back every
        stream's uploads (nor cost a task each)."""
        barrier = self.barrier
        queue = self._lookup_queue
        while self._lookups_active < LOOKUPS_AT_ONCE and queue:
            key = queue.popleft()
            if not barrier.lookup_wanted(key):
                barrier.lookup_skipped(key)  # its wait is over
                continue
            self._lookups_active += 1
            self._spawn(self._lookup(key))

    async def _lookup(self, key: str) -> None:
        try:
            exists = await self._in_pool(self.storage.exists, key)
        except Exception as exc:
            log.debug("lookup failed key=%s: %s", key, exc)
            exists = False
        finally:
            self._lookups_active -= 1
        self.barrier.lookup_done(key, exists)
        self._pump()

    async def _run(self, op: Operation, early: EarlyUpload | None = None) -> None:
        entry = op.payload
        assert isinstance(entry, SpoolEntry)
        logs.application.set(entry.app)  # this task's own context
        queued_at = self._queued_at.pop(op.seq, None)
        waited_s = 0.0
        if queued_at is not None:
            waited_s = time.monotonic() - queued_at
            self.metrics.barrier_wait_seconds.observe(waited_s)
        kind = (
            "delete"
            if entry.action == "delete"
            else ("playlist" if op.is_playlist else "media")
        )
        started = time.monotonic()
        streamed = await self._early_done(entry, early)
        if streamed is not True:
            if not await self._apply_until_done(entry):
                return  # stopping: the entry stays in the spool
            if isinstance(streamed, StorageError):
                self._note_streaming_refused(entry.key, streamed)
        uploaded_s = time.monotonic() - started
        # S3 has it, which is all an upload-mode client waits for. Its answer
        # goes out first, in the loop's next step: the bookkeeping below and
        # the spool thread's removal would otherwise hold the GIL before it.
        # The barrier hears only once the entry is gone: a replay after a
        # crash must never re-apply it over a newer operation on the key.
        self._applied(op.seq)
        await asyncio.sleep(0)
        self.metrics.upload_seconds.labels(kind).observe(uploaded_s)
        self.metrics.uploads.labels(entry.app, kind).inc()
        if entry.action == "put":
            self.metrics.uploaded_bytes.labels(entry.app).inc(entry.size)
        if op.version is not None:
            self._log_published(op, entry, waited_s)
        if entry.key in self._late:
            self._late.applied(entry.key, await self._rewrite_of(entry, op))
        # Its upload is over, streamed or not, so nothing reads the file: the
        # next segment may write over it (the spool keeps segment sizes only).
        await self._on_disk(
            functools.partial(self.spool.remove, entry, recycle=not op.is_playlist)
        )
        self.barrier.finished(op.seq)
        self._pump()

    async def _rewrite_of(self, entry: SpoolEntry, op: Operation) -> Rewrite | None:
        """How to apply ``entry`` again, if it can be: a segment's PUT is not
        kept (see app/late.py)."""
        if entry.action == "delete":
            return Rewrite(op.seq, entry.app, entry.path, None)
        if not op.is_playlist:
            return None
        try:
            body = await self._on_disk(self.spool.read_body, entry)
        except FileNotFoundError:
            return None
        return Rewrite(op.seq, entry.app, entry.path, body)

    def _timed_out(self, key: str, seq: int | None = None) -> None:
        if seq is None:
            seq = self.barrier.running_seq(key)
        # Unknown: any operation applied since may be under a late try.
        self._late.timed_out(key, seq if seq is not None else 0)
        self._late_changed.set()

    async def _settle_loop(self) -> None:
        """Write again the keys whose late tries are over (app/late.py)."""
        while True:
            self._late_changed.clear()
            for key in self._late.take_due():
                if self.barrier.has_pending(key):
                    # Applied after the tries were over, that operation is
                    # what S3 keeps; looked at again once it is done.
                    self._late.recheck(key, time.monotonic() + SETTLED_RECHECK_S)
                else:
                    await self._resend(key, self._late.settle(key))
            due = self._late.next_due()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._late_changed.wait(), timeout)

    async def _resend_before_stop(self) -> None:
        """At a stop, spool now what would have been written again: the next
        start applies it, as late tries may still land after the restart."""
        if self._late_timer is not None:
            self._late_timer.cancel()
        for key in self._late.in_doubt():
            rewrite = self._late.settle(key, now_or_never=True)
            if not self.barrier.has_pending(key):
                await self._resend(key, rewrite)

    async def _resend(self, key: str, rewrite: Rewrite | None) -> None:
        """Apply ``rewrite`` again, behind whatever came before on its key.

        Nothing is awaited before the resend takes its place in the key's
        order, so nothing received after the caller's check comes first.
        """
        if rewrite is None or any(veto(key) for veto in self.resend_vetoes):
            return
        extension = posixpath.splitext(rewrite.path)[1][1:].lower()
        upload = Upload(rewrite.app, rewrite.path, extension)
        what = "delete" if rewrite.body is None else "playlist"
        try:
            if rewrite.body is None:
                await self.receive_delete(upload, resend=True)
            else:
                await self.receive_put(
                    upload, _chunks(rewrite.body), len(rewrite.body), resend=True
                )
        except Exception as exc:
            log.warning("could not spool a %s again key=%s: %s", what, key, exc)
            return
        self.metrics.late_rewrites.inc()
        log.info(
            "spooled %s again key=%s: a try on the key that timed out may have "
            "reached S3 after it",
            what,
            key,
        )

    async def _early_done(
        self, entry: SpoolEntry, early: EarlyUpload | None
    ) -> bool | StorageError:
        """True once the upload that started with the body has stored it.

        Otherwise False, or the final refusal S3 gave it: the spool has the
        whole body, and the caller uploads it from there.
        """
        if early is None:
            return False
        try:
            await early.result
        except Exception as exc:
            self.metrics.streamed_uploads.labels("resent").inc()
            if isinstance(exc, StorageError) and not isinstance(
                exc, RetryableStorageError
            ):
                # Said once, by the upload from the spool, if refused too.
                log.debug("streamed upload refused key=%s: %s", entry.key, exc)
                return exc
            log.warning(
                "streamed upload failed key=%s; uploading from the spool: %s",
                entry.key,
                exc,
            )
            return False
        finally:
            early.body.close()
        self._storage_worked(entry.key)
        self.metrics.streamed_uploads.labels("stored").inc()
        return True

    def _note_streaming_refused(self, key: str, refusal: StorageError) -> None:
        """S3 refused a streamed body and took the same body whole."""
        if self._streaming_refused:
            return
        # A provider that takes no UNSIGNED-PAYLOAD refuses them all: one
        # line, then whole bodies only, as before streaming.
        self._streaming_refused = True
        self.metrics.stream_uploads_enabled.set(0)
        log.error(
            "S3 refused a streamed upload and took the same body whole key=%s; "
            "bodies are sent whole from now on (restart to try again, or set "
            "HLSRELAY_STREAM_UPLOADS=false): %s",
            key,
            refusal,
        )

    def _log_published(self, op: Operation, entry: SpoolEntry, waited_s: float) -> None:
        """One line a version; ``waited_s`` is its time in the barrier, behind
        the segments it names (the cost of guarantee 1 to this version)."""
        if op.missing:
            self.metrics.missing_refs.labels(entry.app).inc()
            log.warning(
                "published playlist with missing references key=%s bytes=%d "
                "waited_ms=%d missing_count=%d missing=%s",
                entry.key,
                entry.size,
                round(waited_s * 1000),
                len(op.missing),
                # The first few: a playlist may name thousands.
                ",".join(sorted(op.missing)[:5]),
            )
        else:
            log.info(
                "published playlist key=%s bytes=%d waited_ms=%d",
                entry.key,
                entry.size,
                round(waited_s * 1000),
            )

    async def _apply_until_done(self, entry: SpoolEntry) -> bool:
        """Apply ``entry`` to S3, trying until it works; False if stopped first."""
        # Everything here was acknowledged, so there is no retry limit in
        # time: only the spool's size bounds how long S3 may stay away.
        # A try that timed out on our side may still be applied by S3 later,
        # after the retry and after newer operations on the key (seen with
        # HLSRELAY_S3_READ_TIMEOUT_S=1 under a 6 s freeze: a deleted segment
        # came back); app/late.py writes the key again once that is over.
        attempt = 0
        while True:
            try:
                await self._in_pool(self._apply, entry)
            except RetryableStorageError as exc:
                attempt += 1
                delay = backoff_delay(attempt)
                self.metrics.retries.labels(exc.code or "unknown").inc()
                self._set_storage_problem(exc.detail)
                log.warning(
                    "retry key=%s attempt=%d in_s=%.2f: %s",
                    entry.key,
                    attempt,
                    delay,
                    exc.detail,
                )
            except StorageError as exc:
                attempt += 1
                delay = BACKOFF_CAP_S
                self.metrics.failures.labels(exc.code or "unknown").inc()
                self._set_storage_problem(exc.detail)
                if exc.code not in self._logged_refusals:
                    self._logged_refusals.add(exc.code)
                    log.error(
                        "S3 refused key=%s; it and every file refused the same way "
                        "stay in the spool, tried again every %gs until the setting "
                        "is fixed: %s",
                        entry.key,
                        delay,
                        exc.detail,
                    )
                else:
                    log.debug("S3 refused key=%s code=%s", entry.key, exc.code)
            except FileNotFoundError:
                log.error(
                    "spool body vanished before upload key=%s seq=%d; skipped",
                    entry.key,
                    entry.seq,
                )
                return True
            except Exception as exc:
                attempt += 1
                delay = backoff_delay(attempt)
                self.metrics.retries.labels("unexpected").inc()
                log.warning(
                    "retry key=%s attempt=%d after an unexpected error",
                    entry.key,
                    attempt,
                    exc_info=exc,
                )
            else:
                self._storage_worked(entry.key)
                return True
            if not await self._pause(delay):
                return False

    async def _run_delete_batch(self, ops: list[Operation]) -> None:
        """Apply clean-up deletes that became ready together, in bulk calls.

        Like ``_apply_until_done`` there is no limit in time: the keys that
        failed are tried again with backoff until S3 takes them.
        """
        waiting = {op.key: op for op in ops}
        attempt = 0
        while True:
            try:
                failed, late = await self._in_pool(self._delete_many, list(waiting))
            except Exception as exc:
                log.warning("bulk delete failed count=%d", len(waiting), exc_info=exc)
                failed = dict.fromkeys(waiting, StorageError(str(exc)))
                late = False
            if late:
                for op in waiting.values():
                    self._timed_out(op.key, op.seq)
            done = [op for key, op in waiting.items() if key not in failed]
            if done:
                entries = [op.payload for op in done]
                for op in done:
                    entry = op.payload
                    if isinstance(entry, SpoolEntry) and entry.key in self._late:
                        self._late.applied(entry.key, await self._rewrite_of(entry, op))
                await anyio.to_thread.run_sync(self._remove_entries, entries)
                for op in done:
                    del waiting[op.key]
                    self._bulk.discard(op.seq)
                    self.barrier.finished(op.seq)
                    self._applied(op.seq)
                self._pump()
            if not waiting:
                self.storage_ok = True
                return

            attempt += 1
            key, error = next(iter(failed.items()))
            retryable = isinstance(error, RetryableStorageError)
            delay = backoff_delay(attempt) if retryable else BACKOFF_CAP_S
            counter = self.metrics.retries if retryable else self.metrics.failures
            counter.labels(error.code or "unknown").inc()
            self._set_storage_problem(error.detail)
            log.warning(
                "retry deletes count=%d attempt=%d in_s=%.2f first_key=%s: %s",
                len(waiting),
                attempt,
                delay,
                key,
                error.detail,
            )
            if not await self._pause(delay):
                return  # stopping: the deletes stay in the spool

    def _delete_many(self, keys: list[str]) -> tuple[dict[str, StorageError], bool]:
        """``storage.delete_many``, and whether a try of it timed out."""
        self._thread_calls.late_bulk_delete = False
        failed = self.storage.delete_many(keys)
        return failed, self._thread_calls.late_bulk_delete

    def _remove_entries(self, entries: list[object]) -> None:
        for entry in entries:
            if isinstance(entry, SpoolEntry):
                self.metrics.uploads.labels(entry.app, "delete").inc()
                self.spool.remove(entry)

    def _note_failed_try(
        self, operation: str, key: str, attempt: int, code: str
    ) -> None:
        # From a worker thread, inside botocore, which may try again itself
        # before the uploader's own retry sees anything.
        self.metrics.retries.labels(code).inc()
        log.warning(
            "S3 try failed op=%s key=%s try=%d code=%s", operation, key, attempt, code
        )
        if code not in LATE_CODES:
            return
        if operation == "DeleteObjects":
            self._thread_calls.late_bulk_delete = True
        loop = self._loop
        if key and operation in WRITING_CALLS and loop is not None:
            # A call abandoned at shutdown can time out once the loop is gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._timed_out, key)

    def _storage_worked(self, key: str) -> None:
        if not self.storage_ok:
            log.info("S3 is reachable again key=%s", key)
        self.storage_ok = True
        self.storage_problem = ""
        self._logged_refusals.clear()

    def _set_storage_problem(self, detail: str) -> None:
        self.storage_ok = False  # starts the outage clock if it is not running
        self.storage_problem = detail

    def _apply(self, entry: SpoolEntry) -> None:
        if entry.action == "delete":
            self.storage.delete(entry.key)
            return
        cache_control = (
            self.settings.playlist_cache_control
            if _is_playlist(entry)
            else self.settings.segment_cache_control
        )
        # Marked before the attempt and cleared after it: an attempt that dies
        # mid-way, with the process or not, makes the next one clear its parts.
        stale = entry.seq in self._maybe_orphaned
        self._maybe_orphaned.add(entry.seq)
        self.storage.put_file(
            entry.key,
            self.spool.body_path(entry),
            entry.size,
            entry.content_type,
            cache_control,
            clear_stale=stale,
        )
        self._maybe_orphaned.discard(entry.seq)

    async def _deadline_loop(self) -> None:
        while True:
            self._deadline_changed.clear()
            self.barrier.expire()
            self._pump(rearm=False)
            deadline = self.barrier.next_deadline()
            timeout = (
                None if deadline is None else max(0.0, deadline - time.monotonic())
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._deadline_changed.wait(), timeout)


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _write_slice(writer: BodyWriter, data: bytes, early: EarlyUpload | None) -> None:
    writer.write(data)
    if early is not None:
        early.body.grow(writer.size)


async def _settled(work: Future[Any] | asyncio.Future[Any]) -> None:
    """Wait until work handed to a thread is over, however it ended."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await (asyncio.wrap_future(work) if isinstance(work, Future) else work)


def _is_playlist(entry: SpoolEntry) -> bool:
    return entry.path.lower().endswith(".m3u8")


__all__ = ["Receipt", "RelayError", "Uploader", "backoff_delay"]
