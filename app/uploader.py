"""The uploader: takes bodies into the spool, then applies them to S3 in order.

Requests hand their bodies to ``receive_put`` and ``receive_delete``; the
barrier says what may start; workers run the blocking S3 calls on a bounded
thread pool and retry with capped, jittered backoff for as long as it takes,
since everything here was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from app import playlist
from app.barrier import Operation, PlaylistVersion, SegmentBarrier
from app.config import Settings
from app.errors import (
    BodyTooLarge,
    RelayError,
    RetryableStorageError,
    SpoolFull,
    StorageError,
    StorageUnavailable,
)
from app.metrics import Metrics
from app.paths import Upload
from app.spool import BodyWriter, Spool, SpoolEntry
from app.storage import S3Storage

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bodies are written to disk in slices of this size: large enough that the
# hop to a worker thread is paid rarely, small enough to keep memory flat.
WRITE_SLICE = 256 * 1024
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 30.0


@dataclass(frozen=True)
class Receipt:
    key: str
    size: int
    seq: int


def backoff_delay(attempt: int) -> float:
    """Full-jitter exponential backoff, capped."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))


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
        self._tasks: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(
            max_workers=settings.upload_concurrency, thread_name_prefix="s3"
        )
        self._deadline_changed = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self.storage_ok = True
        self.storage_problem = ""
        self._failing_keys: set[str] = set()

    # -- life cycle ------------------------------------------------------

    async def start(self) -> None:
        """Open the spool and replay what an earlier run left, in order."""
        entries = await anyio.to_thread.run_sync(self.spool.open)
        if entries:
            self._next_seq = entries[-1].seq + 1
            log.info(
                "spool replay entries=%d bytes=%d", len(entries), self.spool.used_bytes
            )
        for entry in entries:
            self.barrier.begin(entry.seq, entry.key, entry.action, _is_playlist(entry))
            version = None
            if entry.action == "put" and _is_playlist(entry):
                data = await anyio.to_thread.run_sync(self.spool.read_body, entry)
                version = self._version_for(
                    entry.app, entry.path, entry.key, entry.seq, data
                )
            self.barrier.commit(entry.seq, entry, version)
        self._timer = asyncio.create_task(self._deadline_loop())
        self._pump()

    async def stop(self, grace_s: float) -> None:
        """Let running uploads finish within the grace period; the rest stay spooled."""
        if self._timer is not None:
            self._timer.cancel()
        running = [t for t in self._tasks if not t.done()]
        if running:
            _, left = await asyncio.wait(running, timeout=grace_s)
            for task in left:
                task.cancel()
            if left:
                log.warning(
                    "shutdown left operations in the spool for the next start count=%d",
                    len(left),
                )
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- intake ----------------------------------------------------------

    def _allocate(self, key: str, action: str, is_playlist: bool) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self.barrier.begin(
            seq, key, "put" if action == "put" else "delete", is_playlist
        )
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
        self, upload: Upload, chunks: AsyncIterator[bytes], limit: int
    ) -> Receipt:
        key = self.settings.key_for(upload.app, upload.path)
        is_playlist = upload.kind == "playlist"
        seq = self._allocate(key, "put", is_playlist)
        writer: BodyWriter | None = None
        try:
            writer = await anyio.to_thread.run_sync(self.spool.begin_body)
            kept = bytearray() if is_playlist else None
            pending = bytearray()
            size = 0
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
                    await anyio.to_thread.run_sync(writer.write, bytes(pending))
                    pending.clear()
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
                entry = await anyio.to_thread.run_sync(
                    self._finish_body, writer, bytes(pending), entry
                )
                writer = None
                ack = self._watch_ack(seq)
                self.barrier.commit(seq, entry, version)
                self.metrics.received_bytes.labels(upload.app).inc(size)
                self.metrics.body_bytes.labels(upload.kind).observe(size)
                log.debug("spooled key=%s seq=%d bytes=%d", key, seq, size)
                self._pump()
        except BaseException:
            with anyio.CancelScope(shield=True):
                if writer is not None:
                    await anyio.to_thread.run_sync(writer.abort)
                self.barrier.abort(seq)
                self._pump()
            raise
        if ack is not None:
            await self._await_ack(ack, key)
        return Receipt(key=key, size=size, seq=seq)

    def _finish_body(
        self, writer: BodyWriter, rest: bytes, entry: SpoolEntry
    ) -> SpoolEntry:
        if rest:
            writer.write(rest)
        writer.finish()
        entry = SpoolEntry(**{**entry.__dict__, "crc32": writer.crc32})
        self.spool.commit_put(writer, entry)
        return entry

    async def receive_delete(self, upload: Upload) -> str:
        key = self.settings.key_for(upload.app, upload.path)
        seq = self._allocate(key, "delete", upload.kind == "playlist")
        entry = SpoolEntry(
            seq=seq, action="delete", app=upload.app, path=upload.path, key=key
        )
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self.spool.commit_delete, entry)
            except BaseException:
                self.barrier.abort(seq)
                self._pump()
                raise
            self.barrier.commit(seq, entry)
            log.debug("spooled delete key=%s seq=%d", key, seq)
            self._pump()
        return key

    def _version_for(
        self, app: str, path: str, key: str, seq: int, data: bytes
    ) -> PlaylistVersion:
        """Parse a playlist body; only the appended tail when it extends the last.

        An EVENT playlist grows by appending, so comparing a digest of the
        published body with the same prefix of this one lets us read only the
        new lines: the cost of a version stays that of its new entries.
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
        return PlaylistVersion(
            refs=frozenset(refs),
            extends=start > 0,
            length=len(data),
            digest=hasher.digest(),
            line_end=data.endswith((b"\n", b"\r")),
        )

    def _watch_ack(self, seq: int) -> asyncio.Future[None] | None:
        if self.settings.ack != "upload":
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[seq] = future
        return future

    async def _await_ack(self, ack: asyncio.Future[None], key: str) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(ack), self.settings.ack_timeout_s)
        except TimeoutError:
            raise StorageUnavailable(
                f"{key!r} is spooled but not yet in S3 after "
                f"{self.settings.ack_timeout_s:g} s ({self.storage_problem or 'busy'})"
            ) from None

    def _resolve_ack(self, seq: int) -> None:
        future = self._acks.pop(seq, None)
        if future is not None and not future.done():
            future.set_result(None)

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
        for key in barrier.take_lookups():
            self._spawn(self._lookup(key))
        for op in barrier.take_ready():
            self._spawn(self._run(op))
        self.metrics.pending.set(barrier.pending_count())
        self.metrics.spool_bytes.set(self.spool.used_bytes)
        self.metrics.spool_files.set(self.spool.entry_count)
        if rearm:
            self._deadline_changed.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _in_pool(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, func, *args)

    async def _drop(self, op: Operation) -> None:
        entry = op.payload
        if isinstance(entry, SpoolEntry):
            await anyio.to_thread.run_sync(self.spool.remove, entry)
        self._resolve_ack(op.seq)
        self._pump()

    async def _lookup(self, key: str) -> None:
        try:
            exists = await self._in_pool(self.storage.exists, key)
        except Exception as exc:
            log.debug("lookup failed key=%s: %s", key, exc)
            exists = False
        self.barrier.lookup_done(key, exists)
        self._pump()

    async def _run(self, op: Operation) -> None:
        entry = op.payload
        assert isinstance(entry, SpoolEntry)
        kind = (
            "delete"
            if entry.action == "delete"
            else ("playlist" if op.is_playlist else "media")
        )
        started = time.monotonic()
        await self._apply_until_done(entry)
        self.metrics.upload_seconds.labels(kind).observe(time.monotonic() - started)
        self.metrics.uploads.labels(entry.app, kind).inc()
        if entry.action == "put":
            self.metrics.uploaded_bytes.labels(entry.app).inc(entry.size)
        if op.version is not None:
            self._log_published(op, entry)

        await anyio.to_thread.run_sync(self.spool.remove, entry)
        self.barrier.finished(op.seq)
        self._resolve_ack(op.seq)
        self._pump()

    def _log_published(self, op: Operation, entry: SpoolEntry) -> None:
        if op.missing:
            self.metrics.missing_refs.labels(entry.app).inc()
            log.warning(
                "published playlist with missing references key=%s missing=%s "
                "waited_s=%g",
                entry.key,
                ",".join(sorted(op.missing)[:5]),
                self.settings.segment_wait_s,
            )
        else:
            log.info("published playlist key=%s seq=%d", entry.key, entry.seq)

    async def _apply_until_done(self, entry: SpoolEntry) -> None:
        # Everything here was acknowledged, so there is no retry limit in
        # time: only the spool's size bounds how long S3 may stay away.
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
                if entry.key not in self._failing_keys:
                    self._failing_keys.add(entry.key)
                    log.error(
                        "S3 refused key=%s; kept in the spool, trying again every "
                        "%gs until the setting is fixed: %s",
                        entry.key,
                        delay,
                        exc.detail,
                    )
            except FileNotFoundError:
                log.error(
                    "spool body vanished before upload key=%s seq=%d; skipped",
                    entry.key,
                    entry.seq,
                )
                return
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
                if not self.storage_ok:
                    log.info("S3 is reachable again key=%s", entry.key)
                self.storage_ok = True
                self.storage_problem = ""
                self._failing_keys.discard(entry.key)
                return
            await asyncio.sleep(delay)

    def _set_storage_problem(self, detail: str) -> None:
        self.storage_ok = False
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
        self.storage.put_file(
            entry.key,
            self.spool.body_path(entry),
            entry.size,
            entry.content_type,
            cache_control,
        )

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


def _is_playlist(entry: SpoolEntry) -> bool:
    return entry.path.lower().endswith(".m3u8")


__all__ = ["Receipt", "RelayError", "Uploader", "backoff_delay"]
