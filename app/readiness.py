"""Readiness for /readyz: should this relay be sent encoders right now.

A background task probes the bucket with short timeouts and checks that the
spool can be written, so /readyz answers at once even while S3 hangs, and a
frozen S3 shows as a probe that has not come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import anyio.to_thread

from app.config import Settings
from app.errors import RelayError
from app.spool import Spool
from app.storage import S3Storage
from app.uploader import Uploader

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 2.0


def probe_storage(settings: Settings) -> S3Storage:
    """An S3Storage of its own for probes, whose calls give up quickly."""
    quick = settings.model_copy(
        update={
            "s3_connect_timeout_s": PROBE_TIMEOUT_S,
            "s3_read_timeout_s": PROBE_TIMEOUT_S,
            "s3_max_connections": 4,
            "upload_concurrency": 1,
        }
    )
    return S3Storage(quick)


class Readiness:
    def __init__(
        self, settings: Settings, spool: Spool, uploader: Uploader, probe: S3Storage
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.uploader = uploader
        self.probe = probe
        self._bucket_problem = "S3 has not been probed yet"
        self._probe_started: float | None = None
        self._spool_writable = True
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> list[str]:
        """``problems()``, probing first when no background task does (an app
        served without its lifespan)."""
        if self._task is None:
            await self._probe_once()
        return self.problems()

    def problems(self) -> list[str]:
        """Why the relay is not ready; empty when it is."""
        found = []
        if not self._spool_writable:
            found.append("the spool is not writable")
        used, limit = self.spool.used_bytes, self.spool.max_bytes
        percent = self.settings.spool_ready_percent
        if used > limit * percent / 100:
            found.append(
                f"the spool holds {used} of {limit} bytes, over "
                f"HLSRELAY_SPOOL_READY_PERCENT={percent:g}%; S3 is behind"
            )
        started = self._probe_started
        if started is not None and time.monotonic() - started > PROBE_TIMEOUT_S:
            waited = time.monotonic() - started
            found.append(f"S3 has not answered HEAD bucket for {waited:.0f}s")
        elif self._bucket_problem:
            found.append(self._bucket_problem)
        # A bucket can answer HEAD and still refuse every upload (an ACL it
        # forbids, a key without s3:PutObject); only the uploader sees that.
        if not self.uploader.storage_ok:
            found.append(f"uploads are failing: {self.uploader.storage_problem}")
        return found

    async def _watch(self) -> None:
        was_ready = True
        while True:
            await self._probe_once()
            problems = self.problems()
            if was_ready and problems:
                log.warning("not ready: %s", "; ".join(problems))
            elif not was_ready and not problems:
                log.info("ready again")
            was_ready = not problems
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _probe_once(self) -> None:
        self._probe_started = time.monotonic()
        try:
            # Abandoned on shutdown rather than waited for: the call ends by
            # itself within its own short timeouts.
            await anyio.to_thread.run_sync(
                self.probe.check_bucket, abandon_on_cancel=True
            )
            self._bucket_problem = ""
        except RelayError as exc:
            self._bucket_problem = exc.detail
        except Exception as exc:
            self._bucket_problem = f"S3 probe failed: {type(exc).__name__}: {exc}"
        finally:
            self._probe_started = None
        self._spool_writable = await anyio.to_thread.run_sync(self.spool.is_writable)
