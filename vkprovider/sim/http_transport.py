"""The simulated arklet's HTTP side: a raw asyncio server per base plus its heartbeat sender.

Real arklet answers through Netty in ways an ordinary web framework would "fix": HTTP 200 with no
Content-Type and no Content-Length, connection closed after the body, no answer at all to malformed JSON,
500 plain text for anything but POST. A raw ``asyncio.start_server`` reproduces this exactly and costs far
less than an aiohttp application per base, which matters with 1,000 bases in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import orjson

from vkprovider.sim.arklet import SimArklet
from vkprovider.sim.rawserver import RawServer

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1024 * 1024
READ_TIMEOUT_S: Final = 30.0
SILENT_HOLD_S: Final = 300.0  # how long a request that gets "no answer" keeps its connection


class ArkletHttpServer(RawServer):
    """Serves one base's arklet on 127.0.0.1:port the way Netty arklet does.

    ``arklet`` is read through a callable so a JVM restart (a new SimArklet) needs no new server object.
    """

    what = "sim arklet"

    def __init__(self, get_arklet: Callable[[], SimArklet], host: str, port: int) -> None:
        self._get_arklet = get_arklet
        super().__init__(host, port)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path = rest.partition(" ")[0]
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length < 0 or length > MAX_BODY_BYTES:
            return
        body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S) if length else b""
        if method != "POST":
            await self._answer(
                writer,
                b"method not supported: " + method.encode("latin-1", "replace")[:16],
                status=b"500 Internal Server Error",
            )
            return
        parsed: dict[str, Any] | None
        if body.strip():
            try:
                decoded = orjson.loads(body)
            except orjson.JSONDecodeError:
                decoded = None
            if not isinstance(decoded, dict):
                # Netty arklet drops malformed or non-object input without answering.
                await asyncio.wait_for(reader.read(), SILENT_HOLD_S)
                return
            parsed = decoded
        else:
            parsed = None
        command = path.split("?", 1)[0].strip("/")
        envelope = await self._get_arklet().handle(command, parsed)
        await self._answer(writer, orjson.dumps(envelope))

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, body: bytes, status: bytes = b"200 OK") -> None:
        # No Content-Type, no Content-Length: the client reads until the connection closes.
        writer.write(b"HTTP/1.1 " + status + b"\r\n\r\n" + body)
        await writer.drain()


class HeartbeatSender:
    """Posts one base's heartbeat to ``{endpoint}/heartbeat`` forever, tolerating the endpoint being down.

    The first beat comes after a random delay within ``first_spread_s`` (so a fresh simulator registers fast
    without a thundering herd); the second is placed at a random phase of the interval so 1,000 bases spread
    evenly over it in the steady state; later beats keep that phase with a little jitter.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        body: Callable[[], bytes],
        *,
        interval_s: float,
        first_spread_s: float,
        token: str | None,
        rng: random.Random,
        on_result: Callable[[bool], None],
    ) -> None:
        self._session = session
        self._url = endpoint.rstrip("/") + "/heartbeat"
        self._body = body
        self._interval_s = interval_s
        self._first_spread_s = first_spread_s
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._rng = rng
        self._on_result = on_result
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"sim-heartbeat {self._url}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def beat_once(self) -> bool:
        try:
            async with self._session.post(
                self._url, data=self._body(), headers=self._headers, timeout=aiohttp.ClientTimeout(total=5.0)
            ) as resp:
                await resp.read()
                ok = resp.status == 200
                if not ok:
                    log.debug("heartbeat to %s answered %d", self._url, resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("heartbeat to %s failed: %s", self._url, exc)
            ok = False
        self._on_result(ok)
        return ok

    async def _run(self) -> None:
        await asyncio.sleep(self._rng.uniform(0, self._first_spread_s))
        await self.beat_once()
        await asyncio.sleep(self._rng.uniform(0, self._interval_s))
        while True:
            await self.beat_once()
            await asyncio.sleep(self._interval_s * self._rng.uniform(0.98, 1.02))
