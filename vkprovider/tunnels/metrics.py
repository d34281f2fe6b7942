"""Prometheus metrics shared by every tunnel.

A metric name can be registered only once per process, and both tunnels report heartbeats and command durations
under the same names (told apart by the ``tunnel`` label), so the metric objects live here and each tunnel imports
them and pre-creates its own label sets.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

HEARTBEAT_RESULTS: Final = ("accepted", "bad_json", "invalid", "too_large", "timeout", "unauthorized", "forbidden",
                             "forbidden_address", "conflict", "rate_limited", "capped", "error")
COMMANDS: Final = ("installBiz", "uninstallBiz", "batchInstallBiz", "health", "queryAllBiz")
REQUEST_RESULTS: Final = ("success", "failed", "transport_error", "timeout")

HEARTBEATS_TOTAL = Counter(
    "vkprovider_heartbeats_total", "Heartbeats received, by tunnel and result.", ["tunnel", "result"]
)
TUNNEL_REQUEST_SECONDS = Histogram(
    "vkprovider_tunnel_request_duration_seconds",
    "Duration of commands sent to bases, by tunnel, command and result.",
    ["tunnel", "command", "result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def precreate(tunnel: str) -> None:
    """Create every label set of ``tunnel`` up front, so dashboards see zeros rather than missing series."""
    for result in HEARTBEAT_RESULTS:
        HEARTBEATS_TOTAL.labels(tunnel, result)
    for command in COMMANDS:
        for result in REQUEST_RESULTS:
            TUNNEL_REQUEST_SECONDS.labels(tunnel, command, result)
