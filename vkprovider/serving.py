"""Every listener vkprovider opens (heartbeats, probes, metrics, the kubelet API), guarded the same way.

A listener reachable by bases or by anything in the cluster must not be held open by idle or slow clients: 2,000
half-open requests or a slowloris used to keep 2,000 file descriptors and sockets forever. ``serve`` starts an
aiohttp application, and ``serve_small`` the lean ``http1`` server of the heartbeat listener, behind a guard that

- caps the connections open at once per listener (more are closed at once and counted),
- closes a connection whose request head has not arrived within ``header_timeout_s`` and an idle keep-alive one
  after the same time (aiohttp's keep-alive timer runs from the connection's start),
- counts every connection closed before a complete request (idle, slow or refused),
- (``serve_small``) stops reading a connection whose client does not take its answers, and drops it when it
  keeps sending (``http1.ServerConnection``: a pipelining client that never reads cannot grow the buffers),

and ``read_body`` bounds the time a request body may take. Client aborts are not errors: nothing is logged.
A port already in use is a configuration error naming the setting.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from prometheus_client import Counter, Gauge

from vkprovider import http1

log = logging.getLogger(__name__)

CONNECTIONS = Gauge("vkprovider_listener_connections", "Connections open, by listener.", ["listener"])
CLOSED = Counter(
    "vkprovider_listener_closed_total",
    "Connections closed by vkprovider before a complete request, by listener and why (refused: over the cap; "
    "incomplete: idle or too slow).",
    ["listener", "why"],
)
LISTENERS: Final = ("heartbeat", "probes", "metrics", "kubelet")
for _listener in LISTENERS:
    CONNECTIONS.labels(_listener)
    for _why in ("refused", "incomplete"):
        CLOSED.labels(_listener, _why)


class ListenError(Exception):
    """The listener could not bind; the message names the setting."""


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's protocol; refuses connections over the cap and counts unfinished ones."""

    __slots__ = ("_head_seen", "_inner", "_listener", "_refused")

    def __init__(self, inner: asyncio.Protocol, listener: Listener) -> None:
        self._inner = inner
        self._listener = listener
        self._head_seen = False
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._listener.admit():
            self._refused = True
            self._listener.refused()
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            else:
                transport.close()
            return
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._head_seen and b"\r\n\r\n" in data:
            self._head_seen = True
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._listener.closed(incomplete=not self._head_seen)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()


class Listener:
    """A listener's connection cap and counts (``http1.ConnectionGuard``)."""

    def __init__(self, name: str, max_connections: int) -> None:
        self.name = name
        self.max_connections = max_connections
        self.open = 0
        self._gauge = CONNECTIONS.labels(name)
        self._refused = CLOSED.labels(name, "refused")
        self._incomplete = CLOSED.labels(name, "incomplete")

    def admit(self) -> bool:
        """Count a new connection in, unless the listener is at its cap."""
        if self.open >= self.max_connections:
            return False
        self.open += 1
        self._gauge.set(self.open)
        return True

    def refused(self) -> None:
        self._refused.inc()

    def closed(self, *, incomplete: bool) -> None:
        self.open -= 1
        self._gauge.set(self.open)
        if incomplete:
            self._incomplete.inc()


class Served:
    """A running listener: its bound port, and how to stop it."""

    def __init__(self, server: asyncio.base_events.Server, listener: Listener,
                 runner: web.AppRunner | None = None) -> None:
        self._runner = runner
        self._server = server
        self.listener = listener
        self.port = int(server.sockets[0].getsockname()[1])
        self._closed = asyncio.Event()

    async def wait_closed(self) -> None:
        """Until the listener is closed (``stop``); its connections may still be finishing."""
        await self._closed.wait()

    async def stop(self) -> None:
        self._closed.set()
        self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()


async def _listen(factory: Callable[[], asyncio.Protocol], *, host: str, port: int, setting: str,
                  ssl_context: ssl.SSLContext | None) -> asyncio.base_events.Server:
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(factory, host, port, ssl=ssl_context, backlog=1024, reuse_address=True)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port} ({setting}): {exc.strerror or exc}") from None


async def serve(app: web.Application, *, name: str, host: str, port: int, setting: str,
                max_connections: int = 4096, header_timeout_s: float = 10.0,
                ssl_context: ssl.SSLContext | None = None) -> Served:
    """Serve ``app`` on host:port behind the guard. ``setting`` names the variable of the port (for errors)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=header_timeout_s)
    await runner.setup()
    listener = Listener(name, max_connections)
    factory = runner.server
    assert factory is not None
    try:
        server = await _listen(lambda: _Guarded(factory(), listener), host=host, port=port, setting=setting,
                               ssl_context=ssl_context)
    except ListenError:
        await runner.cleanup()
        raise
    return Served(server, listener, runner)


async def serve_small(handler: http1.Handler, *, on_refused: http1.Refused | None = None, name: str, host: str,
                      port: int, setting: str,
                      max_connections: int, max_body: int, header_timeout_s: float,
                      ssl_context: ssl.SSLContext | None = None) -> Served:
    """Serve small requests answered at once by a synchronous ``handler`` (``http1.ServerConnection``): a
    request must arrive whole within ``header_timeout_s`` of its first byte, and an idle keep-alive connection
    is closed after the same time."""
    listener = Listener(name, max_connections)
    limits = http1.ServerLimits(max_body=max_body, request_timeout_s=header_timeout_s,
                                idle_timeout_s=header_timeout_s)
    server = await _listen(lambda: http1.ServerConnection(handler, limits, listener, on_refused), host=host,
                           port=port, setting=setting, ssl_context=ssl_context)
    return Served(server, listener)


async def read_body(request: web.Request, timeout_s: float) -> bytes | web.Response:
    """The request body, or the answer to send instead: 413 when too large, 408 when it does not arrive in time
    (a declared length that never comes), 400 for a connection that broke."""
    try:
        async with asyncio.timeout(timeout_s):  # not wait_for: no task per request
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": "body too large"}, status=413)
    except TimeoutError:
        return web.json_response({"error": f"body not received within {timeout_s:g}s"}, status=408,
                                 headers={"Connection": "close"})
    except (ConnectionError, asyncio.IncompleteReadError):
        return web.json_response({"error": "connection broken"}, status=400)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def quiet_aborts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A client that goes away mid-request is not an error worth a traceback: answer nothing, log nothing."""
    try:
        return await handler(request)
    except ConnectionError:
        return web.Response(status=400)


def application(**kwargs: Any) -> web.Application:
    """An aiohttp application with the middlewares every listener uses."""
    return web.Application(middlewares=[quiet_aborts], **kwargs)
