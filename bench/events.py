"""When each object version became visible in the bucket, without polling it.

SeaweedFS's filer publishes a change event for every entry it stores, stamped
with the filer's own clock; ``weed filer.meta.tail`` prints them. The S3
gateway answers a GET from the same entries, so an event's stamp is the moment
a player could first read that version. Watching the feed costs the store
nothing, where polling hundreds of playlists would load the machine under test.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, cast

from app.locals3 import LocalS3, find_weed
from bench.procs import BenchError, stop_process


def md5_b64(data: bytes) -> str:
    """The content MD5 as the filer records it: base64 of the digest."""
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


class BucketEvents:
    """Follows the filer's change feed for one bucket in a reader thread."""

    def __init__(self, s3: LocalS3, bucket: str, log_path: Path) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.log_path = log_path
        self._prefix = f"/buckets/{bucket}/"
        self._seen: dict[tuple[str, str], int] = {}
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self.events = 0

    def start(self) -> BucketEvents:
        args = [
            find_weed(),
            "filer.meta.tail",
            f"-filer={self.s3.filer_address}",
            f"-pathPrefix={self._prefix}",
        ]
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
            )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._wait_subscribed()
        return self

    def _wait_subscribed(self) -> None:
        # The feed starts from "now" once subscribed; a probe object written
        # until one shows up proves later writes will show too.
        client = self.s3.client()
        deadline = time.monotonic() + 20.0
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            body = f"probe {attempt}".encode()
            client.put_object(Bucket=self.bucket, Key="bench/probe", Body=body)
            if self.wait_for("bench/probe", md5_b64(body), 1.0) is not None:
                return
        self.stop()
        raise BenchError(
            f"no filer events for bucket {self.bucket}; see {self.log_path}"
        )

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, signal.SIGTERM, 5.0)
            self._proc = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def visible_at(self, key: str, md5: str) -> int | None:
        """The filer's time (ns since the epoch) the version first appeared."""
        with self._cond:
            return self._seen.get((key, md5))

    def wait_for(self, key: str, md5: str, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (key, md5) not in self._seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._seen[(key, md5)]

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        stream = cast(io.BufferedReader, self._proc.stdout)
        while True:
            chunk = stream.read1(1 << 16)
            if not chunk:
                return
            buffer += chunk.decode("utf-8", errors="replace")
            while True:
                buffer = buffer.lstrip()
                if not buffer:
                    break
                try:
                    event, end = decoder.raw_decode(buffer)
                except json.JSONDecodeError:
                    break  # the rest of this event has not arrived yet
                buffer = buffer[end:]
                self._note(event)

    def _note(self, event: Any) -> None:
        notification = event.get("eventNotification") or {}
        entry = notification.get("newEntry")
        if not entry or entry.get("isDirectory"):
            return
        folder = notification.get("newParentPath") or event.get("directory", "")
        path = f"{folder.rstrip('/')}/{entry.get('name', '')}"
        if not path.startswith(self._prefix):
            return
        key = path[len(self._prefix) :]
        md5 = (entry.get("attributes") or {}).get("md5", "")
        stamp = int(event.get("tsNs", "0"))
        with self._cond:
            self.events += 1
            self._seen.setdefault((key, md5), stamp)
            self._cond.notify_all()
