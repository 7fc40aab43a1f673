"""The spool on disk: what a crash can leave half-written is found on open and
thrown away, never replayed; a full disk is DiskFull and a full spool is
SpoolFull, and neither changes what is already spooled."""

from __future__ import annotations

import errno
import json
import logging
import zlib
from pathlib import Path

import pytest

from app import spool as spool_module
from app.errors import DiskFull, SpoolFull
from app.spool import BodyWriter, Spool, SpoolEntry


def spool_put(spool: Spool, seq: int, body: bytes, path: str = "s.ts") -> SpoolEntry:
    writer = spool.begin_body()
    writer.write(body)
    writer.finish()
    entry = SpoolEntry(
        seq=seq,
        action="put",
        app="LiveApp",
        path=path,
        key=f"streams/{path}",
        content_type="video/mp2t",
        size=len(body),
        crc32=zlib.crc32(body),
    )
    spool.commit_put(writer, entry)
    return entry


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool", max_bytes=10_000)
    spool.open()
    return spool


def reopen(spool: Spool) -> tuple[Spool, list[SpoolEntry]]:
    again = Spool(spool.root, spool.max_bytes)
    return again, again.open()


def entry_files(spool: Spool) -> list[str]:
    return sorted(p.name for p in spool.entries_dir.iterdir())


def test_spool_open_returns_committed_entries_in_order(spool: Spool) -> None:
    second = spool_put(spool, 2, b"b" * 20, "b.ts")
    first = spool_put(spool, 1, b"a" * 10, "a.ts")
    delete = SpoolEntry(seq=3, action="delete", app="LiveApp", path="a.ts", key="k")
    spool.commit_delete(delete)

    again, entries = reopen(spool)

    assert entries == [first, second, delete]
    assert again.used_bytes == 30
    assert again.read_body(second) == b"b" * 20


def test_spool_open_discards_body_without_metadata(spool: Spool) -> None:
    kept = spool_put(spool, 1, b"kept")
    torn = spool_put(spool, 2, b"torn body")
    (spool.entries_dir / f"{torn.seq:020d}.json").unlink()

    again, entries = reopen(spool)

    assert entries == [kept]
    assert not again.body_path(torn).exists()
    assert again.used_bytes == len(b"kept")


def test_spool_open_discards_short_body(spool: Spool) -> None:
    torn = spool_put(spool, 1, b"x" * 100)
    with open(spool.body_path(torn), "r+b") as body:
        body.truncate(60)

    again, entries = reopen(spool)

    assert entries == []
    assert entry_files(again) == []
    assert again.used_bytes == 0


def test_spool_open_discards_body_failing_its_crc(spool: Spool) -> None:
    torn = spool_put(spool, 1, b"x" * 100)
    path = spool.body_path(torn)
    data = bytearray(path.read_bytes())
    data[50] ^= 0xFF
    path.write_bytes(bytes(data))

    again, entries = reopen(spool)

    assert entries == []
    assert entry_files(again) == []


def test_spool_open_discards_metadata_whose_body_is_gone(spool: Spool) -> None:
    torn = spool_put(spool, 1, b"x" * 100)
    spool.body_path(torn).unlink()

    again, entries = reopen(spool)

    assert entries == []
    assert entry_files(again) == []


GOOD = {
    "seq": 1,
    "action": "put",
    "app": "LiveApp",
    "path": "s.ts",
    "key": "streams/s.ts",
    "content_type": "video/mp2t",
    "size": 4,
    "crc32": zlib.crc32(b"body"),
}


@pytest.mark.parametrize(
    "metadata",
    [
        b"",
        b'{"seq": 1, "action": "put", "app": "Li',
        b"\xff\xfe not utf-8",
        b"[]",
        b"null",
        b"{}",
        json.dumps({**GOOD, "unknown": 1}).encode(),
        json.dumps({k: v for k, v in GOOD.items() if k != "key"}).encode(),
        json.dumps({**GOOD, "seq": "1"}).encode(),
        json.dumps({**GOOD, "seq": 7}).encode(),
        json.dumps({**GOOD, "size": -4}).encode(),
        json.dumps({**GOOD, "size": True}).encode(),
        json.dumps({**GOOD, "action": "rename"}).encode(),
        json.dumps({**GOOD, "key": ""}).encode(),
        json.dumps({**GOOD, "key": ["streams/s.ts"]}).encode(),
    ],
    ids=[
        "empty",
        "cut-short",
        "not-utf8",
        "list",
        "null",
        "no-fields",
        "extra-field",
        "missing-key",
        "seq-as-text",
        "seq-not-its-file",
        "negative-size",
        "bool-size",
        "unknown-action",
        "empty-key",
        "key-not-text",
    ],
)
def test_spool_open_discards_garbage_metadata(spool: Spool, metadata: bytes) -> None:
    kept = spool_put(spool, 2, b"kept")
    (spool.entries_dir / f"{1:020d}.body").write_bytes(b"body")
    (spool.entries_dir / f"{1:020d}.json").write_bytes(metadata)

    again, entries = reopen(spool)

    assert entries == [kept]
    assert entry_files(again) == [f"{2:020d}.body", f"{2:020d}.json"]


def test_spool_open_discards_stale_incoming_and_temp_files(spool: Spool) -> None:
    writer = spool.begin_body()
    writer.write(b"a whole body")
    writer.finish()  # the process died before committing it
    (spool.entries_dir / f"{5:020d}.tmp").write_text('{"seq": 5')
    (spool.entries_dir / f"{5:020d}.body").write_bytes(b"renamed, no metadata")

    again, entries = reopen(spool)

    assert entries == []
    assert list(again.incoming_dir.iterdir()) == []
    assert entry_files(again) == []


def test_spool_reserve_takes_up_to_the_limit_and_refuses_past_it(
    spool: Spool,
) -> None:
    spool.reserve(9_999)
    spool.reserve(1)

    with pytest.raises(SpoolFull, match="HLSRELAY_SPOOL_MAX_BYTES"):
        spool.reserve(1)
    assert spool.used_bytes == 10_000


def test_spool_body_past_the_limit_is_refused_and_leaves_entries_alone(
    spool: Spool,
) -> None:
    kept = spool_put(spool, 1, b"k" * 6_000)
    writer = spool.begin_body()

    with pytest.raises(SpoolFull):
        writer.write(b"x" * 5_000)
    writer.abort()

    again, entries = reopen(spool)
    assert entries == [kept]
    assert again.read_body(kept) == b"k" * 6_000
    assert spool.used_bytes == 6_000


def test_spool_full_disk_on_write_is_disk_full(spool: Spool, tmp_path: Path) -> None:
    # /dev/full fails every write with ENOSPC, as a filling disk does; each
    # slice is flushed as it is written, so the write that hits it says so.
    # The link keeps abort() away from the device.
    full = tmp_path / "full"
    full.symlink_to("/dev/full")
    writer = BodyWriter(spool, full)

    with pytest.raises(DiskFull, match="disk is full"):
        writer.write(b"x" * 100)
    assert spool.used_bytes == 0
    writer.abort()
    assert spool.used_bytes == 0
    assert Path("/dev/full").exists()


def test_spool_full_disk_on_metadata_releases_bytes_once(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = spool_put(spool, 1, b"k" * 50)
    writer = spool.begin_body()
    writer.write(b"x" * 100)
    writer.finish()
    entry = SpoolEntry(
        seq=2, action="put", app="A", path="x.ts", key="streams/x.ts", size=100
    )

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", no_space)
    with pytest.raises(DiskFull):
        spool.commit_put(writer, entry)
    writer.abort()  # what the uploader does on any failure
    monkeypatch.undo()

    assert spool.used_bytes == 50
    again, entries = reopen(spool)
    assert entries == [kept]
    assert entry_files(again) == [f"{1:020d}.body", f"{1:020d}.json"]


@pytest.mark.parametrize(("fsync_puts", "put_syncs"), [(True, 3), (False, 0)])
def test_spool_fsyncs_puts_only_when_they_are_acknowledged_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync_puts: bool, put_syncs: int
) -> None:
    # Upload ack mode answers once S3 has the file: its spool copy is only a
    # buffer. A delete is acknowledged from the spool in both modes.
    import app.spool as spool_module

    calls: list[int] = []
    real_fsync = spool_module.os.fsync
    monkeypatch.setattr(
        spool_module.os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd)
    )
    spool = Spool(tmp_path / "spool", max_bytes=10_000, fsync_puts=fsync_puts)
    spool.open()

    entry = spool_put(spool, 1, b"body")
    assert len(calls) == put_syncs
    spool.commit_delete(
        SpoolEntry(
            seq=2, action="delete", app="LiveApp", path="s.ts", key="streams/s.ts"
        )
    )
    assert len(calls) == put_syncs + 2

    _, entries = reopen(spool)
    assert [e.seq for e in entries] == [entry.seq, 2]


SEGMENT = spool_module.RECYCLE_MIN_FILE


@pytest.fixture
def roomy(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "roomy", max_bytes=64 * 1024 * 1024)
    spool.open()
    return spool


def recycled(spool: Spool) -> list[Path]:
    return sorted(spool.incoming_dir.glob("*.free"))


def test_spool_recycled_file_takes_the_next_segment_cut_to_its_size(
    roomy: Spool,
) -> None:
    first = spool_put(roomy, 1, b"a" * (SEGMENT + 5_000))
    inode = roomy.body_path(first).stat().st_ino
    roomy.remove(first, recycle=True)
    assert roomy.recycled_files == 1
    assert roomy.used_bytes == 0

    writer = roomy.begin_body(reuse=True)
    writer.write(b"b" * SEGMENT)
    writer.finish()
    second = SpoolEntry(
        seq=2, action="put", app="A", path="s.ts", key="streams/s.ts",
        size=SEGMENT, crc32=writer.crc32,
    )  # fmt: skip
    roomy.commit_put(writer, second)

    # The same file, holding the new body and nothing of the old one.
    assert roomy.body_path(second).stat().st_ino == inode
    assert roomy.read_body(second) == b"b" * SEGMENT
    assert roomy.recycled_files == 0
    assert recycled(roomy) == []
    _, entries = reopen(roomy)
    assert entries == [second]


def test_spool_playlist_writer_leaves_recycled_files_alone(roomy: Spool) -> None:
    roomy.remove(spool_put(roomy, 1, b"a" * SEGMENT), recycle=True)

    writer = roomy.begin_body()
    writer.write(b"#EXTM3U\n")
    writer.finish()
    writer.abort()

    assert roomy.recycled_files == 1
    assert len(recycled(roomy)) == 1


@pytest.mark.parametrize(
    ("size", "kept"),
    [
        (spool_module.RECYCLE_MIN_FILE - 1, False),
        (spool_module.RECYCLE_MIN_FILE, True),
        (spool_module.RECYCLE_MAX_FILE, True),
        (spool_module.RECYCLE_MAX_FILE + 1, False),
    ],
)
def test_spool_recycles_bodies_of_segment_size_only(
    roomy: Spool, size: int, kept: bool
) -> None:
    entry = spool_put(roomy, 1, b"x" * size)
    roomy.remove(entry, recycle=True)

    assert roomy.recycled_files == int(kept)
    assert len(recycled(roomy)) == int(kept)
    assert entry_files(roomy) == []


def test_spool_keeps_recycled_files_within_count_and_bytes(
    roomy: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "RECYCLE_FILES", 2)
    for seq in (1, 2, 3):
        roomy.remove(spool_put(roomy, seq, b"x" * SEGMENT), recycle=True)
    assert roomy.recycled_files == 2
    assert len(recycled(roomy)) == 2

    monkeypatch.setattr(spool_module, "RECYCLE_FILES", 64)
    monkeypatch.setattr(spool_module, "RECYCLE_BYTES", 3 * SEGMENT)
    roomy.remove(spool_put(roomy, 4, b"x" * SEGMENT), recycle=True)
    roomy.remove(spool_put(roomy, 5, b"x" * SEGMENT), recycle=True)
    assert roomy.recycled_files == 3
    assert len(recycled(roomy)) == 3


def test_spool_remove_unlinks_unless_asked_to_recycle(roomy: Spool) -> None:
    roomy.remove(spool_put(roomy, 1, b"x" * SEGMENT))

    assert roomy.recycled_files == 0
    assert list(roomy.incoming_dir.iterdir()) == []


def test_spool_open_drops_recycled_files_without_a_warning(
    roomy: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    roomy.remove(spool_put(roomy, 1, b"x" * SEGMENT), recycle=True)

    with caplog.at_level(logging.WARNING, logger="app.spool"):
        again, entries = reopen(roomy)

    assert entries == []
    assert list(again.incoming_dir.iterdir()) == []
    assert caplog.records == []


def test_spool_full_disk_gives_the_recycled_files_back(
    roomy: Spool, tmp_path: Path
) -> None:
    roomy.remove(spool_put(roomy, 1, b"x" * SEGMENT), recycle=True)
    full = tmp_path / "full"
    full.symlink_to("/dev/full")
    writer = BodyWriter(roomy, full)

    with pytest.raises(DiskFull):
        writer.write(b"x" * 100)
    writer.abort()

    assert roomy.recycled_files == 0
    assert recycled(roomy) == []


@pytest.mark.parametrize(("room_needed", "kept"), [(0, 1), (1 << 62, 0)])
def test_spool_recycles_only_with_room_on_its_disk(
    roomy: Spool, monkeypatch: pytest.MonkeyPatch, room_needed: int, kept: int
) -> None:
    monkeypatch.setattr(spool_module, "RECYCLE_ROOM", room_needed)
    roomy.remove(spool_put(roomy, 1, b"x" * SEGMENT), recycle=True)

    assert roomy.recycled_files == kept
    assert len(recycled(roomy)) == kept


def test_spool_metadata_on_a_full_disk_takes_the_recycled_files_room(
    roomy: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A delete is only metadata: with recycled files on the disk it must not
    # be refused for want of room they hold.
    roomy.remove(spool_put(roomy, 1, b"x" * SEGMENT), recycle=True)
    real_dump = json.dump
    calls = []

    def full_once(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_dump(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(json, "dump", full_once)
    delete = SpoolEntry(
        seq=2, action="delete", app="A", path="s.ts", key="streams/s.ts"
    )
    roomy.commit_delete(delete)
    monkeypatch.undo()

    assert len(calls) == 2
    assert roomy.recycled_files == 0
    assert recycled(roomy) == []
    _, entries = reopen(roomy)
    assert entries == [delete]


def test_spool_full_disk_at_fsync_gives_the_recycled_files_back(
    roomy: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    roomy.remove(spool_put(roomy, 1, b"x" * SEGMENT), recycle=True)
    writer = roomy.begin_body()
    writer.write(b"y" * 100)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module.os, "fsync", no_space)
    with pytest.raises(DiskFull):
        writer.finish()
    monkeypatch.undo()
    writer.abort()

    assert roomy.recycled_files == 0
    assert recycled(roomy) == []


def test_spool_drops_its_recycled_files_once_the_disk_is_short_of_room(
    roomy: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "RECYCLE_ROOM", 0)
    roomy.remove(spool_put(roomy, 1, b"x" * SEGMENT), recycle=True)
    assert roomy.recycled_files == 1

    monkeypatch.setattr(spool_module, "RECYCLE_ROOM", 1 << 62)
    roomy.remove(spool_put(roomy, 2, b"x" * SEGMENT), recycle=True)

    assert roomy.recycled_files == 0
    assert recycled(roomy) == []
