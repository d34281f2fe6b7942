"""The server side of ``http1``: small request/answer endpoints with a synchronous handler (the heartbeat
listener), with size caps, time limits and write back-pressure (see the package docstring)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import httptools

from vkprovider.core.grid import on_grid
from vkprovider.http1.client import _PHRASES, MAX_HEAD_BYTES, WRITE_HIGH_WATER, WRITE_LOW_WATER

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ server


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; a repeated header's values joined with ", "
    repeated: frozenset[str]  # names sent more than once
    body: bytes
    remote: str | None
    peercert: dict[str, Any] | None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    close: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Response]
Refused = Callable[[str, int], None]  # (path, status) of a request answered before it was whole


class ConnectionGuard(Protocol):
    """What a listener counts (``serving``): open connections, refusals, connections that never sent a whole
    request."""

    def admit(self) -> bool: ...

    def refused(self) -> None: ...

    def closed(self, *, incomplete: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_body: int  # bytes; a larger body is answered 413
    request_timeout_s: float  # a request must arrive whole within this of its first byte (else 408 / closed)
    idle_timeout_s: float  # a keep-alive connection with no request for this long is closed
    max_queued_answers: int = 64  # answers written past the high-water mark before the connection is aborted


def response_bytes(response: Response, *, keep_alive: bool) -> bytes:
    phrase = _PHRASES.get(response.status, "Unknown")
    lines = [f"HTTP/1.1 {response.status} {phrase}", f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


class ServerConnection(asyncio.Protocol):
    """One server connection: requests in order, each answered by the synchronous ``handler`` once whole."""

    def __init__(self, handler: Handler, limits: ServerLimits, guard: ConnectionGuard,
                 on_refused: Refused | None = None) -> None:
        self._handler = handler
        self._on_refused = on_refused
        self._limits = limits
        self._guard = guard
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._refused = False
        self._closed = False
        self._head_seen = False  # a whole request head arrived at some point (else: an incomplete connection)
        self._in_request = False
        self._head_complete = False
        self._deadline = 0.0
        self._after_s = 0.0  # how far ahead the deadline was set (its timer fires on that delay's grid)
        self._timer: asyncio.TimerHandle | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._repeated: set[str] = set()
        self._head_size = 0
        self._body: list[bytes] = []
        self._size = 0
        self._rejected: Response | None = None  # answered before the body came (413): then closed
        self._blocked = False  # the transport holds more than WRITE_HIGH_WATER unsent: reading is paused
        self._queued = 0  # answers written while blocked

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses of asyncio's
        if not self._guard.admit():
            self._refused = True
            self._closed = True
            self._guard.refused()
            self._transport.abort()
            return
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        self._arm(self._limits.idle_timeout_s)

    def pause_writing(self) -> None:
        """The client does not take its answers as fast as it sends requests: read no more until it does."""
        self._blocked = True
        self._queued = 0
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._blocked = False
        self._queued = 0
        if self._transport is not None and not self._closed and not self._transport.is_closing():
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closed or self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close()  # whatever was asked was answered; no other protocol is spoken here
        except httptools.HttpParserError:
            if not self._closed:
                self._refuse(Response(400, b'{"error":"malformed HTTP request"}', "application/json"))

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        # The parser and the transport refer back to this protocol: let go of both, so reference counting frees
        # a closed connection at once instead of the rarely run cycle collector (``cli.tune_gc``).
        self._transport = None
        self._parser = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._refused:
            self._guard.closed(incomplete=not self._head_seen)

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        if self._closed:
            return
        self._in_request = True
        self._head_complete = False
        self._url = b""
        self._headers = {}
        self._repeated = set()
        self._head_size = 0
        self._body = []
        self._size = 0
        self._arm(self._limits.request_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow_head(len(name) + len(value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        have = self._headers.get(key)
        if have is None:
            self._headers[key] = text
        else:
            self._repeated.add(key)
            self._headers[key] = f"{have}, {text}"

    def on_headers_complete(self) -> None:
        self._head_complete = True
        self._head_seen = True
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._limits.max_body:
            self._reject_early()
            return
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._rejected is not None or self._closed:
            return
        self._size += len(body)
        if self._size > self._limits.max_body:
            self._reject_early()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        if self._rejected is not None or self._closed or parser is None:
            return
        self._in_request = False
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        transport = self._transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        request = Request(
            method=parser.get_method().decode("latin-1"), path=path, query=query, headers=self._headers,
            repeated=frozenset(self._repeated), body=b"".join(self._body),
            remote=peer[0] if isinstance(peer, tuple) and peer else None,
            peercert=transport.get_extra_info("peercert") if transport is not None else None,
        )
        try:
            response = self._handler(request)
        except Exception:
            log.exception("handling %s %s failed", request.method, request.path)
            response = Response(500, b'{"error":"internal error"}', "application/json")
        self._reply(response, keep_alive=parser.should_keep_alive() and not response.close)

    # --- the rest

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES and not self._closed:
            self._refuse(Response(431, b'{"error":"request head too large"}', "application/json"))

    def _reject_early(self) -> None:
        self._rejected = Response(413, b'{"error":"body too large"}', "application/json")
        self._refuse(self._rejected)

    def _refuse(self, response: Response) -> None:
        """Answer a request that will not be handled, and close."""
        if self._on_refused is not None and not self._closed:
            self._on_refused(self._url.decode("latin-1").partition("?")[0], response.status)
        self._reply(response, keep_alive=False)

    def _reply(self, response: Response, *, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        transport.write(response_bytes(response, keep_alive=keep_alive))
        if self._blocked:
            self._queued += 1
            if self._queued > self._limits.max_queued_answers:
                log.debug("aborting a connection that pipelined more than %d requests without reading the answers",
                          self._limits.max_queued_answers)
                self._abort()
                return
        if keep_alive:
            self._arm(self._limits.idle_timeout_s)
        else:
            self._close()

    def _abort(self) -> None:
        """Drop the connection and what it still buffers (``connection_lost`` counts it)."""
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        """Close after what was written goes out (``connection_lost`` counts it)."""
        if self._blocked:
            self._abort()  # what was written does not go out: the client is not reading
            return
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, after_s: float) -> None:
        """Move the connection's one deadline; its timer is re-armed only when it fires early."""
        self._deadline = self._loop.time() + after_s
        self._after_s = after_s
        if self._timer is None:
            self._timer = self._loop.call_at(on_grid(self._deadline, after_s), self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(on_grid(self._deadline, self._after_s), self._expired)
            return
        if self._blocked:
            self._abort()  # its answers untaken for a whole timeout: a close would wait for them forever
        elif self._in_request and self._head_complete:
            seconds = f"{self._limits.request_timeout_s:g}"
            self._refuse(Response(408, b'{"error":"body not received within ' + seconds.encode() + b's"}',
                                  "application/json"))
        else:
            self._close()  # a head that never came whole, or an idle keep-alive connection
