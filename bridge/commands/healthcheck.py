"""`bridge healthcheck`: the container's HEALTHCHECK, reading the same settings as `bridge serve`
(port, address, TLS), so a healthy bridge is reported healthy however it is configured.

The image runs it as `python3 -m bridge.commands.healthcheck`: the same check without importing the
whole command line (and with it the service): 0.7 s in the container instead of 2.2 s, every
10 s, beside the service it checks.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Final

from bridge.errors import ConfigError
from bridge.settings import Settings, load_settings

# A server bound to every address is asked on loopback: the probe runs beside it.
_ANY: Final = frozenset({"", "0.0.0.0", "::", "[::]"})


def url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in _ANY else settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if settings.tls_certfile else "http"
    return f"{scheme}://{host}:{settings.port}/healthz"


def probe(settings: Settings, timeout: float = 2.0) -> str | None:
    """None when bridge answers /healthz with 200, else what went wrong (one line)."""
    context = None
    if settings.tls_certfile:
        # The probe asks whether this process serves, not who it is: the certificate names the
        # public host, never 127.0.0.1, so it is not verified here.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    target = url(settings)
    try:
        # The URL is built from our own settings, with an http(s) scheme only.
        with urllib.request.urlopen(target, timeout=timeout, context=context) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        exc.close()  # the error is also the response: its socket
        status = exc.code
    except (OSError, ValueError) as exc:
        return f"{target}: {getattr(exc, 'reason', exc)}"
    return None if status == 200 else f"{target}: HTTP {status}"


def main(argv: Sequence[str] | None = None, timeout: float = 2.0) -> int:
    """Exit status of the check: 0 healthy, 1 not (one line on stderr), 2 bad settings."""
    if argv:
        print(
            f"usage: python -m bridge.commands.healthcheck (got {' '.join(argv)})", file=sys.stderr
        )
        return 2
    try:
        problem = probe(load_settings(), timeout)
    except ConfigError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    if problem is not None:
        print(f"bridge: unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
