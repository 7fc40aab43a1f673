"""The ordering rule: when each received operation may be applied to S3.

A synchronous state machine, free of I/O so that every interleaving can be
tested: the uploader tells it what arrived, what finished and what S3 said,
and takes from it the operations that may start. It keeps SPEC's first three
guarantees: a playlist after what it references, newest first per key, and
no delete of a file a current playlist still names.
"""

from __future__ import annotations

import heapq
import logging
import posixpath
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

log = logging.getLogger(__name__)

Action = Literal["put", "delete"]


class State(Enum):
    RECEIVING = "receiving"  # the body is still arriving
    QUEUED = "queued"  # durable, waiting for its turn
    RUNNING = "running"  # handed to the uploader
    DONE = "done"
    DROPPED = "dropped"  # a newer operation on the key made it moot


@dataclass(frozen=True)
class PlaylistVersion:
    """What the barrier needs of one playlist body.

    With ``extends`` the body is the published version plus appended lines and
    ``refs`` holds only the keys those lines name; otherwise ``refs`` is all of
    them. ``digest`` and ``length`` identify the body for the next version.
    """

    refs: frozenset[str]
    extends: bool
    length: int
    digest: bytes
    line_end: bool


@dataclass(eq=False)
class Operation:
    seq: int
    key: str
    action: Action
    is_playlist: bool
    state: State = State.RECEIVING
    payload: object = None
    version: PlaylistVersion | None = None
    deadline: float = 0.0
    blocking: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    # The playlists among ``blocking`` when it was built: the only edges a
    # cycle check follows, so it never walks a long list of segments.
    playlists: set[str] = field(default_factory=set)
    # Started while its body arrives (start_early): it runs from its commit
    # on, driven by the uploader, and is never handed out by take_ready.
    early: bool = False


@dataclass
class Published:
    """The newest playlist version written to S3 under a key."""

    refs: set[str]
    length: int
    digest: bytes
    line_end: bool


class BoundedKeys(OrderedDict[str, None]):
    """An insertion-ordered set that forgets its oldest keys past a size."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def add(self, key: str) -> None:
        self[key] = None
        self.move_to_end(key)
        if len(self) > self.capacity:
            self.popitem(last=False)

    def discard(self, key: str) -> None:
        self.pop(key, None)


class SegmentBarrier:
    """Decides, per key and across playlists, which operation may start."""

    def __init__(
        self,
        wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        memory_keys: int = 200_000,
    ) -> None:
        self.wait_s = wait_s
        self.clock = clock
        self._ops: dict[int, Operation] = {}
        self._queues: dict[str, deque[Operation]] = {}
        self._published: dict[str, Published] = {}
        self._stored = BoundedKeys(memory_keys)
        self._absent = BoundedKeys(memory_keys)
        self._lookups_wanted: set[str] = set()
        self._lookups_running: set[str] = set()
        self._waiters: dict[str, set[int]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._folders: dict[str, set[str]] = {}
        self._ready: list[Operation] = []
        self._dropped: list[Operation] = []

    # -- what the uploader tells the barrier -----------------------------

    def begin(self, seq: int, key: str, action: Action, is_playlist: bool) -> None:
        """A request started: later operations on ``key`` wait for this one."""
        op = Operation(seq=seq, key=key, action=action, is_playlist=is_playlist)
        self._ops[seq] = op
        self._queues.setdefault(key, deque()).append(op)

    def start_early(self, seq: int) -> bool:
        """May this PUT go to S3 while its body is still arriving?

        Only a media PUT with nothing before it on its key: nothing it must
        wait for, and everything after it on the key waits for it anyway,
        from its begin() until finished() or abort().
        """
        op = self._ops[seq]
        queue = self._queues[op.key]
        if op.action != "put" or op.is_playlist or queue[0] is not op:
            return False
        op.early = True
        return True

    def operation(self, seq: int) -> Operation:
        return self._ops[seq]

    def commit(
        self, seq: int, payload: object, version: PlaylistVersion | None = None
    ) -> None:
        """The operation is durable and acknowledged; it now waits its turn."""
        op = self._ops[seq]
        op.state = State.RUNNING if op.early else State.QUEUED
        op.payload = payload
        if version is not None:
            self._add_version(op, version)
        self._supersede(op.key)
        self._evaluate_head(op.key)

    def abort(self, seq: int) -> None:
        """The body was cut short: the operation never happened."""
        op = self._ops.pop(seq, None)
        if op is None:
            return
        op.state = State.DROPPED
        self._remove_from_queue(op)
        self._changed(op.key)

    def finished(self, seq: int) -> None:
        """S3 applied the operation."""
        op = self._ops.pop(seq)
        op.state = State.DONE
        self._remove_from_queue(op)
        if op.action == "put":
            self._stored.add(op.key)
            self._absent.discard(op.key)
            if op.version is not None:
                self._publish(op.key, op.version)
        else:
            self._stored.discard(op.key)
            self._absent.add(op.key)
            self._forget_playlist(op.key)
        self._changed(op.key)

    def lookup_done(self, key: str, exists: bool) -> None:
        """S3 said whether a referenced file we knew nothing about is there."""
        self._lookups_running.discard(key)
        if exists:
            self._stored.add(key)
        else:
            self._absent.add(key)
        self._wake(key)

    def expire(self) -> None:
        """Give up on references whose wait is over (files that never came)."""
        now = self.clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq = heapq.heappop(self._deadlines)
            op = self._ops.get(seq)
            if op is None or op.state is not State.QUEUED:
                continue
            for ref in list(op.blocking):
                state = self._ref_state(ref)
                if state != "wait":
                    op.blocking.discard(ref)
                    if state == "absent":  # stored meanwhile is not missing
                        op.missing.add(ref)
            self._evaluate_head(op.key)

    # -- what the uploader takes from the barrier ------------------------

    def take_ready(self) -> list[Operation]:
        ready, self._ready = self._ready, []
        return ready

    def take_dropped(self) -> list[Operation]:
        dropped, self._dropped = self._dropped, []
        return dropped

    def take_lookups(self) -> list[str]:
        wanted = self._lookups_wanted - self._lookups_running
        self._lookups_wanted.clear()
        self._lookups_running |= wanted
        return sorted(wanted)

    def lookup_wanted(self, key: str) -> bool:
        """Whether a version still waits on ``key``: a lookup taken a while
        ago (they run a few at a time) may have outlived its wait."""
        for seq in self._waiters.get(key, ()):
            op = self._ops.get(seq)
            if op is not None and op.state is State.QUEUED and key in op.blocking:
                return True
        return False

    def lookup_skipped(self, key: str) -> None:
        """A lookup taken but not made: asked for again when next needed."""
        self._lookups_running.discard(key)

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def base_for(self, key: str, seq: int) -> Published | PlaylistVersion | None:
        """The version a new version of ``key`` follows, which it may extend.

        The newest durable version still pending when there is one (S3 slow,
        an encoder quicker than its uploads), else the published one; None
        when an earlier operation on the key is still arriving or a delete.
        """
        base: Published | PlaylistVersion | None = self._published.get(key)
        for op in self._queues.get(key, ()):
            if op.seq >= seq:
                break
            if op.state is State.RECEIVING or op.version is None:
                return None
            base = op.version
        return base

    def newest_payload(self, key: str) -> object:
        """The payload of the newest durable operation on ``key``, if pending."""
        for op in reversed(self._queues.get(key, ())):
            if op.state in (State.QUEUED, State.RUNNING):
                return op.payload
        return None

    def has_pending(self, key: str) -> bool:
        """Whether an operation on ``key`` is received and not yet applied."""
        return bool(self._queues.get(key))

    def running_seq(self, key: str) -> int | None:
        """The operation on ``key`` being applied now, if one is."""
        queue = self._queues.get(key)
        if queue and queue[0].state is State.RUNNING:
            return queue[0].seq
        return None

    def pending_count(self) -> int:
        return len(self._ops)

    # -- the rules -------------------------------------------------------

    def _add_version(self, op: Operation, version: PlaylistVersion) -> None:
        op.version = version
        op.deadline = self.clock() + self.wait_s
        published = self._published.get(op.key)
        if version.extends or published is None:
            to_check = set(version.refs)
        else:
            # What the published version named is stored, unless a newer body
            # of it is on its way (an encoder that restarted its numbering
            # re-sends the same names): that one is waited for like a new one.
            queues = self._queues
            to_check = {
                ref
                for ref in version.refs
                if ref not in published.refs
                or any(other.action == "put" for other in queues.get(ref, ()))
            }
        to_check.discard(op.key)
        folders = self._folders
        for ref in version.refs:
            folders.setdefault(posixpath.dirname(ref), set()).add(op.key)
        for ref in to_check:
            state = self._ref_state(ref)
            if state == "ok":
                continue
            if ref.endswith(".m3u8"):
                # Only a pending playlist can close a cycle: one not heard of
                # yet is an edge a later version may close it through.
                if state == "wait" and self._waits_for(ref, op.key):
                    # Neither would ever land first: this version, committed
                    # last, goes without it and releases the other.
                    log.warning(
                        "playlists name each other, not waited for key=%s reference=%s",
                        op.key,
                        ref,
                    )
                    continue
                op.playlists.add(ref)
            op.blocking.add(ref)
        if op.blocking:
            heapq.heappush(self._deadlines, (op.deadline, op.seq))

    def _waits_for(self, playlist: str, key: str) -> bool:
        """Whether a pending version of ``playlist`` waits for ``key``.

        Directly or through other playlists. Only playlist references are
        followed: the cost is that of the pending playlists that name
        playlists (multivariant ones), never of their segments.
        """
        seen = {playlist}
        todo = [playlist]
        while todo:
            for op in self._queues.get(todo.pop(), ()):
                for ref in op.playlists:
                    # Left in blocking when stored meanwhile: no wait.
                    if ref in seen or ref not in op.blocking or ref in self._stored:
                        continue
                    if ref == key:
                        return True
                    seen.add(ref)
                    todo.append(ref)
        return False

    def _ref_state(self, ref: str) -> Literal["ok", "wait", "absent"]:
        """``wait``: it is coming; ``absent``: it may never come (bounded wait)."""
        if ref in self._stored and ref.endswith(".m3u8"):
            # A variant playlist that has any version in S3 is playable; a
            # newer version on its way must not hold back the multivariant one.
            return "ok"
        deleting = False
        for op in self._queues.get(ref, ()):
            if op.action == "put":
                return "wait"
            deleting = True
        if deleting:
            return "absent"
        if ref in self._stored:
            return "ok"
        if ref not in self._absent and ref not in self._lookups_running:
            self._lookups_wanted.add(ref)
        return "absent"

    def _supersede(self, key: str) -> None:
        # A durable PUT makes every earlier operation on the key that has not
        # started moot: applying them first would end in the same object.
        queue = self._queues[key]
        later_put = False
        for op in reversed(queue):
            if later_put and op.state is State.QUEUED:
                op.state = State.DROPPED
                self._ops.pop(op.seq, None)
                self._dropped.append(op)
            elif op.action == "put" and op.state is State.QUEUED:
                later_put = True
        if any(op.state is State.DROPPED for op in queue):
            self._queues[key] = deque(
                op for op in queue if op.state is not State.DROPPED
            )
            self._wake(key)

    def _evaluate_head(self, key: str) -> None:
        queue = self._queues.get(key)
        if not queue:
            return
        op = queue[0]
        if op.state is not State.QUEUED:
            return
        if op.action == "delete":
            holder = self._referencing_playlist(key)
            if holder is not None:
                self._waiters.setdefault(holder, set()).add(op.seq)
                return
        elif op.blocking:
            # A file stored while this version queued behind an earlier one
            # of its key woke no one (waiters are the head's): look again.
            op.blocking -= {ref for ref in op.blocking if self._ref_state(ref) == "ok"}
            if op.blocking:
                for ref in op.blocking:
                    self._waiters.setdefault(ref, set()).add(op.seq)
                return
        op.state = State.RUNNING
        self._ready.append(op)

    def _referencing_playlist(self, key: str) -> str | None:
        """A playlist whose newest written or pending version names ``key``."""
        for playlist in self._folders.get(posixpath.dirname(key), ()):
            if playlist == key:
                continue
            published = self._published.get(playlist)
            if published is not None and key in published.refs:
                return playlist
            for op in self._queues.get(playlist, ()):
                if op.version is not None and key in op.version.refs:
                    return playlist
        return None

    def restore_published(self, key: str, version: PlaylistVersion) -> None:
        """A playlist found in the bucket at start: what it names stays put.

        What was written before a restart is known only to the bucket; without
        this a delete held for a playlist would go through once replayed.
        """
        if key in self._published:
            return  # this run wrote a newer version already
        for ref in version.refs:
            self._folders.setdefault(posixpath.dirname(ref), set()).add(key)
        self._publish(key, version)
        self._wake(key)

    def _publish(self, key: str, version: PlaylistVersion) -> None:
        published = self._published.get(key)
        if version.extends and published is not None:
            published.refs |= version.refs
            published.length = version.length
            published.digest = version.digest
            published.line_end = version.line_end
        else:
            self._published[key] = Published(
                refs=set(version.refs),
                length=version.length,
                digest=version.digest,
                line_end=version.line_end,
            )

    def _forget_playlist(self, key: str) -> None:
        if self._published.pop(key, None) is None:
            return
        for members in self._folders.values():
            members.discard(key)

    def _remove_from_queue(self, op: Operation) -> None:
        queue = self._queues.get(op.key)
        if queue is None:
            return
        try:
            queue.remove(op)
        except ValueError:
            return
        if not queue:
            del self._queues[op.key]

    def _changed(self, key: str) -> None:
        self._wake(key)
        self._evaluate_head(key)

    def _wake(self, key: str) -> None:
        for seq in self._waiters.pop(key, ()):
            op = self._ops.get(seq)
            if op is None or op.state is not State.QUEUED:
                continue
            if key in op.blocking:
                state = self._ref_state(key)
                if state == "ok":
                    op.blocking.discard(key)
                elif state == "absent" and self.clock() >= op.deadline:
                    op.blocking.discard(key)
                    op.missing.add(key)
                else:
                    # Still waited for, nothing else changed: looking at the
                    # whole version again would cost what it names, at every
                    # answer of a lookup (150,000 names in a 4 MiB playlist).
                    self._waiters.setdefault(key, set()).add(seq)
                    continue
            self._evaluate_head(op.key)
