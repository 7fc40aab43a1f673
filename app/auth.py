"""Who may write: bearer tokens, HTTP basic credentials and client networks.

One FastAPI dependency checks them all; comparisons are constant-time and no
credential is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging

from fastapi import Request

from app.config import Settings
from app.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class WriteGuard:
    """Checks a request against the configured authentication, if any."""

    def __init__(self, settings: Settings) -> None:
        self.tokens = [t.encode() for t in settings.auth_token]
        self.basic = (
            settings.basic_auth.get_secret_value().encode()
            if settings.basic_auth
            else None
        )
        self.networks: list[Network] = [
            ipaddress.ip_network(cidr, strict=False) for cidr in settings.allow_cidrs
        ]

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.basic or self.networks)

    def check(self, request: Request) -> None:
        if self.networks:
            self._check_network(request)
        if self.tokens or self.basic:
            self._check_credentials(request.headers.get("authorization", ""))

    def _check_network(self, request: Request) -> None:
        host = request.client.host if request.client else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise Forbidden(
                "the client address is not in HLSRELAY_ALLOW_CIDRS"
            ) from None
        if not any(address in network for network in self.networks):
            log.warning("refused write from client=%s: not in allowed networks", host)
            raise Forbidden(f"client {host} is not in HLSRELAY_ALLOW_CIDRS")

    def _check_credentials(self, header: str) -> None:
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and self.tokens:
            given = value.encode()
            # Compare with every token, not stopping at a match, so timing
            # tells nothing about which one (or whether any) matched.
            matches = [hmac.compare_digest(given, token) for token in self.tokens]
            if any(matches):
                return
        elif scheme == "basic" and self.basic is not None:
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                given = b""
            if hmac.compare_digest(given, self.basic):
                return
        raise Unauthorized("missing or wrong credentials for writing")
