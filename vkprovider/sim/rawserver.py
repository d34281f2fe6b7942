"""A raw asyncio TCP server for the simulated base's listeners (its arklet, its web server).

Why it exists: both listeners must behave like a JVM's sockets - bound to the base's own address, every open
connection dropped when the base "dies" (``stop``), a malformed or slow request ending only its own connection - and
``asyncio.start_server`` with this bookkeeping is far cheaper than a web framework for thousands of bases. A
subclass answers one connection in ``_serve_one``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 16 * 1024


class RawServer:
    """Listens on ``host:port`` (0: an ephemeral port, known after ``start``); ``what`` names it in log lines."""

    what = "sim server"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        server = await asyncio.start_server(self._on_connection, self.host, self.port, reuse_address=True,
                                            backlog=128, limit=MAX_HEAD_BYTES)
        self.port = int(server.sockets[0].getsockname()[1])
        self._server = server

    async def stop(self) -> None:
        """Close the port and drop every open connection, like a JVM that dies."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_one(reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, TimeoutError, ValueError):
            pass
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception:
            log.exception("%s on %s:%d failed on a request", self.what, self.host, self.port)
        finally:
            self._connections.discard(task)
            writer.close()
