"""The README tells a newcomer the truth: every setting, both set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

from app.config import Settings

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
