"""The bridge, or the ceiling, served under `bridge serve`'s uvicorn configuration with either
bridge's HTTP protocol (bridge/http/protocol.py) or uvicorn's own (httptools): the only difference
between the two, so the benchmark can tell what the protocol costs.

python -m bench.serve {bridge,ceiling} {bridge,uvicorn}   (settings from BRIDGE_*)
"""

from __future__ import annotations

import sys

import uvicorn

from bridge.http.supervisor import server_config, serving
from bridge.settings import load_settings
from bridge.telemetry.logs import configure_logging


def main() -> None:
    app, protocol = sys.argv[1:3]
    settings = load_settings()
    configure_logging(settings)
    # The bridge as `bridge serve` runs it (its connections counted into its metrics); the
    # ceiling, a bare app, with the same server configuration.
    config = (
        serving(settings) if app == "bridge" else server_config(settings, "bench.noop:create_app")
    )
    if protocol == "uvicorn":
        config.http = "httptools"  # what uvicorn's "auto" picks, as bridge served before
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
