"""Zero-loss release, measured (issue 29, item 6): a module Deployment behind a Service, on the real control plane.

The Deployment runs biz1 with a readinessProbe (httpGet /biz1/version on the base's web port) and a preStop sleep,
one instance per base (required anti-affinity, as the seeds), ``maxSurge: 1, maxUnavailable: 0``; a Service selects
its pods (port 8080 -> targetPort 8080) and the control plane's endpointslice controller keeps its EndpointSlices
from the module pods: their IPs are their bases' addresses (each simulated base on its own address,
serving its ACTIVATED bizs' HTTP paths, vkprovider/sim/web.py), their conditions the Ready vkprovider writes.
EndpointSlices refuse loopback addresses, so the bases take addresses of the benchmarking range 198.18.0.0/15, put on
``lo`` for the test (``ip addr add``, as root: the test fails loudly where it cannot) and taken away after.

While the Deployment is rolled to a new version, restarted (``kubectl rollout restart``) or scaled down, a checker
samples the Service's ready endpoints (``conditions.ready == true`` in its EndpointSlices) several times a second and
asks each for ``/biz1/version``: no ready endpoint may fail to answer 200. Meanwhile every pod that starts
terminating is followed on its base's address: it must go on answering its own version until its preStop has ended
(and stop within its grace period), while its endpoint shows the EndpointSlice terminating semantics (ready false,
serving true, terminating true). The figures (samples, ready endpoints asked, failures) go to the closing note.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tests.helpers import figure
from tests.integration.harness import SEED_TOLERATION, is_ready, wait_ready_vnodes, wait_until
from vkprovider.kube.client import Kube

WEB_PORT = 8080
APP = "web"
PRESTOP_S = 3
GRACE_S = 30
REPLICAS = 3
BASES = 4  # one spare base: a surge pod has somewhere to go while every old pod still serves
SAMPLE_INTERVAL_S = 0.1
FINALIZED = "the pod was finalized (after its uninstall)"
ASK_TIMEOUT_S = 5.0  # a loaded machine is slow, not lossy: only an answer other than 200 is a failure
DEPLOYMENTS = "/apis/apps/v1/namespaces/{ns}/deployments"


def deployment(env: str, version: str, replicas: int = REPLICAS) -> dict[str, Any]:
    """What a user writes for a release without loss: a readiness probe on the module's own path, a preStop sleep
    that outlasts the endpoints' propagation, surge one and take nothing away before its replacement is Ready."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": APP}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": APP, "module-controller.koupleless.io/component": "module"}},
                "spec": {
                    "terminationGracePeriodSeconds": GRACE_S,
                    "containers": [
                        {
                            "name": "biz1",
                            "image": f"https://repo.example.com/biz1-{version}-ark-biz.jar",
                            "env": [{"name": "BIZ_VERSION", "value": version}],
                            "ports": [{"name": "http", "containerPort": WEB_PORT}],
                            "readinessProbe": {
                                "httpGet": {"path": "/biz1/version", "port": WEB_PORT},
                                "periodSeconds": 1,
                                "failureThreshold": 1,
                            },
                            "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_S}}},
                        }
                    ],
                    "tolerations": [SEED_TOLERATION],
                    "nodeSelector": {"virtual-kubelet.koupleless.io/env": env},
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "labelSelector": {"matchLabels": {"app": APP}},
                                    "topologyKey": "kubernetes.io/hostname",
                                }
                            ]
                        }
                    },
                },
            },
        },
    }


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": APP},
        "spec": {"selector": {"app": APP}, "ports": [{"name": "http", "port": WEB_PORT, "targetPort": WEB_PORT}]},
    }


def version_of(pod: dict[str, Any]) -> str:
    return str(pod["spec"]["containers"][0]["env"][0]["value"])


async def endpoints(admin: Kube, namespace: str) -> list[dict[str, Any]]:
    """Every endpoint of the Service's EndpointSlices (IPv4 slices only: the bases' addresses)."""
    got = await admin.get(
        f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
        params={"labelSelector": f"kubernetes.io/service-name={APP}"},
    )
    return [ep for s in got["items"] if s.get("addressType") == "IPv4" for ep in s.get("endpoints") or []]


def conditions(ep: dict[str, Any]) -> tuple[bool, bool, bool]:
    c = ep.get("conditions") or {}
    return bool(c.get("ready")), bool(c.get("serving")), bool(c.get("terminating"))


async def ask(http: aiohttp.ClientSession, address: str) -> tuple[int, str]:
    """GET address:8080/biz1/version: (status, body); status 0 when nothing answered."""
    try:
        async with http.get(f"http://{address}:{WEB_PORT}/biz1/version") as resp:
            return resp.status, (await resp.text()).strip()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, repr(exc)


@dataclass
class Follow:
    """A pod seen terminating: what its base's address answered from then on."""

    uid: str
    name: str
    address: str
    version: str
    seen_at: float
    served_until: float | None = None  # the last time it answered its own version
    stopped_at: float | None = None  # the first time it did not
    stop_answer: tuple[int, str] | None = None


@dataclass
class Checker:
    """Samples the Service's ready endpoints several times a second and asks each for /biz1/version; follows every
    terminating pod on its base's address (see the module docstring)."""

    admin: Kube
    namespace: str
    http: aiohttp.ClientSession
    samples: int = 0
    asked: int = 0
    failures: list[tuple[float, str, int, str]] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # answered version -> count
    terminating_seen: dict[str, set[tuple[bool, bool, bool]]] = field(default_factory=dict)  # pod -> conditions
    follows: dict[str, Follow] = field(default_factory=dict)  # pod uid -> follow
    present: set[str] = field(default_factory=set)  # uids of the pods the last list showed
    started: float = field(default_factory=time.monotonic)
    stopped: float = 0.0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self.started = time.monotonic()
        self._tasks = [asyncio.create_task(self._sample()), asyncio.create_task(self._watch_pods())]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self.stopped = time.monotonic()

    async def _sample(self) -> None:
        while not self._stop.is_set():
            eps = await endpoints(self.admin, self.namespace)
            ready = sorted({ep["addresses"][0] for ep in eps if conditions(ep)[0]})
            for ep in eps:
                if conditions(ep)[2]:
                    pod = str((ep.get("targetRef") or {}).get("name"))
                    self.terminating_seen.setdefault(pod, set()).add(conditions(ep))
            answers = await asyncio.gather(*(ask(self.http, address) for address in ready))
            now = time.monotonic() - self.started
            self.samples += 1
            self.asked += len(ready)
            for address, (status, body) in zip(ready, answers, strict=True):
                if status == 200:
                    self.versions[body] = self.versions.get(body, 0) + 1
                else:
                    self.failures.append((round(now, 2), address, status, body[:200]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SAMPLE_INTERVAL_S)

    async def _watch_pods(self) -> None:
        followers: list[asyncio.Task[None]] = []
        while not self._stop.is_set():
            got = await self.admin.get(
                f"/api/v1/namespaces/{self.namespace}/pods", params={"labelSelector": f"app={APP}"}
            )
            self.present = {pod["metadata"]["uid"] for pod in got["items"]}
            for pod in got["items"]:
                uid = pod["metadata"]["uid"]
                ip = (pod.get("status") or {}).get("podIP")
                if pod["metadata"].get("deletionTimestamp") and ip and uid not in self.follows:
                    follow = Follow(uid, pod["metadata"]["name"], ip, version_of(pod), time.monotonic())
                    self.follows[uid] = follow
                    followers.append(asyncio.create_task(self._follow(follow)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SAMPLE_INTERVAL_S)
        await asyncio.gather(*followers)

    async def _follow(self, follow: Follow) -> None:
        """Until the address stops answering the pod's own version (its biz uninstalled) or the grace period ends.

        A pod of the same version may come to the same base (a rollout restart) once the old pod is gone: the old
        pod holds the base (required anti-affinity) until vkprovider finalizes it, which it does only after the
        biz's uninstall, so an answer after that is the new pod's, and the finalization is the stop."""
        while time.monotonic() - follow.seen_at < GRACE_S + 10:
            answer = await ask(self.http, follow.address)
            if answer == (200, follow.version) and follow.uid not in self.present:
                follow.stopped_at, follow.stop_answer = time.monotonic(), (0, FINALIZED)
                return
            if answer == (200, follow.version):
                follow.served_until = time.monotonic()
            else:
                follow.stopped_at, follow.stop_answer = time.monotonic(), answer
                return
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def report(self, case: str) -> dict[str, Any]:
        took = self.stopped - self.started
        served = [round(f.served_until - f.seen_at, 1) if f.served_until else 0.0 for f in self.follows.values()]
        figures = {
            "samples": self.samples,
            "per_s": round(self.samples / took, 1),
            "ready_endpoints_asked": self.asked,
            "failures": len(self.failures),
            "versions": dict(sorted(self.versions.items())),
            "terminated_pods": len(self.follows),
            "old_served_after_delete_s": f"{min(served, default=0)}..{max(served, default=0)}",
            "took_s": round(took, 1),
        }
        figure(f"zero_loss[{case}]", ", ".join(f"{k} = {v}" for k, v in figures.items()))
        return figures

    def check(self, terminated: int) -> None:
        """The zero-loss rules, once the release is over."""
        took = self.stopped - self.started
        assert not self.failures, f"ready endpoints that did not answer 200: {self.failures[:20]}"
        assert self.samples >= 2 * took, f"{self.samples} samples in {took:.1f}s: not several a second"
        assert len(self.follows) == terminated, [f.name for f in self.follows.values()]
        for follow in self.follows.values():
            assert follow.served_until is not None, f"{follow.name} did not serve once it was terminating"
            # it served its own version through its preStop (less the poll's lag in seeing it terminate)
            assert follow.served_until - follow.seen_at >= PRESTOP_S - 0.5, follow
            # and then its biz went, within the grace period
            assert follow.stopped_at is not None and follow.stopped_at - follow.seen_at < GRACE_S, follow
            # gone: not found, the pod finalized (its uninstall done), or already the new version's pod on that base
            # (it can land there only once the old pod is gone: required anti-affinity) between two polls
            stop = follow.stop_answer
            assert stop is not None and (
                stop[0] == 404 or stop == (0, FINALIZED) or (stop[0] == 200 and stop[1] != follow.version)
            ), follow
            # while terminating its endpoint was not ready but still serving (EndpointSlice semantics)
            assert self.terminating_seen.get(follow.name) == {(False, True, True)}, (follow.name, self.terminating_seen)


# ---------------------------------------------------------------------------------------------------- the rig


@dataclass
class Rig:
    admin: Kube
    namespace: str
    env: str
    sim: Any
    addresses: dict[str, str]  # vnode name -> its base's address


@contextlib.contextmanager
def addresses_on_lo(first: str, count: int) -> Any:
    """``count`` addresses from ``first`` put on ``lo`` (/32 each) for the test and taken away after."""
    ip = shutil.which("ip")
    if ip is None:
        pytest.fail("the zero-loss test needs iproute2's `ip` to give the simulated bases non-loopback addresses")
    added: list[str] = []
    try:
        for i in range(count):
            address = f"{ipaddress.ip_address(first) + i}/32"
            done = subprocess.run(
                [ip, "addr", "replace", address, "dev", "lo"], check=False, capture_output=True, text=True
            )
            if done.returncode != 0:
                pytest.fail(f"`ip addr replace {address} dev lo` failed (root needed): {done.stderr.strip()}")
            added.append(address)
        yield
    finally:
        for address in added:
            subprocess.run([ip, "addr", "del", address, "dev", "lo"], capture_output=True, check=False)


async def start(admin: Kube, namespace: str, env: str, provider_factory: Any, sim_factory: Any, first_ip: str) -> Rig:
    provider = await provider_factory()
    sim = await sim_factory(
        provider.endpoint,
        "--bases",
        str(BASES),
        "--heartbeat-interval",
        "2",
        "--identity-prefix",
        env,
        "--base-ips",
        first_ip,
        "--web-port",
        str(WEB_PORT),
    )
    await wait_ready_vnodes(admin, env, BASES)
    addresses = {f"vnode.{b['identity']}.{env}": str(b["address"]) for b in await sim.bases()}
    await admin.create(f"/api/v1/namespaces/{namespace}/services", service())
    return Rig(admin, namespace, env, sim, addresses)


async def live_pods(rig: Rig) -> list[dict[str, Any]]:
    got = await rig.admin.get(f"/api/v1/namespaces/{rig.namespace}/pods", params={"labelSelector": f"app={APP}"})
    return list(got["items"])


async def settled(rig: Rig, count: int, version: str, old_uids: Collection[str] = ()) -> list[dict[str, Any]]:
    """``count`` Ready pods of ``version`` (none of ``old_uids``), nothing else, and the Service's EndpointSlices
    showing exactly them: ready, serving, not terminating, at their vnodes' addresses."""
    seen: dict[str, Any] = {}

    async def check() -> list[dict[str, Any]] | None:
        pods = await live_pods(rig)
        eps = await endpoints(rig.admin, rig.namespace)
        seen["pods"] = [
            (
                p["metadata"]["name"],
                p["spec"].get("nodeName"),
                version_of(p),
                is_ready(p),
                (p.get("status") or {}).get("podIP"),
                bool(p["metadata"].get("deletionTimestamp")),
            )
            for p in pods
        ]
        seen["endpoints"] = eps
        if len(pods) != count or not all(
            is_ready(p) and version_of(p) == version and p["metadata"]["uid"] not in old_uids for p in pods
        ):
            return None
        if not all(p["status"].get("podIP") == rig.addresses[p["spec"]["nodeName"]] for p in pods):
            return None
        want = {(rig.addresses[p["spec"]["nodeName"]], p["spec"]["nodeName"], p["metadata"]["name"]) for p in pods}
        got = {(ep["addresses"][0], ep.get("nodeName"), (ep.get("targetRef") or {}).get("name")) for ep in eps}
        if got != want or not all(conditions(ep) == (True, True, False) for ep in eps):
            return None
        return pods

    try:
        return list(await wait_until(check, 120, what=f"{count} Ready pods of biz1 {version} and their endpoints"))
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\npods (name, node, version, ready, ip, terminating): {seen.get('pods')}\n"
            f"endpoints: {seen.get('endpoints')}"
        ) from None


async def released(
    rig: Rig,
    action: Callable[[], Awaitable[None]],
    count: int,
    version: str,
    terminated: int,
    case: str,
    *,
    replaced: bool = True,
) -> None:
    """Run ``action`` (the release) under the checker; wait until it has settled; check and report."""
    before = {p["metadata"]["uid"] for p in await live_pods(rig)}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT_S)) as http:
        checker = Checker(rig.admin, rig.namespace, http)
        checker.start()
        try:
            await asyncio.sleep(1.0)  # a few samples before anything moves
            await action()
            await settled(rig, count, version, before if replaced else ())

            async def followed() -> bool:  # every terminated pod's biz has gone
                return len(checker.follows) >= terminated and all(
                    f.stopped_at is not None for f in checker.follows.values()
                )

            await wait_until(followed, GRACE_S + 20, what=f"{terminated} terminated pods stopped serving")
        finally:
            await checker.stop()
    checker.report(case)
    checker.check(terminated)


# ---------------------------------------------------------------------------------------------------- the tests


async def test_a_rolling_update_loses_no_request(admin, env_name, namespace, provider_factory, sim_factory):
    """(a) biz1 1.0.0 -> 2.0.0 on 3 of 4 bases: pods of both versions serve at once, each old one until its
    preStop has ended; no ready endpoint ever fails."""
    with addresses_on_lo("198.18.31.1", BASES):
        rig = await start(admin, namespace, env_name, provider_factory, sim_factory, "198.18.31.1")
        await admin.create(DEPLOYMENTS.format(ns=namespace), deployment(env_name, "1.0.0"))
        await settled(rig, REPLICAS, "1.0.0")

        async def roll() -> None:
            containers = deployment(env_name, "2.0.0")["spec"]["template"]["spec"]["containers"]
            await admin.patch(
                f"{DEPLOYMENTS.format(ns=namespace)}/{APP}",
                {"spec": {"template": {"spec": {"containers": containers}}}},
            )

        await released(rig, roll, REPLICAS, "2.0.0", REPLICAS, "rolling-update")


async def test_a_rollout_restart_loses_no_request(
    admin, env_name, namespace, provider_factory, sim_factory, kube_cluster
):
    """(b) ``kubectl rollout restart``: every pod replaced by one of the same version on another base."""
    with addresses_on_lo("198.18.32.1", BASES):
        rig = await start(admin, namespace, env_name, provider_factory, sim_factory, "198.18.32.1")
        await admin.create(DEPLOYMENTS.format(ns=namespace), deployment(env_name, "1.0.0"))
        await settled(rig, REPLICAS, "1.0.0")

        async def restart() -> None:
            await asyncio.to_thread(kube_cluster.kubectl, "-n", namespace, "rollout", "restart", f"deployment/{APP}")

        await released(rig, restart, REPLICAS, "1.0.0", REPLICAS, "rollout-restart")


async def test_a_scale_down_loses_no_request(admin, env_name, namespace, provider_factory, sim_factory):
    """(c) 3 -> 1 replicas: the two pods taken away serve until their preStop has ended, out of the Service."""
    with addresses_on_lo("198.18.33.1", BASES):
        rig = await start(admin, namespace, env_name, provider_factory, sim_factory, "198.18.33.1")
        await admin.create(DEPLOYMENTS.format(ns=namespace), deployment(env_name, "1.0.0"))
        await settled(rig, REPLICAS, "1.0.0")

        async def scale() -> None:
            await admin.patch(
                f"{DEPLOYMENTS.format(ns=namespace)}/{APP}/scale", {"spec": {"replicas": 1}}, kind="merge"
            )

        await released(rig, scale, 1, "1.0.0", REPLICAS - 1, "scale-down", replaced=False)
