"""Prometheus metrics shared by every tunnel.

A metric name can be registered only once per process, and both tunnels report heartbeats and command durations
under the same names (told apart by the ``tunnel`` label), so the metric objects live here and each tunnel creates
its own label sets up front and keeps them (``TunnelMetrics``): a heartbeat or a command counts into its child
directly, without prometheus-client's ``labels`` lookup (a lock and a validation on every call, about 1 % of the
steady state's CPU at 80 heartbeats a second).
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class TunnelMetrics:
    """One tunnel's label sets of the shared metrics, created up front (dashboards see zeros, not missing series)."""

    heartbeats: dict[str, Counter]  # by result
    requests: dict[tuple[str, str], Histogram]  # by (command, result)

    @classmethod
    def create(cls, tunnel: str) -> TunnelMetrics:
        return cls({result: HEARTBEATS_TOTAL.labels(tunnel, result) for result in HEARTBEAT_RESULTS},
                   {(command, result): TUNNEL_REQUEST_SECONDS.labels(tunnel, command, result)
                    for command in COMMANDS for result in REQUEST_RESULTS})
