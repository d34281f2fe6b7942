"""Wires vkprovider together: settings → kube facade, informers, lease keeper, tunnels, controllers, servers.

This is the only module that knows every layer, and wiring is all it does: it builds everything once, subscribes
the controllers to the informers and to each other, and hands every long-lived task to the supervisor
(``supervisor``: a root task that ends stops the process with exit code 1). Everything else is wired through
constructor arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import random
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from vkprovider import __version__, serving
from vkprovider.config import (
    GO_ONLY_VARIABLES,
    ConfigError,
    Settings,
    admission_settings,
    module_settings,
    node_settings,
)
from vkprovider.controllers.admission import Admission
from vkprovider.controllers.bases import BaseRegistry
from vkprovider.controllers.bizlog import BizLog
from vkprovider.controllers.drain import BasePodWatch, DrainController
from vkprovider.controllers.fence import VnodeWrites
from vkprovider.controllers.leases import lease_client, lease_timing
from vkprovider.controllers.membership import MEMBER_LABEL
from vkprovider.controllers.modules import ModuleController
from vkprovider.controllers.nodes import NodeController
from vkprovider.controllers.ownership import LEASE_WRITES_INFLIGHT, LeaseKeeper
from vkprovider.controllers.releases import ReleaseController
from vkprovider.controllers.shard import Shard
from vkprovider.core import node as vnode
from vkprovider.core import ownership as own
from vkprovider.core.backoff import API_CALL
from vkprovider.core.module import MODULE_LABEL_VALUE, MODULE_LABELS, is_module_pod, trim_pod
from vkprovider.core.node import BaseReadiness
from vkprovider.core.stats import Reading
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kube.events import EventRecorder
from vkprovider.kube.informer import Informer, UnionCache
from vkprovider.kube.refs import RefStore
from vkprovider.process import default_address, default_architecture, return_free_memory_forever
from vkprovider.supervisor import Supervisor
from vkprovider.tunnels.base import Tunnel

log = logging.getLogger("vkprovider")

BUILD_INFO = Gauge("vkprovider_build_info", "Always 1: the vkprovider version and the Python it runs on.",
                   ["version", "python_version"])
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

#: Nodes and module pods are listed in pages of this many: each page is parsed whole before it is trimmed (a
#: skeleton when another replica holds the vnode), and a Python process keeps the memory it once used (issue 31).
LIST_PAGE = 100


def build_tunnels(settings: Settings) -> list[Tunnel]:
    tunnels: list[Tunnel] = []
    if settings.http_tunnel_enabled:
        from vkprovider.tunnels.http_tunnel import HttpTunnel

        tunnels.append(HttpTunnel(settings))
    if settings.mqtt_enabled:
        from vkprovider.tunnels.mqtt import MqttTunnel

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

    def readings(self, node: str) -> tuple[Reading | None, Reading | None]:
        view = self._provider.registry.get(node)
        return (view.reading, view.earlier_reading) if view is not None else (None, None)

    def base_ready(self, node: str) -> bool:
        view = self._provider.registry.get(node)
        unreachable_after = self._provider.settings.base_unreachable_after_s
        return view is not None and view.readiness(self._provider.clock(), unreachable_after) is BaseReadiness.READY

    async def read_health(self, node: str, timeout_s: float) -> None:
        controller = getattr(self._provider, "node_controller", None)
        if controller is not None:
            await controller.health.read(node, timeout_s)


class Provider:
    """A running vkprovider. ``start()`` returns once it serves; ``wait()`` until a signal or a dead root task;
    ``stop()`` undoes everything."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = time.monotonic
        self.registry = BaseRegistry(settings.env, clock=self.clock)
        self.supervisor = Supervisor()
        self.kube: Kube | None = None
        self.tunnels: list[Tunnel] = []
        self.informers: list[Informer] = []
        self._served: list[serving.Served] = []
        self.keeper: LeaseKeeper | None = None
        self.bizlog = BizLog(settings.biz_log_lines)
        self.kubelet: Any = None
        self._modules_for_kubelet = _KubeletSource(self)
        self.ready = False

    async def start(self) -> None:
        s = self.settings
        check_kubeconfig(s)
        _log_setting_notes(s)
        # Listeners first: a port in use ends the start before anything is written to the cluster.
        await self._start_probes()
        self.tunnels = build_tunnels(s)
        tunnels = {t.name: t for t in self.tunnels}
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
            env=s.env, stack=s.node_stack, max_pods=s.node_max_pods, max_pods_by_base=s.max_pods_by_base,
            kubelet_version=f"{git_version}-vkprovider.{__version__}", kubelet_port=kubelet_port,
            env_taint=s.node_env_taint, architecture=s.node_architecture or default_architecture(),
            kubelet_address=kubelet_address,
        )
        self.events = events = EventRecorder(kube, component="vkprovider", reporting_instance=s.client_id)
        offset = timedelta(seconds=s.wall_clock_offset_s)

        def wall() -> datetime:
            return datetime.now(UTC) + offset

        # Leases get a lane of their own: a renewal never queues behind a rollout's status writes in this process.
        keeper = self.keeper = LeaseKeeper(s, lease_client(kube, lease_timing(s), LEASE_WRITES_INFLIGHT), events,
                                           clock=self.clock, wall=wall, reads=kube)
        # Nodes and module pods of vnodes another replica holds are kept as skeletons (controllers.shard).
        shard = self.shard = Shard(kube, keeper)
        nodes = Informer(kube, "/api/v1/nodes", trim_object=shard.trim_node, page_size=LIST_PAGE,
                         label_selector=f"{vnode.LABEL_COMPONENT}=vnode,{vnode.LABEL_ENV}={s.env}")
        # The vnode Leases a replica watches: those being handed over to it, and those with no holder label (the Go
        # controller's, an older vkprovider's), of its own ENV's vnodes; all of them it reads whole now and then
        # (``keeper.sweep``).
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{vnode.LEASE_NAMESPACE}/leases"
        leases = Informer(kube, lease_path, on_change=keeper.on_lease_change, resource="leases-vnode",
                          label_selector=f"{vnode.LEASE_SELECTOR},{vnode.LABEL_ENV}={s.env},"
                                         f"{own.HANDED_TO_LABEL}={keeper.label}",
                          keep=lease_of_env(s.env))
        unlabelled = Informer(kube, lease_path, on_change=keeper.on_unlabelled_change,
                              resource="leases-vnode-unlabelled",
                              label_selector=f"{vnode.LEASE_SELECTOR},!{own.HOLDER_LABEL}", keep=lease_of_env(s.env))
        members = Informer(kube, f"/apis/coordination.k8s.io/v1/namespaces/{s.namespace}/leases",
                           label_selector=f"{MEMBER_LABEL}={s.env}", on_change=keeper.on_member_change,
                           resource="leases-member")
        self.pods = pods = module_pods(kube, s.env, trim_module=shard.trim_pod)
        shard.bind(nodes, pods)
        keeper.gains.on_foreign.append(shard.on_foreign)
        keeper.gains.loader = shard.load
        releases = self.release_controller = ReleaseController(s, kube, events, nodes=nodes, pods=pods,
                                                               members=keeper.live_members, clock=self.clock,
                                                               wall=wall)
        self.informers = [nodes, leases, unlabelled, members, *pods.informers, *releases.informers]
        self.writes = writes = VnodeWrites(keeper, kube, events, tunnels)
        node_controller = self.node_controller = NodeController(node_settings(s), self.registry, nodes, keeper,
                                                                writes, node_cfg, clock=self.clock, wall=wall)
        self.refs = refs = RefStore(kube)
        module_controller = self.module_controller = ModuleController(
            module_settings(s), self.registry, writes, clock=self.clock, bizlog=self.bizlog,
            revision_of=releases.revision_of, ready_hold=releases.ready_hold, refs=refs,
            allocatable=lambda node: ((nodes.get(node) or {}).get("status") or {}).get("allocatable") or {},
            node_annotation=lambda node, key: (((nodes.get(node) or {}).get("metadata") or {}).get("annotations")
                                               or {}).get(key),
            ask_health=node_controller.health.ask)
        refs.on_change(module_controller.on_refs_changed)
        self.admission = Admission(admission_settings(s), self.registry, node_changed=node_controller.queue.add,
                                   modules=module_controller)
        drain = self.drain_controller = DrainController(
            self.registry, nodes, writes, pods_on=module_controller.pods_on, clock=self.clock,
            unreachable_after_s=s.base_unreachable_after_s, timeout_s=s.drain_timeout_s)
        if s.base_pod_selector:
            base_pods = Informer(kube, "/api/v1/pods", label_selector=s.base_pod_selector, resource="pods-bases",
                                 trim_object=trim_pod)
            base_pods.subscribe(BasePodWatch(self.registry, drain).on_pod_change)
            self.informers.append(base_pods)
        nodes.subscribe(keeper.on_node_change)
        nodes.subscribe(node_controller.on_node_change)
        nodes.subscribe(releases.on_node_change)
        nodes.subscribe(drain.on_node_change)
        pods.subscribe(module_controller.on_pod_change)
        pods.subscribe(releases.on_pod_change)
        pods.subscribe(drain.on_pod_change)
        releases.on_gate_changed.append(module_controller.on_base_changed)
        keeper.gains.on_gained += [node_controller.on_gained, module_controller.on_gained]
        keeper.gains.on_lost += [node_controller.on_lost, module_controller.on_lost, drain.on_lost]
        node_controller.on_base_changed += [module_controller.on_base_changed, drain.on_base_changed]

        spawn = self.supervisor.spawn
        spawn("event-recorder", events.run())
        if self.kubelet is not None:
            spawn("kubelet-client-ca", self.kubelet.run())
        # Leases first: the share (which vnodes another replica holds) decides how much of each Node and pod the
        # other informers keep as they list them.
        first = (leases, unlabelled, members)
        for informer in first:
            spawn(f"informer-{informer.resource}", informer.run())
        for informer in first:
            await _synced(informer, self.supervisor)
        await _swept(keeper)
        for informer in self.informers:
            if informer not in first:
                spawn(f"informer-{informer.resource}", informer.run())
        for informer in self.informers:
            await _synced(informer, self.supervisor)
        # Only now, with every cache full, may controllers decide anything (restart adoption, not replay).
        spawn("node-controller", node_controller.run())
        spawn("module-controller", module_controller.run())
        spawn("release-controller", releases.run())
        spawn("drain-controller", drain.run())
        spawn("config-refs", refs.run())
        await keeper.tick()  # take back what this replica held before a restart, at once
        spawn("lease-keeper", keeper.run())
        spawn("malloc-trim", return_free_memory_forever())
        for tunnel in self.tunnels:
            try:
                await tunnel.start(self.admission)
            except serving.ListenError as exc:
                raise ConfigError(str(exc)) from None
            except OSError as exc:
                raise ConfigError(f"cannot start the {tunnel.name} tunnel: {exc}") from None
            self.supervisor.keep(f"tunnel-{tunnel.name}", tunnel.run)  # a dead loop or listener starts again
        self.ready = True
        log.info("vkprovider %s serving env=%s client_id=%s tunnels=%s", __version__, s.env, s.client_id,
                 ",".join(tunnels))

    async def wait(self, stop: asyncio.Event) -> int:
        """Until ``stop`` is set (0) or a root task ended (1, see ``supervisor``)."""
        stopped = asyncio.create_task(stop.wait())
        ended = asyncio.create_task(self.supervisor.ended.wait())
        await asyncio.wait({stopped, ended}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, ended):
            task.cancel()
        return 1 if self.supervisor.failed is not None else 0

    async def stop(self) -> None:
        self.ready = False
        self.supervisor.stopping()  # the tunnels' run() and the Event recorder end below with what they run
        if self.keeper is not None and self.kube is not None and self.supervisor.failed is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.keeper.release_all(), 10.0)
        for tunnel in self.tunnels:
            with contextlib.suppress(Exception):
                await tunnel.stop()
        release_controller = getattr(self, "release_controller", None)
        if release_controller is not None:
            with contextlib.suppress(Exception):
                await release_controller.stop()
        if getattr(self, "events", None) is not None:
            with contextlib.suppress(Exception):
                await self.events.close()
        await self.supervisor.stop()
        if self.kubelet is not None:
            with contextlib.suppress(Exception):
                await self.kubelet.stop()
        for served in self._served:
            await served.stop()
        if self.kube is not None:
            await self.kube.close()

    async def _start_probes(self) -> None:
        async def healthz(_: web.Request) -> web.Response:
            failed = self.supervisor.failed
            if failed is not None:
                return web.Response(status=503, text=f"root task ended: {failed}")
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            # A standby replica (holding no vnode) is ready: it serves heartbeats and takes over on failover.
            synced = bool(self.informers) and all(i.synced.is_set() for i in self.informers)
            if self.ready and synced and self.supervisor.failed is None:
                return web.Response(text="ok")
            return web.Response(status=503, text="not ready: " + ("informers syncing" if not synced else "starting"))

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def debug_vnode(request: web.Request) -> web.Response:
            controller = getattr(self, "module_controller", None)
            if controller is None:
                return web.Response(status=503, text="starting")
            node = request.match_info["node"]
            shard = getattr(self, "shard", None)
            return web.json_response({**controller.describe(node),
                                      **({"cache": shard.describe(node)} if shard is not None else {})})

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


def lease_of_env(env: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a vnode Lease is of a vnode of ``env``: the only ones the informer keeps. The watch's selector names
    no ENV, and a replica kept every other ENV's Leases for nothing (the keeper reads only its own ENV's): with 900
    of them an idle replica was 66.1 MB, 64.6 MB without keeping them (issue 31, tests/integration/test_idle_replica.py;
    listing them in pages of 100 instead of 500 saved nothing measurable)."""

    def of_env(lease: dict[str, Any]) -> bool:
        return vnode.is_vnode_name(str((lease.get("metadata") or {}).get("name") or ""), env)

    return of_env


def module_pods(kube: Kube, env: str, *, trim_module: Callable[[dict[str, Any]], dict[str, Any]] = trim_pod
                ) -> UnionCache:
    """The module pods of this env's vnodes (and the unbound ones a scheduler may bind there), plus non-module pods
    bound to a vnode, as one cache. ``trim_module`` trims each module pod (``Shard.trim_pod``: a skeleton when
    another replica holds its vnode)."""
    pods = UnionCache()

    def ours_or_unbound(pod: dict[str, Any]) -> bool:
        # A module pod bound elsewhere (a vnode of another ENV, a plain node) is another controller's: not cached.
        bound_to = str((pod.get("spec") or {}).get("nodeName") or "")
        return not bound_to or vnode.is_vnode_name(bound_to, env)

    for label in MODULE_LABELS:
        pods.add(Informer(kube, "/api/v1/pods", label_selector=f"{label}={MODULE_LABEL_VALUE}",
                          keep=ours_or_unbound, on_change=pods.notify, trim_object=trim_module, page_size=LIST_PAGE,
                          resource=f"pods-{label.split('.')[0]}"))
    # Non-module pods bound to a vnode stay Pending (no kubelet runs them): watching only bound Pending pods finds
    # them while caching next to nothing of the rest of the cluster. Module pods are left out by the apiserver (the
    # informers above have them): a rollout's pods would otherwise all come twice.
    not_modules = ",".join(f"{label}!={MODULE_LABEL_VALUE}" for label in MODULE_LABELS)
    pods.add(Informer(kube, "/api/v1/pods", field_selector="spec.nodeName!=,status.phase=Pending",
                      label_selector=not_modules,
                      keep=lambda pod: not is_module_pod(pod) and vnode.is_vnode_name(
                          str((pod.get("spec") or {}).get("nodeName") or ""), env),
                      on_change=pods.notify, trim_object=trim_pod, resource="pods-pending-bound"))
    return pods


async def _synced(informer: Informer, supervisor: Supervisor) -> None:
    """Wait for an informer's first LIST, or for a root task to end (then the start is over: exit 1)."""
    synced = asyncio.create_task(informer.synced.wait())
    ended = asyncio.create_task(supervisor.ended.wait())
    await asyncio.wait({synced, ended}, return_when=asyncio.FIRST_COMPLETED)
    synced.cancel()
    ended.cancel()
    if supervisor.failed is not None:
        raise ConfigError(f"vkprovider could not start: root task {supervisor.failed}")


async def _swept(keeper: LeaseKeeper) -> None:
    """Read every vnode Lease once before the Node and pod informers list (they keep other replicas' vnodes as
    skeletons), trying again with the one backoff while the API does not answer."""
    failures = 0
    while True:
        try:
            await keeper.sweep()
            return
        except ApiError as exc:
            failures += 1
            log.warning("reading every vnode Lease at start failed (%s); trying again", exc)
            await asyncio.sleep(API_CALL.delay(failures, random.random))


def _log_setting_notes(s: Settings) -> None:
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


async def run(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (0) or until a root task dies (1); on SIGTERM held vnodes are handed to the other
    replicas first."""
    provider = Provider(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await provider.start()
        return await provider.wait(stop)
    finally:
        await provider.stop()
