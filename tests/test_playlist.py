"""Tests for app.playlist: decoding, reference extraction and path resolution."""

from __future__ import annotations

import pytest

from app.errors import PlaylistError
from app.playlist import (
    PlaylistInfo,
    decode_playlist,
    extract_references,
    is_outside_application,
    is_valid_upload_path,
    parse_playlist,
    resolve_reference,
)

LIVE_TS = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:120
#EXTINF:4.000000,
seg120.ts
#EXTINF:4.000000,
seg121.ts
#EXTINF:3.500000,
seg122.ts
"""

FMP4_BYTERANGE = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:2
#EXT-X-MAP:URI="stream_init.mp4",BYTERANGE="812@0"
#EXT-X-BYTERANGE:100000@812
#EXTINF:2.0,
stream.m4s
#EXT-X-BYTERANGE:98000
#EXTINF:2.0,
stream.m4s
#EXT-X-BYTERANGE:101000
#EXTINF:2.0,
stream.m4s
#EXT-X-ENDLIST
"""

LL_HLS = """#EXTM3U
#EXT-X-VERSION:9
#EXT-X-TARGETDURATION:4
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0,CAN-SKIP-UNTIL=24.0
#EXT-X-PART-INF:PART-TARGET=0.33334
#EXT-X-MEDIA-SEQUENCE:266
#EXT-X-MAP:URI="init.mp4"
#EXTINF:4.00008,
fileSequence266.mp4
#EXT-X-PART:DURATION=0.33334,URI="filePart267.0.mp4",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.33334,URI="filePart267.1.mp4"
#EXT-X-PART:DURATION=0.33334,INDEPENDENT=YES,URI="filePart267.2.mp4"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI="filePart267.3.mp4"
#EXT-X-RENDITION-REPORT:URI="../1M/waitForMSN.php",LAST-MSN=273,LAST-PART=2
#EXT-X-RENDITION-REPORT:URI="../4M/waitForMSN.php",LAST-MSN=273,LAST-PART=1
"""

MULTIVARIANT = """#EXTM3U
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="English",DEFAULT=YES,URI="audio/en.m3u8"
#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="De",LANGUAGE="de",URI="subs/de.m3u8"
#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID="cc",NAME="English",INSTREAM-ID="CC1"
#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS="avc1.4d401f,mp4a.40.2",AUDIO="aac"
live_0/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2560000,RESOLUTION=1280x720,SUBTITLES="subs"
live_1/index.m3u8
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=86000,URI="live_0/iframes.m3u8"
"""


# decode_playlist


def test_decode_playlist_media_playlist_returns_text() -> None:
    assert decode_playlist(LIVE_TS.encode()) == LIVE_TS


def test_decode_playlist_utf8_bom_is_stripped() -> None:
    assert decode_playlist(b"\xef\xbb\xbf" + LIVE_TS.encode()) == LIVE_TS


@pytest.mark.parametrize(
    "data",
    [b"#EXTM3U", b"#EXTM3U\n", b"#EXTM3U\r\n", b"#EXTM3U\r", b"#EXTM3U \n"],
)
def test_decode_playlist_header_line_variants_are_accepted(data: bytes) -> None:
    assert decode_playlist(data) == data.decode()


def test_decode_playlist_non_ascii_title_is_kept() -> None:
    text = "#EXTM3U\n#EXTINF:4,Ünïcødé 日本\nseg1.ts\n"
    assert decode_playlist(text.encode()) == text


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\xef\xbb\xbf", "EXTM3U"),
        (b"#EXTINF:4,\nseg1.ts\n", "EXTM3U"),
        (b" #EXTM3U\n", "EXTM3U"),
        (b"\n#EXTM3U\n", "EXTM3U"),
        (b"#extm3u\n", "EXTM3U"),
        (b"#EXTM3U8\n", "EXTM3U"),
        (b"\xef\xbb\xbf\xef\xbb\xbf#EXTM3U\n", "EXTM3U"),
        (b"<html>#EXTM3U</html>", "EXTM3U"),
        (b"#EXTM3U\n#EXTINF:4,caf\xe9\nseg1.ts\n", "UTF-8"),
        (b"#EXTM3U\n\xc0\xafseg1.ts\n", "UTF-8"),
        (b"#EXTM3U\n\xed\xa0\x80.ts\n", "UTF-8"),
        (b"\xff\xfe#\x00E\x00X\x00T\x00", "NUL"),
        (b"#EXTM3U\nseg\x001.ts\n", "NUL"),
    ],
)
def test_decode_playlist_bad_body_raises(data: bytes, reason: str) -> None:
    with pytest.raises(PlaylistError, match=reason):
        decode_playlist(data)


def test_decode_playlist_not_utf8_names_offset() -> None:
    with pytest.raises(PlaylistError, match="at byte 8"):
        decode_playlist(b"#EXTM3U\n\xff.ts\n")


# extract_references


def test_extract_references_live_ts_returns_segments_in_order() -> None:
    assert extract_references(LIVE_TS) == ["seg120.ts", "seg121.ts", "seg122.ts"]


def test_extract_references_fmp4_map_and_byteranges_give_one_each() -> None:
    assert extract_references(FMP4_BYTERANGE) == ["stream_init.mp4", "stream.m4s"]


def test_extract_references_map_byterange_on_segment_file_dedups() -> None:
    text = (
        "#EXTM3U\n"
        '#EXT-X-MAP:URI="all.mp4",BYTERANGE="720@0"\n'
        "#EXT-X-BYTERANGE:5000@720\n#EXTINF:2,\nall.mp4\n"
        "#EXT-X-BYTERANGE:5000\n#EXTINF:2,\nall.mp4\n"
    )
    assert extract_references(text) == ["all.mp4"]


def test_extract_references_ll_hls_parts_in_hints_and_reports_out() -> None:
    assert extract_references(LL_HLS) == [
        "init.mp4",
        "fileSequence266.mp4",
        "filePart267.0.mp4",
        "filePart267.1.mp4",
        "filePart267.2.mp4",
    ]


def test_extract_references_multivariant_returns_variants_and_renditions() -> None:
    assert extract_references(MULTIVARIANT) == [
        "audio/en.m3u8",
        "subs/de.m3u8",
        "live_0/index.m3u8",
        "live_1/index.m3u8",
        "live_0/iframes.m3u8",
    ]


@pytest.mark.parametrize(
    "tag",
    [
        '#EXT-X-KEY:METHOD=AES-128,URI="key1.key",IV=0x1a2b3c4d5e6f708192',
        '#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES,URI="skd://key",KEYFORMAT="com.apple"',
        '#EXT-X-PRELOAD-HINT:TYPE=MAP,URI="next_init.mp4"',
        '#EXT-X-RENDITION-REPORT:URI="../alt/index.m3u8",LAST-MSN=9',
        '#EXT-X-SESSION-DATA:DATA-ID="com.example.title",URI="title.json"',
        '#EXT-X-CONTENT-STEERING:SERVER-URI="steer.json",PATHWAY-ID="CDN"',
        '#EXT-X-DATERANGE:ID="ad",START-DATE="2024-01-01T00:00:00Z",X-URI="ad.ts"',
        "# seg9.ts is a comment, not a URI",
    ],
)
def test_extract_references_non_waited_tag_is_excluded(tag: str) -> None:
    text = f"#EXTM3U\n{tag}\n#EXTINF:4,\nseg1.ts\n"
    assert extract_references(text) == ["seg1.ts"]


@pytest.mark.parametrize(
    ("attributes", "uri"),
    [
        ('URI="a,b.mp4"', "a,b.mp4"),
        ('BYTERANGE="10@0",URI="x=1,y=2.mp4"', "x=1,y=2.mp4"),
        ('X-NOTE="URI=fake.mp4,",URI="real.mp4"', "real.mp4"),
        ('URI="real.mp4", BYTERANGE="10@0"', "real.mp4"),
        ('URI="real.mp4",', "real.mp4"),
        ("URI=bare.mp4", "bare.mp4"),
        ('URI=""', ""),
        ('BYTERANGE="10@0"', ""),
        ("", ""),
    ],
)
def test_extract_references_map_attribute_list_is_tokenised(
    attributes: str, uri: str | None
) -> None:
    text = f"#EXTM3U\n#EXT-X-MAP:{attributes}\n"
    if uri is None:
        with pytest.raises(PlaylistError):
            extract_references(text)
    else:
        assert extract_references(text) == ([uri] if uri else [])


def test_extract_references_quoted_comma_in_media_name_keeps_uri() -> None:
    text = (
        "#EXTM3U\n"
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="Director, commentary",'
        'CHARACTERISTICS="public.accessibility,public.x",URI="commentary.m3u8"\n'
    )
    assert extract_references(text) == ["commentary.m3u8"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('#EXT-X-MAP:URI="init.mp4', "malformed"),
        ('#EXT-X-MAP:uri="init.mp4"', "malformed"),
        ('#EXT-X-MAP:URI"init.mp4"', "malformed"),
        ('#EXT-X-MAP:URI="init.mp4"BYTERANGE="1@0"', "malformed"),
        ('#EXT-X-MAP:URI="a.mp4",,BYTERANGE="1@0"', "malformed"),
        ('#EXT-X-PART:DURATION=1 .0,URI="p.mp4"', "malformed"),
        (
            '#EXT-X-MEDIA:TYPE=AUDIO,URI="a.m3u8",URI="b.m3u8"',
            "repeats the attribute URI",
        ),
        ('#EXT-X-I-FRAME-STREAM-INF:URI="i.m3u8",BANDWIDTH=1,BANDWIDTH=2', "BANDWIDTH"),
    ],
)
def test_extract_references_broken_attribute_list_raises(
    line: str, reason: str
) -> None:
    with pytest.raises(PlaylistError, match=reason) as info:
        extract_references(f"#EXTM3U\n{line}\n")
    assert line[1:].partition(":")[0] in info.value.detail


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_extract_references_line_ending_style_gives_same_uris(newline: str) -> None:
    text = LL_HLS.replace("\n", newline)
    assert extract_references(text) == [
        "init.mp4",
        "fileSequence266.mp4",
        "filePart267.0.mp4",
        "filePart267.1.mp4",
        "filePart267.2.mp4",
    ]


def test_extract_references_mixed_line_endings_are_split() -> None:
    text = "#EXTM3U\r\n#EXTINF:4,\rseg1.ts\n#EXTINF:4,\r\nseg2.ts\rseg3.ts"
    assert extract_references(text) == ["seg1.ts", "seg2.ts", "seg3.ts"]


def test_extract_references_unicode_separator_in_title_is_not_a_line_end() -> None:
    text = "#EXTM3U\n#EXTINF:4,Part one\u2028fake.ts\x85also.ts\x0cno.ts\nseg1.ts\n"
    assert extract_references(text) == ["seg1.ts"]


def test_extract_references_blank_lines_and_comments_are_ignored() -> None:
    text = (
        "#EXTM3U\n\n   \n\t\n# a comment\n#EXTINF:4,\n\n  seg1.ts \t\n"
        '## another\n#EXT-UNKNOWN-TAG:URI="x.ts"\n#EXTINF:4,\nseg2.ts\n\n'
    )
    assert extract_references(text) == ["seg1.ts", "seg2.ts"]


def test_extract_references_repeated_uri_keeps_first_position() -> None:
    text = "#EXTM3U\na.ts\nb.ts\na.ts\nc.ts\nb.ts\n"
    assert extract_references(text) == ["a.ts", "b.ts", "c.ts"]


def test_extract_references_raw_uris_are_returned_unresolved() -> None:
    text = "#EXTM3U\nhttp://cdn/x.ts\n../up.ts\nseg%201.ts?t=1\n"
    assert extract_references(text) == ["http://cdn/x.ts", "../up.ts", "seg%201.ts?t=1"]


def test_extract_references_appended_version_returns_only_new_entries() -> None:
    previous = LIVE_TS
    current = previous + (
        '#EXT-X-MAP:URI="init2.mp4"\n#EXTINF:4.0,\nseg123.ts\n'
        "#EXTINF:4.0,\nseg124.ts\n#EXT-X-ENDLIST\n"
    )
    assert extract_references(current, start=len(previous)) == [
        "init2.mp4",
        "seg123.ts",
        "seg124.ts",
    ]


def test_extract_references_start_at_end_returns_nothing() -> None:
    assert extract_references(LIVE_TS, start=len(LIVE_TS)) == []
    assert extract_references("#EXTM3U\nseg1.ts", start=15) == []


def test_extract_references_start_between_cr_and_lf_returns_new_entries() -> None:
    previous = "#EXTM3U\r\n#EXTINF:4,\r\nseg1.ts\r"
    current = previous + "\n#EXTINF:4,\r\nseg2.ts\r\n"
    assert extract_references(current, start=len(previous)) == ["seg2.ts"]


def test_extract_references_start_mid_line_rescans_whole_line() -> None:
    previous = "#EXTM3U\n#EXTINF:4,\nseg1.ts\n#EXTINF:4,\nseg2"
    current = previous + ".ts\n#EXTINF:4,\nseg3.ts\n"
    assert extract_references(current, start=len(previous)) == ["seg2.ts", "seg3.ts"]


def test_extract_references_start_mid_crlf_line_rescans_whole_line() -> None:
    previous = "#EXTM3U\r\nseg0.ts\rseg1"
    current = previous + ".ts\r\nseg2.ts\r\n"
    assert extract_references(current, start=len(previous)) == ["seg1.ts", "seg2.ts"]


@pytest.mark.parametrize("start", [-1, len(LIVE_TS) + 1])
def test_extract_references_start_out_of_range_raises(start: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        extract_references(LIVE_TS, start=start)


def test_extract_references_tail_of_long_event_playlist_matches_full_scan() -> None:
    lines = ["#EXTM3U", "#EXT-X-PLAYLIST-TYPE:EVENT", '#EXT-X-MAP:URI="init.mp4"']
    for n in range(10_000):
        lines += [f"#EXTINF:2.0,title {n}", f"seg{n}.m4s"]
    previous = "\n".join(lines[:-200]) + "\n"
    current = "\n".join(lines) + "\n"

    full = extract_references(current)
    assert len(full) == 10_001
    assert extract_references(current, start=len(previous)) == full[-100:]


# parse_playlist


def test_parse_playlist_live_media_playlist_has_no_flags() -> None:
    assert parse_playlist(LIVE_TS.encode()) == PlaylistInfo(
        references=("seg120.ts", "seg121.ts", "seg122.ts"),
        is_multivariant=False,
        has_endlist=False,
    )


def test_parse_playlist_endlist_sets_flag() -> None:
    info = parse_playlist(FMP4_BYTERANGE.encode())
    assert info.has_endlist
    assert not info.is_multivariant
    assert info.references == ("stream_init.mp4", "stream.m4s")


def test_parse_playlist_endlist_in_comment_or_uri_does_not_count() -> None:
    data = b"#EXTM3U\n# #EXT-X-ENDLIST\n#EXT-X-ENDLIST-ISH\nEXT-X-ENDLIST.ts\n"
    assert not parse_playlist(data).has_endlist


def test_parse_playlist_ll_hls_is_media_playlist() -> None:
    info = parse_playlist(LL_HLS.encode())
    assert not info.is_multivariant
    assert not info.has_endlist
    assert "filePart267.3.mp4" not in info.references


def test_parse_playlist_multivariant_sets_flag() -> None:
    info = parse_playlist(MULTIVARIANT.encode())
    assert info.is_multivariant
    assert not info.has_endlist
    assert len(info.references) == 5


@pytest.mark.parametrize(
    "tag",
    [
        "#EXT-X-STREAM-INF:BANDWIDTH=1000\nlow/index.m3u8",
        '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1000,URI="iframes.m3u8"',
        '#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID="cc",NAME="CC",INSTREAM-ID="CC1"',
    ],
)
def test_parse_playlist_any_multivariant_tag_sets_flag(tag: str) -> None:
    assert parse_playlist(f"#EXTM3U\n{tag}\n".encode()).is_multivariant


def test_parse_playlist_bom_and_crlf_are_handled() -> None:
    data = b"\xef\xbb\xbf" + LIVE_TS.replace("\n", "\r\n").encode()
    assert parse_playlist(data).references == ("seg120.ts", "seg121.ts", "seg122.ts")


@pytest.mark.parametrize("data", [b"", b"seg1.ts\n", b"#EXTM3U\n\xffseg1.ts\n"])
def test_parse_playlist_bad_body_raises(data: bytes) -> None:
    with pytest.raises(PlaylistError):
        parse_playlist(data)


# resolve_reference


@pytest.mark.parametrize(
    ("playlist_path", "uri", "expected"),
    [
        ("stream.m3u8", "seg1.ts", "seg1.ts"),
        ("live_0/index.m3u8", "seg1.ts", "live_0/seg1.ts"),
        ("a/b/c/index.m3u8", "seg1.ts", "a/b/c/seg1.ts"),
        ("master.m3u8", "live_0/index.m3u8", "live_0/index.m3u8"),
        ("live_0/index.m3u8", "../init.mp4", "init.mp4"),
        ("a/b/index.m3u8", "../../x.ts", "x.ts"),
        ("a/b/index.m3u8", "../c/x.ts", "a/c/x.ts"),
        ("live_0/index.m3u8", "./seg1.ts", "live_0/seg1.ts"),
        ("live_0/index.m3u8", "sub/./../seg1.ts", "live_0/seg1.ts"),
        ("live_0/index.m3u8", "seg1.ts?token=a", "live_0/seg1.ts"),
        ("live_0/index.m3u8", "seg1.ts?a=1/../../x#frag", "live_0/seg1.ts"),
        ("live_0/index.m3u8", "seg1.ts#t=10", "live_0/seg1.ts"),
        ("live_0/index.m3u8", "seg1.ts#frag?x", "live_0/seg1.ts"),
        ("stream.m3u8", "seg%5F1.ts", "seg_1.ts"),
        ("stream.m3u8", "%41b%2dc.ts", "Ab-c.ts"),
        ("stream.m3u8", "dir%2E/x.ts", "dir./x.ts"),
        ("live_0/index.m3u8", "%2E%2E/init.mp4", "init.mp4"),
        ("stream.m3u8", "%2e/seg1.ts", "seg1.ts"),
    ],
)
def test_resolve_reference_relative_uri_returns_upload_path(
    playlist_path: str, uri: str, expected: str
) -> None:
    assert resolve_reference(playlist_path, uri) == expected


@pytest.mark.parametrize(
    ("playlist_path", "uri"),
    [
        ("index.m3u8", "../x.ts"),
        ("live_0/index.m3u8", "../../x.ts"),
        ("live_0/index.m3u8", "a/../../../x.ts"),
        ("index.m3u8", "%2E%2E/x.ts"),
        ("live_0/index.m3u8", "http://cdn.example.com/seg1.ts"),
        ("live_0/index.m3u8", "https://cdn.example.com/seg1.ts"),
        ("live_0/index.m3u8", "HTTPS://cdn.example.com/seg1.ts"),
        ("live_0/index.m3u8", "//cdn.example.com/seg1.ts"),
        ("live_0/index.m3u8", "/abs/seg1.ts"),
        ("live_0/index.m3u8", "data:video/mp2t;base64,R0lGOD"),
        ("live_0/index.m3u8", "skd://key"),
        ("live_0/index.m3u8", "seg:1.ts"),
        ("live_0/index.m3u8", "C:\\media\\seg1.ts"),
        ("live_0/index.m3u8", "..\\seg1.ts"),
        ("live_0/index.m3u8", "a%2Fb.ts"),
        ("live_0/index.m3u8", "a%2fb.ts"),
        ("live_0/index.m3u8", "a%5Cb.ts"),
        ("live_0/index.m3u8", "a%2541.ts"),
        ("live_0/index.m3u8", "a%00.ts"),
        ("live_0/index.m3u8", "a%0A.ts"),
        ("live_0/index.m3u8", "a%7F.ts"),
        ("live_0/index.m3u8", "a%3F.ts"),
        ("live_0/index.m3u8", "a%ZZ.ts"),
        ("live_0/index.m3u8", "a%.ts"),
        ("live_0/index.m3u8", "caf%E9.ts"),
        ("live_0/index.m3u8", "caf%C3%A9.ts"),
        ("live_0/index.m3u8", "café.ts"),
        ("live_0/index.m3u8", "seg 1.ts"),
        ("live_0/index.m3u8", "seg%201.ts"),
        ("live_0/index.m3u8", "a//b.ts"),
        ("live_0/index.m3u8", "sub/"),
        ("live_0/index.m3u8", "."),
        ("live_0/index.m3u8", ".."),
        ("live_0/index.m3u8", "sub/."),
        ("live_0/index.m3u8", "sub/%2E%2E"),
        ("live_0/index.m3u8", ""),
        ("live_0/index.m3u8", "?token=a"),
        ("live_0/index.m3u8", "#frag"),
        ("live_0/index.m3u8", "x" * 503 + ".ts"),
    ],
)
def test_resolve_reference_unwaitable_uri_returns_none(
    playlist_path: str, uri: str
) -> None:
    assert resolve_reference(playlist_path, uri) is None


def test_resolve_reference_longest_valid_path_is_kept() -> None:
    uri = "x" * 509 + ".ts"
    assert resolve_reference("index.m3u8", uri) == uri
    assert resolve_reference("live_0/index.m3u8", uri[7:]) == "live_0/" + uri[7:]


# is_outside_application


@pytest.mark.parametrize(
    ("playlist_path", "uri"),
    [
        ("index.m3u8", "../x.ts"),
        ("live_0/index.m3u8", "../../x.ts"),
        ("live_0/index.m3u8", "../../../other/x.ts"),
        ("live_0/index.m3u8", "a/../../../x.ts?token=a"),
        ("index.m3u8", "%2E%2E/x.ts"),
    ],
)
def test_is_outside_application_climbing_above_it_is_true(
    playlist_path: str, uri: str
) -> None:
    assert is_outside_application(playlist_path, uri)


@pytest.mark.parametrize(
    ("playlist_path", "uri"),
    [
        ("live_0/index.m3u8", "seg1.ts"),
        ("live_0/index.m3u8", "../init.mp4"),
        ("a/b/index.m3u8", "../../x.ts"),
        ("live_0/index.m3u8", "https://cdn.example.com/seg1.ts"),
        ("live_0/index.m3u8", "/abs/seg1.ts"),
        ("live_0/index.m3u8", "../../seg 1.ts"),
        ("live_0/index.m3u8", "../.."),
        ("live_0/index.m3u8", "seg1.ts?a=1/../../x"),
    ],
)
def test_is_outside_application_other_uri_is_false(
    playlist_path: str, uri: str
) -> None:
    assert not is_outside_application(playlist_path, uri)


# is_valid_upload_path


@pytest.mark.parametrize(
    "path",
    [
        "seg1.ts",
        "live_0/index.m3u8",
        "a/b/c/D-e_f.9.m4s",
        "...hidden",
        "x" * 512,
        "a/" * 255 + "bb",
    ],
)
def test_is_valid_upload_path_good_path_returns_true(path: str) -> None:
    assert is_valid_upload_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/seg1.ts",
        "seg1.ts/",
        "a//b.ts",
        ".",
        "..",
        "a/./b.ts",
        "a/../b.ts",
        "a\\b.ts",
        "a%2Fb.ts",
        "seg 1.ts",
        "seg\x001.ts",
        "seg\n1.ts",
        "café.ts",
        "\uff53\uff45\uff47.ts",
        "seg٣.ts",
        "x" * 513,
        "a?b.ts",
        "a:b.ts",
    ],
)
def test_is_valid_upload_path_bad_path_returns_false(path: str) -> None:
    assert not is_valid_upload_path(path)
