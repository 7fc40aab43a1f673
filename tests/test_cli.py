"""The command line: each command's help leads with its own options."""

from __future__ import annotations

import pytest

from app.cli import build_parser


@pytest.mark.parametrize(
    ("command", "own"),
    [
        ("serve", "--allow-anonymous"),
        ("check", "--app NAME"),
        ("cors", "--origin URL"),
    ],
)
def test_cli_help_names_own_options_first_then_the_settings(
    command: str, own: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out

    usage, _, rest = text.partition("\n\n")
    assert own.split()[0] in usage
    assert "--s3-bucket" not in usage and "[--SETTING VALUE ...]" in usage
    assert rest.index(own) < rest.index("settings:") < rest.index("--s3-bucket VALUE")
    assert "HLSRELAY_S3_BUCKET" in rest
    # Each setting shows its default, and its values when they are few.
    flat = " ".join(rest.split())
    assert "HLSRELAY_PORT: default 5080" in flat
    assert "HLSRELAY_S3_BUCKET: default unset" in flat
    assert "HLSRELAY_ACK: spool or upload; default spool" in flat
    assert "HLSRELAY_S3_ADDRESSING: auto, path or virtual; default auto" in flat
    assert "HLSRELAY_STREAM_UPLOADS: default true" in flat
    assert "HLSRELAY_SHUTDOWN_GRACE_S: default 10" in flat


def test_cli_settings_still_parse_beside_a_command_option() -> None:
    args = build_parser().parse_args(
        ["cors", "--s3-bucket", "live", "--origin", "https://player.example.com"]
    )
    assert args.setting_s3_bucket == "live"
    assert args.origin == ["https://player.example.com"]
