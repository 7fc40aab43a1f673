"""The ``hlsrelay`` command: serve, check and cors.

The only place that reads flags, configures logging, or exits the process.
Each setting has a flag spelled as its variable without the prefix
(``HLSRELAY_S3_BUCKET`` is ``--s3-bucket``); a flag wins over the variable.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from app import __version__
from app.config import Settings
from app.logs import (
    ContextFilter,
    JsonFormatter,
    SecretRedactor,
    TextFormatter,
    UvicornServerNote,
    secrets_of,
)

log = logging.getLogger("app.cli")


def setup_logging(settings: Settings) -> None:
    """One handler on stderr, text or JSON, that no configured secret gets past.

    uvicorn's own loggers go through it too. Its access log stays off
    (``access_log=False``): it logs at the response's start, so a PUT whose
    encoder hung up before the answer (ffmpeg does) never shows, and it holds
    the query string. ``app.access`` logs each request once it ends instead,
    with route, status, duration and request id, in the same format.
    """
    handler = logging.StreamHandler(sys.stderr)
    redactor = SecretRedactor(secrets_of(settings))
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(redactor))
    else:
        handler.setFormatter(TextFormatter(redactor))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, UvicornServerNote) for f in server_log.filters):
        server_log.addFilter(UvicornServerNote())
    # botocore's debug output holds request headers and signatures; it stays
    # quiet even at HLSRELAY_LOG_LEVEL=debug.
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag, listed after the command's own options."""
    settings = parser.add_argument_group(
        "settings",
        "each flag overrides the environment variable it names, whose "
        "values and default it shows; README.md says what each one does",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        settings.add_argument(
            flag,
            dest=f"setting_{name}",
            default=None,
            metavar="VALUE",
            help=f"HLSRELAY_{name.upper()}: {_setting_hint(field)}",
        )


def _setting_hint(field: FieldInfo) -> str:
    """The values a setting takes, when they are few, and its default."""
    choices = (
        get_args(field.annotation) if get_origin(field.annotation) is Literal else ()
    )
    value = field.get_default(call_default_factory=True)
    # A description says what an unset setting means instead.
    shown = field.description if value is None and field.description else _shown(value)
    hint = f"default {shown}"
    if choices:
        *first, last = (str(choice) for choice in choices)
        hint = f"{', '.join(first)} or {last}; {hint}"
    # argparse formats help with %: a default holding one must not break it.
    return hint.replace("%", "%%")


def _shown(value: Any) -> str:
    if value is None or value == []:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key.removeprefix("setting_"): value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            variable = (
                f"HLSRELAY_{where.upper()}" if where != "settings" else "settings"
            )
            lines.append(f"  {variable}: {error['msg']}")
        raise SystemExit(
            "hlsrelay: invalid configuration\n" + "\n".join(lines)
        ) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.protocol import protocol_for
    from app.shutdown import RelayServer, graceful_timeout

    settings = load_settings(args)
    setup_logging(settings)
    if not settings.s3_bucket:
        log.error(
            "no bucket configured: set HLSRELAY_S3_BUCKET (or --s3-bucket); "
            "`make run` starts a local S3 for trying the relay"
        )
        return 2
    if (
        not _is_loopback(settings.host)
        and not settings.has_auth
        and not args.allow_anonymous
    ):
        log.error(
            "refusing to listen on %s with no authentication: anyone could write "
            "into bucket %s. Set HLSRELAY_AUTH_TOKEN, HLSRELAY_BASIC_AUTH or "
            "HLSRELAY_ALLOW_CIDRS, or pass --allow-anonymous",
            settings.host,
            settings.s3_bucket,
        )
        return 2

    try:
        listener = listen_socket(settings.host, settings.port)
    except OSError as exc:
        log.error(
            "cannot listen on %s port %d: %s (another relay there? see "
            "HLSRELAY_HOST and HLSRELAY_PORT)",
            settings.host,
            settings.port,
            exc.strerror or exc,
        )
        return 2

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # The lifespan's uploader.stop gets what the requests leave of the
        # same grace period (app/shutdown.py), not a second one.
        timeout_graceful_shutdown=graceful_timeout(settings.shutdown_grace_s),
        server_header=False,
        # Bounds on request heads, which uvicorn does not set itself.
        http=protocol_for(settings, app.state.relay.metrics),
        # X-Forwarded-For is judged by app/auth.py against
        # HLSRELAY_TRUSTED_PROXIES alone; uvicorn would otherwise believe it
        # from any local peer (its FORWARDED_ALLOW_IPS default).
        proxy_headers=False,
        # No route takes a WebSocket: an upgrade to one is served as plain
        # HTTP/1.1, or refused in JSON when it has a body (app/protocol.py),
        # instead of uvicorn's bare 403.
        ws="none",
    )
    server = RelayServer(config, app.state.shutdown)
    with listener:
        server.run(sockets=[listener])
    return 0 if server.started else 1


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, for the server to listen on.

    Bound before the relay starts, so that a port in use is one clear error
    line instead of a start-up followed by the server's bind failure.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As uvicorn's and weed's listeners do: connections of an earlier run
        # still in TIME_WAIT do not count as the port taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


_MARKS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def check(args: argparse.Namespace) -> int:
    """Prove the bucket takes the relay's writes; 1 when a step fails."""
    from app.paths import is_valid_app
    from app.probe import describe, run_check

    settings = load_settings(args)
    setup_logging(settings)
    if not is_valid_app(args.app):
        print(
            f"hlsrelay check: --app {args.app[:80]!r} is not an application "
            "name (letters, digits, '_' and '-', 1 to 64)",
            file=sys.stderr,
        )
        return 2
    print("hlsrelay check")
    for name, value in describe(settings):
        print(f"  {name:<13}{value}")
    print(flush=True)

    failed = False
    for step in run_check(settings, args.app):
        print(f"  {_MARKS[step.status]} {step.name:<9} {step.detail}", flush=True)
        if step.fix:
            print(f"  {'':15}fix: {step.fix}", flush=True)
        failed = failed or step.status == "fail"
    if failed:
        print("hlsrelay check: FAILED, see the fix above", file=sys.stderr)
        return 1
    print("hlsrelay check: the bucket takes the relay's writes, reads and deletes")
    return 0


def cors(args: argparse.Namespace) -> int:
    """Write the bucket CORS rule a browser player needs, showing before and after."""
    from app.bucketcors import (
        OriginRefused,
        check_origins,
        differences,
        format_rules,
        merge_rules,
        player_rule,
        read_rules,
        write_rules,
    )
    from app.errors import StorageError
    from app.storage import S3Storage

    settings = load_settings(args)
    setup_logging(settings)
    if not settings.s3_bucket:
        print(
            "hlsrelay cors: no bucket configured: set HLSRELAY_S3_BUCKET "
            "(or --s3-bucket)",
            file=sys.stderr,
        )
        return 2
    try:
        origins = check_origins(
            args.origin or settings.cors_origins, args.allow_any_origin
        )
    except OriginRefused as exc:
        print(f"hlsrelay cors: {exc}", file=sys.stderr)
        return 2

    storage = S3Storage(settings)
    rule = player_rule(origins)
    try:
        before = read_rules(storage)
        print(f"CORS rules of bucket {settings.s3_bucket} before:")
        print(format_rules(before), flush=True)
        wanted = merge_rules(before, rule)
        if args.dry_run:
            print("would be (dry run: nothing written):")
            print(format_rules(wanted))
            return 0
        after = write_rules(storage, wanted)
    except StorageError as exc:
        print(f"hlsrelay cors: {exc.detail}", file=sys.stderr)
        return 1
    print("after:")
    print(format_rules(after))

    lost = differences(rule, after)
    if lost:
        print(
            "hlsrelay cors: the bucket did not keep all of the rule: "
            + "; ".join(lost),
            file=sys.stderr,
        )
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hlsrelay",
        description="HLS ingest relay: encoders PUT, the bucket gets it.",
    )
    parser.add_argument(
        "--version", action="version", version=f"hlsrelay {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    # The usage lines name the command's own options; the forty settings
    # follow in the help, each with its environment variable.
    serve_parser = commands.add_parser(
        "serve",
        help="run the relay",
        usage="%(prog)s [-h] [--allow-anonymous] [--SETTING VALUE ...]",
    )
    serve_parser.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="allow a non-loopback address with no authentication",
    )
    _add_setting_flags(serve_parser)
    serve_parser.set_defaults(func=serve)

    check_parser = commands.add_parser(
        "check",
        help="prove the bucket works: write, read back and delete a probe object",
        usage="%(prog)s [-h] [--app NAME] [--SETTING VALUE ...]",
    )
    check_parser.add_argument(
        "--app",
        default="LiveApp",
        metavar="NAME",
        help="application name for {app} in the key template (default LiveApp)",
    )
    _add_setting_flags(check_parser)
    check_parser.set_defaults(func=check)

    cors_parser = commands.add_parser(
        "cors",
        help="set the bucket CORS rule a web player on ORIGIN needs",
        usage="%(prog)s [-h] [--origin URL ...] [--allow-any-origin] [--dry-run]\n"
        "                     [--SETTING VALUE ...]",
    )
    cors_parser.add_argument(
        "--origin",
        action="append",
        default=[],
        metavar="URL",
        help="page origin, e.g. https://player.example.com; repeat for more "
        "(default HLSRELAY_CORS_ORIGINS)",
    )
    cors_parser.add_argument(
        "--allow-any-origin",
        action="store_true",
        help="accept --origin '*': any web site may read the bucket",
    )
    cors_parser.add_argument(
        "--dry-run", action="store_true", help="show the rules, write nothing"
    )
    _add_setting_flags(cors_parser)
    cors_parser.set_defaults(func=cors)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    sys.exit(args.func(args))
