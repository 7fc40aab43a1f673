"""The reader of a spool file still being written: what botocore may read, when."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.growing import BodyAbandoned, GrowingBody
from app.spool import Spool


def _reader_in_thread(body: GrowingBody, amt: int) -> tuple[threading.Thread, list]:
    got: list = []

    def read() -> None:
        try:
            got.append(body.read(amt))
        except BodyAbandoned as exc:
            got.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, got


class Writer:
    """Stands for the spool's body writer: a file open for writing."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "w+b")  # noqa: SIM115 - closed by the test

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    made = Writer(tmp_path / "body")
    yield made
    made.file.close()


def test_reads_only_what_is_written(writer: Writer) -> None:
    body = GrowingBody(writer, 10)
    thread, got = _reader_in_thread(body, 100)
    time.sleep(0.05)
    assert got == []  # nothing written yet, not even the file's descriptor
    writer.write(b"abcd")
    body.grow(4)
    thread.join(30)
    assert got == [b"abcd"]
    thread, got = _reader_in_thread(body, 100)
    time.sleep(0.05)
    assert got == []  # blocked at the end of what is written
    writer.write(b"efg")
    body.grow(7)
    thread.join(30)
    assert got == [b"efg"]
    body.close()


def test_last_byte_waits_for_complete(writer: Writer) -> None:
    body = GrowingBody(writer, 10)
    writer.write(b"0123456789")
    body.grow(10)
    assert body.read(-1) == b"012345678"  # all but the last byte
    thread, got = _reader_in_thread(body, 100)
    time.sleep(0.05)
    assert got == []
    body.complete()
    thread.join(30)
    assert got == [b"9"]
    assert body.read(100) == b""  # the end
    body.close()


def test_abandon_wakes_a_blocked_reader_with_an_error(writer: Writer) -> None:
    body = GrowingBody(writer, 10)
    writer.write(b"01234")
    body.grow(5)
    assert body.read(5) == b"01234"
    thread, got = _reader_in_thread(body, 5)
    time.sleep(0.05)
    body.abandon()
    thread.join(30)
    assert len(got) == 1 and isinstance(got[0], BodyAbandoned)
    # And every read after, from the start too (a retry inside botocore).
    body.seek(0)
    with pytest.raises(BodyAbandoned):
        body.read(1)
    body.close()


def test_seek_back_reads_again_like_a_file(writer: Writer) -> None:
    data = os.urandom(1000)
    body = GrowingBody(writer, len(data))
    writer.write(data)
    body.grow(len(data))
    body.complete()
    first = b"".join(iter(lambda: body.read(64), b""))
    assert first == data
    assert body.tell() == len(data)
    assert body.seek(0) == 0
    assert body.read(-1) == data
    assert body.seek(-10, os.SEEK_END) == 990
    assert body.read(None) == data[-10:]
    body.close()


def test_the_file_may_be_closed_renamed_and_removed_while_read(
    writer: Writer, tmp_path: Path
) -> None:
    path = tmp_path / "body"
    body = GrowingBody(writer, 5)
    writer.write(b"hello")
    body.grow(5)
    writer.file.close()  # the spool's commit closes the file and moves it
    path.rename(tmp_path / "entry.body")
    body.complete()
    (tmp_path / "entry.body").unlink()
    assert body.read(10) == b"hello"
    body.close()


def test_what_the_spool_writer_counts_is_in_the_file(tmp_path: Path) -> None:
    # The last piece of a body is small; it must not sit in a buffer while
    # the reader is told it is there.
    spool = Spool(tmp_path / "spool", 1 << 20)
    spool.open()
    body_writer = spool.begin_body()
    body = GrowingBody(body_writer, 300)
    body_writer.write(b"a" * 100)
    body.grow(body_writer.size)
    body_writer.write(b"b" * 200)
    body.grow(body_writer.size)
    body.complete()
    assert body.read(-1) == b"a" * 100 + b"b" * 200  # before finish() flushes
    body_writer.finish()
    body_writer.abort()
    body.close()
