"""A round-robin HTTP load balancer in front of vkprovider replicas, as a Kubernetes Service would stand there.

Each request goes to the next live backend (per request, not per connection, so every base reaches every
replica); a backend that refuses the connection is skipped. Tests point the simulated bases at it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import aiohttp
from aiohttp import web


class RoundRobin:
    def __init__(self, backends: Callable[[], list[str]]) -> None:
        """``backends()`` returns the current backend base URLs (replicas come and go during a test)."""
        self._backends = backends
        self._counter = itertools.count()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0
        self.forwarded = 0
        self.failed = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        backends = self._backends()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        for _ in range(len(backends)):
            backend = backends[next(self._counter) % len(backends)]
            try:
                async with self._session.request(request.method, backend + request.path_qs, data=body,
                                                 headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    payload = await resp.read()
                    self.forwarded += 1
                    return web.Response(status=resp.status, body=payload,
                                        content_type=resp.content_type or "text/plain")
            except (aiohttp.ClientConnectionError, TimeoutError):
                continue
        self.failed += 1
        return web.Response(status=503, text="no replica answered")
