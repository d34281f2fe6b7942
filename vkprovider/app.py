"""Wires vkprovider together: settings → kube facade, informers, tunnels, controllers, probe and metrics servers.

This is the only module that knows every layer; everything else is wired through constructor arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vkprovider import __version__
from vkprovider.config import Settings
from vkprovider.controllers.bases import BaseRegistry
from vkprovider.controllers.modules import ModuleController
from vkprovider.controllers.nodes import NodeController
from vkprovider.core import node as vnode
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata, BizInfo, BizSpec
from vkprovider.kube.client import Kube
from vkprovider.kube.events import EventRecorder
from vkprovider.kube.informer import Informer
from vkprovider.tunnels.base import Tunnel

log = logging.getLogger("vkprovider")


class BaseEventSink:
    """What tunnels report lands here: the registry is updated and the right controllers are queued."""

    def __init__(self, settings: Settings, registry: BaseRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.nodes: NodeController | None = None
        self.modules: ModuleController | None = None

    def on_heartbeat(self, heartbeat: BaseHeartbeat) -> None:
        view, changed, reread = self.registry.heartbeat(heartbeat)
        if changed and self.nodes is not None:
            self.nodes.queue.add(view.node)
        if reread and self.modules is not None:
            self.modules.queue.add(view.node)

    def on_health(self, identity: str, health: BaseHealth) -> None:
        node = vnode.node_name(identity, self.settings.env)
        if self.registry.health(node, health) and self.nodes is not None:
            self.nodes.queue.add(node)

    def on_bizs(self, identity: str, bizs: Sequence[BizInfo]) -> None:
        node = vnode.node_name(identity, self.settings.env)
        view = self.registry.get(node)
        if view is None:
            return
        if view.inflight:
            view.bizs_stale = True  # a pushed list may predate commands in flight; re-read when they end
        else:
            self.registry.bizs(node, bizs)
        if self.modules is not None:
            self.modules.queue.add(node)

    def baseline(self, metadata: BaseMetadata) -> list[BizSpec]:
        if self.modules is None:
            return []
        return self.modules.baseline(vnode.node_name(metadata.identity, self.settings.env))


def build_tunnels(settings: Settings) -> list[Tunnel]:
    tunnels: list[Tunnel] = []
    if settings.http_tunnel_enabled:
        from vkprovider.tunnels.http_tunnel import HttpTunnel

        tunnels.append(HttpTunnel(settings))
    if settings.mqtt_enabled:
        from vkprovider.tunnels.mqtt_tunnel import MqttTunnel

        tunnels.append(MqttTunnel(settings))
    if not tunnels:
        raise SystemExit("no tunnel enabled: set ENABLE_HTTP_TUNNEL=true and/or ENABLE_MQTT_TUNNEL=true")
    return tunnels


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
        self._runners: list[web.AppRunner] = []
        self.ready = False

    async def start(self) -> None:
        s = self.settings
        self.kube = kube = await Kube.connect(s.kubeconfig, max_inflight=s.kube_max_inflight)
        server = await kube.server_version()
        git_version = str(server.get("gitVersion", "v0.0.0")).split("+", 1)[0]
        node_cfg = vnode.NodeConfig(
            env=s.env,
            stack=s.node_stack,
            max_pods=s.node_max_pods,
            kubelet_version=f"{git_version}-vkprovider.{__version__}",
            kubelet_port=s.kubelet_proxy_port,
        )
        events = EventRecorder(kube, component="vkprovider", reporting_instance=s.client_id)
        self.events = events
        selector = f"{vnode.LABEL_COMPONENT}=vnode,{vnode.LABEL_ENV}={s.env}"
        nodes = Informer(kube, "/api/v1/nodes", label_selector=selector,
                         on_change=lambda key, old, new: self.node_controller.on_node_change(key, old, new))
        leases = Informer(
            kube,
            f"/apis/coordination.k8s.io/v1/namespaces/{vnode.LEASE_NAMESPACE}/leases",
            label_selector=f"{vnode.LABEL_COMPONENT}=vnode",
            on_change=lambda key, old, new: self.node_controller.queue.add(key.split("/", 1)[-1]),
        )
        pods = Informer(kube, "/api/v1/pods",
                        on_change=lambda key, old, new: self.module_controller.on_pod_change(key, old, new))
        self.informers = [nodes, leases, pods]
        tunnel_list = build_tunnels(s)
        self.tunnels = tunnel_list
        tunnels = {t.name: t for t in tunnel_list}
        self.node_controller = NodeController(
            s, kube, self.registry, nodes, leases, tunnels, events, node_cfg, clock=self.clock
        )
        self.module_controller = ModuleController(
            s,
            kube,
            self.registry,
            pods,
            tunnels,
            events,
            owns=self.node_controller.owns,
            reachable=self.node_controller.reachable,
            clock=self.clock,
        )
        self.node_controller.on_node_ready_change.append(self.module_controller.queue.add)
        self.sink.nodes = self.node_controller
        self.sink.modules = self.module_controller
        await self._start_probes()
        for informer in self.informers:
            self._tasks.append(asyncio.create_task(informer.run(), name=f"informer-{informer.resource}"))
        for informer in self.informers:
            await informer.synced.wait()
        # Only now, with every cache full, may controllers decide anything (restart adoption, not replay).
        await self.node_controller.start()
        await self.module_controller.start()
        for tunnel in tunnel_list:
            await tunnel.start(self.sink)
        self.ready = True
        log.info("vkprovider %s serving env=%s client_id=%s tunnels=%s", __version__, s.env, s.client_id,
                 ",".join(tunnels))

    async def stop(self) -> None:
        self.ready = False
        for tunnel in self.tunnels:
            with contextlib.suppress(Exception):
                await tunnel.stop()
        for controller in (getattr(self, "module_controller", None), getattr(self, "node_controller", None)):
            if controller is not None:
                await controller.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if getattr(self, "events", None) is not None:
            with contextlib.suppress(Exception):
                await self.events.close()
        for runner in self._runners:
            await runner.cleanup()
        if self.kube is not None:
            await self.kube.close()

    async def _start_probes(self) -> None:
        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            synced = all(i.synced.is_set() for i in self.informers)
            if self.ready and synced:
                return web.Response(text="ok")
            return web.Response(status=503, text="not ready: " + ("informers syncing" if not synced else "starting"))

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        probes = web.Application()
        probes.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
        metrics_app = web.Application()
        metrics_app.add_routes([web.get("/metrics", metrics)])
        for app, port in ((probes, self.settings.probe_port), (metrics_app, self.settings.metrics_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "0.0.0.0", port).start()
            self._runners.append(runner)


async def run(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT."""
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
