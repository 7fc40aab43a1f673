"""``hlsrelay check`` as an operator runs it: ``python -m app check`` against a
real SeaweedFS, for a working bucket and for each failure SeaweedFS can give."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import botocore.auth
import pytest
from botocore.exceptions import ClientError
from conftest import REPO_ROOT, free_port

from app import locals3
from app.config import Settings
from app.locals3 import DEV_BUCKET, REGION, LocalS3, _print_banner
from app.probe import run_check

pytestmark = pytest.mark.integration

CHECK_TIMEOUT_S = 120


def relay_env(local_s3: LocalS3, bucket: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLSRELAY_")}
    env.update(
        HLSRELAY_S3_BUCKET=bucket,
        HLSRELAY_S3_ENDPOINT=local_s3.endpoint,
        HLSRELAY_S3_REGION=REGION,
        HLSRELAY_S3_ACCESS_KEY=local_s3.access_key,
        HLSRELAY_S3_SECRET_KEY=local_s3.secret_key,
        HLSRELAY_S3_ADDRESSING="path",
    )
    env.update(extra)
    return env


def run_cli(
    env: Mapping[str, str], *args: str, command: str = "check"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", command, *args],
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        check=False,
    )


def keys_in(local_s3: LocalS3, bucket: str) -> list[str]:
    listing = local_s3.client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_check_working_bucket_exits_zero_and_cleans_up(
    local_s3: LocalS3, bucket: str
) -> None:
    result = run_cli(relay_env(local_s3, bucket))

    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("bucket", "write", "read", "delete"):
        assert f"ok   {step}" in result.stdout
    assert "streams/hlsrelay-check-" in result.stdout
    assert keys_in(local_s3, bucket) == []


def test_check_app_in_template_writes_under_that_app(
    local_s3: LocalS3, bucket: str
) -> None:
    env = relay_env(local_s3, bucket, HLSRELAY_KEY_TEMPLATE="live/{app}/{path}")
    result = run_cli(env, "--app", "Studio_2")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "'live/Studio_2/hlsrelay-check-" in result.stdout


def test_check_unknown_bucket_fails_and_creates_nothing(
    local_s3: LocalS3,
) -> None:
    missing = "t-never-created-bucket"
    result = run_cli(relay_env(local_s3, missing))

    assert result.returncode == 1
    assert "FAIL bucket" in result.stdout
    assert "fix: HLSRELAY_S3_BUCKET" in result.stdout
    assert "FAILED" in result.stderr
    # SeaweedFS creates a bucket on the first PUT into it: check must not.
    with pytest.raises(ClientError):
        local_s3.client().head_bucket(Bucket=missing)


def test_check_wrong_endpoint_fails_naming_endpoint(
    local_s3: LocalS3, bucket: str
) -> None:
    nothing_there = f"http://127.0.0.1:{free_port()}"
    result = run_cli(relay_env(local_s3, bucket, HLSRELAY_S3_ENDPOINT=nothing_there))

    assert result.returncode == 1
    assert "FAIL bucket" in result.stdout
    assert "unreachable" in result.stdout
    assert "fix: HLSRELAY_S3_ENDPOINT" in result.stdout


@pytest.mark.parametrize(
    ("variable", "value", "code", "setting"),
    [
        (
            "HLSRELAY_S3_SECRET_KEY",
            "wrong-secret",
            "SignatureDoesNotMatch",
            "HLSRELAY_S3_SECRET_KEY",
        ),
        (
            "HLSRELAY_S3_ACCESS_KEY",
            "unknown-key",
            "InvalidAccessKeyId",
            "HLSRELAY_S3_ACCESS_KEY",
        ),
        (
            "HLSRELAY_S3_STORAGE_CLASS",
            "NO_SUCH_CLASS",
            "InvalidStorageClass",
            "HLSRELAY_S3_STORAGE_CLASS",
        ),
    ],
)
def test_check_refused_write_shows_provider_code_and_setting(
    local_s3: LocalS3,
    bucket: str,
    variable: str,
    value: str,
    code: str,
    setting: str,
) -> None:
    result = run_cli(relay_env(local_s3, bucket, **{variable: value}))

    assert result.returncode == 1, result.stdout
    assert "FAIL write" in result.stdout
    assert code in result.stdout
    assert f"fix: {setting}" in result.stdout
    assert keys_in(local_s3, bucket) == []


def test_check_invalid_configuration_names_the_variable(
    local_s3: LocalS3, bucket: str
) -> None:
    env = relay_env(local_s3, bucket, HLSRELAY_S3_ENDPOINT="127.0.0.1:9000")
    result = run_cli(env)

    assert result.returncode != 0
    assert "HLSRELAY_S3_ENDPOINT" in result.stderr
    assert "https://" in result.stderr


def test_check_bad_app_name_is_refused_before_any_request(
    local_s3: LocalS3, bucket: str
) -> None:
    result = run_cli(relay_env(local_s3, bucket), "--app", "../etc")

    assert result.returncode == 2
    assert "--app" in result.stderr
    assert "FAIL" not in result.stdout


def test_check_secret_never_printed(local_s3: LocalS3, bucket: str) -> None:
    env = relay_env(local_s3, bucket, HLSRELAY_S3_SECRET_KEY="s3cr3t-value-xyz")
    result = run_cli(env)

    assert result.returncode == 1
    assert "s3cr3t-value-xyz" not in result.stdout + result.stderr


def test_check_clock_skew_names_the_clock(
    local_s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    # SeaweedFS checks X-Amz-Date like AWS does; sign as a clock 2 h behind.
    values: dict[str, Any] = {
        "spool_dir": tmp_path,
        "s3_bucket": bucket,
        "s3_endpoint": local_s3.endpoint,
        "s3_access_key": local_s3.access_key,
        "s3_secret_key": local_s3.secret_key,
        "s3_addressing": "path",
    }
    settings = Settings(**values)

    def two_hours_behind(remove_tzinfo: bool = True) -> datetime.datetime:
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
        return now.replace(tzinfo=None) if remove_tzinfo else now

    with mock.patch.object(botocore.auth, "get_current_datetime", two_hours_behind):
        steps = list(run_check(settings, "LiveApp"))

    failed = [step for step in steps if step.status == "fail"]
    assert len(failed) == 1, steps
    assert "RequestTimeTooSkewed" in failed[0].detail
    assert "clock" in failed[0].fix


def test_make_run_banner_gives_a_check_command_that_passes(
    local_s3: LocalS3, capsys: pytest.CaptureFixture[str]
) -> None:
    local_s3.create_bucket(DEV_BUCKET)
    _print_banner(local_s3, "http://127.0.0.1:5080", "streams/stream.m3u8", "-")
    lines = capsys.readouterr().out.splitlines()
    command = lines[
        lines.index("Check the bucket the way `hlsrelay check` checks a real one:") + 1
    ]
    words = shlex.split(command)
    settings = dict(word.split("=", 1) for word in words if "=" in word)
    program = [word for word in words if "=" not in word]
    assert program[-1] == "check" and Path(program[0]).is_file(), program

    env = {k: v for k, v in os.environ.items() if not k.startswith("HLSRELAY_")}
    result = subprocess.run(
        program,
        env={**env, **settings},
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def make_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A folder to run `make run` in, where another one (a stand-in) runs."""
    first = _stand_in_make_run()
    run_file = tmp_path / ".local" / "run.json"
    run_file.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HLSRELAY_S3_BUCKET", raising=False)
    try:
        yield run_file, first
    finally:
        first.kill()
        first.wait()


def test_a_second_make_run_in_the_same_folder_stops_before_touching_the_first(
    make_run_folder: tuple[Path, subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The first one's SeaweedFS holds .local/s3 locked, and `make demo` reads
    # its run.json: the second says so and leaves both alone.
    run_file, first = make_run_folder
    state = json.dumps({"pid": first.pid, "relay_url": "http://127.0.0.1:5080"})
    run_file.write_text(state)

    assert locals3.main([]) == 1

    assert f"already running in this folder (pid {first.pid}" in (
        capsys.readouterr().err
    )
    assert run_file.read_text() == state
    assert not (run_file.parent / "s3").exists()


def test_a_run_file_left_by_a_dead_make_run_does_not_block_the_next(
    tmp_path: Path,
) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"pid": int(gone.stdout)}))
    assert locals3.running_instance(run_file) is None

    run_file.write_text('{"relay_url": "written by a version without a pid"}')
    assert locals3.running_instance(run_file) is None
    # A pid alive again, but not a `make run`: reused since.
    run_file.write_text(json.dumps({"pid": os.getppid()}))
    assert locals3.running_instance(run_file) is None
    # Nor is a FIFO in its place read (a plain read would wait for a writer).
    run_file.unlink()
    os.mkfifo(run_file)
    assert locals3.running_instance(run_file) is None

    alive = _stand_in_make_run()
    try:
        run_file.unlink()
        run_file.write_text(json.dumps({"pid": alive.pid}))
        assert locals3.running_instance(run_file) == {"pid": alive.pid}
    finally:
        alive.kill()
        alive.wait()


def _stand_in_make_run() -> subprocess.Popen[bytes]:
    """A process that `make run`'s checks take for one: python, app.locals3."""
    script = "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script, "app.locals3"])
    # Its command line reads empty for a moment while the exec completes.
    deadline = time.monotonic() + 10
    while not locals3._is_make_run(proc.pid):
        assert time.monotonic() < deadline, "the stand-in never started"
        time.sleep(0.01)
    return proc


def test_make_run_replaces_its_files_never_writing_through_what_is_there(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("untouched")
    run_file = tmp_path / "run.json"
    run_file.symlink_to(elsewhere)
    locals3._write_private(run_file, '{"pid": 1}')
    assert elsewhere.read_text() == "untouched"
    assert not run_file.is_symlink() and run_file.read_text() == '{"pid": 1}'
    assert run_file.stat().st_mode & 0o777 == 0o600

    run_file.unlink()
    os.mkfifo(run_file)  # written into, it would block until a reader came
    locals3._write_private(run_file, '{"pid": 2}')
    assert run_file.read_text() == '{"pid": 2}'
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "elsewhere.txt",
        "run.json",
    ]


def test_make_demo_while_make_run_is_still_starting_says_so(
    make_run_folder: tuple[Path, subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_file, starting = make_run_folder
    run_file.write_text(json.dumps({"pid": starting.pid}))

    assert locals3.demo(seconds=1) == 1
    assert "still starting: try again" in capsys.readouterr().out


def test_a_local_s3_takes_the_port_asked_for_while_it_is_free(
    tmp_path: Path, local_s3: LocalS3
) -> None:
    # `make run` asks for the port of its last run, so that the URLs and the
    # check line it printed then still work; a port taken is no failure.
    wanted = free_port()
    with LocalS3(tmp_path / "free", s3_port=wanted) as free:
        assert free.port == wanted
        free.create_bucket("kept")
    with LocalS3(tmp_path / "taken", s3_port=local_s3.port) as taken:
        assert taken.port != local_s3.port
        taken.create_bucket("moved")


def _master_folders(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if re.fullmatch(r"m[0-9]+", p.name))


def test_a_local_s3_keeps_its_objects_but_not_the_master_folders_of_earlier_starts(
    tmp_path: Path,
) -> None:
    # weed names its master's folder after the master's port, new at every
    # start: `make run` left one more .local/s3/m<port> each time.
    data = tmp_path / "s3"
    with LocalS3(data) as first:
        first.create_bucket("kept")
        first.client().put_object(Bucket="kept", Key="k", Body=b"kept")
        in_use = f"m{first._ports['master.port']}"
        # A second one on the folder in use fails and removes nothing.
        with pytest.raises(locals3.LocalS3Error):
            LocalS3(data, start_timeout_s=10).start()
        assert in_use in _master_folders(data)
        assert first.client().get_object(Bucket="kept", Key="k")["Body"].read()
    assert len(_master_folders(data)) > 1  # the failed attempts left theirs

    # What only looks like weed's is left alone.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (data / "m2").symlink_to(elsewhere)
    (data / "m1x").mkdir()
    with LocalS3(data) as second:
        current = f"m{second._ports['master.port']}"
        assert _master_folders(data) == sorted([current, "m2"])
        kept = second.client().get_object(Bucket="kept", Key="k")["Body"].read()
    assert kept == b"kept"
    assert elsewhere.is_dir() and (data / "m1x").is_dir()


def test_make_run_keeps_its_s3_port_and_secret_for_the_next_run(
    tmp_path: Path,
) -> None:
    saved = tmp_path / "s3.json"
    saved.write_text("{}")
    saved.chmod(0o644)
    s3 = LocalS3(tmp_path / "s3")
    s3._proc, s3._ports = mock.Mock(), {"s3.port": 40123}
    locals3._save_identity(saved, s3)

    assert saved.stat().st_mode & 0o777 == 0o600
    assert locals3._last_identity(saved) == {
        "port": 40123,
        "secret_key": s3.secret_key,
    }
    # The relay's own port is no port for the S3 (it then could not start).
    assert locals3._last_identity(saved, relay_port=40123) == {
        "secret_key": s3.secret_key
    }
    for text in (
        "",
        "[]",
        "not json",
        "[" * 100_000 + "]" * 100_000,
        '{"port": "80", "secret_key": "short"}',
        '{"port": 80, "secret_key": "' + "\u00e9" * 24 + '"}',
        '{"port": true, "secret_key": "' + "a" * 129 + '"}',
    ):
        saved.write_text(text)
        assert locals3._last_identity(saved) == {}, text[:60]
    assert locals3._last_identity(tmp_path / "missing.json") == {}
    # Neither a FIFO (a plain read would wait for a writer forever) nor a
    # file larger than any identity is read.
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert locals3._last_identity(fifo) == {}
    padded = '{"port": 40123}' + " " * (locals3.STATE_FILE_MAX_BYTES - 15)
    saved.write_text(padded)
    assert locals3._last_identity(saved) == {"port": 40123}
    saved.write_text(padded + " ")
    assert locals3._last_identity(saved) == {}

    # A symlink in its place is replaced, not written through.
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("untouched")
    saved.unlink()
    saved.symlink_to(elsewhere)
    locals3._save_identity(saved, s3)
    assert elsewhere.read_text() == "untouched"
    assert not saved.is_symlink()
    assert locals3._last_identity(saved)["port"] == 40123


def test_make_run_that_cannot_keep_its_s3_port_says_so_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = tmp_path / "s3.json"
    blocked.mkdir()
    s3 = LocalS3(tmp_path / "s3")
    s3._proc, s3._ports = mock.Mock(), {"s3.port": 40123}

    locals3._save_identity(blocked, s3)

    assert "Could not keep the local S3's port and secret" in capsys.readouterr().err


def test_make_run_refuses_a_relay_port_in_use_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Otherwise it printed its banner for whatever answered /healthz there,
    # and its relay then exited on the bind error.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("HLSRELAY_S3_BUCKET", raising=False)
        monkeypatch.setenv("HLSRELAY_PORT", str(port))

        assert locals3.main([]) == 1

    assert f"Port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    assert not (tmp_path / ".local").exists()


@pytest.mark.parametrize(
    "port", ["abc", "0", "65536", "99999", "-1", "", "\uff15\uff10\uff18\uff10"]
)
def test_make_run_refuses_a_relay_port_that_is_no_port(
    port: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HLSRELAY_S3_BUCKET", raising=False)
    monkeypatch.setenv("HLSRELAY_PORT", port)

    assert locals3.main([]) == 1

    assert "is not a port (1 to 65535)" in capsys.readouterr().err
    assert not (tmp_path / ".local").exists()


def test_make_run_writes_ipv6_hosts_in_brackets() -> None:
    assert locals3._url_host("::1") == "[::1]"
    assert locals3._url_host("[::1]") == "[::1]"
    assert locals3._url_host("127.0.0.1") == "127.0.0.1"
    assert locals3._url_host("relay.example") == "relay.example"


def _refuses_connections(url: str) -> bool:
    host, _, port = url.rpartition("/")[2].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.integration
def test_make_run_stops_its_relay_and_s3_when_its_terminal_closes(
    tmp_path: Path,
) -> None:
    # SIGHUP is what a closed terminal sends. The relay and SeaweedFS run in
    # sessions of their own, so they kept the ports after it.
    local = tmp_path / ".local"
    local.mkdir()
    os.mkfifo(local / "s3.json")  # no usable identity: new ones, said so
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLSRELAY_")}
    env["HLSRELAY_PORT"] = str(free_port())
    run = subprocess.Popen(
        [sys.executable, "-m", "app.locals3"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        state: dict[str, Any] = {}
        while "relay_url" not in state:
            assert run.poll() is None and time.monotonic() < deadline, "no start"
            time.sleep(0.2)
            state = locals3._read_run_file(local / "run.json")
        assert not _refuses_connections(state["relay_url"])
        assert not _refuses_connections(state["endpoint"])

        os.kill(run.pid, signal.SIGHUP)
        output, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for child in ("relay_pid", "s3_pid"):  # left behind: the test fails
            if child in state:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state[child], signal.SIGKILL)
    text = output.decode(errors="replace")
    assert run.returncode == 0, text
    assert "holds no usable port and secret: the local S3 has new ones" in text
    assert text.rstrip().endswith("Stopped the relay, then the local S3."), text
    assert _refuses_connections(state["relay_url"]), text
    assert _refuses_connections(state["endpoint"]), text
    assert not (local / "run.json").exists()
    assert json.loads((local / "s3.json").read_text())["port"] > 0
