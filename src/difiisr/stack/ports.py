"""TCP ports on the loopback interface: the only address the local services bind."""

from __future__ import annotations

import contextlib
import socket

#: Every local server binds this address and nothing else.
HOST = "127.0.0.1"


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct TCP ports that are free on ``host`` right now (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something accepts TCP connections on ``host:port`` (0.5 s connect timeout)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
