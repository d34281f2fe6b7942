"""A TCP proxy between vkprovider and the apiserver that can blackhole the connections established through it.

``blackhole(seconds)`` is a stateful middlebox (a NAT, a load balancer, a conntrack table) losing its flows: every
connection open at that moment stops forwarding in both directions, without closing, for ``seconds``; connections
opened meanwhile are forwarded as usual. When it ends the old flows are gone for good: their next bytes meet a
reset (the connections are cut). TLS passes through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Flow:
    writers: list[asyncio.StreamWriter]
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    lost: bool = False


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = 0
        self._upstream = (host, port)
        self._server: asyncio.Server | None = None
        self._flows: set[_Flow] = set()
        self.accepted = 0
        self.blackholed = 0  # connections frozen by ``blackhole``, over the proxy's life

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for flow in list(self._flows):
            self._cut(flow)

    async def blackhole(self, seconds: float) -> None:
        """Freeze every flow open now for ``seconds``, then cut them."""
        frozen = [flow for flow in self._flows if flow.flowing.is_set()]
        self.blackholed += len(frozen)
        for flow in frozen:
            flow.flowing.clear()
        await asyncio.sleep(seconds)
        for flow in frozen:
            self._cut(flow)

    def _cut(self, flow: _Flow) -> None:
        flow.lost = True
        flow.flowing.set()  # wake the pumps: they find the flow lost and stop
        for writer in flow.writers:
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()
        self._flows.discard(flow)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        flow = _Flow([writer, up_writer])
        flow.flowing.set()
        self._flows.add(flow)
        try:
            await asyncio.gather(self._pump(reader, up_writer, flow), self._pump(up_reader, writer, flow))
        finally:
            self._cut(flow)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, flow: _Flow) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                await flow.flowing.wait()  # blackholed: hold what was read, forward nothing
                if flow.lost:
                    return
                dst.write(data)
                await dst.drain()
        if not flow.lost:
            with contextlib.suppress(ConnectionError, OSError):
                if dst.can_write_eof():
                    dst.write_eof()
                else:
                    dst.close()
