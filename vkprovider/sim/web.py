"""The simulated base's web server: it serves its bizs' HTTP paths, so module probes can succeed (or fail) for real.

A Spring Boot base serves every biz on its own port under the biz's web context path (the e2e base listens on
8080, biz1 answers ``GET /biz1/version``). A simulated base does the same on its own address and ``web_port``:

| request                                   | answer                                                      |
|-------------------------------------------|-------------------------------------------------------------|
| ``GET /<biz>/version``                    | 200, the ACTIVATED version of the biz (text)                |
| ``GET /<biz>`` or ``/<biz>/``             | 200, ``<biz>:<version>``                                    |
| ``GET /<biz>/health`` (``/actuator/health``) | 200 ``{"status":"UP"}``, or the base's knob for the biz  |
| any other path of an ACTIVATED biz        | 404                                                         |
| anything of a biz that is not ACTIVATED   | 404 (a biz's web context exists only while it runs)         |
| ``GET /actuator/health``                  | 200 ``{"status":"UP"}`` while the base is activated, or 503 |
| a method other than GET or HEAD           | 405                                                         |

The knob (``SimBase.biz_health``) sets the status of a biz's health path and a delay before it answers.
Every answer has a Content-Length and closes the connection. Like ``http_transport``, a raw asyncio server: one
per base, cheap with 1,000 bases in one process. The health knob (``SimBase.biz_health``) belongs to the base, not
to a biz: it survives a reinstall of the biz, so a liveness probe keeps failing until a test flips it back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from vkprovider.sim.arklet import SimArklet, SimBiz
from vkprovider.sim.rawserver import RawServer

log = logging.getLogger(__name__)

READ_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class BizHealth:
    """What ``/<biz>/health`` answers: this status, after this delay."""

    status: int = 200
    delay_s: float = 0.0


def active_biz(arklet: SimArklet, name: str) -> SimBiz | None:
    """The ACTIVATED version of ``name`` that owns its web context (the latest activated one)."""
    running = [b for b in arklet.bizs.values() if b.name == name and b.state == "activated"]
    if not running:
        return None
    return max(running, key=lambda b: b.records[-1].change_time_ms if b.records else 0)


class BizWebServer(RawServer):
    """Serves one base's bizs on ``host:port``; the arklet and the knobs are read through callables (a JVM restart
    makes a new SimArklet)."""

    what = "sim web server"

    def __init__(self, get_arklet: Callable[[], SimArklet], get_health: Callable[[], Mapping[str, BizHealth]],
                 host: str, port: int) -> None:
        self._get_arklet = get_arklet
        self._get_health = get_health
        super().__init__(host, port)
        self.requests = 0

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        method, _, rest = head.decode("latin-1").partition(" ")
        path = rest.partition(" ")[0].split("?", 1)[0]
        self.requests += 1
        status, body = await self.answer(method, path)
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
        content_type = b"application/json" if body.startswith(b"{") else b"text/plain;charset=UTF-8"
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                     % (status, reason.encode(), content_type, len(body)) + (b"" if method == "HEAD" else body))
        await writer.drain()

    async def answer(self, method: str, path: str) -> tuple[int, bytes]:
        """The status and body for one request (the table of the module docstring)."""
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed"
        arklet = self._get_arklet()
        parts = [p for p in path.split("/") if p]
        if parts == ["actuator", "health"]:
            up = arklet.state == "activated"
            return (200, b'{"status":"UP"}') if up else (503, b'{"status":"OUT_OF_SERVICE"}')
        if not parts:
            return 404, b"no biz at /"
        name, rest = parts[0], parts[1:]
        biz = active_biz(arklet, name)
        if biz is None:
            return 404, f"no ACTIVATED biz {name}".encode()
        if rest == ["version"]:
            return 200, biz.version.encode()
        if not rest:
            return 200, f"{biz.name}:{biz.version}".encode()
        if rest in (["health"], ["actuator", "health"]):
            health = self._get_health().get(name) or BizHealth()
            if health.delay_s > 0:
                await asyncio.sleep(health.delay_s)
            if 200 <= health.status < 400:
                return health.status, b'{"status":"UP"}'
            return health.status, b'{"status":"DOWN"}'
        return 404, f"no {path} in biz {name}".encode()
