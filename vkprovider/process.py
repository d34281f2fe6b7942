"""What vkprovider needs to know of the process and the machine it runs on: its address, its architecture, and a
root task that gives the C heap's free pages back to the system."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import platform
import socket

_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def default_architecture() -> str:
    """This machine's architecture as Go (and so Kubernetes) names it."""
    machine = platform.machine().lower()
    return _GOARCH.get(machine, machine or "amd64")


def default_address() -> str:
    """The first non-loopback IPv4 of this host (the pod IP in a cluster), else 127.0.0.1."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.254.254.254", 1))  # no packet is sent: this only picks the outgoing interface
        address = str(probe.getsockname()[0])
        if not address.startswith("127."):
            return address
    return "127.0.0.1"


TRIM_EVERY_S = 60.0


def return_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``); False where there is none.

    A rollout allocates and frees a status, a patch body and a JSON buffer per pod; the memory is free but glibc keeps
    it, so the RSS stays at the burst's high-water mark for good. Trimming once a minute costs milliseconds."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


async def return_free_memory_forever() -> None:
    """A root task: trim every ``TRIM_EVERY_S`` (where glibc's malloc_trim exists; elsewhere it just waits)."""
    trims = return_free_memory()
    while True:
        await asyncio.sleep(TRIM_EVERY_S)
        if trims:
            return_free_memory()
