"""The client side of ``http1``: a keep-alive connection pool for the API server, and one-shot exchanges for
arklet (see the package docstring)."""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, cast

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
        self._status = 0
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
        # The parser and the transport refer back to this protocol: let go of both, so reference counting frees
        # a closed connection at once instead of the rarely run cycle collector (``cli.tune_gc``).
        self._parser = None
        self.transport = None

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
        assert self._parser is not None
        self._status = self._parser.get_status_code()
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
        self._status = 0
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
        return Answer(self._status, self._status_reason.decode("latin-1").strip(), self._headers, body)

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
        self._idle: collections.deque[_ClientConnection] = collections.deque()  # oldest release first
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

    async def request(self, data: bytes, *, timeout_s: float, limit: int = 64 << 20, fresh: bool = False) -> Answer:
        """Send a whole request (head and body) and return the whole answer. ``fresh``: on a new connection, not a
        pooled one (a request sent again after its connection died: the other pooled ones may be as dead)."""
        conn, answer = await self._send(data, timeout_s=timeout_s, limit=limit, stream=False, fresh=fresh)
        self._release(conn)
        return answer

    async def stream(self, data: bytes, *, head_timeout_s: float, limit: int = 1 << 62
                     ) -> tuple[Answer, Streamed]:
        """Send a request whose answer is read as it arrives (a watch). The connection belongs to the returned
        :class:`Streamed` until it is closed."""
        conn, head = await self._send(data, timeout_s=head_timeout_s, limit=limit, stream=True)
        return head, Streamed(self, conn)

    async def _send(self, data: bytes, *, timeout_s: float, limit: int, stream: bool, fresh: bool = False
                    ) -> tuple[_ClientConnection, Answer]:
        """A connection with ``data`` sent on it, and the whole answer (or only its head, for a stream) within
        ``timeout_s``; a connection that failed is dropped."""
        conn: _ClientConnection | None = None
        try:
            async with asyncio.timeout(timeout_s):
                conn = await self._acquire(fresh=fresh)
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

    async def _acquire(self, *, fresh: bool = False) -> _ClientConnection:
        while True:
            now = time.monotonic()
            self._prune(now)
            while self._idle and not fresh:
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
        self._prune(conn.idle_since)
        self._wake()

    def _prune(self, now: float) -> None:
        """Close the connections idle longer than ``idle_s``. The newest is reused first, so after a burst the
        connections it opened sit at the old end for good unless closed here: each idle TLS connection to the
        apiserver holds tens of KB (hundreds of them, after a 1,000-base start, were most of a replica's memory)."""
        while self._idle and now - self._idle[0].idle_since > self._idle_s:
            self._drop(self._idle.popleft())

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
