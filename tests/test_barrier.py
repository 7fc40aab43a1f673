"""The ordering rule, interleaving by interleaving, on a hand-driven clock."""

from __future__ import annotations

import logging

import pytest

from app.barrier import PlaylistVersion, SegmentBarrier


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def version(*refs: str, extends: bool = False) -> PlaylistVersion:
    return PlaylistVersion(
        refs=frozenset(refs), extends=extends, length=1, digest=b"", line_end=True
    )


def cycle_warnings(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (str(r.args[0]), str(r.args[1]))  # type: ignore[index]
        for r in caplog.records
        if r.levelno == logging.WARNING and "name each other" in r.getMessage()
    ]


class Driver:
    """Feeds a barrier the way the uploader does, and records what it starts."""

    def __init__(self, wait_s: float = 10.0) -> None:
        self.clock = Clock()
        self.barrier = SegmentBarrier(wait_s, clock=self.clock)
        self.seq = 0
        self.started: list[int] = []
        self.dropped: list[int] = []

    def begin(self, key: str, action: str = "put") -> int:
        self.seq += 1
        is_playlist = key.endswith(".m3u8")
        self.barrier.begin(self.seq, key, action, is_playlist)  # type: ignore[arg-type]
        return self.seq

    def commit(self, seq: int, v: PlaylistVersion | None = None) -> None:
        self.barrier.commit(seq, payload=seq, version=v)
        self.collect()

    def put(self, key: str, v: PlaylistVersion | None = None) -> int:
        seq = self.begin(key)
        self.commit(seq, v)
        return seq

    def delete(self, key: str) -> int:
        seq = self.begin(key, "delete")
        self.commit(seq)
        return seq

    def finish(self, seq: int) -> None:
        assert seq in self.started, f"op {seq} finished without being started"
        self.barrier.finished(seq)
        self.collect()

    def stored(self, key: str) -> None:
        """A file that is in the bucket already (uploaded through the relay)."""
        self.finish(self.put(key))

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.barrier.expire()
        self.collect()

    def answer_lookups(self, existing: set[str]) -> list[str]:
        keys = self.barrier.take_lookups()
        for key in keys:
            self.barrier.lookup_done(key, key in existing)
        self.collect()
        return keys

    def collect(self) -> None:
        self.started += [op.seq for op in self.barrier.take_ready()]
        self.dropped += [op.seq for op in self.barrier.take_dropped()]


def test_playlist_waits_for_segment_still_being_received() -> None:
    d = Driver()
    seg = d.begin("s/seg1.ts")
    playlist = d.put("s/live.m3u8", version("s/seg1.ts"))
    assert playlist not in d.started

    d.commit(seg)
    assert d.started == [seg]
    d.advance(60)  # received but not stored: no bound applies
    assert playlist not in d.started

    d.finish(seg)
    assert d.started == [seg, playlist]


def test_playlist_waits_for_segment_that_is_uploading() -> None:
    d = Driver()
    seg = d.put("s/seg1.ts")
    playlist = d.put("s/live.m3u8", version("s/seg1.ts"))
    d.advance(3600)  # an S3 outage: the segment will land, so keep waiting
    assert d.started == [seg]

    d.finish(seg)
    assert d.started == [seg, playlist]


def test_playlist_after_stored_segments_starts_at_once() -> None:
    d = Driver()
    d.stored("s/seg1.ts")
    d.stored("s/init.mp4")
    playlist = d.put("s/live.m3u8", version("s/seg1.ts", "s/init.mp4"))
    assert d.started[-1] == playlist


def test_playlist_missing_reference_waits_bounded_then_publishes() -> None:
    d = Driver(wait_s=10)
    playlist = d.put("s/live.m3u8", version("s/never.ts"))
    assert d.answer_lookups(existing=set()) == ["s/never.ts"]
    d.advance(9.9)
    assert playlist not in d.started

    d.advance(0.2)
    assert d.started == [playlist]
    op_missing = d.barrier._ops[playlist].missing  # still running: inspect it
    assert op_missing == {"s/never.ts"}


def test_playlist_reference_found_in_bucket_by_lookup_starts() -> None:
    d = Driver()
    playlist = d.put("s/live.m3u8", version("s/old.ts"))
    assert playlist not in d.started
    assert d.answer_lookups(existing={"s/old.ts"}) == ["s/old.ts"]
    assert d.started == [playlist]


def test_segment_cut_short_leaves_playlist_with_bounded_wait() -> None:
    d = Driver(wait_s=5)
    seg = d.begin("s/seg1.ts")
    playlist = d.put("s/live.m3u8", version("s/seg1.ts"))
    d.barrier.abort(seg)
    d.collect()
    d.answer_lookups(existing=set())
    assert playlist not in d.started
    d.advance(5)
    assert d.started == [playlist]


def test_newer_playlist_version_drops_waiting_older_one() -> None:
    d = Driver()
    seg2 = d.begin("s/seg2.ts")
    v1 = d.put("s/live.m3u8", version("s/seg2.ts"))
    d.stored("s/seg3.ts")
    v2 = d.put("s/live.m3u8", version("s/seg3.ts"))
    assert v1 in d.dropped
    assert d.started[-1] == v2
    d.commit(seg2)
    assert v1 not in d.started


def test_newer_playlist_version_waits_for_older_one_uploading() -> None:
    d = Driver()
    v1 = d.put("s/live.m3u8", version())
    v2 = d.put("s/live.m3u8", version())
    assert d.started == [v1]
    assert v2 not in d.dropped

    d.finish(v1)
    assert d.started == [v1, v2]


def test_older_playlist_version_still_receiving_holds_newer_back() -> None:
    d = Driver()
    v1 = d.begin("s/live.m3u8")
    v2 = d.put("s/live.m3u8", version())
    assert d.started == []

    d.commit(v1, version())  # arrives whole after v2: v2 is newer, v1 is moot
    assert v1 in d.dropped
    assert d.started == [v2]


def test_delete_after_put_waits_for_slow_upload() -> None:
    d = Driver()
    put = d.put("s/seg1.ts")
    delete = d.delete("s/seg1.ts")
    assert d.started == [put]
    d.finish(put)
    assert d.started == [put, delete]


def test_delete_of_segment_in_published_playlist_waits() -> None:
    d = Driver()
    d.stored("s/seg1.ts")
    d.stored("s/seg2.ts")
    v1 = d.put("s/live.m3u8", version("s/seg1.ts", "s/seg2.ts"))
    d.finish(v1)

    delete = d.delete("s/seg1.ts")
    assert delete not in d.started

    d.stored("s/seg3.ts")
    v2 = d.put("s/live.m3u8", version("s/seg2.ts", "s/seg3.ts"))
    assert delete not in d.started  # v1 is still the written version
    d.finish(v2)
    assert d.started[-1] == delete


def test_delete_of_segment_in_pending_playlist_waits() -> None:
    d = Driver()
    seg2 = d.begin("s/seg2.ts")
    d.stored("s/seg1.ts")
    pending = d.put("s/live.m3u8", version("s/seg1.ts", "s/seg2.ts"))
    delete = d.delete("s/seg1.ts")
    assert delete not in d.started

    d.commit(seg2)
    d.finish(seg2)
    d.finish(pending)
    assert delete not in d.started  # the written version names it now
    d.stored("s/seg3.ts")
    d.finish(d.put("s/live.m3u8", version("s/seg2.ts", "s/seg3.ts")))
    assert d.started[-1] == delete


def test_delete_of_unreferenced_segment_starts_at_once() -> None:
    d = Driver()
    d.stored("s/seg1.ts")
    d.finish(d.put("s/live.m3u8", version("s/seg1.ts")))
    delete = d.delete("s/other.ts")
    assert d.started[-1] == delete


def test_delete_of_playlist_releases_its_segments() -> None:
    d = Driver()
    d.stored("s/seg1.ts")
    d.finish(d.put("s/live.m3u8", version("s/seg1.ts")))
    seg_delete = d.delete("s/seg1.ts")
    assert seg_delete not in d.started

    playlist_delete = d.delete("s/live.m3u8")
    d.finish(playlist_delete)
    assert d.started[-1] == seg_delete


def test_delete_then_put_of_same_key_keeps_only_put() -> None:
    d = Driver()
    d.stored("s/seg1.ts")
    d.finish(d.put("s/live.m3u8", version("s/seg1.ts")))
    delete = d.delete("s/seg1.ts")  # waits: the playlist names it
    put = d.put("s/seg1.ts")
    assert delete in d.dropped
    assert d.started[-1] == put


def test_media_put_superseded_by_newer_put_while_queued() -> None:
    d = Driver()
    first = d.put("s/a.ts")
    second = d.put("s/a.ts")
    third = d.put("s/a.ts")
    assert d.started == [first]
    assert d.dropped == [second]
    d.finish(first)
    assert d.started == [first, third]


def test_multivariant_waits_for_first_variant_version_only() -> None:
    d = Driver()
    d.stored("s/seg_0.ts")
    v0 = d.put("s/v0.m3u8", version("s/seg_0.ts"))
    master = d.put("s/master.m3u8", version("s/v0.m3u8"))
    assert master not in d.started

    d.finish(v0)
    assert d.started[-1] == master
    d.finish(master)

    # With a variant in the bucket, a newer variant version on its way does
    # not hold the multivariant playlist back.
    d.begin("s/v0.m3u8")
    master2 = d.put("s/master.m3u8", version("s/v0.m3u8"))
    assert d.started[-1] == master2


def test_variant_delete_waits_for_multivariant_playlist() -> None:
    d = Driver()
    d.finish(d.put("s/v0.m3u8", version()))
    d.finish(d.put("s/master.m3u8", version("s/v0.m3u8")))
    delete = d.delete("s/v0.m3u8")
    assert delete not in d.started


def test_two_playlists_naming_each_other_are_both_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = Driver()
    a = d.put("s/a.m3u8", version("s/b.m3u8"))
    assert d.answer_lookups(existing=set()) == ["s/b.m3u8"]
    b = d.put("s/b.m3u8", version("s/a.m3u8"))
    d.advance(60)  # each is received, so neither wait has a bound

    # The one committed last does not wait for the other: it goes first.
    assert d.started == [b]
    assert cycle_warnings(caplog) == [("s/b.m3u8", "s/a.m3u8")]
    d.finish(b)
    assert d.started == [b, a]


def test_three_playlists_in_a_cycle_are_all_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = Driver()
    a = d.put("s/a.m3u8", version("s/b.m3u8"))
    b = d.put("s/b.m3u8", version("s/c.m3u8"))
    seg = d.begin("s/seg1.ts")
    c = d.put("s/c.m3u8", version("s/a.m3u8", "s/seg1.ts"))
    d.answer_lookups(existing=set())
    d.advance(60)
    assert d.started == []  # the cycle is broken, the segment still waited for
    assert cycle_warnings(caplog) == [("s/c.m3u8", "s/a.m3u8")]

    d.commit(seg)
    d.finish(seg)
    assert d.started == [seg, c]
    d.finish(c)
    assert d.started == [seg, c, b]
    d.finish(b)
    assert d.started == [seg, c, b, a]


def test_multivariant_without_a_cycle_still_waits_for_its_variants(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = Driver()
    seg = d.begin("s/seg_0.ts")
    v0 = d.put("s/v0.m3u8", version("s/seg_0.ts"))
    # An odd variant that names another: the check walks it and finds no way
    # back to the multivariant playlist.
    v1 = d.put("s/v1.m3u8", version("s/v0.m3u8"))
    master = d.put("s/master.m3u8", version("s/v0.m3u8", "s/v1.m3u8"))
    d.advance(60)
    assert d.started == []
    assert cycle_warnings(caplog) == []

    d.commit(seg)
    d.finish(seg)
    d.finish(v0)
    assert d.started == [seg, v0, v1]
    d.finish(v1)
    assert d.started == [seg, v0, v1, master]


def test_extending_version_checks_only_new_references() -> None:
    d = Driver()
    d.stored("s/e0.ts")
    v1 = d.put("s/event.m3u8", version("s/e0.ts"))
    d.finish(v1)
    new_seg = d.begin("s/e1.ts")
    v2 = d.put("s/event.m3u8", version("s/e1.ts", extends=True))
    assert v2 not in d.started
    d.commit(new_seg)
    d.finish(new_seg)
    d.finish(v2)

    # Both the old and the appended entries now count as named.
    assert d.barrier._published["s/event.m3u8"].refs == {"s/e0.ts", "s/e1.ts"}
    delete = d.delete("s/e0.ts")
    assert delete not in d.started


def test_base_for_only_when_nothing_earlier_is_pending() -> None:
    d = Driver()
    d.finish(d.put("s/e.m3u8", version()))
    seq = d.begin("s/e.m3u8")
    assert d.barrier.base_for("s/e.m3u8", seq) is not None
    later = d.begin("s/e.m3u8")
    assert d.barrier.base_for("s/e.m3u8", later) is None


def test_every_operation_ends_started_or_dropped() -> None:
    # A long mixed run: nothing may be left behind in the barrier.
    d = Driver(wait_s=2)
    for n in range(50):
        seg = d.put(f"s/seg{n}.ts")
        playlist = d.put(
            "s/live.m3u8",
            version(*(f"s/seg{k}.ts" for k in range(max(0, n - 3), n + 1))),
        )
        d.finish(seg)
        if playlist in d.started:
            d.finish(playlist)
        if n >= 5:
            d.delete(f"s/seg{n - 5}.ts")
        for seq in list(d.started):
            if seq in d.barrier._ops and d.barrier._ops[seq].state.value == "running":
                d.finish(seq)
    d.advance(10)
    for seq in list(d.started):
        if seq in d.barrier._ops:
            d.finish(seq)
    assert d.barrier.pending_count() == 0


def test_version_queued_behind_upload_sees_segment_stored_meanwhile() -> None:
    d = Driver()
    v1 = d.put("s/live.m3u8", version())
    seg = d.put("s/seg1.ts")
    v2 = d.put("s/live.m3u8", version("s/seg1.ts"))
    d.finish(seg)  # stored while v2 waits behind v1, not at the head
    d.finish(v1)
    assert d.started[-1] == v2


def test_reference_stored_before_deadline_is_not_missing() -> None:
    d = Driver(wait_s=5)
    seg = d.put("s/seg1.ts")
    d.barrier.begin(99, "s/seg2.ts", "put", False)
    playlist = d.put("s/live.m3u8", version("s/seg1.ts", "s/seg2.ts"))
    d.finish(seg)
    d.barrier.abort(99)
    d.answer_lookups(existing=set())
    d.advance(5)
    assert d.started[-1] == playlist
    assert d.barrier._ops[playlist].missing == {"s/seg2.ts"}


def test_restarted_encoder_resending_a_name_is_waited_for() -> None:
    d = Driver()
    d.stored("s/seg0.ts")
    d.finish(d.put("s/live.m3u8", version("s/seg0.ts")))
    again = d.begin("s/seg0.ts")  # the same name, new content, still arriving
    playlist = d.put("s/live.m3u8", version("s/seg0.ts"))
    assert playlist not in d.started
    d.commit(again)
    d.finish(again)
    assert d.started[-1] == playlist


# -- uploads started while their body arrives (start_early) -----------------


def test_early_start_only_for_a_media_put_first_on_its_key() -> None:
    d = Driver()
    first = d.begin("s/seg1.ts")
    second = d.begin("s/seg1.ts")
    assert d.barrier.start_early(first)
    assert not d.barrier.start_early(second)  # behind the first on its key
    assert not d.barrier.start_early(d.begin("s/live.m3u8"))
    assert not d.barrier.start_early(d.begin("s/seg2.ts", "delete"))


def test_an_early_put_is_run_by_its_uploader_not_handed_out() -> None:
    d = Driver()
    seg = d.begin("s/seg1.ts")
    assert d.barrier.start_early(seg)
    d.commit(seg)
    assert d.started == []  # already running: take_ready must not start it twice
    d.barrier.finished(seg)
    d.collect()
    playlist = d.put("s/live.m3u8", version("s/seg1.ts"))
    assert d.started == [playlist]  # stored, so nothing to wait for


def test_what_follows_an_early_put_waits_for_it_to_finish() -> None:
    d = Driver()
    seg = d.begin("s/seg1.ts")
    assert d.barrier.start_early(seg)
    playlist = d.put("s/live.m3u8", version("s/seg1.ts"))
    delete = d.delete("s/seg1.ts")
    newer = d.put("s/seg1.ts")
    assert d.started == []
    d.commit(seg)
    # Being uploaded already, the early put is not superseded by the newer one.
    assert seg not in d.dropped and d.started == []
    d.advance(3600)  # received, so no bound applies to the playlist
    assert d.started == []

    # The delete, behind the early put, was made moot by the newer put.
    assert d.dropped == [delete]

    d.barrier.finished(seg)
    d.collect()
    assert d.started == [newer]  # the playlist waits for the newest body
    d.finish(newer)
    assert d.started == [newer, playlist]


def test_an_aborted_early_put_releases_what_waited_for_it() -> None:
    d = Driver()
    seg = d.begin("s/seg1.ts")
    assert d.barrier.start_early(seg)
    delete = d.delete("s/seg1.ts")
    assert d.started == []
    d.barrier.abort(seg)
    d.collect()
    assert d.started == [delete]


def test_a_lookup_answered_absent_leaves_the_version_woken_by_the_file() -> None:
    # The lookup says "not in S3" well before the wait is over; the file then
    # arrives and is stored: the version goes at once, not at its deadline.
    d = Driver(wait_s=10)
    playlist = d.put("s/live.m3u8", version("s/late.ts"))
    assert d.answer_lookups(existing=set()) == ["s/late.ts"]
    d.advance(1)
    assert playlist not in d.started
    d.stored("s/late.ts")
    assert d.started[-1] == playlist
    assert d.barrier._ops[playlist].missing == set()


def test_a_lookup_is_wanted_only_while_a_version_waits_on_it() -> None:
    d = Driver(wait_s=10)
    d.put("s/live.m3u8", version("s/never.ts"))
    assert d.barrier.take_lookups() == ["s/never.ts"]
    assert d.barrier.lookup_wanted("s/never.ts")
    assert not d.barrier.lookup_wanted("s/other.ts")

    d.advance(10)  # published without it: asking S3 now serves no one
    assert not d.barrier.lookup_wanted("s/never.ts")
    d.barrier.lookup_skipped("s/never.ts")
    # Named again by a newer version, it is asked about again.
    d.put("s/live.m3u8", version("s/never.ts", extends=True))
    assert d.barrier.take_lookups() == ["s/never.ts"]
