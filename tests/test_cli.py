"""The command line: each command's help leads with its own options."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

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
    assert "HLSRELAY_DELETE_ON_END_DELAY_S: default the stream's own live" in flat


def test_cli_settings_still_parse_beside_a_command_option() -> None:
    args = build_parser().parse_args(
        ["cors", "--s3-bucket", "live", "--origin", "https://player.example.com"]
    )
    assert args.setting_s3_bucket == "live"
    assert args.origin == ["https://player.example.com"]


def _serve(port: int, tmp_path: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLSRELAY_")}
    env.update(
        HLSRELAY_S3_BUCKET="never-reached",
        HLSRELAY_S3_ENDPOINT="http://127.0.0.1:9",
        HLSRELAY_PORT=str(port),
        HLSRELAY_SPOOL_DIR=str(tmp_path / "spool"),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_serve_on_a_port_in_use_says_so_in_one_line_and_starts_nothing(
    tmp_path: Path,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        relay = _serve(port, tmp_path)
        output, _ = relay.communicate(timeout=60)

    assert relay.returncode == 2, output
    assert output.count("\n") == 1, output
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in output
    assert not (tmp_path / "spool").exists()


def test_serve_says_where_it_listens(tmp_path: Path) -> None:
    port = free_port()
    relay = _serve(port, tmp_path)
    try:
        assert relay.stdout is not None
        lines = []
        for line in relay.stdout:
            lines.append(line)
            if "listening on" in line or len(lines) > 20:
                break
        assert f"listening on http://127.0.0.1:{port}" in lines[-1], lines
    finally:
        relay.terminate()
        relay.communicate(timeout=30)
