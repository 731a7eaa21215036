"""Who may post: shared-secret tokens, an optional network allow-list, and a limit on failed
attempts per client address. A refused request gets the answer of an unknown path."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from ipaddress import IPv4Address, IPv6Address, ip_address

from bridge.errors import ConfigError
from bridge.settings import Settings, networks

_MAX_TRACKED_ADDRESSES = 10_000  # bounds the memory of the failure counter
_WINDOW = 60.0


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Guard:
    def __init__(self, settings: Settings) -> None:
        # Compare fixed-length digests, against every token, so the time taken says nothing
        # about how much of a guess was right, nor which token matched.
        self._digests = [_digest(t) for t in settings.tokens]
        self.open = settings.allow_unauthenticated and not self._digests
        self._allowed = networks(settings.allowed_cidrs)
        self._trusted = networks(settings.trusted_proxies)
        self._limit = settings.auth_failure_limit
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer's, or, when the peer is a trusted proxy, the last
        address in `X-Forwarded-For` that is not a trusted proxy itself."""
        address = peer or ""
        if not (forwarded_for and self._trusted and self._is_trusted(address)):
            return address
        for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
            if not self._is_trusted(hop):
                return hop
        return address

    def allowed(self, address: str) -> bool:
        if not self._allowed:
            return True
        parsed = _parse(address)
        return parsed is not None and any(parsed in net for net in self._allowed)

    def authorized(self, presented: str | None) -> bool:
        if self.open:
            return True
        digest = _digest(presented or "")
        matched = False
        for expected in self._digests:
            matched |= hmac.compare_digest(digest, expected)
        return matched and presented is not None

    def failed(self, address: str) -> int | None:
        """Count a failed authentication from `address`: the seconds it must wait (429) when
        it had already failed `limit` times this minute, else None. Only failures count, and
        only failures are throttled: a valid token is served whatever its address did."""
        if not self._limit:
            return None
        now = time.monotonic()
        started, count = self._failures.pop(address, (now, 0))
        if now - started >= _WINDOW:
            started, count = now, 0
        self._failures[address] = (started, count + 1)  # the most recent last
        while len(self._failures) > _MAX_TRACKED_ADDRESSES:
            self._failures.popitem(last=False)
        return int(_WINDOW - (now - started)) + 1 if count >= self._limit else None

    def _is_trusted(self, address: str) -> bool:
        parsed = _parse(address)
        return parsed is not None and any(parsed in net for net in self._trusted)


def _parse(address: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(address)
    except ValueError:
        return None


def require_credentials(settings: Settings) -> None:
    """Secure by default: serving without a token must be asked for explicitly."""
    if not settings.tokens and not settings.allow_unauthenticated:
        raise ConfigError(
            "invalid setting BRIDGE_AUTH_TOKENS: a token is required "
            "(or BRIDGE_ALLOW_UNAUTHENTICATED=true to serve without one)"
        )


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
