"""The README tells a newcomer the truth: every setting, both set-up commands,
the naming rule of uploads."""

from __future__ import annotations

import re
import string
from pathlib import Path

from app.config import Settings
from app.paths import MAX_PATH_CHARS, is_valid_app, is_valid_path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_documents_every_setting() -> None:
    documented = set(re.findall(r"`(HLSRELAY_[A-Z0-9_]+)`", README))
    settings = {f"HLSRELAY_{name.upper()}" for name in Settings.model_fields}
    assert sorted(settings - documented) == []
    assert sorted(documented - settings) == []


def test_readme_gives_the_two_setup_commands() -> None:
    assert "make run" in README
    assert "make test" in README


def test_readme_default_extensions_match_config() -> None:
    row = next(line for line in README.splitlines() if "`HLSRELAY_EXTENSIONS`" in line)
    listed = row.split("|")[2].strip(" `").replace("`", "").split(", ")
    assert listed == list(Settings.model_fields["extensions"].default_factory())  # type: ignore[misc]


def _bullet(name: str) -> str:
    """The README's bullet on ``name``, its wrapped lines joined."""
    found = re.search(rf"^- `{re.escape(name)}`: (.+?)(?=^- |^$)", README, re.M | re.S)
    assert found is not None, f"no bullet for {name} in the README"
    return " ".join(found.group(1).split())


def test_readme_states_the_naming_rule_that_uploads_are_held_to() -> None:
    application = _bullet("{application}")
    path = _bullet("{path}")
    assert application == "1 to 64 ASCII letters, digits, `_` or `-`."
    assert path.startswith(
        f"at most {MAX_PATH_CHARS} characters, in `/`-separated parts of ASCII "
        "letters, digits, `.`, `_` or `-`; no empty part and no `.` or `..` part."
    )

    # ... and that is the rule the code applies.
    allowed = string.ascii_letters + string.digits
    for char in map(chr, range(0x20, 0x180)):
        assert is_valid_app(f"a{char}b") == (char in allowed + "_-"), char
        assert is_valid_path(f"a{char}b.ts") == (char in allowed + "._-/"), char
    assert is_valid_app("a" * 64) and not is_valid_app("a" * 65)
    longest = "a/" * (MAX_PATH_CHARS // 2 - 2) + "b.ts"
    assert len(longest) == MAX_PATH_CHARS and is_valid_path(longest)
    assert not is_valid_path(longest + "x")
    assert not any(map(is_valid_path, ["a//b.ts", "./b.ts", "a/../b.ts", "/b.ts"]))
