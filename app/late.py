"""Tries S3 may still apply after the relay gave up on them.

A try that timed out on our side (no answer within HLSRELAY_S3_READ_TIMEOUT_S,
or a connection dropped while waiting for one) may have reached S3 all the
same, and a provider that was stalling can apply it later: after the retry
that worked, and after newer operations on the same key. An old playlist
version would then be back over a newer one, or a deleted segment back in
the bucket, against guarantee 2.

Nothing on our side can cancel such a try. What can be done is to write the
key's newest operation once more when S3 has had time to finish whatever it
still held: ``LateTries`` says when, and what. Only what is cheap to hold is
written again: playlists (small, and the file a player needs right) and
deletes. A segment is PUT under a new name each time, so a late try of one
carries the same bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# botocore's names for a try that may have reached S3 without its answer
# reaching us. A refused connection or a connect timeout sent nothing.
LATE_CODES = frozenset({"ReadTimeoutError", "ConnectionClosedError"})


def settle_s(read_timeout_s: float) -> float:
    """How long after its last timed-out try a key is written again.

    S3 kept each such try past a whole read timeout; twice that again, and
    at least 10 s, is left for it to finish before the newest write is made
    again. A try held longer than that can still land late.
    """
    return max(2 * read_timeout_s, 10.0)


@dataclass(frozen=True)
class Rewrite:
    """What to send again: a playlist's bytes, or a delete (``body`` None)."""

    app: str
    path: str
    body: bytes | None


class LateTries:
    """The keys with a try in doubt, and the last operation S3 took on each.

    Called from the event loop only. Memory is one entry per key in doubt,
    held from its first timed-out try until ``settle_s`` after its last.
    """

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._last_timeout: dict[str, float] = {}
        self._applied: dict[str, Rewrite | None] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._last_timeout

    def __len__(self) -> int:
        return len(self._last_timeout)

    def timed_out(self, key: str, now: float | None = None) -> bool:
        """A try on ``key`` timed out; True when the key was not in doubt yet."""
        new = key not in self._last_timeout
        self._last_timeout[key] = time.monotonic() if now is None else now
        return new

    def applied(self, key: str, rewrite: Rewrite | None) -> None:
        """S3 took an operation on ``key``: ``rewrite`` sends it again, None
        when it cannot be (a segment's PUT)."""
        if key in self._last_timeout:
            self._applied[key] = rewrite

    def due_at(self, key: str) -> float | None:
        """When ``key`` is settled; None once it is not in doubt."""
        last = self._last_timeout.get(key)
        return None if last is None else last + self.settle_s

    def settle(self, key: str) -> Rewrite | None:
        """The key leaves doubt: what to write again, if anything was
        applied to it since its first timed-out try."""
        self._last_timeout.pop(key, None)
        return self._applied.pop(key, None)
