"""A TCP proxy that tests put between vkprovider and the apiserver (or a broker) to break the network on purpose.

Bytes pass through unchanged (TLS stays end to end).

- ``refuse()``: every connection is closed and new ones are refused (a down apiserver: calls fail at once);
- ``blackhole()``: nothing is forwarded, in either direction, on any connection, and new connections are
  accepted but never answered (a dead network: calls hang until their timeout), until ``heal()``;
- ``blackhole_open()``: only the connections open now stop forwarding, without closing (no FIN, no RST, the
  proxy's kernel still acknowledges what arrives: a dead path through a NAT or a load balancer, which TCP
  keepalive cannot see); connections made afterwards forward normally, as a fresh path would;
- ``lose_open(seconds)``: a stateful middlebox losing its flows: ``blackhole_open()`` for ``seconds``, then those
  connections are cut (their next bytes meet a reset).

``kubeconfig_through`` writes a copy of a kubeconfig whose server is the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import urlsplit

import yaml


class _Link:
    """One proxied connection: both sockets, and whether it forwards."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter, flowing: bool) -> None:
        self.writers = (client, upstream)
        self.flowing = asyncio.Event()
        if flowing:
            self.flowing.set()

    def abort(self) -> None:
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.transport.abort()


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode = "forward"
        self.connections = 0
        self.blackholed = 0  # connections frozen by ``blackhole_open``, over the proxy's life
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
            link.flowing.set()
        self._links.clear()

    def refuse(self) -> None:
        self.mode = "refuse"
        for link in list(self._links):
            link.abort()
            link.flowing.set()
        self._links.clear()

    def blackhole(self) -> None:
        self.mode = "blackhole"
        for link in self._links:
            link.flowing.clear()

    def blackhole_open(self) -> int:
        """Stop forwarding on every connection open now, without closing any; returns how many there were."""
        frozen = [link for link in self._links if link.flowing.is_set()]
        for link in frozen:
            link.flowing.clear()
        self.blackholed += len(frozen)
        return len(frozen)

    async def lose_open(self, seconds: float) -> None:
        """Freeze every connection open now for ``seconds``, then cut them."""
        frozen = [link for link in self._links if link.flowing.is_set()]
        self.blackhole_open()
        await asyncio.sleep(seconds)  # the outage being simulated lasts this long
        for link in frozen:
            self._links.discard(link)
            link.abort()
            link.flowing.set()

    def heal(self) -> None:
        self.mode = "forward"
        for link in self._links:
            link.flowing.set()

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
        link = _Link(writer, up_writer, flowing=self.mode == "forward")
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_writer, link), self._pump(up_reader, writer, link))
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while True:
                await link.flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await link.flowing.wait()  # read while flowing, held back if the network broke meanwhile
                if self.mode == "refuse":
                    break
                writer.write(data)
                await writer.drain()
        link.abort()


def kubeconfig_through(kubeconfig: Path, proxy: TcpProxy, out: Path) -> Path:
    """A copy of ``kubeconfig`` whose clusters' server is the proxy (the certificate names 127.0.0.1 already;
    another server host is kept as the TLS server name)."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config.get("clusters") or []:
        host = urlsplit(cluster["cluster"]["server"]).hostname
        cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
        if host not in (None, "127.0.0.1", "localhost"):
            cluster["cluster"]["tls-server-name"] = host
    out.write_text(yaml.safe_dump(config))
    return out


def upstream_of(kubeconfig: Path) -> tuple[str, int]:
    """(host, port) of the first cluster's server in ``kubeconfig``."""
    config = yaml.safe_load(kubeconfig.read_text())
    parts = urlsplit(config["clusters"][0]["cluster"]["server"])
    return parts.hostname or "127.0.0.1", int(parts.port or 443)
