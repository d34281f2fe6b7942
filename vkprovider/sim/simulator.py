"""Many simulated Koupleless bases in one asyncio process, for tests and benchmarks without JVMs.

A ``SimBase`` is one "JVM": an identity, a ``SimArklet`` (its bizs) and a transport: over HTTP an arklet
HTTP server and a heartbeat sender, over MQTT (``--tunnel mqtt``) a ``MqttBaseTransport`` on the process's one
broker connection. ``Simulator`` owns them all plus the shared HTTP client session or MQTT connection, and offers
what tests need to play with bases: stop one (the JVM dies), start it again (a restart loses every biz, keeps
identity and port), add more, read the counters.

Addresses: by default every base is ``host`` (127.0.0.1) with its own arklet port, as before. With
``base_ips`` (``--base-ips 127.10.0.1``) base i is that address plus i (Linux routes all of 127.0.0.0/8 to lo, no
setup needed; a private or benchmarking range such as 198.18.0.0/15 works once its addresses are on an interface,
e.g. ``ip addr add 198.18.0.1/32 dev lo``, which Kubernetes needs where loopback is refused, as in EndpointSlices):
its arklet and its web server listen there, its heartbeats name it in ``localIP`` and come
from it (a session bound to it: vkprovider's HTTP tunnel calls a base only at the address its heartbeat came from),
so the pod IP of a module (= the base's IP) reaches that base alone, as on a real network. With ``web_port`` each
base also serves its ACTIVATED bizs' HTTP paths there (``sim.web``: ``/<biz>/version``, ``/<biz>/health``), like a
Spring Boot base on 8080, so module probes run against it for real; ``biz_health`` is the knob that makes a biz's
health path fail (the control API's ``POST /bases/{id}/bizs/{name}/health``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from vkprovider.core.credentials import base_token
from vkprovider.sim.arklet import ArkletBehaviour, SimArklet, Usage
from vkprovider.sim.http_transport import ArkletHttpServer, HeartbeatSender
from vkprovider.sim.mqtt_transport import MqttBaseTransport, MqttSimConnection
from vkprovider.sim.web import BizHealth, BizWebServer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything the simulator can be told (the CLI flags map one to one)."""

    bases: int = 1
    endpoint: str = "http://127.0.0.1:7777"
    heartbeat_interval_s: float = 12.0
    heartbeat_first_spread_s: float = 1.0
    host: str = "127.0.0.1"
    port_start: int | None = None  # None: ephemeral ports
    base_name: str = "base"
    base_version: str = "1.0.0"
    cluster_name: str = "default"
    identity_prefix: str = "sim"
    zones: tuple[str, ...] = ()
    stack: str | None = None
    max_pods: str | None = None  # the base.koupleless.io/max-pods label the bases send (their own pod capacity)
    token: str | None = None
    token_secret: str | None = None  # per-base tokens: base_token(secret, identity), as `vkprovider token` prints
    env: str = "default"
    tunnel: str = "http"  # "http" or "mqtt"
    mqtt_broker: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_ca_path: str | None = None
    mqtt_client_prefix: str = "koupleless"
    base_ips: str | None = None  # first address of the bases (127.x.y.z, 198.18.x.y): base i is it plus i; None: `host`
    # each base serves its bizs' HTTP on this port (with base_ips: every base on its own address; without:
    # base i on web_port + i; 0: an ephemeral port each); None: no web server
    web_port: int | None = None
    seed: int | None = None
    behaviour: ArkletBehaviour = field(default_factory=ArkletBehaviour)
    # (name, version) of the bizs each JVM starts with (static merge deployment): installed directly at each start,
    # before the first heartbeat, as SOFAArk starts the bizs in the base's image
    static_bizs: tuple[tuple[str, str], ...] = ()


class SimBase:
    """One simulated JVM running arklet."""

    def __init__(self, sim: Simulator, index: int, port: int) -> None:
        config = sim.config
        self.index = index
        self.identity = f"{config.identity_prefix}-{index:04d}"
        self.zone = config.zones[index % len(config.zones)] if config.zones else None
        self.address = base_address(config, index)
        self._sim = sim
        # Distinct figures for kubectl top node: 2 % to 23 % of the CPUs busy, 256 MiB to 704 MiB of heap used.
        usage = Usage(cpu=0.02 + 0.03 * (index % 8), heap_used_bytes=(256 + 64 * (index % 8)) * 1024 * 1024)
        self.arklet = SimArklet(config.behaviour, rng=random.Random(sim.rng.random()), usage=usage)
        self.heartbeats_sent = 0
        self.heartbeat_failures = 0
        self.biz_health: dict[str, BizHealth] = {}  # a test's knob: what /<biz>/health answers (kept over restarts)
        self.static_bizs = config.static_bizs  # what the next JVM start ships (``start`` may change it)
        self._fresh = True  # a new JVM: its static bizs are not installed yet
        self._heartbeat_body: bytes | None = None
        self._sender: HeartbeatSender | None = None
        self._own_session: aiohttp.ClientSession | None = None  # heartbeats from this base's own address
        self.server: ArkletHttpServer | None = None
        self.web: BizWebServer | None = None
        if config.web_port is not None:
            web_port = config.web_port if config.base_ips or config.web_port == 0 else config.web_port + index
            self.web = BizWebServer(lambda: self.arklet, lambda: self.biz_health, self.address, web_port)
        self.mqtt: MqttBaseTransport | None = None
        if sim.mqtt is not None:
            self.mqtt = MqttBaseTransport(
                sim.mqtt,
                self.identity,
                lambda: self.arklet,
                self.heartbeat_data,
                interval_s=config.heartbeat_interval_s,
                first_spread_s=config.heartbeat_first_spread_s,
                rng=random.Random(sim.rng.random()),
                on_result=self._on_heartbeat,
            )
        else:
            self.server = ArkletHttpServer(lambda: self.arklet, self.address, port)

    def token(self) -> str | None:
        """The bearer token this base sends: its own (from the secret) or the shared one."""
        config = self._sim.config
        if config.token_secret:
            return base_token(config.token_secret.encode(), self.identity)
        return config.token

    @property
    def port(self) -> int:
        """The arklet HTTP port; 0 over MQTT, as arklet's MQTT heartbeat says."""
        return self.server.port if self.server is not None else 0

    @property
    def web_port(self) -> int | None:
        """The port this base serves its bizs' HTTP on, None without a web server."""
        return self.web.port if self.web is not None else None

    @property
    def running(self) -> bool:
        if self.mqtt is not None:
            return self.mqtt.running
        return self.server is not None and self.server.listening

    def heartbeat_body(self) -> bytes:
        """Arklet's heartbeat as sent over HTTP: keys sorted."""
        if self._heartbeat_body is None:
            self._heartbeat_body = orjson.dumps(self.heartbeat_data(), option=orjson.OPT_SORT_KEYS)
        return self._heartbeat_body

    def heartbeat_data(self) -> dict[str, Any]:
        """Arklet's heartbeat (BaseStatus): state always "activated", plus the ``labels`` extension."""
        config = self._sim.config
        body: dict[str, Any] = {
            "baseMetadata": {
                "clusterName": config.cluster_name,
                "identity": self.identity,
                "name": config.base_name,
                "version": config.base_version,
            },
            "localHostName": self.identity,
            "localIP": self.address,
            "port": self.port,
            "state": self.arklet.state,
        }
        labels = {}
        if self.zone:
            labels["topology.kubernetes.io/zone"] = self.zone
        if config.stack:
            labels["base.koupleless.io/stack"] = config.stack
        if config.max_pods:
            labels["base.koupleless.io/max-pods"] = config.max_pods
        if labels:
            body["labels"] = labels
        return body

    def _on_heartbeat(self, ok: bool) -> None:
        if ok:
            self.heartbeats_sent += 1
        else:
            self.heartbeat_failures += 1

    async def start(self, static_bizs: tuple[tuple[str, str], ...] | None = None) -> None:
        """Start the JVM: its static bizs are installed (``static_bizs``, else as before), arklet listens, then
        heartbeats begin. Called after ``stop`` it is a restart; after a partition the same JVM reconnects."""
        if self.running:
            return
        if static_bizs is not None:
            self.static_bizs = static_bizs
        if self._fresh:
            self._fresh = False
            self.arklet.boot()
            for name, version in self.static_bizs:
                await self.arklet.install_direct(name, version, f"file:///tmp/{name}-{version}.jar")
        if self.web is not None and not self.web.listening:
            await self.web.start()
        if self.mqtt is not None:
            await self.mqtt.start()
            return
        assert self.server is not None
        await self.server.start()
        self._heartbeat_body = None
        if self._sim.session is not None:
            config = self._sim.config
            session = self._sim.session
            if config.base_ips:
                connector = aiohttp.TCPConnector(limit=4, local_addr=(self.address, 0))
                self._own_session = session = aiohttp.ClientSession(connector=connector)
            self._sender = HeartbeatSender(
                session,
                config.endpoint,
                self.heartbeat_body,
                interval_s=config.heartbeat_interval_s,
                first_spread_s=config.heartbeat_first_spread_s,
                token=self.token(),
                rng=random.Random(self._sim.rng.random()),
                on_result=self._on_heartbeat,
            )
            self._sender.start()

    async def set_state(self, state: str) -> None:
        """The base says it is shutting down (``deactivated``) or serving again (``activated``): its heartbeats
        and its health answer say so from now on, and it heartbeats at once, as a base shutting down does."""
        self.arklet.state = state
        self._heartbeat_body = None
        if self._sender is not None:
            await self._sender.beat_once()
        elif self.mqtt is not None and self.mqtt.running:
            await self.mqtt.beat_once()

    async def stop(self, *, partition: bool = False) -> None:
        """The JVM dies: heartbeats stop, the port closes, every biz is lost (a restart starts empty). With
        ``partition`` the network to it is cut instead: the same silence, but the JVM keeps its bizs, and ``start``
        reconnects it as it was."""
        if self._sender is not None:
            await self._sender.stop()
            self._sender = None
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None
        if self.server is not None:
            await self.server.stop()
        if self.web is not None:
            await self.web.stop()
        if self.mqtt is not None:
            await self.mqtt.stop()
        if partition:
            return
        stats = (self.arklet.install_calls, self.arklet.uninstall_calls, self.arklet.calls_by_biz,
                 self.arklet.batch_calls)
        # A new JVM: its CPU ticks count from its start again; it does the same work.
        self._fresh = True
        self.arklet = SimArklet(self._sim.config.behaviour, rng=random.Random(self._sim.rng.random()),
                                usage=self.arklet.usage)
        # Call counters describe what vkprovider did to this base; they survive the restart.
        (self.arklet.install_calls, self.arklet.uninstall_calls, self.arklet.calls_by_biz,
         self.arklet.batch_calls) = stats

    def describe(self) -> dict[str, Any]:
        config = self._sim.config
        return {
            "identity": self.identity,
            "name": config.base_name,
            "version": config.base_version,
            "clusterName": config.cluster_name,
            "port": self.port,
            "address": self.address,
            "webPort": self.web_port,
            "zone": self.zone,
            "running": self.running,
            "state": self.arklet.state,
            "healthCalls": self.arklet.health_calls,
            "bizs": [
                {"bizName": b.name, "bizVersion": b.version, "bizState": b.state, "args": list(b.args),
                 "envs": dict(b.envs)}
                for b in self.arklet.bizs.values()
            ],
            "installCalls": self.arklet.install_calls,
            "uninstallCalls": self.arklet.uninstall_calls,
            "batchInstallCalls": self.arklet.batch_calls,
            "usage": {"cpu": self.arklet.usage.cpu, "heapUsedBytes": self.arklet.usage.heap_used_bytes,
                      "metaspaceUsedBytes": self.arklet.metaspace_used()},
            "heartbeatsSent": self.heartbeats_sent,
            "heartbeatFailures": self.heartbeat_failures,
            **({"queryCalls": self.mqtt.query_calls, "heldBizLists": len(self.mqtt.held_biz_lists)}
               if self.mqtt is not None else {}),
        }


BASE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "198.18.0.0/15")
)  # loopback, private and benchmarking (RFC 2544) ranges: never someone else's address


def base_address(config: SimConfig, index: int) -> str:
    """Where base ``index`` listens and what its heartbeats name: ``base_ips`` plus ``index``, else ``host``."""
    if not config.base_ips:
        return config.host
    first = ipaddress.ip_address(config.base_ips)
    network = next((n for n in BASE_NETWORKS if first in n), None)
    if network is None:
        raise ValueError(f"--base-ips {config.base_ips}: not in a loopback, private or benchmarking network "
                         f"({', '.join(map(str, BASE_NETWORKS))})")
    address = first + index
    if address not in network:
        where = "the loopback network" if network.network_address.is_loopback else "the network"
        raise ValueError(f"--base-ips {config.base_ips}: base {index} would be {address}, outside {where} {network}")
    return str(address)


class Simulator:
    """N simulated bases. ``start`` returns once every arklet port listens (heartbeats run on their own)."""

    def __init__(self, config: SimConfig) -> None:
        if config.base_ips:
            base_address(config, 0)  # a clear error now, not a half-started simulator
        self.config = config
        self.rng = random.Random(config.seed)
        self.bases: dict[str, SimBase] = {}
        self.session: aiohttp.ClientSession | None = None
        self.mqtt: MqttSimConnection | None = None
        if config.tunnel == "mqtt":
            self.mqtt = MqttSimConnection(
                broker=config.mqtt_broker,
                port=config.mqtt_port,
                env=config.env,
                username=config.mqtt_username,
                password=config.mqtt_password,
                ca_path=config.mqtt_ca_path,
                client_prefix=config.mqtt_client_prefix,
            )
        elif config.tunnel != "http":
            raise ValueError(f"unknown sim tunnel {config.tunnel!r}")

    async def start(self, *, heartbeats: bool = True) -> None:
        if self.mqtt is not None:
            await self.mqtt.start()
        elif heartbeats:
            connector = aiohttp.TCPConnector(limit=64, limit_per_host=64)
            self.session = aiohttp.ClientSession(connector=connector)
        await self.add_bases(self.config.bases)

    async def stop(self) -> None:
        await asyncio.gather(*(base.stop() for base in self.bases.values()), return_exceptions=True)
        if self.mqtt is not None:
            await self.mqtt.stop()
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def add_bases(self, count: int) -> list[SimBase]:
        """Start ``count`` more bases (ports continue from ``port_start`` when it is set)."""
        first = len(self.bases)
        if self.config.base_ips and count > 0:
            base_address(self.config, first + count - 1)  # all of them fit in 127.0.0.0/8, or none is added
        new: list[SimBase] = []
        for index in range(first, first + count):
            port = 0 if self.config.port_start is None else self.config.port_start + index
            base = SimBase(self, index, port)
            self.bases[base.identity] = base
            new.append(base)
        # Start in slices so 1,000 binds do not all wait on one another.
        for offset in range(0, len(new), 100):
            await asyncio.gather(*(base.start() for base in new[offset : offset + 100]))
        return new

    def base(self, identity: str) -> SimBase:
        try:
            return self.bases[identity]
        except KeyError:
            raise KeyError(f"no simulated base {identity!r}") from None

    async def stop_base(self, identity: str, *, partition: bool = False) -> None:
        await self.base(identity).stop(partition=partition)

    async def start_base(self, identity: str) -> None:
        await self.base(identity).start()

    def reset_stats(self) -> None:
        for base in self.bases.values():
            base.arklet.reset_stats()
            base.heartbeats_sent = 0
            base.heartbeat_failures = 0

    def stats(self) -> dict[str, Any]:
        """Totals, plus install/uninstall calls per ``identity/name:version``."""
        installs: dict[str, int] = {}
        uninstalls: dict[str, int] = {}
        bizs_by_state: dict[str, int] = {}
        for base in self.bases.values():
            for key, (install_count, uninstall_count) in base.arklet.calls_by_biz.items():
                if install_count:
                    installs[f"{base.identity}/{key}"] = install_count
                if uninstall_count:
                    uninstalls[f"{base.identity}/{key}"] = uninstall_count
            for biz in base.arklet.bizs.values():
                bizs_by_state[biz.state] = bizs_by_state.get(biz.state, 0) + 1
        bases = self.bases.values()
        return {
            "bases": len(self.bases),
            "running": sum(1 for b in bases if b.running),
            "bizs": sum(bizs_by_state.values()),
            "bizsByState": bizs_by_state,
            "installCalls": sum(b.arklet.install_calls for b in bases),
            "uninstallCalls": sum(b.arklet.uninstall_calls for b in bases),
            "batchInstallCalls": sum(b.arklet.batch_calls for b in bases),
            "heartbeatsSent": sum(b.heartbeats_sent for b in bases),
            "heartbeatFailures": sum(b.heartbeat_failures for b in bases),
            "installsByBiz": installs,
            "uninstallsByBiz": uninstalls,
        }
