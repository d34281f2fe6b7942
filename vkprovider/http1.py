"""HTTP/1.1 for vkprovider's hot paths, on httptools (llhttp: the parser of Node.js, used by uvicorn).

Why it exists: vkprovider's steady work is small requests, hundreds a second at 1,000 bases (Lease renewals,
heartbeats, arklet calls), and aiohttp's per-request machinery was most of the CPU of each; a request costs a
fraction of that here (the figures, aiohttp's and this module's: docs/performance.md, "HTTP/1.1 on httptools").
This module keeps what such a request needs and nothing else:

- :class:`Pool`: keep-alive connections to one origin (TLS, or through an HTTP CONNECT proxy), one request at a
  time on each, a total time limit per request, a size cap per answer, and streamed answers for watches. Its
  connections (the API server's) send TCP keepalive probes after ``KEEPALIVE_IDLE_S`` of silence, every
  ``KEEPALIVE_INTERVAL_S``, and give up after ``KEEPALIVE_PROBES`` unanswered: a peer that vanished without a
  reset (a node gone, a dropped NAT entry) is found dead in 25 s, not after the kernel's two-hour default;
- :func:`exchange`: one request on a connection of its own, its answer read to the end or to EOF (arklet sends no
  length and closes after the body);
- on both, an answer ends only where it says (its length, its last chunk) or, without a length, at a clean EOF:
  a connection *reset* is a cut, never an end, so such an answer cut by a reset is an error (``closed``), not a
  shorter whole answer; and informational answers (``1xx``, e.g. ``100 Continue``) are skipped: the answer is the
  final one that follows them;
- :class:`ServerConnection`: the server side of small request/answer endpoints with a synchronous handler (the
  heartbeat listener): every byte is hostile, so a request head and body are size-capped, a request must arrive
  whole within a time limit, an idle keep-alive connection is closed after it, and a connection that never sent
  a whole request is counted (``serving`` adds the cap on open connections and the metrics). Answers meet
  back-pressure: when the transport holds more than ``WRITE_HIGH_WATER`` unsent bytes (a client that pipelines
  requests and does not read the answers) the connection stops reading until it drains below
  ``WRITE_LOW_WATER``; the requests already read are still answered, but a connection that gets more than
  ``ServerLimits.max_queued_answers`` answers past the high-water mark, or stays blocked for the idle timeout,
  is aborted (closing it would wait for a client that does not read). So one connection holds at most about
  ``WRITE_HIGH_WATER + max_queued_answers`` answers of memory, whatever the client sends.

Everything else (probes, metrics, the kubelet API, MQTT) keeps aiohttp: those are not hot.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final, Protocol, cast

import httptools

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 64 * 1024  # a request or answer head larger than this is refused
WRITE_HIGH_WATER: Final = 64 * 1024  # a server connection stops reading while more than this waits to be sent
WRITE_LOW_WATER: Final = 16 * 1024  # ... and reads again once the client took the rest
_STREAM_HIGH_WATER: Final = 1 << 20  # a streamed answer stops reading while this much waits for its reader
KEEPALIVE_IDLE_S: Final = 10  # a pool connection silent this long is probed ...
KEEPALIVE_INTERVAL_S: Final = 5  # ... every this often ...
KEEPALIVE_PROBES: Final = 3  # ... and dropped after this many probes go unanswered
_PHRASES: Final = {s.value: s.phrase for s in HTTPStatus}


class HttpError(Exception):
    """No (whole) answer. ``kind`` says why: ``connect``, ``tls``, ``timeout``, ``closed``, ``malformed`` or
    ``too_large``. ``sent`` is False only when the request provably never left (no connection was made), which
    makes even a non-idempotent request safe to send again."""

    def __init__(self, kind: str, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.sent = sent


@dataclass(slots=True)
class Answer:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; a repeated header's values joined with ", "
    body: bytes


def _check_token(text: str, what: str) -> str:
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"{what} contains a line break or NUL")
    return text


def request_head(method: str, target: str, host: str, headers: Iterable[tuple[str, str]],
                 body_length: int | None) -> bytes:
    """The bytes of a request head. Header values come from vkprovider's own settings (tokens, user agent); one
    with a line break would split the request, so it is refused."""
    lines = [f"{method} {_check_token(target, 'the request target')} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {_check_token(value, name)}" for name, value in headers]
    if body_length is not None:
        lines.append(f"Content-Length: {body_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ------------------------------------------------------------------------------------------------ client


class _ClientConnection(asyncio.Protocol):
    """One connection; one request at a time. The parser's callbacks fill in the answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.keep_alive = False
        self._parser: httptools.HttpResponseParser | None = None
        self._done: asyncio.Future[None] | None = None
        self._head_done: asyncio.Future[None] | None = None
        self._error: HttpError | None = None
        self._status_reason = b""
        self._headers: dict[str, str] = {}
        self._head_size = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = 0
        self._framed = False  # the answer says where it ends (Content-Length or chunked)
        self._complete = False
        self._stream = False
        self._buffered = 0
        self._paused = False
        self._readable: asyncio.Future[None] | None = None

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses of asyncio's

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._complete:
            self.abort()  # bytes nobody asked for: this connection says no more
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError("malformed", "the server switched protocols", sent=True))
        except httptools.HttpParserError as exc:
            self._fail(HttpError("malformed", f"malformed answer: {exc}", sent=True))

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        if self._parser is not None and not self._complete and self._error is None:
            if self._head_done is not None and self._head_done.done() and not self._framed and exc is None:
                self._finish()  # an answer without a length ends at EOF (arklet's); a reset only cuts it
            else:
                why = f": {exc}" if exc else ""
                self._fail(HttpError("closed", f"connection closed before the answer was complete{why}",
                                     sent=True))
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        # a final answer after an informational one starts with a clean head
        self._status_reason = b""
        self._headers = {}
        self._head_size = 0
        self._framed = False

    def on_status(self, reason: bytes) -> None:
        if not self._complete:
            self._status_reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._complete or self._error is not None:
            return
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD_BYTES:
            self._fail(HttpError("too_large", f"answer head larger than {MAX_HEAD_BYTES} bytes", sent=True))
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key in ("content-length", "transfer-encoding"):
            self._framed = True
        have = self._headers.get(key)
        self._headers[key] = text if have is None else f"{have}, {text}"

    def _informational(self) -> bool:
        """A 1xx answer (``100 Continue``, ``102 Processing``): not the answer, which follows it."""
        parser = self._parser
        return parser is not None and 100 <= parser.get_status_code() < 200

    def on_headers_complete(self) -> None:
        if self._informational():
            return
        if self._head_done is not None and not self._head_done.done():
            self._head_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._error is not None or self._complete:
            return
        self._size += len(body)
        if self._size > self._limit:
            self._fail(HttpError("too_large", f"answer larger than {self._limit} bytes", sent=True))
            return
        self._parts.append(body)
        if self._stream:
            self._buffered += len(body)
            if self._readable is not None and not self._readable.done():
                self._readable.set_result(None)
            if self._buffered > _STREAM_HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._error is None and not self._complete and not self._informational():
            self._finish()

    # --- driving it

    def _finish(self) -> None:
        parser = self._parser
        self._complete = True
        self.keep_alive = bool(parser is not None and parser.should_keep_alive()) and not self.closed
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    def _fail(self, error: HttpError) -> None:
        if self._complete or self._error is not None:
            self.abort()  # the answer was whole before this: it stands, the connection does not
            return
        self._error = error
        self.keep_alive = False
        for waiter in (self._head_done, self._done, self._readable):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self.abort()

    def abort(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True

    def send(self, data: bytes, *, limit: int, stream: bool = False) -> None:
        """Start one request: reset the answer's state and write the bytes."""
        loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._done = loop.create_future()
        self._head_done = loop.create_future()
        self._readable = None
        self._error = None
        self._status_reason = b""
        self._headers = {}
        self._head_size = 0
        self._parts = []
        self._size = 0
        self._limit = limit
        self._framed = False
        self._complete = False
        self._stream = stream
        self._buffered = 0
        self.keep_alive = False
        assert self.transport is not None
        self.transport.write(data)

    def _answer(self, body: bytes) -> Answer:
        assert self._parser is not None
        return Answer(self._parser.get_status_code(), self._status_reason.decode("latin-1").strip(),
                      self._headers, body)

    async def answer(self) -> Answer:
        assert self._done is not None
        await self._done
        if self._error is not None:
            raise self._error
        return self._answer(b"".join(self._parts))

    async def head(self) -> Answer:
        """The answer's status and headers (its body is read with ``chunks``)."""
        assert self._head_done is not None
        await self._head_done
        if self._error is not None:
            raise self._error
        return self._answer(b"")

    async def chunks(self, silence_s: float | None = None) -> AsyncIterator[bytes]:
        """A streamed answer's body as it arrives; ends with the answer, raises when it breaks or when nothing
        came for ``silence_s``."""
        loop = asyncio.get_running_loop()
        while True:
            if self._parts:
                parts, self._parts, self._buffered = self._parts, [], 0
                if self._paused and self.transport is not None and not self.closed:
                    self._paused = False
                    self.transport.resume_reading()
                yield b"".join(parts)
                continue
            if self._error is not None:
                raise self._error
            if self._complete or self.closed:
                return
            self._readable = loop.create_future()
            try:
                async with asyncio.timeout(silence_s):
                    await self._readable
            except TimeoutError:
                self.abort()
                raise HttpError("timeout", f"nothing received for {silence_s:g}s", sent=True) from None

    def connect_answered(self) -> None:
        """The head of a CONNECT answer is in: the bytes after it are the tunnelled connection's."""
        self._parser = None


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy (kubeconfig ``proxy-url``): HTTPS origins are reached through CONNECT."""

    host: str
    port: int
    authorization: str | None = None  # a Proxy-Authorization value (from user:password in the URL)


class Pool:
    """Keep-alive HTTP/1.1 connections to one origin, at most ``limit`` open at once (more requests wait)."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, proxy: Proxy | None = None, limit: int = 256,
                 connect_timeout_s: float = 10.0, idle_s: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._tls = tls
        self._server_hostname = server_hostname or host
        self._proxy = proxy
        self._limit = max(1, limit)
        self._connect_timeout_s = connect_timeout_s
        self._idle_s = idle_s
        self._idle: list[_ClientConnection] = []
        self._open: set[_ClientConnection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    @property
    def absolute_targets(self) -> bool:
        """Requests to a plain-HTTP origin through a proxy name the whole URL (absolute form)."""
        return self._proxy is not None and self._tls is None

    def __len__(self) -> int:
        return len(self._open)

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._open):
            conn.abort()
        self._open.clear()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def request(self, data: bytes, *, timeout_s: float, limit: int = 64 << 20) -> Answer:
        """Send a whole request (head and body) and return the whole answer."""
        conn, answer = await self._send(data, timeout_s=timeout_s, limit=limit, stream=False)
        self._release(conn)
        return answer

    async def stream(self, data: bytes, *, head_timeout_s: float, limit: int = 1 << 62
                     ) -> tuple[Answer, Streamed]:
        """Send a request whose answer is read as it arrives (a watch). The connection belongs to the returned
        :class:`Streamed` until it is closed."""
        conn, head = await self._send(data, timeout_s=head_timeout_s, limit=limit, stream=True)
        return head, Streamed(self, conn)

    async def _send(self, data: bytes, *, timeout_s: float, limit: int, stream: bool
                    ) -> tuple[_ClientConnection, Answer]:
        """A connection with ``data`` sent on it, and the whole answer (or only its head, for a stream) within
        ``timeout_s``; a connection that failed is dropped."""
        conn: _ClientConnection | None = None
        try:
            async with asyncio.timeout(timeout_s):
                conn = await self._acquire()
                conn.send(data, limit=limit, stream=stream)
                return conn, await (conn.head() if stream else conn.answer())
        except TimeoutError:
            if conn is not None:
                self._drop(conn)
            raise HttpError("timeout", f"no answer within {timeout_s:g}s", sent=conn is not None) from None
        except BaseException:
            if conn is not None:
                self._drop(conn)
            raise

    # --- connections

    async def _acquire(self) -> _ClientConnection:
        while True:
            now = time.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if conn.closed or now - conn.idle_since > self._idle_s:
                    self._drop(conn)
                    continue
                return conn
            if self._closed:
                raise HttpError("closed", "the client is closed", sent=False)
            if len(self._open) < self._limit:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: pass the wake-up on
                raise
        conn = _ClientConnection()
        self._open.add(conn)
        try:
            await self._connect(conn)
        except BaseException:
            self._drop(conn)
            raise
        return conn

    def _release(self, conn: _ClientConnection) -> None:
        if not conn.keep_alive or conn.closed or self._closed:
            self._drop(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self._wake()

    def _drop(self, conn: _ClientConnection) -> None:
        conn.abort()
        if conn in self._open:
            self._open.discard(conn)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @staticmethod
    def _keepalive(conn: _ClientConnection) -> None:
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is None:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                              ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
            if hasattr(socket, option):  # Linux; elsewhere the system's keepalive timing applies
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)

    async def _connect(self, conn: _ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        where = f"{self.authority}" + (f" through proxy {self._proxy.host}:{self._proxy.port}" if self._proxy else "")
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._proxy is None:
                    await loop.create_connection(lambda: conn, self.host, self.port, ssl=self._tls,
                                                 server_hostname=self._server_hostname if self._tls else None)
                    self._keepalive(conn)
                    return
                await loop.create_connection(lambda: conn, self._proxy.host, self._proxy.port)
                self._keepalive(conn)
                if self._tls is None:
                    return  # plain HTTP through a proxy: absolute-form requests on this connection
                headers = [("Proxy-Authorization", self._proxy.authorization)] if self._proxy.authorization else []
                conn.send(request_head("CONNECT", self.authority, self.authority, headers, None), limit=0)
                head = await conn.head()
                if head.status // 100 != 2:
                    raise HttpError("connect", f"proxy refused CONNECT {self.authority}: {head.status} "
                                    f"{head.reason}", sent=False)
                conn.connect_answered()
                assert conn.transport is not None
                tls_transport = await loop.start_tls(conn.transport, conn, self._tls,
                                                     server_hostname=self._server_hostname)
                conn.transport = cast(asyncio.Transport, tls_transport)
        except HttpError as exc:
            raise HttpError(exc.kind if exc.kind != "closed" else "connect", f"{where}: {exc}", sent=False) from None
        except ssl.SSLError as exc:
            raise HttpError("tls", f"{where}: TLS: {exc}", sent=False) from None
        except TimeoutError:
            raise HttpError("connect", f"{where}: not connected within {self._connect_timeout_s:g}s",
                            sent=False) from None
        except OSError as exc:
            raise HttpError("connect", f"{where}: {exc.strerror or exc}", sent=False) from None


class Streamed:
    """A streamed answer's body (``chunks``); ``close`` frees its connection."""

    def __init__(self, pool: Pool, conn: _ClientConnection) -> None:
        self._pool = pool
        self._conn = conn
        self._done = False

    async def chunks(self, *, silence_s: float | None = None) -> AsyncIterator[bytes]:
        async for chunk in self._conn.chunks(silence_s):
            yield chunk
        self._done = True

    def close(self) -> None:
        """Give the connection back when the answer was read to its end; drop it otherwise."""
        if self._done and self._conn.keep_alive:
            self._pool._release(self._conn)
        else:
            self._pool._drop(self._conn)


async def exchange(host: str, port: int, data: bytes, *, timeout_s: float, limit: int,
                   connect_timeout_s: float | None = None) -> Answer:
    """One request on a connection of its own, closed afterwards (arklet's way)."""
    loop = asyncio.get_running_loop()
    conn = _ClientConnection()
    connected = False
    try:
        async with asyncio.timeout(timeout_s):
            try:
                if connect_timeout_s is None:
                    await loop.create_connection(lambda: conn, host, port)
                else:
                    async with asyncio.timeout(connect_timeout_s):
                        await loop.create_connection(lambda: conn, host, port)
            except OSError as exc:
                raise HttpError("connect", f"{exc.strerror or exc}", sent=False) from None
            connected = True
            conn.send(data, limit=limit)
            return await conn.answer()
    except TimeoutError:
        raise HttpError("timeout", f"no answer within {timeout_s:g}s", sent=connected) from None
    finally:
        conn.abort()


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
        self._parser = httptools.HttpRequestParser(self)
        self._refused = False
        self._closed = False
        self._head_seen = False  # a whole request head arrived at some point (else: an incomplete connection)
        self._in_request = False
        self._head_complete = False
        self._deadline = 0.0
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
        if self._closed:
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
        self._transport = None
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
        if self._rejected is not None or self._closed:
            return
        self._in_request = False
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        transport = self._transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        request = Request(
            method=self._parser.get_method().decode("latin-1"), path=path, query=query, headers=self._headers,
            repeated=frozenset(self._repeated), body=b"".join(self._body),
            remote=peer[0] if isinstance(peer, tuple) and peer else None,
            peercert=transport.get_extra_info("peercert") if transport is not None else None,
        )
        try:
            response = self._handler(request)
        except Exception:
            log.exception("handling %s %s failed", request.method, request.path)
            response = Response(500, b'{"error":"internal error"}', "application/json")
        self._reply(response, keep_alive=self._parser.should_keep_alive() and not response.close)

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
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._expired)
            return
        if self._blocked:
            self._abort()  # its answers untaken for a whole timeout: a close would wait for them forever
        elif self._in_request and self._head_complete:
            seconds = f"{self._limits.request_timeout_s:g}"
            self._refuse(Response(408, b'{"error":"body not received within ' + seconds.encode() + b's"}',
                                  "application/json"))
        else:
            self._close()  # a head that never came whole, or an idle keep-alive connection
