"""What ``kubectl logs`` options select from a biz's lifecycle log, as the kubelet selects from a container's.

Pure: parses the kubelet API's query (``tailLines``, ``limitBytes``, ``sinceSeconds``, ``sinceTime``,
``timestamps``, ``follow``) and renders log lines the way the kubelet does: the ``sinceSeconds``/``sinceTime``
window first, then the last ``tailLines`` of it, cut at ``limitBytes``; with ``timestamps`` each line starts with
its RFC 3339 time in nanoseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class LogQuery:
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since: float | None = None  # epoch seconds
    timestamps: bool = False
    follow: bool = False


def _bool(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def parse_query(params: Mapping[str, str], now: float) -> LogQuery | str:
    """The query, or why it is not one (a 400 for the caller)."""
    try:
        tail = int(params["tailLines"]) if params.get("tailLines") else None
        limit = int(params["limitBytes"]) if params.get("limitBytes") else None
        since: float | None = None
        if params.get("sinceSeconds"):
            since = now - int(params["sinceSeconds"])
        if params.get("sinceTime"):
            since = datetime.fromisoformat(params["sinceTime"].replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        return f"bad log query: {exc}"
    if (tail is not None and tail < 0) or (limit is not None and limit <= 0):
        return "bad log query: tailLines must be >= 0 and limitBytes > 0"
    return LogQuery(tail_lines=tail, limit_bytes=limit, since=since,
                    timestamps=_bool(params.get("timestamps", "")), follow=_bool(params.get("follow", "")))


def rfc3339_nano(at: float) -> str:
    dt = datetime.fromtimestamp(at, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{round((at % 1) * 1e9) % 1_000_000_000:09d}Z"


def line_text(at: float, text: str) -> str:
    """A lifecycle line as it is stored: its own time, then what happened."""
    return f"{datetime.fromtimestamp(at, UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z {text}"


def format_line(at: float, text: str, timestamps: bool) -> bytes:
    body = line_text(at, text)
    return ((rfc3339_nano(at) + " " + body) if timestamps else body).encode() + b"\n"


def render(lines: Iterable[tuple[float, str]], query: LogQuery) -> bytes:
    """The selected lines as the kubelet would send them."""
    chosen = [(at, text) for at, text in lines if query.since is None or at >= query.since]
    if query.tail_lines is not None:
        chosen = chosen[len(chosen) - query.tail_lines:] if query.tail_lines else []
    out = b"".join(format_line(at, text, query.timestamps) for at, text in chosen)
    if query.limit_bytes is not None:
        out = out[: query.limit_bytes]
    return out
