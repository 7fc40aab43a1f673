"""The local spool: every acknowledged operation, durable on disk until S3 has it.

An entry is a body file ``{seq}.body`` (PUTs only) and a metadata file
``{seq}.json``. The body is fsynced before the metadata is renamed into place,
so the metadata's rename is the commit point: after a crash, a body without
metadata, or metadata whose body is short or fails its CRC, is torn and
discarded, never uploaded.

The body file of an uploaded segment is kept for the next body to overwrite
(``recycle``), a bounded number of them, rather than unlinked. Writing over
pages the page cache already holds costs the kernel far less than writing
new ones: a 1 MiB upload-mode PUT spent 1.6 ms of system time in the spool's
thread with fresh files and 0.4 ms with recycled ones (docs/benchmarks.md).
Recycled files wait in ``incoming/`` as ``*.free``, where a start throws
them away with the other unfinished files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import threading
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Literal, NoReturn

from app.errors import DiskFull, SpoolFull

log = logging.getLogger(__name__)

Action = Literal["put", "delete"]

# Recycled body files kept at most, in count and in bytes on disk beyond
# HLSRELAY_SPOOL_MAX_BYTES; a larger body is unlinked as before.
RECYCLE_FILES = 64
RECYCLE_BYTES = 64 * 1024 * 1024
RECYCLE_MAX_FILE = 8 * 1024 * 1024
# Smaller bodies (playlists) cost little to write afresh.
RECYCLE_MIN_FILE = 64 * 1024
# A disk with less free than this keeps none: their room is the next body's.
RECYCLE_ROOM = 1024 * 1024 * 1024


@dataclass(frozen=True)
class SpoolEntry:
    seq: int
    action: Action
    app: str
    path: str
    key: str
    content_type: str = ""
    size: int = 0
    crc32: int = 0


def _parse_entry(text: str) -> SpoolEntry:
    """An entry from its metadata, with every field of the type it must have.

    Metadata is only ever renamed into place whole, so a file that fails here
    was damaged after the fact; uploading what it says could write anywhere.
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    entry = SpoolEntry(**data)
    ints = (entry.seq, entry.size, entry.crc32)
    if any(type(value) is not int or value < 0 for value in ints):
        raise ValueError("seq, size and crc32 must be whole numbers")
    if entry.action not in ("put", "delete"):
        raise ValueError(f"unknown action {entry.action!r}")
    texts = (entry.app, entry.path, entry.key, entry.content_type)
    if not all(isinstance(value, str) for value in texts) or not entry.key:
        raise ValueError("app, path, key and content_type must be text")
    return entry


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(final: Path, value: object, *, durable: bool = True) -> None:
    """Write ``value`` as ``final`` whole or not at all: a new file renamed
    into place, fsynced with its folder when ``durable``."""
    tmp = final.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(value, out)
        out.flush()
        if durable:
            os.fsync(out.fileno())
    os.replace(tmp, final)
    if durable:
        _fsync_dir(final.parent)


def read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; else OSError.

    Opened without blocking and without following a symlink: a FIFO in its
    place would hold a plain read forever, waiting for a writer.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _raise_disk_error(exc: OSError, what: str) -> NoReturn:
    if _is_disk_full(exc):
        raise DiskFull(f"the spool's disk is full while writing {what}") from exc
    raise exc


class BodyWriter:
    """Streams one request body to a file, counting its size and CRC-32.

    All methods block on disk I/O: call them from a worker thread.
    """

    def __init__(self, spool: Spool, path: Path, reuse: bool = False) -> None:
        self._spool = spool
        self.path = path
        self._reuse = reuse
        self.size = 0
        self.crc32 = 0
        # Set once the body is an entry or thrown away: from then on its
        # bytes are the entry's to release, or already released.
        self._settled = False
        # Opened by the first write (in a worker thread), not here: creating
        # the writer costs the request no hop to a thread.
        self._file: BinaryIO | None = None
        # A recycled file may be longer than this body: cut at finish().
        self._recycled = False

    def _opened(self) -> BinaryIO:
        if self._file is None:
            self._recycled = self._reuse and self._spool.take_recycled(self.path)
            try:
                # Readable too: a streamed upload reads it through a dup().
                self._file = open(self.path, "r+b" if self._recycled else "w+b")  # noqa: SIM115 - closed in finish/abort
            except OSError as exc:
                self._spool.note_disk_error(exc)
                _raise_disk_error(exc, str(self.path))
        return self._file

    def fileno(self) -> int:
        """The body file's descriptor; the file is created if need be."""
        return self._opened().fileno()

    def write(self, data: bytes) -> None:
        out = self._opened()
        self._spool.reserve(len(data))
        try:
            out.write(data)
            # In the file, not in Python's buffer: a streamed upload reads the
            # file through its own descriptor as soon as size counts them.
            out.flush()
        except OSError as exc:
            self._spool.release(len(data))
            self._spool.note_disk_error(exc)
            _raise_disk_error(exc, str(self.path))
        self.size += len(data)
        self.crc32 = zlib.crc32(data, self.crc32)

    def finish(self) -> None:
        """Flush and fsync the body; it is not yet an entry."""
        out = self._opened()  # an empty playlist is a file too
        try:
            out.flush()
            if self._recycled:
                out.truncate(self.size)  # the old body's tail
            if self._spool.fsync_puts:
                os.fsync(out.fileno())
            out.close()
        except OSError as exc:
            # close() flushes again and would raise the same ENOSPC, hiding
            # the DiskFull that the client must get; the fd is closed anyway.
            with contextlib.suppress(OSError):
                out.close()
            self._spool.note_disk_error(exc)
            _raise_disk_error(exc, str(self.path))

    def hand_over(self) -> None:
        """The body became an entry: its bytes are the entry's to release now."""
        self._settled = True

    def abort(self) -> None:
        """Throw the body away; safe to call more than once."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self.path.unlink(missing_ok=True)
        if not self._settled:
            self._settled = True
            self._spool.release(self.size)


class Spool:
    """Durable storage of entries under one root, with a bound on its bytes."""

    def __init__(self, root: Path, max_bytes: int, fsync_puts: bool = True) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # With HLSRELAY_ACK=upload a PUT is acknowledged once S3 has it, so its
        # spool copy needs no fsync: a crash before that loses nothing that
        # was acknowledged, and a torn copy fails its CRC on replay. Deletes
        # are acknowledged from the spool in both modes and always fsynced.
        self.fsync_puts = fsync_puts
        self.entries_dir = root / "entries"
        self.incoming_dir = root / "incoming"
        self.used_bytes = 0
        self.entry_count = 0
        # Body writers run in worker threads; the byte count is shared, and
        # so are the recycled files (path and size, newest last).
        self._lock = threading.Lock()
        self._recycled: list[tuple[Path, int]] = []
        self._recycled_bytes = 0

    def open(self) -> list[SpoolEntry]:
        """Create the folders, drop torn entries, return the rest in order."""
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.incoming_dir.iterdir():
            if stale.suffix != ".free":
                log.warning("spool discarding unfinished body file=%s", stale.name)
            stale.unlink(missing_ok=True)

        entries = []
        metas = {p.stem: p for p in self.entries_dir.glob("*.json")}
        for body in self.entries_dir.glob("*.body"):
            if body.stem not in metas:
                log.warning("spool discarding torn body file=%s", body.name)
                body.unlink(missing_ok=True)
        for tmp in self.entries_dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        for stem, meta in metas.items():
            entry = self._load(meta)
            if entry is None:
                meta.unlink(missing_ok=True)
                (self.entries_dir / f"{stem}.body").unlink(missing_ok=True)
                continue
            entries.append(entry)

        entries.sort(key=lambda e: e.seq)
        self.used_bytes = sum(e.size for e in entries)
        self.entry_count = len(entries)
        return entries

    def _load(self, meta: Path) -> SpoolEntry | None:
        try:
            entry = _parse_entry(meta.read_text("utf-8"))
            if f"{entry.seq:020d}" != meta.stem:
                raise ValueError(f"it names seq {entry.seq}")
        except (ValueError, TypeError, OSError) as exc:
            log.warning("spool discarding unreadable entry file=%s: %s", meta.name, exc)
            return None
        if entry.action == "put" and not self._body_is_whole(entry):
            log.warning(
                "spool discarding torn entry seq=%d key=%s", entry.seq, entry.key
            )
            return None
        return entry

    def _body_is_whole(self, entry: SpoolEntry) -> bool:
        crc = 0
        size = 0
        try:
            with open(self.body_path(entry), "rb") as body:
                while chunk := body.read(1 << 20):
                    size += len(chunk)
                    crc = zlib.crc32(chunk, crc)
        except FileNotFoundError:
            return False
        return size == entry.size and crc == entry.crc32

    def body_path(self, entry: SpoolEntry) -> Path:
        return self.entries_dir / f"{entry.seq:020d}.body"

    def spooled_at(self, entry: SpoolEntry) -> float:
        """When the entry was committed (wall clock); 0 if that is unknown."""
        try:
            return (self.entries_dir / f"{entry.seq:020d}.json").stat().st_mtime
        except OSError:
            return 0.0

    def reserve(self, nbytes: int) -> None:
        """Count bytes about to be kept; past the bound, refuse with SpoolFull."""
        with self._lock:
            if self.used_bytes + nbytes > self.max_bytes:
                raise SpoolFull(
                    f"the spool holds {self.used_bytes} bytes, its limit is "
                    f"{self.max_bytes} (HLSRELAY_SPOOL_MAX_BYTES); S3 is behind"
                )
            self.used_bytes += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.used_bytes = max(0, self.used_bytes - nbytes)

    def begin_body(self, *, reuse: bool = False) -> BodyWriter:
        """A writer for one body; no I/O until its first write.

        ``reuse`` lets it write over a recycled file: for media bodies, whose
        size is like that of the bodies recycled; a playlist would cut a
        segment's file down to a few KiB.
        """
        path = self.incoming_dir / f"{uuid.uuid4().hex}.part"
        return BodyWriter(self, path, reuse)

    def commit_put(self, writer: BodyWriter, entry: SpoolEntry) -> None:
        """Make a finished body an entry: move it in, then write its metadata."""
        try:
            os.replace(writer.path, self.body_path(entry))
        except OSError as exc:
            writer.abort()
            _raise_disk_error(exc, entry.key)
        # _write_meta releases the bytes if it fails; a later abort() of the
        # writer must not release them twice.
        writer.hand_over()
        self._write_meta(entry, durable=self.fsync_puts)

    def commit_delete(self, entry: SpoolEntry) -> None:
        self._write_meta(entry, durable=True)

    def _write_meta(self, entry: SpoolEntry, durable: bool) -> None:
        final = self.entries_dir / f"{entry.seq:020d}.json"
        try:
            try:
                write_json(final, asdict(entry), durable=durable)
            except OSError as exc:
                # A few bytes: written whole again once the recycled files
                # have given their room back, if there were any.
                if not self.note_disk_error(exc):
                    raise
                write_json(final, asdict(entry), durable=durable)
        except OSError as exc:
            final.with_suffix(".tmp").unlink(missing_ok=True)
            self.body_path(entry).unlink(missing_ok=True)
            self.release(entry.size)
            _raise_disk_error(exc, entry.key)
        self.entry_count += 1

    def note_disk_error(self, exc: OSError) -> bool:
        """On a full disk, give the recycled files' room back; True if any."""
        return _is_disk_full(exc) and self.drop_recycled()

    def read_body(self, entry: SpoolEntry) -> bytes:
        return self.body_path(entry).read_bytes()

    def remove(self, entry: SpoolEntry, *, recycle: bool = False) -> None:
        """Forget an entry once S3 has it (or a newer one made it moot).

        ``recycle`` keeps its body file for a later body to overwrite. Only
        for a body nothing reads any more: the next body's bytes go into it.
        """
        # Metadata first: a crash between the two unlinks leaves a body with
        # no metadata, which open() treats as torn and deletes.
        (self.entries_dir / f"{entry.seq:020d}.json").unlink(missing_ok=True)
        if not (recycle and self._recycle(entry)):
            self.body_path(entry).unlink(missing_ok=True)
        self.release(entry.size)
        self.entry_count = max(0, self.entry_count - 1)

    def _recycle(self, entry: SpoolEntry) -> bool:
        if entry.action != "put" or not (
            RECYCLE_MIN_FILE <= entry.size <= RECYCLE_MAX_FILE
        ):
            return False
        if not self._has_room():
            self.drop_recycled()  # the disk is filling: its room first
            return False
        with self._lock:
            if (
                len(self._recycled) >= RECYCLE_FILES
                or self._recycled_bytes + entry.size > RECYCLE_BYTES
            ):
                return False
            # Counted before the rename, so two threads cannot both pass.
            self._recycled_bytes += entry.size
        free = self.incoming_dir / f"{uuid.uuid4().hex}.free"
        try:
            os.replace(self.body_path(entry), free)
        except OSError:
            with self._lock:
                self._recycled_bytes -= entry.size
            return False
        with self._lock:
            self._recycled.append((free, entry.size))
        return True

    def _has_room(self) -> bool:
        try:
            disk = os.statvfs(self.incoming_dir)
        except OSError:
            return False
        return disk.f_bavail * disk.f_frsize >= RECYCLE_ROOM

    def take_recycled(self, path: Path) -> bool:
        """Move a recycled body file to ``path``, if one is kept."""
        with self._lock:
            if not self._recycled:
                return False
            free, size = self._recycled.pop()
            self._recycled_bytes -= size
        try:
            os.replace(free, path)
        except OSError:
            return False
        return True

    def drop_recycled(self) -> bool:
        """Unlink the recycled files (the disk is filling); True if any."""
        with self._lock:
            dropped, self._recycled = self._recycled, []
            self._recycled_bytes = 0
        for free, _ in dropped:
            free.unlink(missing_ok=True)
        return bool(dropped)

    @property
    def recycled_files(self) -> int:
        return len(self._recycled)

    def is_writable(self) -> bool:
        probe = self.incoming_dir / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            return False
        return True
