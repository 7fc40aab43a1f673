"""Clean-up when a stream ends: the media server's ``publish_finished`` notice.

After a grace period the stream's HLS objects are deleted, found by its own
naming and playlists. The deletes go through the uploader like an encoder's,
so the ordering guarantees hold and a newer publish of the stream is spared.

A scheduled clean-up is a small JSON record in the spool's ``cleanups``
folder, written before the notice is answered and removed once its deletes
are spooled, so a restart in the wait (a redeploy) resumes it at its due time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import posixpath
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from app import playlist
from app.config import Settings
from app.errors import (
    BodyIncomplete,
    BodyTooLarge,
    InvalidNotice,
    InvalidPath,
    PlaylistError,
    StorageError,
    UnknownCommand,
)
from app.openapi import NOTICE_RESPONSES
from app.paths import Upload, extension_of, is_valid_app, is_valid_path
from app.routes import require_writer
from app.spool import read_small_file, write_json
from app.storage import S3Storage
from app.uploader import Uploader, backoff_delay

log = logging.getLogger(__name__)

NOTICE_PATH = "/{application}/hls-upload"
KNOWN_COMMANDS = ("publish_finished",)
MAX_NOTICE_BYTES = 64 * 1024

# Files named "{stream}_..." with these extensions are the stream's own HLS
# media. Other extensions (mp4 above all) go only when one of the stream's
# playlists names them, as EXT-X-MAP does for an fMP4 init file: by name
# alone they may be a recording or a preview, which outlive the stream.
NAMED_EXTENSIONS = frozenset(
    {"m3u8", "ts", "m4s", "aac", "ac3", "ec3", "vtt", "webvtt"}
)
# The media server names its multivariant playlist "{stream}_adaptive.m3u8".
ADAPTIVE_SUFFIX = "_adaptive"
# Waited when the stream's live window cannot be read from its playlist.
FALLBACK_DELAY_S = 30.0
# Where the scheduled clean-ups are kept, under the spool folder.
RECORDS_DIR = "cleanups"
# A record is a few hundred bytes; anything much larger was not written here.
RECORD_MAX_BYTES = 1024 * 1024
# A wait longer than this (a week) in a record is not one the relay set.
RECORD_MAX_WAIT_S = 7 * 86400.0
# Nor is a notice whose S3 time is further than this (a day) from the relay's:
# AWS refuses requests signed by a clock 15 minutes off.
RECORD_MAX_SKEW_S = 86400.0
# After a restart, what S3 wrote more than MODIFIED_SLACK_S after the notice
# belongs to a newer publish and is kept, both times by S3's clock. The
# notice's S3 time comes from a Date header (S3Clock in app/storage.py): it
# is early by less than a second (Date drops the fraction) plus the answer's
# transit, never late. The ended stream's files, written by the notice, thus
# have a LastModified at most that past it: the slack's second covers the
# dropped fraction, its half second the transit. What S3 writes within 2.5 s
# of the notice may look older (LastModified is to the second too): the
# record lists the keys PUT in the PROTECT_RECORD_S after the notice, and
# stops being written again then.
MODIFIED_SLACK_S = 1.5
PROTECT_RECORD_S = 10.0
# Keys of up to 512 characters: the record stays well under its read limit.
PROTECT_RECORD_MAX_KEYS = 1_000

_STREAM_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")
_EXTINF = re.compile(r"#EXTINF:[ \t]*([0-9]+(?:\.[0-9]+)?)")


@dataclass(frozen=True)
class Stream:
    """Where a stream's files live: ``folder`` is an upload path, "" at the root."""

    app: str
    folder: str
    name: str

    def path(self, filename: str) -> str:
        return f"{self.folder}/{filename}" if self.folder else filename


@dataclass(eq=False)
class _Job:
    stream: Stream
    stream_id: str
    key_folder: str
    prefix: str
    record: Path
    noticed_at: float  # wall clock
    # The notice by S3's clock, to compare with LastModified; None when no
    # answer from S3 had been seen (and in records from before it was kept).
    noticed_at_s3: float | None = None
    due_at: float | None = None  # wall clock, once the wait is known
    # Resumed from its record: keys S3 wrote since the notice are spared too,
    # whether or not the record had them.
    resumed: bool = False
    # Keys PUT since the notice: a newer publish, whose files stay.
    protected: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    fed: bool = False
    saved: bool = False
    save_queued: bool = False
    warned: bool = False
    # Writes and the removal of the record, one at a time; gone once removed.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gone: bool = False

    def as_record(self) -> dict[str, Any]:
        return {
            "app": self.stream.app,
            "folder": self.stream.folder,
            "name": self.stream.name,
            "stream_id": self.stream_id,
            "prefix": self.prefix,
            "noticed_at": self.noticed_at,
            "noticed_at_s3": self.noticed_at_s3,
            "due_at": self.due_at,
            "protected": sorted(self.protected),
        }


def parse_notice(application: str, body: bytes) -> tuple[str, Stream]:
    """The stream id and where its files are, or the refusal of the notice."""
    try:
        notice = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidNotice(
            'the body is not JSON; send {"streamId", "command", "filePath"}'
        ) from None
    if not isinstance(notice, dict):
        raise InvalidNotice("the body must be a JSON object with streamId and command")

    command = notice.get("command")
    if not isinstance(command, str):
        raise InvalidNotice("'command' is missing or not a string")
    if command not in KNOWN_COMMANDS:
        raise UnknownCommand(
            f"command {command[:60]!r} is not known; known: "
            + ", ".join(KNOWN_COMMANDS)
        )

    stream_id = notice.get("streamId")
    if not isinstance(stream_id, str) or not _STREAM_ID.fullmatch(stream_id):
        raise InvalidNotice(
            "'streamId' must be 1 to 200 letters, digits, '.', '_' or '-'"
        )
    file_path = notice.get("filePath")
    if file_path is None or file_path == "":
        file_path = stream_id
    if not isinstance(file_path, str):
        raise InvalidNotice("'filePath' must be a string such as 'streams/stream1'")

    # The media server gives the path below its application folder, where
    # "streams/" is what it pushes to hls-upload; a playlist name means its stem.
    path = file_path.removeprefix("streams/").removesuffix(".m3u8")
    if not is_valid_path(path):
        raise InvalidNotice(
            f"'filePath' {file_path[:120]!r} must be a relative path of letters, "
            "digits, '.', '_' or '-' parts, such as 'streams/stream1'"
        )
    folder, _, name = path.rpartition("/")
    return stream_id, Stream(app=application, folder=folder, name=name)


def live_window_s(text: str) -> float | None:
    """The seconds of media a playlist lists (RFC 8216 4.3.2.1), None if none."""
    durations = [float(m.group(1)) for m in _EXTINF.finditer(text)]
    return sum(durations) if durations else None


def select_stream_keys(
    name: str,
    keys: Iterable[str],
    references: Mapping[str, Set[str]],
    protected: Set[str],
) -> tuple[list[str], list[str]]:
    """Which of ``keys`` (one folder, as listed) are the stream's: (delete, kept).

    ``references`` maps each of the stream's playlists that could be read to
    the keys it names. ``kept`` are the stream's keys spared because a newer
    publish wrote them or one of its playlists names them.
    """
    keys = list(keys)
    own_playlists = set(references)
    referenced = set().union(*references.values()) if references else set()
    spared = set(protected)
    for key in own_playlists & protected:
        spared |= references[key]

    # A playlist "{name}_x.m3u8" that is not one of the stream's is another
    # stream called "{name}_x": its files look like ours but are not.
    others = [
        posixpath.basename(key)[: -len(".m3u8")]
        for key in keys
        if key.endswith(".m3u8") and key not in own_playlists
    ]
    others = [other for other in others if other.startswith(name + "_")]

    delete: list[str] = []
    kept: list[str] = []
    for key in keys:
        base = posixpath.basename(key)
        if key in own_playlists or (key in referenced and base.startswith(name)):
            ours = True
        else:
            ours = (
                base.startswith(name + "_")
                and extension_of(base) in NAMED_EXTENSIONS
                and not any(base.startswith(other) for other in others)
            )
        if ours:
            (kept if key in spared else delete).append(key)
    return delete, kept


def _number(value: object) -> float | None:
    """A finite JSON number (not a bool), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _is_named_for(base: str, name: str) -> bool:
    """Whether a file name is one of the stream's own ("stream1_..." or
    "stream1.m3u8"), not another stream's ("stream10_...")."""
    return base.startswith((f"{name}_", f"{name}."))


def _drop_file(path: Path) -> None:
    try:
        if path.is_symlink() or not path.is_dir():  # a folder is not ours to drop
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("clean-up record not removed file=%s: %s", path, exc)


class CleanupScheduler:
    """Pending clean-ups, one per stream; a second notice starts the wait anew."""

    def __init__(self, settings: Settings, uploader: Uploader, storage: S3Storage):
        self.settings = settings
        self.uploader = uploader
        self.storage = storage
        self.records_dir = settings.spool_dir / RECORDS_DIR
        self._jobs: dict[Stream, _Job] = {}
        self._by_folder: dict[str, list[_Job]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Notices one at a time: a second one for a stream must find the
        # first one's record written, to remove it.
        self._scheduling = asyncio.Lock()
        uploader.intake_listeners.append(self._on_intake)
        uploader.resend_vetoes.append(self._will_delete)

    async def schedule(self, stream: Stream, stream_id: str) -> bool:
        """Start the wait; True once its record is on disk, False if in memory only."""
        # A client gone mid-way must not leave a job without its wait.
        with anyio.CancelScope(shield=True):
            async with self._scheduling:
                previous = self._jobs.get(stream)
                if previous is not None and not previous.fed and previous.task:
                    previous.task.cancel()
                self._forget(previous)
                job = self._new_job(stream, stream_id, time.time())
                job.noticed_at_s3 = self.storage.clock.to_s3(job.noticed_at)
                if job.noticed_at_s3 is None:
                    log.warning(
                        "clean-up notice timed by the relay's clock, S3 has not "
                        "answered yet stream=%s app=%s; after a restart in the "
                        "wait, what S3 wrote since is told apart only if the "
                        "two clocks agree",
                        stream_id,
                        stream.app,
                    )
                self._register(job)
                await self._save(job)
                if previous is not None and not previous.fed:
                    await self._discard(previous)
                self._start(job)
        return job.saved

    async def resume(self) -> None:
        """Start again the clean-ups an earlier run left waiting."""
        jobs = await anyio.to_thread.run_sync(self._load_records)
        for job in jobs:
            self._register(job)
            # Spooled since the notice but not yet in S3: a newer publish's,
            # whatever S3 still holds under those keys.
            job.protected |= {
                key
                for key, spooled_at in self.uploader.replayed_puts
                if spooled_at > job.noticed_at
                and posixpath.dirname(key) == job.key_folder
                and posixpath.basename(key).startswith(job.stream.name)
            }
            # A record written before its wait was known has no due time.
            due = (
                ""
                if job.due_at is None
                else f" in_s={max(0.0, job.due_at - time.time()):.1f}"
            )
            log.info(
                "clean-up resumed stream=%s app=%s prefix=%s%s",
                job.stream_id,
                job.stream.app,
                job.prefix,
                due,
            )
            self._start(job)
        self.uploader.replayed_puts.clear()  # read once, here

    def stop(self) -> None:
        """Cancel the clean-ups still waiting; their records resume them.

        Deletes already handed to the uploader are spooled and still happen.
        """
        for job in list(self._jobs.values()):
            if job.saved:
                log.info(
                    "clean-up resumes at the next start stream=%s app=%s",
                    job.stream_id,
                    job.stream.app,
                )
            else:
                log.warning(
                    "clean-up not done, the relay is stopping and its record "
                    "could not be written stream=%s app=%s; send "
                    "publish_finished again once it runs",
                    job.stream_id,
                    job.stream.app,
                )
            self._forget(job)
        for task in self._tasks:
            task.cancel()

    def _new_job(
        self,
        stream: Stream,
        stream_id: str,
        noticed_at: float,
        record: Path | None = None,
    ) -> _Job:
        prefix = self.settings.key_for(stream.app, stream.path(stream.name))
        return _Job(
            stream=stream,
            stream_id=stream_id,
            key_folder=posixpath.dirname(prefix),
            prefix=prefix,
            record=record or self.records_dir / f"{uuid.uuid4().hex}.json",
            noticed_at=noticed_at,
        )

    def _register(self, job: _Job) -> None:
        self._jobs[job.stream] = job
        self._by_folder.setdefault(job.key_folder, []).append(job)

    def _start(self, job: _Job) -> None:
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(job.task)
        job.task.add_done_callback(self._tasks.discard)

    def _on_intake(self, key: str, action: str, seq: int) -> None:
        if action != "put" or not self._by_folder:
            return
        folder, _, base = key.rpartition("/")
        for job in self._by_folder.get(folder, ()):
            if base.startswith(job.stream.name) and key not in job.protected:
                job.protected.add(key)
                if (
                    job.saved
                    and not job.save_queued
                    and _is_named_for(base, job.stream.name)
                    and time.time() - job.noticed_at < PROTECT_RECORD_S
                    and len(job.protected) <= PROTECT_RECORD_MAX_KEYS
                ):
                    # One write waits at a time; it takes every key so far.
                    job.save_queued = True
                    self._spawn(self._save(job))

    def _will_delete(self, key: str) -> bool:
        """Whether a clean-up waits to delete ``key``: writing it again
        (app/late.py) is then moot, and after a restart it would look like a
        newer publish to the resumed clean-up."""
        folder, _, base = key.rpartition("/")
        return any(
            _is_named_for(base, job.stream.name)
            for job in self._by_folder.get(folder, ())
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, job: _Job | None) -> None:
        if job is None:
            return
        if self._jobs.get(job.stream) is job:
            del self._jobs[job.stream]
        jobs = self._by_folder.get(job.key_folder, [])
        if job in jobs:
            jobs.remove(job)
        if not jobs:
            self._by_folder.pop(job.key_folder, None)

    # -- the records ------------------------------------------------------

    async def _save(self, job: _Job) -> None:
        async with job.lock:
            job.save_queued = False
            if job.gone:
                return
            record = job.as_record()
            try:
                await anyio.to_thread.run_sync(self._write_record, job.record, record)
            except OSError as exc:
                if job.warned:
                    return
                job.warned = True
                log.warning(
                    "clean-up record %s stream=%s app=%s file=%s: %s",
                    # An older record still resumes it, sparing what S3 wrote
                    # since the notice.
                    "not updated"
                    if job.saved
                    else "not written, it waits in memory only",
                    job.stream_id,
                    job.stream.app,
                    job.record,
                    exc,
                )
                return
            job.saved = True

    def _write_record(self, path: Path, record: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)

    async def _discard(self, job: _Job) -> None:
        async with job.lock:
            job.gone = True
            if job.saved:
                await anyio.to_thread.run_sync(self._remove_record, job.record)

    def _remove_record(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.error(
                "clean-up record not removed file=%s; each start resumes it "
                "(sparing what S3 wrote since its notice) until it is: %s",
                path,
                exc,
            )

    def _load_records(self) -> list[_Job]:
        """The saved clean-ups, the newest notice of each stream; the rest go."""
        try:
            names = sorted(os.listdir(self.records_dir))
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning(
                "clean-up records not read, none resumed folder=%s: %s",
                self.records_dir,
                exc,
            )
            return []
        newest: dict[Stream, _Job] = {}
        for name in names:
            path = self.records_dir / name
            if name.endswith(".tmp"):
                _drop_file(path)  # a write cut short
                continue
            if not name.endswith(".json"):
                continue
            job = self._parse_record(path)
            if job is None:
                _drop_file(path)
                continue
            older = newest.get(job.stream)
            if older is not None and older.noticed_at > job.noticed_at:
                older, job = job, older
            if older is not None:
                _drop_file(older.record)
            newest[job.stream] = job
        return list(newest.values())

    def _parse_record(self, path: Path) -> _Job | None:
        """The job a record holds; None, said in a warning, for one to drop."""
        try:
            record = json.loads(read_small_file(path, RECORD_MAX_BYTES))
            job = self._job_from(record, path)
        except (OSError, ValueError, RecursionError) as exc:
            log.warning("clean-up record dropped file=%s: %s", path, exc)
            return None
        if not self.settings.delete_on_end:
            log.warning(
                "clean-up not resumed, HLSRELAY_DELETE_ON_END is off "
                "stream=%s app=%s; its files stay",
                job.stream_id,
                job.stream.app,
            )
            return None
        # A record without one came from before prefixes were kept.
        if record.get("prefix", job.prefix) != job.prefix:
            log.warning(
                "clean-up not resumed, the key template changed since its notice "
                "stream=%s app=%s; its files stay under %s",
                job.stream_id,
                job.stream.app,
                record.get("prefix"),
            )
            return None
        return job

    def _job_from(self, record: object, path: Path) -> _Job:
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        app, folder, name, stream_id = (
            record.get(field) for field in ("app", "folder", "name", "stream_id")
        )
        if not (
            isinstance(app, str)
            and isinstance(folder, str)
            and isinstance(name, str)
            and isinstance(stream_id, str)
        ):
            raise ValueError("app, folder, name and stream_id must be strings")
        stream = Stream(app=app, folder=folder, name=name)
        if not (
            is_valid_app(app)
            and is_valid_path(stream.path(name))
            and _STREAM_ID.fullmatch(stream_id)
        ):
            raise ValueError("it names no valid stream")
        noticed_at = _number(record.get("noticed_at"))
        due = record.get("due_at")
        due_at = None if due is None else _number(due)
        if noticed_at is None or (due is not None and due_at is None):
            raise ValueError("noticed_at and due_at must be numbers")
        if noticed_at > time.time() + 86400.0:
            raise ValueError("its notice is in the future")
        if due_at is not None and not 0 <= due_at - noticed_at <= RECORD_MAX_WAIT_S:
            raise ValueError("its wait is not one the relay sets")
        # Absent from records written before S3's time was kept.
        at_s3 = record.get("noticed_at_s3")
        noticed_at_s3 = None if at_s3 is None else _number(at_s3)
        if at_s3 is not None and (
            noticed_at_s3 is None or abs(noticed_at_s3 - noticed_at) > RECORD_MAX_SKEW_S
        ):
            raise ValueError("noticed_at_s3 must be a number near noticed_at")
        protected = record.get("protected")
        if not isinstance(protected, list) or not all(
            isinstance(key, str) for key in protected
        ):
            raise ValueError("protected must be a list of keys")
        job = self._new_job(stream, stream_id, noticed_at, record=path)
        job.noticed_at_s3 = noticed_at_s3
        job.due_at = due_at
        job.protected = set(protected)
        job.resumed = True
        job.saved = True
        return job

    # -- the clean-up -----------------------------------------------------

    async def _run(self, job: _Job) -> None:
        stream = job.stream
        try:
            if job.due_at is None:
                delay = self.settings.delete_on_end_delay_s
                if delay is None:
                    delay = await self._live_window(job)
                job.due_at = job.noticed_at + delay
                await self._save(job)
                log.info(
                    "clean-up scheduled stream=%s app=%s prefix=%s delay_s=%g",
                    job.stream_id,
                    stream.app,
                    job.prefix,
                    delay,
                )
            await asyncio.sleep(max(0.0, job.due_at - time.time()))

            listed = await self._list(job.prefix)
            keys = [
                key for key, _ in listed if posixpath.dirname(key) == job.key_folder
            ]
            if job.resumed:
                # Written by S3 after the notice: a newer publish, whether or
                # not its keys reached the record before the stop.
                noticed = job.noticed_at_s3
                if noticed is None:
                    noticed = job.noticed_at  # the relay's clock, as it was
                since = noticed + MODIFIED_SLACK_S
                job.protected |= {key for key, at in listed if at > since}
            references = await self._read_playlists(job, set(keys))
            # No await from here until receive_deletes has taken its sequence
            # numbers: a PUT received after this check is ordered after the
            # deletes, so the newest operation on each key still wins.
            delete, kept = select_stream_keys(
                stream.name, keys, references, job.protected
            )
            job.fed = True
            self._forget(job)
            futures = await self.uploader.receive_deletes(
                [self._upload_for(stream, key) for key in delete]
            )
            # Spooled: the deletes happen now whatever becomes of this run.
            await self._discard(job)
            log.info(
                "clean-up started stream=%s app=%s deleting=%d kept_newer=%d",
                job.stream_id,
                stream.app,
                len(delete),
                len(kept),
            )
            await asyncio.gather(*futures)
            log.info(
                "clean-up done stream=%s app=%s deleted=%d kept_newer=%d method=%s",
                job.stream_id,
                stream.app,
                len(delete),
                len(kept),
                "single" if self.storage.bulk_delete_refused else "bulk",
            )
        except asyncio.CancelledError:
            raise  # a newer notice (which removes the record) or the stop
        except Exception as exc:
            log.error(
                "clean-up failed stream=%s app=%s",
                job.stream_id,
                stream.app,
                exc_info=exc,
            )
            await self._discard(job)
        finally:
            self._forget(job)

    def _upload_for(self, stream: Stream, key: str) -> Upload:
        base = posixpath.basename(key)
        return Upload(
            app=stream.app, path=stream.path(base), extension=extension_of(base)
        )

    async def _live_window(self, job: _Job) -> float:
        """How long the stream's last playlist lasts: what a viewer may still play."""
        name = job.stream.name
        for base in (f"{name}.m3u8", f"{name}{ADAPTIVE_SUFFIX}.m3u8"):
            key = f"{job.key_folder}/{base}" if job.key_folder else base
            text = await self._read_text(key)
            if text is None:
                continue
            window = live_window_s(text)
            if window is None:
                # A multivariant playlist lists no media: ask its first variant.
                variants = [
                    ref for ref in self._references(key, text) if ref.endswith(".m3u8")
                ]
                variant = await self._read_text(variants[0]) if variants else None
                window = live_window_s(variant) if variant else None
            if window is not None:
                return window
        return FALLBACK_DELAY_S

    async def _list(self, prefix: str) -> list[tuple[str, float]]:
        attempt = 0
        while True:
            try:
                return await anyio.to_thread.run_sync(self.storage.list_objects, prefix)
            except StorageError as exc:
                attempt += 1
                delay = backoff_delay(attempt)
                log.warning(
                    "clean-up listing failed prefix=%s attempt=%d in_s=%.2f: %s",
                    prefix,
                    attempt,
                    delay,
                    exc.detail,
                )
                await asyncio.sleep(delay)

    async def _read_playlists(
        self, job: _Job, listed: Set[str]
    ) -> dict[str, frozenset[str]]:
        """The stream's playlists and what each names, variants included."""
        name = job.stream.name
        todo = [
            key
            for key in listed
            if posixpath.basename(key)
            in (f"{name}.m3u8", f"{name}{ADAPTIVE_SUFFIX}.m3u8")
        ]
        found: dict[str, frozenset[str]] = {}
        while todo:
            key = todo.pop()
            if key in found:
                continue
            text = await self._read_text(key)
            found[key] = frozenset(self._references(key, text)) if text else frozenset()
            todo += [
                ref
                for ref in found[key]
                if ref.endswith(".m3u8") and ref in listed and ref not in found
            ]
        return found

    def _references(self, key: str, text: str) -> list[str]:
        folder = posixpath.dirname(key)
        refs = []
        try:
            uris = playlist.extract_references(text)
        except PlaylistError:
            return []
        for uri in uris:
            # Resolved as keys: the stream's keys share one folder.
            resolved = playlist.resolve_reference("x", uri)
            if resolved is not None:
                refs.append(f"{folder}/{resolved}" if folder else resolved)
        return refs

    async def _read_text(self, key: str) -> str | None:
        """The newest version of a playlist, spooled or in S3; None if unreadable."""
        data = None
        entry = self.uploader.newest_spooled(key)
        if entry is not None:
            try:
                data = await anyio.to_thread.run_sync(
                    self.uploader.spool.read_body, entry
                )
            except FileNotFoundError:
                data = None
        if data is None:
            try:
                data = await anyio.to_thread.run_sync(
                    self.storage.get, key, self.settings.max_playlist_bytes
                )
            except StorageError as exc:
                log.warning("clean-up could not read key=%s: %s", key, exc.detail)
                return None
        if data is None:
            return None
        try:
            return playlist.decode_playlist(data)
        except PlaylistError:
            return None


router = APIRouter()


async def _read_notice(request: Request) -> bytes:
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_NOTICE_BYTES:
                raise BodyTooLarge(f"a notice is at most {MAX_NOTICE_BYTES} bytes")
    except ClientDisconnect:
        raise BodyIncomplete("the client went away before the notice ended") from None
    return bytes(body)


@router.post(
    NOTICE_PATH, dependencies=[Depends(require_writer)], responses=NOTICE_RESPONSES
)
# With a trailing slash too: operators copy the media server's endpoint with
# one. This router comes before the upload routes, whose POST would take it.
@router.post(
    NOTICE_PATH + "/", dependencies=[Depends(require_writer)], include_in_schema=False
)
async def receive_notice(application: str, request: Request) -> JSONResponse:
    """A media server's notice; on publish_finished the stream is cleaned up."""
    if not is_valid_app(application):
        raise InvalidPath(
            f"application {application[:80]!r} must be 1 to 64 letters, digits, "
            "'_' or '-'"
        )
    stream_id, stream = parse_notice(application, await _read_notice(request))

    settings: Settings = request.app.state.relay.settings
    if not settings.delete_on_end:
        log.info(
            "publish_finished ignored stream=%s app=%s: HLSRELAY_DELETE_ON_END is off",
            stream_id,
            application,
        )
        return JSONResponse(
            {
                "status": "ignored",
                "detail": "clean-up on end is off (HLSRELAY_DELETE_ON_END)",
            }
        )
    scheduler: CleanupScheduler = request.app.state.cleanup
    saved = await scheduler.schedule(stream, stream_id)
    delay = settings.delete_on_end_delay_s
    detail = "the stream's HLS files are deleted after " + (
        f"{delay:g} s" if delay is not None else "its live window"
    )
    if not saved:
        detail += (
            "; kept in memory only, its record could not be written (see the "
            "relay's log): a restart in the wait forgets it"
        )
    return JSONResponse(
        {
            "status": "scheduled",
            "stream": stream_id,
            "delay_s": delay,
            "detail": detail,
        },
        status_code=202,
    )
