"""Ports for test processes that bind them later (vkprovider, the broker): outside the kernel's ephemeral range."""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

__all__ = ["free_port"]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _test_range() -> tuple[int, int]:
    """From 10000 to just below the ephemeral range, or above it where that range starts too low to leave room."""
    low, high = _ephemeral_range()
    return (10000, low - 1) if low > 11000 else (high + 1, 65535)


_RANGE = _test_range()
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port to give a process that binds it later. Not one the kernel picks (port 0): a port from the ephemeral
    range can be taken meanwhile as the local end of one of the many short connections the tests open (each biz
    poll is one), so the process would find it in use. Ports below that range are only ever bound on purpose;
    none is handed out twice in one session."""
    low, high = _RANGE
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(1000):
        port = rng.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")
