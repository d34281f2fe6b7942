"""A TCP proxy that tests put between vkprovider and the apiserver (or a broker) to break the network on purpose.

Bytes pass through unchanged (TLS stays end to end). ``refuse()`` closes every connection and refuses new ones
(a down apiserver: calls fail at once); ``blackhole()`` keeps connections open but forwards nothing, in either
direction, and accepts new connections that never answer (a silently dead network: calls hang until a timeout);
``heal()`` goes back to forwarding. ``kubeconfig_through`` writes a copy of a kubeconfig whose server is the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import yaml


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode = "forward"
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_all()
        self._flowing.set()

    def refuse(self) -> None:
        self.mode = "refuse"
        self._flowing.set()
        self._close_all()

    def blackhole(self) -> None:
        self.mode = "blackhole"
        self._flowing.clear()

    def heal(self) -> None:
        self.mode = "forward"
        self._flowing.set()

    def _close_all(self) -> None:
        for writer in list(self._open):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._open.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.transport.abort()
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()  # read while flowing, held back if the network broke meanwhile
                if self.mode == "refuse":
                    break
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.transport.abort()


def kubeconfig_through(kubeconfig: Path, proxy: TcpProxy, out: Path) -> Path:
    """A copy of ``kubeconfig`` whose clusters' server is the proxy (the certificate names 127.0.0.1 already)."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config.get("clusters") or []:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    out.write_text(yaml.safe_dump(config))
    return out


def upstream_of(kubeconfig: Path) -> tuple[str, int]:
    """(host, port) of the first cluster's server in ``kubeconfig``."""
    from urllib.parse import urlsplit

    config = yaml.safe_load(kubeconfig.read_text())
    parts = urlsplit(config["clusters"][0]["cluster"]["server"])
    return parts.hostname or "127.0.0.1", int(parts.port or 443)
