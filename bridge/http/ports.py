"""A free loopback port: for `bridge serve` with port 0 and several workers (one port for
all, chosen before they start), and for the development brokers."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path


def free_port() -> int:
    """A loopback port free now, below the kernel's range of ephemeral ports: a port from
    bind(0) is one of those the kernel also gives outgoing connections as their own, so a
    client (a Kafka connection of another process) could take it before the server binds it.
    Seen with two test processes: "address already in use" on a port just chosen."""
    low = _ephemeral_ports_start()
    for _ in range(100):
        port = random.randrange(max(1024, low // 2), low)  # noqa: S311 - not a secret
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    with socket.socket() as sock:  # all taken: any port the kernel has
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems start at 49152
