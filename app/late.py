"""Tries S3 may still apply after the relay gave up on them.

A try that timed out on our side (no answer within HLSRELAY_S3_READ_TIMEOUT_S,
or a connection dropped while waiting for one) may have reached S3 all the
same, and a provider that was stalling can apply it later: after the retry
that worked, and after newer operations on the same key. An old playlist
version would then be back over a newer one, a deleted segment back in the
bucket, or a new publish's playlist gone under a clean-up's late bulk delete,
against guarantee 2.

Nothing on our side can cancel such a try. What can be done is to apply the
key's last operation once more when S3 has had time to finish what it still
held, and only when that operation came after the one that timed out (a late
try of the last one carries what S3 has already). ``LateTries`` says when,
and what. Only what is cheap to hold is sent again: a playlist (small, and
the file a player needs right) or a delete; the resend goes through the
spool and the key's order like an encoder's request. A stop before the wait
is over spools the resend at once, for the next start if not applied before.

After a crash, or a stop with S3 away, every key replayed from the spool is
in doubt from the start: a try of the run before may still be on its way.

Not covered: a segment's PUT is not kept, so a late try of an earlier body
under a name the encoder uses again with other bytes (an fMP4 init file
after an encoder restart) stays; and a crash forgets the keys in doubt whose
operations had all left the spool.
"""

from __future__ import annotations

import heapq
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
    """Operation ``seq`` to send again: a playlist's bytes, or a delete
    (``body`` None)."""

    seq: int
    app: str
    path: str
    body: bytes | None


TAKEN = -1.0  # the due time of a key handed out by take_due


@dataclass
class _Doubt:
    due: float
    first_seq: int  # the oldest operation with a try that timed out
    applied: Rewrite | None = None  # the last one S3 took since


class LateTries:
    """The keys with a try in doubt, and the last operation S3 took on each.

    Called from the event loop only. Memory is one small entry per key in
    doubt (a playlist's bytes at most), from its first timed-out try until
    ``settle_s`` after its last.
    """

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._doubts: dict[str, _Doubt] = {}
        # (due, key); an entry whose due is not the key's current one is stale.
        self._heap: list[tuple[float, str]] = []

    def __contains__(self, key: str) -> bool:
        return key in self._doubts

    def __len__(self) -> int:
        return len(self._doubts)

    def in_doubt(self) -> list[str]:
        return list(self._doubts)

    def timed_out(self, key: str, seq: int, now: float | None = None) -> None:
        """A try of operation ``seq`` on ``key`` timed out."""
        due = (time.monotonic() if now is None else now) + self.settle_s
        doubt = self._doubts.get(key)
        if doubt is None:
            self._doubts[key] = _Doubt(due, seq)
        else:
            due = max(doubt.due, due)
            doubt.first_seq = min(doubt.first_seq, seq)
        self.recheck(key, due)

    def applied(self, key: str, rewrite: Rewrite | None) -> None:
        """S3 took an operation on ``key``: ``rewrite`` sends it again, None
        when it cannot be (a segment's PUT)."""
        doubt = self._doubts.get(key)
        if doubt is not None:
            doubt.applied = rewrite

    def recheck(self, key: str, at: float) -> None:
        """Look at ``key`` again at ``at`` (its operation was still pending)."""
        doubt = self._doubts[key]
        doubt.due = at
        heapq.heappush(self._heap, (at, key))

    def next_due(self) -> float | None:
        while self._heap:
            due, key = self._heap[0]
            doubt = self._doubts.get(key)
            if doubt is not None and doubt.due == due:
                return due
            heapq.heappop(self._heap)
        return None

    def take_due(self, now: float | None = None) -> list[str]:
        """The keys whose wait is over, each once."""
        now = time.monotonic() if now is None else now
        due_keys = []
        while (due := self.next_due()) is not None and due <= now:
            _, key = heapq.heappop(self._heap)
            self._doubts[key].due = TAKEN  # settle() or recheck() next
            due_keys.append(key)
        return due_keys

    def settle(self, key: str, now_or_never: bool = False) -> Rewrite | None:
        """The key leaves doubt: what to write again, if anything.

        Nothing when the last operation applied is the oldest one that timed
        out: its late tries carry what S3 holds already. A key that timed out
        again since ``take_due`` stays in doubt, unless ``now_or_never`` (a
        stop).
        """
        doubt = self._doubts.get(key)
        if doubt is None or (doubt.due != TAKEN and not now_or_never):
            return None
        del self._doubts[key]
        applied = doubt.applied
        return (
            applied if applied is not None and applied.seq > doubt.first_seq else None
        )
