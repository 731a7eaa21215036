"""`bridge healthcheck`: the container's HEALTHCHECK, reading the same settings as `bridge serve`
(port, address, TLS), so a healthy bridge is reported healthy however it is configured."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from bridge.settings import Settings

# A server bound to every address is asked on loopback: the probe runs beside it.
_ANY = {"", "0.0.0.0", "::", "[::]"}


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
