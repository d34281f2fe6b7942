"""CPU per request of vkprovider's hot HTTP paths, next to aiohttp doing the same: the evidence for vkprovider/http1.py.

    python -m bench.micro            # heartbeat and patch; writes bench/results/micro.json
    python -m bench.micro heartbeat  # no cluster needed
    python -m bench.micro patch      # starts the local control plane in .local/micro-cluster
    python -m bench.micro probes     # no cluster needed (about 50 s)
    python -m bench.micro watches    # starts the local control plane in .local/micro-cluster (about 3 minutes)
    python -m bench.micro wakeups    # no cluster needed (about 100 s)

- heartbeat: a client process sends heartbeats at 100 a second over keep-alive connections; the server process's
  CPU per heartbeat is measured for a bare aiohttp handler and for vkprovider's heartbeat listener (HttpTunnel on
  http1, token check, parse, a stand-in for the controllers that accepts every heartbeat).
- patch: Lease renewals (a merge PATCH with a resourceVersion precondition, over TLS) one at a time and eight at a
  time, through an aiohttp ClientSession and through vkprovider's Kube client; the client's CPU per request.

- probes: 1,000 module pods, each with an HTTP readiness probe every 10 s (100 checks a second), run by
  vkprovider.probes.ProbeManager against a web server in another process; the manager process's CPU per check, the
  share of one core it takes at that rate, and the CPU of one ``sync`` of an unchanged pod (the controller calls it
  for every pod after each pass over a base).

- watches: the two ways a replica could see the module pods it serves (issue 31), each in a child process of its own:
  one pod watch of the whole ENV, as vkprovider does (its own vnodes' pods trimmed, the others' kept as skeletons),
  and one watch per vnode it holds, as a kubelet does (``fieldSelector=spec.nodeName``, its pods trimmed). 900
  vnodes with one module pod each, a replica holding 300 of them: the watching process's RSS above a bare client,
  its CPU over a window in which every pod changes once, and the apiserver's RSS growth for the watches.

- wakeups: arklet calls (``http1.exchange``: one connection each, as arklet closes after its answer) against an
  arklet stand-in in another process, 25 and 75 a second, sent at random times and sent on the one-second timer
  grid (``core.grid``: the same calls, batched); the caller's CPU per call. And the CPU of one wake-up of a process
  that only sleeps, at 25 and 400 wake-ups a second. The evidence for ``core.grid``: a process pays for every
  wake-up apart from the work it wakes for.

Process CPU (time.process_time) over a fixed amount of work, so it does not depend on the machine's other load as
much as wall time does; on a 2-core machine run it alone.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import uvloop
from aiohttp import web

from vkprovider.kube.client import Kube

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLUSTER_DIR = ROOT / ".local" / "micro-cluster"
SECRET = "micro-secret-0123456789abcdef"
HEARTBEATS = 3000
RATE = 100.0
PATCHES = 3000
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


# --------------------------------------------------------------------------------------------- heartbeat


def heartbeat_body(i: int) -> bytes:
    return orjson.dumps({"baseMetadata": {"clusterName": "c", "identity": f"micro-{i}", "name": "b",
                                          "version": "1.0.0"},
                         "localHostName": "h", "localIP": "127.0.0.1", "port": 1238, "state": "activated"})


async def heartbeat_client(port: int) -> None:
    from vkprovider.core.credentials import base_token

    bodies = [(heartbeat_body(i), {"Content-Type": "application/json",
                                   "Authorization": "Bearer " + base_token(SECRET.encode(), f"micro-{i}")})
              for i in range(100)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        async def one(i: int) -> None:
            body, headers = bodies[i % len(bodies)]
            async with session.post(f"http://127.0.0.1:{port}/heartbeat", data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"heartbeat answered {resp.status}")

        start, tasks = time.monotonic(), []
        for i in range(HEARTBEATS):
            await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)


class AcceptAll:
    """The controllers' side of a heartbeat, reduced to accepting it."""

    def on_heartbeat(self, heartbeat: Any, *, authenticated: bool = False) -> None:
        return None

    def address_of(self, identity: str) -> None:
        return None

    def on_health(self, identity: str, health: Any) -> None:
        pass

    def on_bizs(self, identity: str, bizs: Any) -> None:
        pass

    def baseline(self, metadata: Any) -> None:
        return None


async def heartbeat_server(kind: str) -> float:
    """Server CPU milliseconds per heartbeat."""
    runner = None
    if kind == "vkprovider":
        from vkprovider.config import Settings
        from vkprovider.tunnels.http_tunnel import HttpTunnel

        tunnel = HttpTunnel(Settings(http_tunnel_host="127.0.0.1", http_tunnel_port=0, heartbeat_secret=SECRET))
        await tunnel.start(AcceptAll())  # type: ignore[arg-type]
        port = tunnel.port
    else:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(text="SUCCESS")

        app = web.Application()
        app.router.add_post("/heartbeat", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cpu0 = time.process_time()
    client = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.micro", "heartbeat-client", str(port),
                                                  cwd=ROOT)
    if await client.wait() != 0:
        raise RuntimeError("the heartbeat client failed")
    cpu = time.process_time() - cpu0
    if kind == "vkprovider":
        await tunnel.stop()
    elif runner is not None:
        await runner.cleanup()
    return round(1000 * cpu / HEARTBEATS, 3)


# ------------------------------------------------------------------------------------------------ patch


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def patch_leases(kind: str, concurrency: int) -> float:
    """Client CPU milliseconds per Lease renewal."""
    kube = await Kube.connect(str(CLUSTER_DIR / "admin.kubeconfig"))
    names = [f"micro-{i}" for i in range(64)]
    versions: dict[str, str] = {}
    for name in names:
        body = {"metadata": {"name": name}, "spec": {"holderIdentity": "micro", "renewTime": micro_now()}}
        try:
            created = await kube.create(LEASES, body)
        except Exception:
            created = await kube.get(f"{LEASES}/{name}")
        versions[name] = created["metadata"]["resourceVersion"]
    session = None
    if kind == "aiohttp":
        from vkprovider.kube.client import _load_configuration, _ssl_context, static_kubeconfig

        conf = static_kubeconfig(str(CLUSTER_DIR / "admin.kubeconfig")) or await _load_configuration(
            str(CLUSTER_DIR / "admin.kubeconfig"))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_ssl_context(conf)))

    async def renew(name: str) -> None:
        body = orjson.dumps({"metadata": {"resourceVersion": versions[name]}, "spec": {"renewTime": micro_now()}})
        if session is None:
            answer = await kube.patch(f"{LEASES}/{name}", orjson.loads(body), kind="merge")
        else:
            async with session.patch(f"{kube.host}{LEASES}/{name}", data=body, headers={
                    "Content-Type": "application/merge-patch+json", "Accept": "application/json"}) as resp:
                answer = orjson.loads(await resp.read())
        versions[name] = answer["metadata"]["resourceVersion"]

    async def worker(k: int) -> None:
        mine = names[k::concurrency]  # each worker its own Leases: never two writes of one Lease at once
        for i in range(PATCHES // concurrency):
            await renew(mine[i % len(mine)])

    cpu0 = time.process_time()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    cpu = time.process_time() - cpu0
    if session is not None:
        await session.close()
    await kube.close()
    return round(1000 * cpu / PATCHES, 3)


def cluster(action: str) -> None:
    cmd = [sys.executable, str(ROOT / "hack/controlplane/localcluster.py"), action, "--dir", str(CLUSTER_DIR)]
    subprocess.run([*cmd, "--purge"] if action == "down" else cmd, check=action == "up", capture_output=True)


# ------------------------------------------------------------------------------------------------ watches

WATCH_VNODES = 900  # the ENV's vnodes, one module pod each
WATCH_HELD = 300  # the share of one replica of three
WATCH_NAMESPACE = "micro-watches"
WATCH_LABEL = "micro.vkprovider.io/watches"


async def watch_client(mode: str) -> None:
    """A replica's pod view in one process (``whole`` or ``per-vnode``): prints its RSS once synced, then, after the
    parent changed every pod once, its CPU seconds and the events it received."""
    from bench.procstat import sample
    from vkprovider.core.module import pod_skeleton, trim_pod
    from vkprovider.kube.informer import Informer

    kube = await Kube.connect(str(CLUSTER_DIR / "admin.kubeconfig"))
    await kube.get("/version")
    held = {f"micro-vnode-{i}" for i in range(WATCH_HELD)}
    bare = sample(os.getpid()).rss_bytes
    events = [0]

    def seen(key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        events[0] += 1

    def trim(pod: dict[str, Any]) -> dict[str, Any]:
        return trim_pod(pod) if (pod.get("spec") or {}).get("nodeName") in held else pod_skeleton(pod)

    path = f"/api/v1/namespaces/{WATCH_NAMESPACE}/pods"
    if mode == "whole":
        informers = [Informer(kube, path, label_selector=WATCH_LABEL, trim_object=trim, on_change=seen,
                              page_size=100)]
    else:
        informers = [Informer(kube, path, field_selector=f"spec.nodeName={node}", trim_object=trim_pod,
                              on_change=seen, resource=f"pods-{node}") for node in sorted(held)]
    tasks = [asyncio.create_task(inf.run()) for inf in informers]
    await asyncio.gather(*(inf.synced.wait() for inf in informers))
    gc.collect()
    cpu0 = time.process_time()
    print(f"synced {sample(os.getpid()).rss_bytes - bare} {len(informers)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the parent changed every pod
    await asyncio.sleep(5)  # the last events arrive
    print(f"done {time.process_time() - cpu0} {events[0]}", flush=True)
    for task in tasks:
        task.cancel()
    await kube.close()


async def watches() -> dict[str, float]:
    """Both candidates against one local control plane (see the module docstring)."""
    from bench.objects import module_deployment
    from bench.procstat import sample

    kube = await Kube.connect(str(CLUSTER_DIR / "admin.kubeconfig"))
    pgrep = await asyncio.create_subprocess_exec("pgrep", "-f", f"kube-apiserver.*{CLUSTER_DIR}",
                                                 stdout=subprocess.PIPE)
    apiserver = int((await pgrep.communicate())[0].split()[0])
    await kube.create("/api/v1/namespaces", {"metadata": {"name": WATCH_NAMESPACE}})
    template = module_deployment(1, 1, "1.0.0", fake_nodes=True)["spec"]["template"]
    gate = asyncio.Semaphore(32)

    async def pod(i: int) -> None:
        body = {"metadata": {"name": f"module-{i}", "labels": {**template["metadata"]["labels"], WATCH_LABEL: "1"}},
                "spec": {**template["spec"], "nodeName": f"micro-vnode-{i}"}}
        body["spec"].pop("nodeSelector", None)
        body["spec"].pop("topologySpreadConstraints", None)
        async with gate:
            await kube.create(f"/api/v1/namespaces/{WATCH_NAMESPACE}/pods", body)

    async def touch(i: int, round_: int) -> None:
        async with gate:
            await kube.patch(f"/api/v1/namespaces/{WATCH_NAMESPACE}/pods/module-{i}",
                             {"metadata": {"annotations": {"micro.vkprovider.io/round": str(round_)}}}, kind="merge")

    await asyncio.gather(*(pod(i) for i in range(WATCH_VNODES)))
    found: dict[str, float] = {}
    for round_, mode in enumerate(("whole", "per-vnode"), start=1):
        before = sample(apiserver).rss_bytes
        child = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.micro", "watch-client", mode,
                                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        assert child.stdin is not None and child.stdout is not None
        _, grown, count = (await child.stdout.readline()).decode().split()
        await asyncio.sleep(10)
        apiserver_grown = sample(apiserver).rss_bytes - before
        await asyncio.gather(*(touch(i, round_) for i in range(WATCH_VNODES)))
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        _, cpu, events = (await child.stdout.readline()).decode().split()
        await child.wait()
        key = mode.replace("-", "_")
        found[f"watches_{key}_watches"] = float(count)
        found[f"watches_{key}_rss_mb"] = round(int(grown) / 2**20, 1)
        found[f"watches_{key}_apiserver_rss_mb"] = round(apiserver_grown / 2**20, 1)
        found[f"watches_{key}_cpu_ms_for_{WATCH_VNODES}_changes"] = round(float(cpu) * 1000, 1)
        found[f"watches_{key}_events"] = float(events)
    await kube.close()
    return found


# ------------------------------------------------------------------------------------------------ probes

PROBE_PODS = 1000
PROBE_PERIOD_S = 10
PROBE_MEASURE_S = 40.0


async def probe_server() -> None:
    """A biz's health endpoint in its own process (its CPU is not the manager's); prints its port."""
    async def health(request: web.Request) -> web.Response:
        return web.Response(text='{"status":"UP"}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/biz1/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


async def probes() -> dict[str, float]:
    from vkprovider.core.probe import ContainerProbes, HttpGet, ProbeKind, ProbeSpec
    from vkprovider.probes import ContainerInput, ProbeManager

    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.micro", "probe-server", cwd=ROOT,
                                                  stdout=asyncio.subprocess.PIPE)
    assert server.stdout is not None
    port = int((await server.stdout.readline()).decode())
    changes = 0

    def on_change(pod_key: str) -> None:
        nonlocal changes
        changes += 1

    manager = ProbeManager(on_change=on_change)
    spec = ProbeSpec(ProbeKind.READINESS, HttpGet(port, "/biz1/health"), period_s=PROBE_PERIOD_S)
    probes = ContainerProbes("biz1", readiness=spec)
    start = time.monotonic()
    inputs = []
    for i in range(PROBE_PODS):
        # activation times spread over one period ahead: the steady state of pods that started at random times
        inputs.append({"biz1": ContainerInput(probes, activated_at=start + i * PROBE_PERIOD_S / PROBE_PODS)})
        manager.sync(f"bench/p{i}", f"u{i}", "127.0.0.1", inputs[-1])
    await asyncio.sleep(PROBE_PERIOD_S + 1)  # every pod probed once (and Ready): the steady state
    ready = sum(manager.state(f"bench/p{i}")["biz1"].ready for i in range(PROBE_PODS))
    checks0, cpu0, wall0 = manager.checks_run, time.process_time(), time.monotonic()
    await asyncio.sleep(PROBE_MEASURE_S)
    cpu, wall, checks = time.process_time() - cpu0, time.monotonic() - wall0, manager.checks_run - checks0
    sync0 = time.process_time()
    for _ in range(5):
        for i in range(PROBE_PODS):
            manager.sync(f"bench/p{i}", f"u{i}", "127.0.0.1", inputs[i])
    sync_cpu = time.process_time() - sync0
    await manager.close()
    server.kill()
    await server.wait()
    if ready != PROBE_PODS or changes != PROBE_PODS:
        raise RuntimeError(f"{ready} of {PROBE_PODS} pods ready after one period, {changes} changes")
    return {
        "probe_checks_per_second": round(checks / wall, 1),
        "probe_check_cpu_ms": round(1000 * cpu / checks, 3),
        "probe_cpu_percent_of_one_core": round(100 * cpu / wall, 2),
        "probe_sync_unchanged_pod_cpu_us": round(1e6 * sync_cpu / (5 * PROBE_PODS), 2),
    }


# ---------------------------------------------------------------------------------------------- wakeups

WAKEUP_RATES = (25, 75)
WAKEUP_MEASURE_S = 20.0
ARKLET_ANSWER = b'{"code":"SUCCESS","data":{"healthData":{"jvm":{"java used metaspace":1},"cpu":{"count":2}}}}'


async def arklet_server() -> None:
    """An arklet stand-in in its own process: answers every request and closes, as arklet does; prints its port."""
    class Arklet(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport, self.head = cast(asyncio.Transport, transport), b""  # uvloop's is not a subclass

        def data_received(self, data: bytes) -> None:
            self.head += data
            if b"\r\n\r\n" in self.head:
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + ARKLET_ANSWER)
                self.transport.close()

    server = await asyncio.get_running_loop().create_server(Arklet, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


async def calls_at(port: int, rate: float, gridded: bool) -> float:
    """Caller CPU milliseconds per call, for ``rate`` calls a second at random (Poisson) times, or the same times
    each rounded up to the timer grid of a 30 s poll."""
    import random

    from vkprovider import http1
    from vkprovider.core.grid import on_grid

    request = b"POST /health HTTP/1.1\r\nHost: arklet\r\nContent-Length: 2\r\n\r\n{}"
    rng = random.Random(7)
    loop = asyncio.get_running_loop()
    done = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal done
        await http1.exchange("127.0.0.1", port, request, timeout_s=10.0, limit=1 << 16)
        done += 1

    cpu0 = time.process_time()
    start = due = loop.time()
    while due - start < WAKEUP_MEASURE_S:
        due += rng.expovariate(rate)
        at = on_grid(due, 30.0) if gridded else due
        await asyncio.sleep(max(0.0, at - loop.time()))
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return round(1000 * (time.process_time() - cpu0) / done, 3)


async def wake_up_cpu_ms(per_s: float, seconds: float = 10.0) -> float:
    """CPU milliseconds per wake-up of this process when all it does is sleep ``1 / per_s`` and wake up."""
    cpu0, end = time.process_time(), time.monotonic() + seconds
    wakes = 0
    while time.monotonic() < end:
        await asyncio.sleep(1 / per_s)
        wakes += 1
    return round(1000 * (time.process_time() - cpu0) / wakes, 3)


async def wakeups() -> dict[str, float]:
    found: dict[str, float] = {f"wake_up_cpu_ms_{n}_per_s": await wake_up_cpu_ms(n) for n in (25, 400)}
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.micro", "arklet-server", cwd=ROOT,
                                                  stdout=asyncio.subprocess.PIPE)
    assert server.stdout is not None
    port = int((await server.stdout.readline()).decode())
    try:
        for rate in WAKEUP_RATES:
            for gridded in (False, True):
                name = f"arklet_call_cpu_ms_{rate}_per_s_{'on_the_grid' if gridded else 'at_random_times'}"
                found[name] = await calls_at(port, rate, gridded)
    finally:
        server.kill()
        await server.wait()
    return found


# ------------------------------------------------------------------------------------------------- main


async def main(which: list[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    if "heartbeat" in which:
        for kind in ("aiohttp", "vkprovider"):
            found[f"heartbeat_server_cpu_ms_{kind}"] = await heartbeat_server(kind)
    if "probes" in which:
        found.update(await probes())
    if "wakeups" in which:
        found.update(await wakeups())
    if "watches" in which:
        cluster("down")
        cluster("up")
        try:
            found.update(await watches())
        finally:
            cluster("down")
    if "patch" in which:
        cluster("down")
        cluster("up")
        try:
            for kind in ("aiohttp", "vkprovider"):
                for concurrency in (1, 8):
                    found[f"lease_patch_cpu_ms_{kind}_{concurrency}_at_once"] = await patch_leases(kind, concurrency)
        finally:
            cluster("down")
    return found


if __name__ == "__main__":
    if sys.argv[1:2] == ["heartbeat-client"]:
        uvloop.run(heartbeat_client(int(sys.argv[2])))
        sys.exit(0)
    if sys.argv[1:2] == ["watch-client"]:
        uvloop.run(watch_client(sys.argv[2]))
        sys.exit(0)
    if sys.argv[1:2] == ["arklet-server"]:
        uvloop.run(arklet_server())
        sys.exit(0)
    if sys.argv[1:2] == ["probe-server"]:
        uvloop.run(probe_server())
        sys.exit(0)
    wanted = sys.argv[1:] or ["heartbeat", "patch"]
    results = uvloop.run(main(wanted))
    for key, value in results.items():
        print(f"{key:48} {value:8.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "micro.json"
    kept = json.loads(path.read_text()).get("metrics", {}) if path.exists() else {}  # a partial run keeps the rest
    path.write_text(json.dumps({"scenario": "micro", "metrics": {**kept, **results}}, indent=2) + "\n")
