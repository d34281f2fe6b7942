"""What arklet's MQTT tunnel puts on the wire: its topics and the ``{publishTimestamp, data}`` envelope.

Pure functions and constants (no client, no asyncio), kept apart from the connection and the tunnel so they can be
unit-tested as tables and fuzzed. Bases publish on ``koupleless_{env}/{identity}/base/<kind>`` and read commands
from ``koupleless_{env}/{identity}/<command>``; arklet lowercases the env in topics, so do we. Commands go out at
QoS 1 and never retained (they cannot replay when a base resubscribes). A message a base sends is dropped, with a
reason of ``DROP_REASONS`` (``MessageDropped``), when it is too large, retained (a replay from the broker's store,
not something a base just said), not a JSON envelope, or outside the age window (``VKP_MQTT_MAX_MESSAGE_AGE``,
60 s by default, on either side: wide enough for ordinary clock skew).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

QOS: Final = 1

KIND_HEART: Final = "heart"
KIND_QUERY_BASELINE: Final = "queryBaseline"
KIND_HEALTH: Final = "health"
KIND_SIMPLE_BIZ: Final = "simpleBiz"
KIND_BIZ: Final = "biz"  # the Go controller also listens for full queryAllBiz answers here
KIND_BIZ_OPERATION: Final = "bizOperation"
KIND_BATCH_RESPONSE: Final = "batchInstallBizResponse"
BASE_KINDS: Final = (
    KIND_HEART,
    KIND_QUERY_BASELINE,
    KIND_HEALTH,
    KIND_SIMPLE_BIZ,
    KIND_BIZ,
    KIND_BIZ_OPERATION,
    KIND_BATCH_RESPONSE,
)

#: What every replica hears from every base (wildcards): heartbeats, and a base asking for its baseline.
SHARED_KINDS: Final = (KIND_HEART, KIND_QUERY_BASELINE)
#: Answers a base sends to whoever commands it: only the replica holding its vnode subscribes to these.
ANSWER_KINDS: Final = (KIND_HEALTH, KIND_SIMPLE_BIZ, KIND_BIZ, KIND_BIZ_OPERATION, KIND_BATCH_RESPONSE)

DROP_REASONS: Final = ("too_large", "bad_json", "invalid", "expired", "clock_skew", "retained", "topic", "error",
                       "stale")


def topic_env(env: str) -> str:
    """Arklet lowercases its runtime env in topics; so do we."""
    return env.lower()


def subscriptions(env: str) -> list[str]:
    """What every replica subscribes to: one wildcard per shared kind of base message."""
    return [f"koupleless_{topic_env(env)}/+/base/{kind}" for kind in SHARED_KINDS]


def answer_subscriptions(env: str, identity: str) -> list[str]:
    """The answer topics of one base, subscribed by the replica that commands it (before its first command)."""
    return [f"koupleless_{topic_env(env)}/{identity}/base/{kind}" for kind in ANSWER_KINDS]


def command_topic(env: str, identity: str, command: str) -> str:
    """Where a base reads ``command`` (installBiz, uninstallBiz, health, queryAllBiz)."""
    return f"koupleless_{topic_env(env)}/{identity}/{command}"


def baseline_topic(env: str, identity: str) -> str:
    """Where a base reads its baseline (also the batch-install request of arklet >= 1.4.1)."""
    return f"koupleless_{topic_env(env)}/{identity}/base/baseline"


def parse_topic(topic: str, env: str) -> tuple[str, str] | None:
    """``koupleless_{env}/{identity}/base/{kind}`` → ``(identity, kind)``; None for anything else."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != f"koupleless_{topic_env(env)}" or parts[2] != "base":
        return None
    identity, kind = parts[1], parts[3]
    if not identity or kind not in BASE_KINDS:
        return None
    return identity, kind


class MessageDropped(Exception):
    """A message that must be ignored; ``reason`` is one of ``DROP_REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def open_envelope(payload: bytes, *, now_ms: int, max_age_s: float, max_bytes: int, retained: bool = False) -> Any:
    """Check one ``{"publishTimestamp": ms, "data": X}`` message and return X (see ``read_envelope``)."""
    return read_envelope(payload, now_ms=now_ms, max_age_s=max_age_s, max_bytes=max_bytes, retained=retained)[1]


def read_envelope(payload: bytes, *, now_ms: int, max_age_s: float, max_bytes: int,
                  retained: bool = False) -> tuple[int, Any]:
    """Check one ``{"publishTimestamp": ms, "data": X}`` message and return (publishTimestamp, X).

    Raises ``MessageDropped`` for a message that is too large, retained (a replay from the broker's store, not
    something a base just said), not a JSON envelope, or outside the age window ``max_age_s`` on either side
    of ``now_ms`` (``max_age_s <= 0`` disables the age check).
    """
    if len(payload) > max_bytes:
        raise MessageDropped("too_large", f"{len(payload)} bytes")
    if retained:
        raise MessageDropped("retained")
    try:
        decoded = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise MessageDropped("bad_json", "not JSON") from None
    if not isinstance(decoded, dict) or "data" not in decoded:
        raise MessageDropped("bad_json", "not a {publishTimestamp, data} envelope")
    stamp = decoded.get("publishTimestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int):
        raise MessageDropped("invalid", "publishTimestamp is not an integer")
    if max_age_s > 0:
        age_ms = now_ms - stamp
        if age_ms > max_age_s * 1000:
            raise MessageDropped("expired", f"{age_ms / 1000:.1f}s old")
        if -age_ms > max_age_s * 1000:
            raise MessageDropped("clock_skew", f"{-age_ms / 1000:.1f}s in the future")
    return stamp, decoded["data"]


def as_bytes(payload: object) -> bytes | None:
    """A message's payload as bytes (the client may hand over bytes, bytearray or str); None for anything else."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return None
