"""A request body as http.server hands it over: chunked or with a length.

http.server leaves the framing of a body to its handler; the naive relay and
the fault proxy both take what ffmpeg and botocore send, chunked included.
Standard library only: both also run as scripts of their own.
"""

from __future__ import annotations

from email.message import Message
from typing import BinaryIO


def read_body(headers: Message, rfile: BinaryIO) -> bytes:
    """The whole body of the request whose head ``headers`` is, from ``rfile``."""
    if "chunked" not in headers.get("Transfer-Encoding", "").lower():
        return rfile.read(int(headers.get("Content-Length", "0")))
    chunks: list[bytes] = []
    while size := int(rfile.readline().split(b";", 1)[0].strip(), 16):
        chunks.append(rfile.read(size))
        rfile.readline()  # the CRLF after the chunk's data
    # The trailer section: header lines up to an empty one.
    for line in iter(rfile.readline, b""):
        if line in (b"\r\n", b"\n"):
            break
    return b"".join(chunks)
