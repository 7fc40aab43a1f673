"""Who may write: client networks, bearer tokens and HTTP basic credentials.

``HLSRELAY_ALLOW_CIDRS`` gates the client's address (403 outside it), while
``HLSRELAY_AUTH_TOKEN`` and ``HLSRELAY_BASIC_AUTH`` are credentials of which any
one valid is enough (401 with a challenge otherwise); set together, a writer
needs both the network and a credential.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Iterable, Sequence

from fastapi import Request
from starlette.types import Scope

from app.config import Settings
from app.errors import Forbidden, Unauthorized
from app.metrics import Metrics

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

REALM = "hlsrelay"
# ffmpeg sends no credentials with a file until it has been answered 401
# for it, then sends the same request again with them at once. A challenge
# whose retry comes within this time was routine (its access line is at
# debug); one that no retry follows gets an INFO line of its own then, so
# an encoder without credentials is seen, whoever else shares its address.
FOLLOW_UP_S = 5.0
# Challenges awaiting their retry; past this many, a 401 is an INFO line
# at once, as it is without credentials configured to retry with.
MAX_PENDING_CHALLENGES = 4096


def parse_networks(items: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(item, strict=False) for item in items]


# Pure and called for every request with the same few peers; bounded, so a
# flood of made-up X-Forwarded-For hops cannot grow it.
@functools.lru_cache(maxsize=4096)
def _parse_address(text: str) -> Address | None:
    """An address from a peer or an X-Forwarded-For hop, ports and brackets
    stripped; IPv4-mapped IPv6 (a dual-stack socket) becomes plain IPv4."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _is_in(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


def client_address(scope: Scope, trusted_proxies: Sequence[Network]) -> str:
    """The client's address as CIDR rules and limits should see it.

    X-Forwarded-For is read only when the peer itself is a trusted proxy,
    from the right: each proxy appends the address it saw, so the first hop
    that is not a trusted proxy is the client, and anything left of it was
    written by the client and proves nothing. An unreadable hop yields "",
    which no network contains.
    """
    peer = scope.get("client")
    host = str(peer[0]) if peer else ""
    address = _parse_address(host)
    if address is None or not trusted_proxies or not _is_in(address, trusted_proxies):
        return str(address) if address is not None else host

    hops: list[str] = []
    for name, value in scope.get("headers", []):
        if name == b"x-forwarded-for":
            # An empty entry says nothing; some proxies send an empty header.
            hops += [h for h in value.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(hops):
        hop_address = _parse_address(hop)
        if hop_address is None:
            return ""
        address = hop_address
        if not _is_in(address, trusted_proxies):
            break
    return str(address)


def _digest(secret: bytes) -> bytes:
    # Comparing fixed-length digests keeps even the secret's length out of
    # the timing; hmac.compare_digest alone returns early on a length mismatch.
    return hashlib.sha256(secret).digest()


class WriteGuard:
    """Checks a request against the configured networks and credentials."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._tokens = [_digest(token.encode()) for token in settings.auth_token]
        self._basic = (
            _digest(settings.basic_auth.get_secret_value().encode())
            if settings.basic_auth
            else None
        )
        self.networks = parse_networks(settings.allow_cidrs)
        self.trusted_proxies = parse_networks(settings.trusted_proxies)
        self.protects_metrics = settings.metrics_auth
        # RFC 9110 11.6.1: one challenge per accepted scheme. Basic comes
        # first: ffmpeg reads only a value that starts with "Basic ".
        challenges = []
        if self._basic is not None:
            challenges.append(f'Basic realm="{REALM}", charset="UTF-8"')
        if self._tokens:
            challenges.append(f'Bearer realm="{REALM}"')
        self.challenge = ", ".join(challenges)
        # (client, raw path) of each challenge -> its follow-up check.
        self._pending: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def client(self, request: Request) -> str:
        return client_address(request.scope, self.trusted_proxies)

    def check(self, request: Request) -> None:
        """Raise Forbidden or Unauthorized unless the request may write."""
        if self.networks:
            self._check_network(request)
        if self._tokens or self._basic is not None:
            self._check_credentials(request)

    def check_metrics(self, request: Request) -> None:
        if self.protects_metrics:
            self.check(request)

    def _check_network(self, request: Request) -> None:
        host = self.client(request)
        address = _parse_address(host)
        if address is None or not _is_in(address, self.networks):
            log.warning(
                "refused client=%s path=%s: not in HLSRELAY_ALLOW_CIDRS",
                host or "unknown",
                _raw_path(request),
            )
            raise Forbidden(f"client {host or 'unknown'} may not write here")

    def _check_credentials(self, request: Request) -> None:
        header = request.headers.get("authorization")
        asked = (self.client(request) or "unknown", _raw_path(request))
        if header is None:
            # ffmpeg asks first without credentials (Expect: 100-continue)
            # and sends them only after this 401: routine, so not a warning.
            log.debug("challenged client=%s path=%s", *asked)
            raise Unauthorized(
                "credentials are needed to write here",
                challenge=self.challenge,
                routine=self._await_follow_up(asked),
            )

        # The retry came: right credentials pass, wrong ones are a warning.
        followed = self._pending.pop(asked, None)
        if followed is not None:
            followed.cancel()
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if (scheme == "bearer" and self._tokens and self._matches_token(value)) or (
            scheme == "basic" and self._basic is not None and self._matches_basic(value)
        ):
            return
        log.warning(
            "refused credentials client=%s scheme=%s path=%s",
            asked[0],
            scheme[:20] or "none",
            asked[1],
        )
        raise Unauthorized(
            "the credentials given are not accepted", challenge=self.challenge
        )

    def _await_follow_up(self, asked: tuple[str, str]) -> bool:
        """Watch for the retry with credentials; False: log this 401 now."""
        if asked in self._pending:
            return True  # asked again before retrying: the first check stands
        if len(self._pending) >= MAX_PENDING_CHALLENGES:
            # Not watched: logged at once, and counted as if no retry came.
            if self.metrics is not None:
                self.metrics.unanswered_challenges.inc()
            return False
        self._pending[asked] = asyncio.get_running_loop().call_later(
            FOLLOW_UP_S, self._no_follow_up, asked
        )
        return True

    def _no_follow_up(self, asked: tuple[str, str], why: str = "") -> None:
        self._pending.pop(asked, None)
        if self.metrics is not None:
            self.metrics.unanswered_challenges.inc()
        log.info(
            "refused request without credentials client=%s path=%s status=401: "
            "%s; does the encoder send any?",
            *asked,
            why or f"no request with credentials followed within {FOLLOW_UP_S:g}s",
        )

    def close(self) -> None:
        """At shutdown: the challenges still awaiting a retry will get none."""
        for asked, check in list(self._pending.items()):
            check.cancel()
            self._no_follow_up(asked, "the relay stopped before a retry came")

    def _matches_token(self, value: str) -> bool:
        # Starlette decodes headers as latin-1: encoding back gives the bytes
        # that were sent, which is what the configured token is compared with.
        given = _digest(value.encode("latin-1"))
        # Every token is compared, no early exit, so the time taken says
        # nothing about which token (if any) matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(given, token)
        return matched

    def _matches_basic(self, value: str) -> bool:
        assert self._basic is not None
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            given = b""
        return hmac.compare_digest(_digest(given), self._basic)


def _raw_path(request: Request) -> str:
    return sent_path(request.scope)[:200]


def sent_path(scope: Scope) -> str:
    """The request's path as the client sent it, for log lines.

    Still percent-encoded: a hostile name cannot put control characters into
    the line, and a refused "%2E%2E%2F" does not read as a "../" let through.
    The query string stays out: forwarding URLs may carry signed tokens.
    """
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        return str(scope.get("path", ""))
    return raw.partition(b"?")[0].decode("latin-1")
