"""Stopping within ``HLSRELAY_SHUTDOWN_GRACE_S`` of SIGTERM, all steps included.

uvicorn spends its graceful timeout on the requests in flight and only then
runs the lifespan's shutdown; the clock started by the signal lets the
uploader have what is left of the grace period instead of a second one.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import time
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


class ShutdownClock:
    """The grace period, counted from the first stop signal."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._deadline: float | None = None

    def begin(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.grace_s

    def remaining(self) -> float:
        """Seconds left; the whole grace period when no signal came (tests)."""
        if self._deadline is None:
            return self.grace_s
        return max(0.0, self._deadline - time.monotonic())


class RelayServer(uvicorn.Server):
    """uvicorn's server, starting the shutdown clock when a stop signal comes."""

    def __init__(self, config: uvicorn.Config, clock: ShutdownClock) -> None:
        super().__init__(config)
        self.clock = clock

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # uvicorn says where it listens only for the sockets it bound itself;
        # the relay binds its own (app/cli.py) to refuse a taken port early.
        if sockets and not self.should_exit:
            for sock in sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                log.info("listening on http://%s:%d", shown, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            self.clock.begin()
            log.info(
                "stopping signal=%s: no new connections, requests in flight get "
                "up to %gs",
                _signal_name(sig),
                self.clock.grace_s,
            )
        super().handle_exit(sig, frame)


def _signal_name(sig: int) -> str:
    """SIGTERM rather than 15 (make run stops its relay with SIGTERM on Ctrl-C)."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def graceful_timeout(grace_s: float) -> int:
    """uvicorn's whole seconds for requests in flight, never more than the grace.

    0 makes uvicorn cancel them at once, which the spool survives: a body
    cut short is dropped whole. (uvicorn reads None as "wait for ever".)
    """
    return math.floor(grace_s)
