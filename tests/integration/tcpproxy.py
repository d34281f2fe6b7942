"""A TCP forwarder between vkprovider and the apiserver that can blackhole the connections it carries.

``blackhole()`` makes every connection open at that moment stop forwarding in both directions without closing:
no FIN, no RST, and the proxy's kernel still acknowledges what arrives - what a dead path through a NAT, a load
balancer or a proxy looks like from the client, where TCP keepalive sees nothing wrong. Connections made after
it forward normally, as a fresh path would.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.listen_port = 0
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._held: list[asyncio.StreamWriter] = []  # blackholed: kept open, never read or written again

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.listen_port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        pair = [writer, up_writer]
        tasks = [asyncio.create_task(self._pipe(reader, up_writer, pair)),
                 asyncio.create_task(self._pipe(up_reader, writer, pair))]
        self._pipes.update(tasks)
        for task in tasks:
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    pair: list[asyncio.StreamWriter]) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except asyncio.CancelledError:
            self._held.extend(pair)  # blackholed: the sockets stay open
            raise
        except ConnectionError:
            pass
        for writer in pair:
            writer.close()

    def blackhole(self) -> int:
        """Stop forwarding on every connection open now, without closing any; returns how many there were."""
        pipes = list(self._pipes)
        for task in pipes:
            task.cancel()
        return len(pipes) // 2

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        for writer in self._held:
            with contextlib.suppress(Exception):
                writer.transport.abort()
