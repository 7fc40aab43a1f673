"""A spool file read while it is still being written: the body of a streamed upload.

A PUT with a Content-Length goes to S3 while it arrives: the request writes
each slice to its spool file, and botocore, in a worker thread, reads the same
file through a ``GrowingBody`` that blocks at the end of what is written so
far. Nothing is held in memory, and like a file it can seek back to the
start.

The last byte is released only once the body is whole and committed to the
spool. S3 stores an object only when it has received every byte the
Content-Length announced, so a body cut short, too large or refused by the
spool is never stored and never replaces an older object: the reader raises
instead, and the connection to S3 is dropped mid-body.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol


class BodyAbandoned(Exception):
    """The request's body will not be completed; the upload must not finish."""


class _File(Protocol):
    def fileno(self) -> int: ...


class GrowingBody:
    """A file-like reader of ``size`` bytes that are written while it reads.

    ``grow``, ``complete`` and ``abandon`` are called by the writer (any
    thread); ``read``, ``seek`` and ``tell`` by botocore in its own thread.
    The body file may not exist yet when this is made: the first ``grow``
    takes a descriptor of its own from the writer, which stays valid when
    the spool renames the file or removes it.
    """

    def __init__(self, writer: _File, size: int) -> None:
        self.size = size
        self._writer = writer
        self._fd: int | None = None
        self._pos = 0
        self._written = 0
        self._complete = False
        self._abandoned = False
        self._closed = False
        self._cond = threading.Condition()

    # -- the writer's side ----------------------------------------------

    def grow(self, written: int) -> None:
        """``written`` bytes of the file are on disk (in the page cache).

        Called in the writer's thread, while the writer's file is open.
        """
        with self._cond:
            if self._fd is None and not self._closed:
                self._fd = os.dup(self._writer.fileno())
            self._written = written
            self._cond.notify_all()

    def complete(self) -> None:
        """The body is whole and committed: the reader may take its last byte.

        ``grow`` must have been told the whole size before.
        """
        with self._cond:
            self._complete = True
            self._cond.notify_all()

    def abandon(self) -> None:
        """The body will not be whole: every read from now on raises."""
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()

    # -- botocore's side -------------------------------------------------

    def _readable(self) -> int:
        # Until complete() the last byte stays back, so S3 cannot finish.
        if self._complete:
            return self.size
        return min(self._written, self.size - 1)

    def read(self, amt: int | None = -1) -> bytes:
        with self._cond:
            while True:
                if self._abandoned or self._closed:
                    raise BodyAbandoned("the request's body was not completed")
                if self._pos >= self.size:
                    return b""
                available = self._readable() - self._pos
                if available > 0:
                    break
                self._cond.wait()
            want = available if amt is None or amt < 0 else min(amt, available)
            pos = self._pos
            self._pos += want
            fd = self._fd
        assert fd is not None  # grow() took it before anything was readable
        data = os.pread(fd, want, pos)
        if len(data) != want:
            raise BodyAbandoned("the spool file is shorter than what was written")
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        with self._cond:
            if whence == os.SEEK_SET:
                target = offset
            elif whence == os.SEEK_CUR:
                target = self._pos + offset
            elif whence == os.SEEK_END:
                target = self.size + offset
            else:
                raise ValueError(f"bad whence {whence}")
            if target < 0:
                raise ValueError("negative seek position")
            self._pos = target
            return target

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        """Called by the owner once the upload that reads it has ended."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
