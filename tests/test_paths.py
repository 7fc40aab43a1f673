"""The path rules as properties: whatever a client sends, an accepted path maps to
a key inside the template's prefix, and no two accepted paths share a key."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from app.config import DEFAULT_EXTENSIONS, Settings
from app.errors import InvalidPath, UnsupportedMedia
from app.paths import (
    MAX_PATH_CHARS,
    Upload,
    check_request_path,
    is_valid_app,
    parse_upload,
)

EXTENSIONS = list(DEFAULT_EXTENSIONS)
UPLOAD_PREFIX = "/LiveApp/hls-upload/"

# Pieces a hostile client strings together, raw as they go on the wire: dot
# segments, escaped separators and dots, overlong UTF-8, controls. Plain parts
# come often enough that many paths are accepted, which is where a key could
# go wrong.
PLAIN_PIECES = ["a", "seg_1", "B-2", "live_0", "/", "x.y"]
HOSTILE_PIECES = [
    ".", "..", "...", "//", "\\", "%2e", "%2E%2e", "%2f", "%2F", "%5c", "%5C",
    "%252f", "%00", "%0a", "%0d", "%09", "%7f", "%c2%85", "%c0%ae", "%c3%a9",
    "%", "%zz", ";", ":", "~", "?", "#", " ", "%61", "%2D", "%5F",
]  # fmt: skip
ENDINGS = [".ts", ".m3u8", ".TS", ".mp4", ".key", ".exe", "", "/"]

raw_suffixes = st.builds(
    lambda pieces, ending: "".join(pieces) + ending,
    st.lists(
        st.sampled_from(PLAIN_PIECES) | st.sampled_from(HOSTILE_PIECES),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from(ENDINGS),
)
long_names = st.integers(MAX_PATH_CHARS - 4, MAX_PATH_CHARS + 4).map(
    lambda n: "a" * (n - 3) + ".ts"
)
apps = st.text(alphabet="aZ09_-", min_size=1, max_size=66) | st.text(max_size=5)


def template_prefix(template: str) -> str:
    return template.split("{", 1)[0]


def accept(app: str, raw_suffix: str) -> Upload | None:
    """Run a request's application and raw path through the rules, as the
    relay sees them once uvicorn has decoded the escapes; None if refused."""
    raw_path = f"/{app}/hls-upload/{raw_suffix}".encode("utf-8", "surrogatepass")
    path = unquote(raw_suffix)
    try:
        check_request_path(unquote(f"/{app}/hls-upload/") + path, raw_path)
        return parse_upload(app, path, raw_path, EXTENSIONS)
    except (InvalidPath, UnsupportedMedia):
        return None


def assert_key_is_inside(key: str, prefix: str) -> None:
    assert key.startswith(prefix)
    rest = key[len(prefix) :]
    parts = rest.split("/")
    assert all(part not in ("", ".", "..") for part in parts), key
    # Whatever normalises the key later (a CDN, a browser, a file system
    # mirror), it stays where it is.
    assert posixpath.normpath(key) == key
    assert "\\" not in key and "%" not in key
    assert all(0x20 < ord(c) < 0x7F for c in key), key


@given(raw_suffixes | long_names)
@example("..%2f..%2fetc%2fpasswd.ts")
@example("%2e%2e/%2e%2e/x.ts")
@example("a/%2e%2e/../b.ts")
@example("%c0%ae%c0%ae/x.ts")
def test_paths_accepted_path_never_leaves_the_prefix(raw_suffix: str) -> None:
    settings = Settings()
    upload = accept("LiveApp", raw_suffix)
    assume(upload is not None)
    assert upload is not None

    key = settings.key_for(upload.app, upload.path)

    assert_key_is_inside(key, template_prefix(settings.key_template))
    assert len(upload.path) <= MAX_PATH_CHARS
    assert upload.extension in EXTENSIONS


@given(apps, raw_suffixes | long_names)
def test_paths_rules_refuse_only_with_their_own_errors(
    app: str, raw_suffix: str
) -> None:
    # Anything at all is either an upload or one of the two refusals; a
    # crash here would be a 500 at the edge.
    raw_path = f"/{app}/hls-upload/{raw_suffix}".encode("utf-8", "surrogatepass")
    try:
        upload = parse_upload(app, unquote(raw_suffix), raw_path, EXTENSIONS)
    except (InvalidPath, UnsupportedMedia) as exc:
        assert exc.status in (400, 415)
        assert exc.detail
    else:
        assert is_valid_app(upload.app)
        assert upload.extension in EXTENSIONS


app_templates = st.builds(
    lambda head, mid: head + "{app}" + mid + "{path}",
    st.sampled_from(["", "streams/", "live/", "a-b/", "x.y/", "pre"]),
    st.sampled_from(["/", "/hls/", "-x/", "_/", "-", ".", ""]),
)
templates = app_templates | st.sampled_from(
    ["streams/{path}", "{path}", "a/b/{path}", "pre-{path}"]
)
valid_apps = st.text(alphabet="abAB09_-", min_size=1, max_size=64)
valid_paths = st.lists(
    st.text(alphabet="ab09_-.", min_size=1, max_size=6).filter(
        lambda part: part not in (".", "..")
    ),
    min_size=1,
    max_size=4,
).map(lambda parts: "/".join(parts) + ".ts")


def settings_for(template: str) -> Settings:
    try:
        return Settings(key_template=template)
    except ValidationError:
        assume(False)
        raise


def preimages(settings: Settings, key: str) -> set[tuple[str, str]]:
    """Every (application, path) the rules accept whose key is ``key``."""
    template = settings.key_template
    found: set[tuple[str, str]] = set()
    if "{app}" not in template:
        return found
    head, rest = template.split("{app}", 1)
    mid = rest.removesuffix("{path}")
    for cut in range(len(head) + 1, len(key) + 1):
        app, after = key[len(head) : cut], key[cut:]
        if not key.startswith(head) or not after.startswith(mid):
            continue
        path = after[len(mid) :]
        raw = f"/{app}/hls-upload/{path}".encode()
        try:
            upload = parse_upload(app, path, raw, EXTENSIONS)
        except (InvalidPath, UnsupportedMedia):
            continue
        if settings.key_for(upload.app, upload.path) == key:
            found.add((app, path))
    return found


@given(app_templates, valid_apps, valid_paths)
@example("{app}-{path}", "a-b", "c.ts")
@example("live/{app}/{path}", "a", "b-c.ts")
def test_paths_key_names_one_application_and_path(
    template: str, app: str, path: str
) -> None:
    settings = settings_for(template)

    key = settings.key_for(app, path)

    assert preimages(settings, key) == {(app, path)}
    assert_key_is_inside(key, template_prefix(template))


@given(templates, valid_paths, valid_paths)
def test_paths_distinct_paths_of_one_application_get_distinct_keys(
    template: str, first: str, second: str
) -> None:
    settings = settings_for(template)
    assume(first != second)

    assert settings.key_for("LiveApp", first) != settings.key_for("LiveApp", second)


@pytest.mark.parametrize("template", ["{app}-{path}", "x{app}{path}", "{app}.{path}"])
def test_paths_template_without_slash_after_app_is_refused(template: str) -> None:
    with pytest.raises(ValidationError, match="needs a '/' between"):
        Settings(key_template=template)


@pytest.mark.parametrize(
    ("raw_suffix", "accepted"),
    [
        ("a" * (MAX_PATH_CHARS - 3) + ".ts", True),
        ("a" * (MAX_PATH_CHARS - 2) + ".ts", False),
        ("d/" * 100 + "x.ts", True),
        ("a%2fb.ts", False),
        ("a%5Cb.ts", False),
        ("a%c2%85b.ts", False),
        ("a%7fb.ts", False),
        ("sub/live_0/index.m3u8", True),
    ],
)
def test_paths_length_and_characters_at_the_edges(
    raw_suffix: str, accepted: bool
) -> None:
    assert (accept("LiveApp", raw_suffix) is not None) is accepted


@pytest.mark.parametrize(("app", "accepted"), [("A" * 64, True), ("A" * 65, False)])
def test_paths_application_length_at_the_edge(app: str, accepted: bool) -> None:
    assert (accept(app, "a.ts") is not None) is accepted


def test_paths_control_character_in_any_route_is_refused_before_routing() -> None:
    with pytest.raises(InvalidPath, match="control character"):
        check_request_path("/healthz\n", b"/healthz%0a")
    with pytest.raises(InvalidPath, match="percent-encoded separator"):
        check_request_path("/Live/App/hls-upload/a.ts", b"/Live%2FApp/hls-upload/a.ts")
    check_request_path("/LiveApp/streams/a.m3u8", b"/LiveApp/streams/a.m3u8")


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("live stream.ts", "has ' ' in 'live stream.ts'"),
        ("a//b.ts", "has an empty part"),
        ("a/", "has an empty part"),
        ("../x.ts", "has a '..' part"),
        ("x/./y.ts", "has a '.' part"),
        ("a" * (MAX_PATH_CHARS + 1), f"is longer than {MAX_PATH_CHARS} characters"),
        ("caf\u00e9/a.ts", "has '\u00e9' in 'caf\u00e9'"),
    ],
)
def test_paths_refusal_names_what_breaks_the_rule(path: str, problem: str) -> None:
    raw = f"{UPLOAD_PREFIX}{path}".encode()
    with pytest.raises(InvalidPath) as refused:
        parse_upload("LiveApp", path, raw, EXTENSIONS)
    assert refused.value.detail.startswith(f"path {path[:120]!r} {problem}")
