"""Wires vkprovider together: settings → kube facade, informers, lease keeper, tunnels, controllers, servers.

This is the only module that knows every layer; everything else is wired through constructor arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import platform
import signal
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from vkprovider import __version__, serving
from vkprovider.config import GO_ONLY_VARIABLES, ConfigError, Settings, module_settings, node_settings
from vkprovider.controllers.bases import BaseRegistry, Heard
from vkprovider.controllers.bizlog import BizLog
from vkprovider.controllers.fence import Hold, VnodeWrites
from vkprovider.controllers.modules import ModuleController
from vkprovider.controllers.nodes import NodeController
from vkprovider.controllers.ownership import (
    LEASE_WRITES_INFLIGHT,
    MEMBER_LABEL,
    LeaseKeeper,
    lease_client,
    lease_timing,
)
from vkprovider.controllers.releases import ReleaseController
from vkprovider.core import node as vnode
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata, BizInfo, BizSpec
from vkprovider.core.module import MODULE_LABEL_VALUE, MODULE_LABELS, is_module_pod, trim_pod
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kube.events import EventRecorder
from vkprovider.kube.informer import Informer, UnionCache
from vkprovider.tunnels.base import Refusal, Tunnel

log = logging.getLogger("vkprovider")

BUILD_INFO = Gauge("vkprovider_build_info", "Always 1: the vkprovider version and the Python it runs on.",
                   ["version", "python_version"])
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def default_architecture() -> str:
    """This machine's architecture as Go (and so Kubernetes) names it."""
    machine = platform.machine().lower()
    return _GOARCH.get(machine, machine or "amd64")


def default_address() -> str:
    """The first non-loopback IPv4 of this host (the pod IP in a cluster), else 127.0.0.1."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.254.254.254", 1))  # no packet is sent: this only picks the outgoing interface
        address = str(probe.getsockname()[0])
        if not address.startswith("127."):
            return address
    return "127.0.0.1"



TRIM_EVERY_S = 60.0


def return_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``); False where there is none.

    A rollout allocates and frees a status, a patch body and a JSON buffer per pod; the memory is free but glibc keeps
    it, so the RSS stays at the burst's high-water mark for good. Trimming once a minute costs milliseconds."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


async def _return_free_memory_forever() -> None:
    while True:
        await asyncio.sleep(TRIM_EVERY_S)
        if not return_free_memory():
            return

class TokenBucket:
    """``rate`` per second, up to ``burst`` at once (new base identities accepted)."""

    def __init__(self, rate: float, burst: int, clock: Any) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class BaseEventSink:
    """What tunnels report lands here: admitted (or refused), recorded in the registry, the controllers queued.

    Admission: a new identity is refused with 429 beyond VKP_MAX_VNODES bases or VKP_NEW_BASES_PER_SECOND (a
    flood never touches the bases already known); an identity heartbeating from a new address while its base is
    alive at another is refused with 409 unless a credential proved it (no impostor can move a live base).
    """

    def __init__(self, settings: Settings, registry: BaseRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.nodes: NodeController | None = None
        self.modules: ModuleController | None = None
        self._new_bases = TokenBucket(settings.new_bases_per_second, settings.new_bases_burst, registry.clock)

    def address_of(self, identity: str) -> str | None:
        view = self.registry.get(vnode.node_name(identity, self.settings.env))
        if view is None or view.last_heard is None:
            return None
        return view.heartbeat.ip

    def on_heartbeat(self, heartbeat: BaseHeartbeat, *, authenticated: bool = False) -> Refusal | None:
        node = vnode.node_name(heartbeat.identity, self.settings.env)
        before = self.registry.get(node)
        if before is None:
            if len(self.registry) >= self.settings.max_vnodes:
                return Refusal(429, f"this vkprovider serves VKP_MAX_VNODES={self.settings.max_vnodes} bases",
                               "capped")
            if not self._new_bases.take():
                return Refusal(429, "too many new bases at once (VKP_NEW_BASES_PER_SECOND); try again", "rate_limited")
        elif not authenticated and before.last_heard is not None and not before.deactivated:
            moved = (before.heartbeat.ip, before.heartbeat.port) != (heartbeat.ip, heartbeat.port)
            alive = before.silent_for(self.registry.clock()) <= self.settings.base_unreachable_after_s
            if moved and alive and before.heartbeat.tunnel == heartbeat.tunnel:
                return Refusal(409, f"identity {heartbeat.identity} is alive at {before.heartbeat.ip}:"
                               f"{before.heartbeat.port}; moving it needs a credential", "conflict")
        was = before.readiness(self.registry.clock(), self.settings.base_unreachable_after_s) if before else None
        read_before = before.ledger.read_needed() if before else False
        view, heard = self.registry.heartbeat(heartbeat)
        now = self.registry.clock()
        readiness = view.readiness(now, self.settings.base_unreachable_after_s)
        if (heard is not Heard.NOTHING or was != readiness) and self.nodes is not None:
            self.nodes.queue.add(view.node)
        if self.modules is not None and (was != readiness or (view.ledger.read_needed() and not read_before)):
            self.modules.on_base_changed(view.node)
        return None

    def on_health(self, identity: str, health: BaseHealth) -> None:
        node = vnode.node_name(identity, self.settings.env)
        if self.registry.health(node, health) and self.nodes is not None:
            self.nodes.queue.add(node)

    def on_bizs(self, identity: str, bizs: Sequence[BizInfo]) -> None:
        if self.modules is not None:
            self.modules.on_pushed_bizs(vnode.node_name(identity, self.settings.env), bizs)

    def baseline(self, metadata: BaseMetadata) -> list[BizSpec] | None:
        node = vnode.node_name(metadata.identity, self.settings.env)
        if self.modules is None or self.modules.writes.hold(node) is not Hold.HELD:
            return None
        view = self.registry.get(node)
        return self.modules.baseline(node, view.heartbeat.metadata.cluster_name if view is not None
                                     else metadata.cluster_name)


def build_tunnels(settings: Settings) -> list[Tunnel]:
    tunnels: list[Tunnel] = []
    if settings.http_tunnel_enabled:
        from vkprovider.tunnels.http_tunnel import HttpTunnel

        tunnels.append(HttpTunnel(settings))
    if settings.mqtt_enabled:
        from vkprovider.tunnels.mqtt_tunnel import MqttTunnel

        tunnels.append(MqttTunnel(settings))
    return tunnels


def check_kubeconfig(settings: Settings) -> None:
    """No kubeconfig outside a cluster, or one that cannot be read: one clear line, before anything starts."""
    if settings.kubeconfig:
        try:
            with open(settings.kubeconfig, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"invalid KUBECONFIG={settings.kubeconfig!r}: cannot read it ({exc.strerror})") from None
        return
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise ConfigError("no KUBECONFIG set and not running in a cluster (KUBERNETES_SERVICE_HOST is unset): "
                          "set KUBECONFIG to a kubeconfig file")


class _KubeletSource:
    """What the kubelet API reads, from the running provider (bound once the controllers exist)."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider

    def pod(self, key: str) -> Any:
        pods = getattr(self._provider, "pods", None)
        return pods.get(key) if pods is not None else None

    def serves(self, node: str) -> bool:
        keeper = self._provider.keeper
        return keeper is not None and keeper.may_write(node)

    def lines(self, node: str, name: str, version: str) -> list[Any]:
        return self._provider.bizlog.lines(node, name, version)

    def follow(self, node: str, name: str, version: str) -> Any:
        return self._provider.bizlog.follow(node, name, version)


class Provider:
    """A running vkprovider. ``start()`` returns once it serves; ``stop()`` undoes everything."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = time.monotonic
        self.registry = BaseRegistry(settings.env, clock=self.clock)
        self.sink = BaseEventSink(settings, self.registry)
        self.kube: Kube | None = None
        self.tunnels: list[Tunnel] = []
        self.informers: list[Informer] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._served: list[serving.Served] = []
        self.keeper: LeaseKeeper | None = None
        self.bizlog = BizLog(settings.biz_log_lines)
        self.kubelet: Any = None
        self._modules_for_kubelet = _KubeletSource(self)
        self.ready = False

    async def start(self) -> None:
        s = self.settings
        check_kubeconfig(s)
        for name in GO_ONLY_VARIABLES:
            if os.environ.get(name):
                log.info("%s is set but has no effect in vkprovider (a Go ModuleController setting)", name)
        if s.allow_unauthenticated_bases:
            log.warning("VKP_ALLOW_UNAUTHENTICATED_BASES=true: any client that reaches the heartbeat port may "
                        "register a base and receive its modules (see docs/security.md)")
        elif s.http_tunnel_enabled and not (s.heartbeat_secret or s.heartbeat_secret_file or s.heartbeat_token
                                            or s.http_client_ca):
            log.warning("no heartbeat credential is configured (VKP_HEARTBEAT_SECRET, VKP_HTTP_CLIENT_CA or "
                        "VKP_HEARTBEAT_TOKEN): every HTTP heartbeat is refused; unchanged bases need "
                        "VKP_ALLOW_UNAUTHENTICATED_BASES=true")
        if not s.kubelet_enabled and s.kubelet_address:
            log.info("VKP_KUBELET_ADDRESS is set but KUBELET_PROXY_ENABLED=false: the kubelet API is off")
        # Listeners first: a port in use ends the start before anything is written to the cluster.
        await self._start_probes()
        tunnel_list = build_tunnels(s)
        self.tunnels = tunnel_list
        tunnels = {t.name: t for t in tunnel_list}
        try:
            self.kube = kube = await Kube.connect(s.kubeconfig, max_inflight=s.kube_max_inflight,
                                                  instance=s.client_id)
        except Exception as exc:
            raise ConfigError(f"cannot use the kubeconfig ({s.kubeconfig or 'in-cluster'}): {exc}") from None
        try:
            server = await kube.server_version()
        except ApiError as exc:
            raise ConfigError(f"cannot reach the Kubernetes API server: {exc}") from None
        git_version = str(server.get("gitVersion", "v0.0.0")).split("+", 1)[0]
        kubelet_address = (s.kubelet_address or default_address()) if s.kubelet_enabled else None
        kubelet_port = s.kubelet_port
        if kubelet_address is not None:
            from vkprovider.kubelet.server import KubeletApi

            self.kubelet = KubeletApi(s, kube, self._modules_for_kubelet, kubelet_address)
            try:
                await self.kubelet.start()
            except serving.ListenError as exc:
                raise ConfigError(str(exc)) from None
            kubelet_port = self.kubelet.port
        node_cfg = vnode.NodeConfig(
            env=s.env,
            stack=s.node_stack,
            max_pods=s.node_max_pods,
            kubelet_version=f"{git_version}-vkprovider.{__version__}",
            kubelet_port=kubelet_port,
            env_taint=s.node_env_taint,
            architecture=s.node_architecture or default_architecture(),
            kubelet_address=kubelet_address,
        )
        self.events = events = EventRecorder(kube, component="vkprovider", reporting_instance=s.client_id)
        offset = timedelta(seconds=s.wall_clock_offset_s)

        def wall() -> datetime:
            return datetime.now(UTC) + offset

        # Leases get a lane of their own: a renewal never queues behind a rollout's status writes in this process.
        keeper = self.keeper = LeaseKeeper(s, lease_client(kube, lease_timing(s), LEASE_WRITES_INFLIGHT), events,
                                           clock=self.clock, wall=wall)
        def on_node(key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            self.node_controller.on_node_change(key, old, new)
            self.release_controller.on_node_change(key, old, new)

        nodes = Informer(kube, "/api/v1/nodes",
                         label_selector=f"{vnode.LABEL_COMPONENT}=vnode,{vnode.LABEL_ENV}={s.env}", on_change=on_node)
        leases = Informer(kube, f"/apis/coordination.k8s.io/v1/namespaces/{vnode.LEASE_NAMESPACE}/leases",
                          label_selector=vnode.LEASE_SELECTOR, on_change=keeper.on_lease_change,
                          resource="leases-vnode")
        members = Informer(kube, f"/apis/coordination.k8s.io/v1/namespaces/{s.namespace}/leases",
                           label_selector=f"{MEMBER_LABEL}={s.env}", on_change=keeper.on_member_change,
                           resource="leases-member")
        pods = UnionCache()

        def ours_or_unbound(pod: dict[str, Any]) -> bool:
            # A module pod bound elsewhere (a vnode of another ENV, a plain node) is another controller's: not cached.
            bound_to = str((pod.get("spec") or {}).get("nodeName") or "")
            return not bound_to or vnode.is_vnode_name(bound_to, s.env)

        for label in MODULE_LABELS:
            pods.add(Informer(kube, "/api/v1/pods", label_selector=f"{label}={MODULE_LABEL_VALUE}",
                              keep=ours_or_unbound, on_change=pods.notify, trim_object=trim_pod,
                              resource=f"pods-{label.split('.')[0]}"))
        # Non-module pods bound to a vnode stay Pending (no kubelet runs them): watching only bound Pending pods
        # finds them while caching next to nothing of the rest of the cluster. Module pods are left out by the
        # apiserver (the informers above have them): a rollout's pods would otherwise all come twice.
        not_modules = ",".join(f"{label}!={MODULE_LABEL_VALUE}" for label in MODULE_LABELS)
        pods.add(Informer(kube, "/api/v1/pods", field_selector="spec.nodeName!=,status.phase=Pending",
                          label_selector=not_modules,
                          keep=lambda pod: not is_module_pod(pod) and vnode.is_vnode_name(
                              str((pod.get("spec") or {}).get("nodeName") or ""), s.env),
                          on_change=pods.notify, trim_object=trim_pod, resource="pods-pending-bound"))
        self.pods = pods
        releases = self.release_controller = ReleaseController(s, kube, events, nodes=nodes, pods=pods,
                                                               members=keeper.live_members, clock=self.clock,
                                                               wall=wall)
        self.informers = [nodes, leases, members, *pods.informers, *releases.informers]
        self.writes = writes = VnodeWrites(keeper, kube, events, tunnels)
        self.node_controller = NodeController(node_settings(s), self.registry, nodes, keeper, writes, node_cfg,
                                              clock=self.clock, wall=wall)
        self.module_controller = ModuleController(module_settings(s), self.registry, writes, clock=self.clock,
                                                  bizlog=self.bizlog, revision_of=releases.revision_of,
                                                  ready_hold=releases.ready_hold)

        def on_pod(key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            self.module_controller.on_pod_change(key, old, new)
            releases.on_pod_change(key, old, new)

        pods.set_on_change(on_pod)
        releases.on_gate_changed.append(self.module_controller.on_base_changed)
        keeper.on_gained += [self.node_controller.on_gained, self.module_controller.on_gained]
        keeper.on_lost += [self.node_controller.on_lost, self.module_controller.on_lost]
        self.node_controller.on_base_changed.append(self.module_controller.on_base_changed)
        self.sink.nodes = self.node_controller
        self.sink.modules = self.module_controller
        for informer in self.informers:
            self._tasks.append(asyncio.create_task(informer.run(), name=f"informer-{informer.resource}"))
        for informer in self.informers:
            await informer.synced.wait()
        # Only now, with every cache full, may controllers decide anything (restart adoption, not replay).
        await self.node_controller.start()
        await self.module_controller.start()
        await releases.start()
        await keeper.tick()  # take back what this replica held before a restart, at once
        self._tasks.append(asyncio.create_task(keeper.run(), name="lease-keeper"))
        self._tasks.append(asyncio.create_task(_return_free_memory_forever(), name="malloc-trim"))
        for tunnel in tunnel_list:
            try:
                await tunnel.start(self.sink)
            except serving.ListenError as exc:
                raise ConfigError(str(exc)) from None
            except OSError as exc:
                raise ConfigError(f"cannot start the {tunnel.name} tunnel: {exc}") from None
        self.ready = True
        log.info("vkprovider %s serving env=%s client_id=%s tunnels=%s", __version__, s.env, s.client_id,
                 ",".join(tunnels))

    async def stop(self) -> None:
        self.ready = False
        if self.keeper is not None and self.kube is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.keeper.release_all(), 10.0)
        for tunnel in self.tunnels:
            with contextlib.suppress(Exception):
                await tunnel.stop()
        for controller in (getattr(self, "release_controller", None), getattr(self, "module_controller", None),
                           getattr(self, "node_controller", None)):
            if controller is not None:
                await controller.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if getattr(self, "events", None) is not None:
            with contextlib.suppress(Exception):
                await self.events.close()
        if self.kubelet is not None:
            with contextlib.suppress(Exception):
                await self.kubelet.stop()
        for served in self._served:
            await served.stop()
        if self.kube is not None:
            await self.kube.close()

    async def _start_probes(self) -> None:
        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            # A standby replica (holding no vnode) is ready: it serves heartbeats and takes over on failover.
            synced = bool(self.informers) and all(i.synced.is_set() for i in self.informers)
            if self.ready and synced:
                return web.Response(text="ok")
            return web.Response(status=503, text="not ready: " + ("informers syncing" if not synced else "starting"))

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def debug_vnode(request: web.Request) -> web.Response:
            controller = getattr(self, "module_controller", None)
            if controller is None:
                return web.Response(status=503, text="starting")
            return web.json_response(controller.describe(request.match_info["node"]))

        probes = serving.application()
        probes.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz),
                           web.get("/debug/vnodes/{node}", debug_vnode)])
        metrics_app = serving.application()
        metrics_app.add_routes([web.get("/metrics", metrics)])
        s = self.settings
        for app, name, host, port, variable in (
            (probes, "probes", s.probe_host, s.probe_port, "VKP_PROBE_PORT"),
            (metrics_app, "metrics", s.metrics_host, s.metrics_port, "VKP_METRICS_PORT"),
        ):
            try:
                self._served.append(await serving.serve(app, name=name, host=host, port=port, setting=variable,
                                                        max_connections=256,
                                                        header_timeout_s=s.http_header_timeout_s))
            except serving.ListenError as exc:
                raise ConfigError(str(exc)) from None


async def run(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; on SIGTERM held vnodes are handed to the other replicas first."""
    provider = Provider(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await provider.start()
        await stop.wait()
    finally:
        await provider.stop()
