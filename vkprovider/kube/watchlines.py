"""A watch's byte stream as events: newline-delimited JSON reassembled from network chunks, one event per line.

Why it exists apart from ``kube.client``: framing a watch stream is pure (no I/O), tested on its own, and the
client only feeds it what its connection reads.
"""

from __future__ import annotations

from typing import Any

import orjson


class LineSplitter:
    """Reassemble newline-delimited JSON from arbitrary network chunks (no line-length limit)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        if b"\n" not in chunk:
            return []
        *lines, rest = bytes(self._buf).split(b"\n")
        self._buf = bytearray(rest)
        return [line for line in lines if line.strip()]

    def flush(self) -> bytes | None:
        """The trailing bytes when the stream ends without a final newline."""
        rest = bytes(self._buf).strip()
        self._buf = bytearray()
        return rest or None


def parse_watch_line(line: bytes) -> dict[str, Any] | None:
    """Parse one watch line into ``{"type": ..., "object": {...}}``; None when it is not a watch event."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    if not isinstance(event.get("type"), str) or not isinstance(event.get("object"), dict):
        return None
    return event
