"""vkprovider against real Koupleless bases: two JVMs (tests/e2e/java/base, koupleless 2.1.6 + sofa-ark 3.1.4)
talking HTTP to `vkprovider run`, driven through the real control plane.

The JVMs and vkprovider are started once for this module (a JVM takes ~8 s to start); each test works in its own
namespace and leaves both bases without bizs. Base metadata: name `base`, version 1.1.1 (what
samples/module-deployment.yaml asks for), one cluster name per base. Logs: .local/test-logs/.
The jars come from hack/java/build.sh (Maven Central only), run once per session; a failed build fails the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.integration.harness import LOGS, ROOT, ProviderProcess, free_port, wait_until
from vkprovider.kube.client import Kube

pytestmark = pytest.mark.e2e

SAMPLES = ROOT / "samples"
JARS = ROOT / "tests" / "e2e" / "java" / "target-jars"
BASE_NAME = "base"
BASE_VERSION = "1.1.1"
APP = "test-module-deployment"
DEPLOYMENTS = "/apis/apps/v1/namespaces/{ns}/deployments"


# ---------------------------------------------------------------------------------------------------- the jars

@pytest.fixture(scope="session")
def java_jars() -> Path:
    """hack/java/build.sh (idempotent, warm cache: ~1 s when nothing changed). Never skips: no Maven = failure."""
    started = time.monotonic()
    try:
        done = subprocess.run(["bash", str(ROOT / "hack" / "java" / "build.sh")], cwd=ROOT, capture_output=True,
                              text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"hack/java/build.sh could not run: {exc}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"hack/java/build.sh failed ({done.returncode}) after {time.monotonic() - started:.0f}s:\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}", pytrace=False)
    for jar in ("base.jar", "biz1-0.0.1-ark-biz.jar", "biz1-0.0.2-ark-biz.jar", "broken-0.0.1-ark-biz.jar"):
        assert (JARS / jar).is_file(), f"hack/java/build.sh did not produce {JARS / jar}"
    return JARS


def jar_url(name: str) -> str:
    return (JARS / name).resolve().as_uri()  # file:///abs/path


# ---------------------------------------------------------------------------------------------------- a real base

async def _raw_post(port: int, command: str, body: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    """POST to arklet. Its answers have no headers at all and end when it closes the connection (docs/protocol.md)."""
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
    try:
        writer.write(f"POST /{command} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), timeout_s)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, text = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"arklet {command}: {raw[:500]!r}")
    return dict(json.loads(text))


class BaseJvm:
    """One real base: `java -jar base.jar` with its own identity and ports, heartbeating to vkprovider."""

    def __init__(self, identity: str, cluster: str, heartbeat_endpoint: str) -> None:
        self.identity = identity
        self.cluster = cluster
        self.heartbeat_endpoint = heartbeat_endpoint
        self.server_port = free_port()
        self.arklet_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"base-{identity}.log"

    def node_name(self, env: str) -> str:
        return f"vnode.{self.identity}.{env}"

    def command(self) -> list[str]:
        return ["java", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k",
                f"-Dserver.port={self.server_port}",
                "-Dserver.address=127.0.0.1",
                # sofa-ark's telnet server binds a fixed port (1234): a second base on the host would fail to start
                "-Dsofa.ark.telnet.server.enable=false",
                f"-Dkoupleless.arklet.http.port={self.arklet_port}",
                f"-Dkoupleless.arklet.http.heartbeat.endpoint={self.heartbeat_endpoint}",
                "-Dkoupleless.arklet.custom.base.metadata.classname=io.vkprovider.e2e.base.PropertyBaseMetadataHook",
                f"-Dbase.identity={self.identity}", f"-Dbase.name={BASE_NAME}", f"-Dbase.version={BASE_VERSION}",
                f"-Dbase.cluster={self.cluster}", "-Dbase.ip=127.0.0.1", f"-Dbase.hostname={self.identity}",
                # sofa-ark unpacks bizs here; one dir per base so two JVMs never share one
                f"-Djava.io.tmpdir={LOGS / ('tmp-' + self.identity)}",
                "-jar", str(JARS / "base.jar")]

    def spawn(self) -> None:
        (LOGS / f"tmp-{self.identity}").mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        log.write(f"\n==== start {time.strftime('%H:%M:%S')}: {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.command(), cwd=LOGS, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, process_group=0)

    async def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Until arklet answers `health` (the arklet port opens ~6 s after start, just before Spring is done)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"base {self.identity} exited: {self.tail()}")
            with contextlib.suppress(OSError, asyncio.TimeoutError, AssertionError, ValueError):
                if (await _raw_post(self.arklet_port, "health", {}, timeout_s=5)).get("code") == "SUCCESS":
                    return
            await asyncio.sleep(0.3)
        raise RuntimeError(f"base {self.identity}: arklet not ready within {timeout_s}s: {self.tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def arklet(self, command: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await _raw_post(self.arklet_port, command, body or {})

    async def bizs(self) -> list[tuple[str, str, str]]:
        """(name, version, state) of every biz arklet reports (the base itself is not listed)."""
        answer = await self.arklet("queryAllBiz")
        assert answer["code"] == "SUCCESS", answer
        return sorted((b["bizName"], b["bizVersion"], b["bizState"]) for b in answer["data"])

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"http://127.0.0.1:{self.server_port}{path}") as resp:
                return resp.status, (await resp.text()).strip()


async def start_bases(bases: list[BaseJvm]) -> None:
    for base in bases:
        base.spawn()
    await asyncio.gather(*(base.wait_ready() for base in bases))


# ---------------------------------------------------------------------------------------------------- module setup

class Rig:
    def __init__(self, env: str, provider: ProviderProcess, bases: list[BaseJvm]) -> None:
        self.env = env
        self.provider = provider
        self.bases = bases

    def base_of_node(self, node: str) -> BaseJvm:
        for base in self.bases:
            if base.node_name(self.env) == node:
                return base
        raise AssertionError(f"no base for node {node}")

    async def all_bizs(self) -> dict[str, list[tuple[str, str, str]]]:
        return {b.identity: await b.bizs() for b in self.bases}


@pytest.fixture(scope="module")
async def rig(java_jars: Path, kube_cluster: Any, admin: Kube) -> AsyncIterator[Rig]:
    env = "j" + uuid.uuid4().hex[:7]
    # Unchanged Koupleless bases: no heartbeat credential, and the biz jars are local files.
    provider = ProviderProcess(str(kube_cluster.provider_kubeconfig), env, VKP_BIZ_URL_SCHEMES="https,http,file",
                               VKP_ALLOW_UNAUTHENTICATED_BASES="true")
    bases = [BaseJvm(f"{env}-base-{x}", f"cluster-{x}", provider.endpoint) for x in ("a", "b")]
    try:
        await provider.start()
        await start_bases(bases)
        yield Rig(env, provider, bases)
    finally:
        for base in bases:
            base.kill()
        provider.kill()
        nodes = await admin.get("/api/v1/nodes", params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env}"})
        for node in nodes.get("items", []):
            with contextlib.suppress(Exception):
                await admin.delete(f"/api/v1/nodes/{node['metadata']['name']}")


@pytest.fixture
async def clean(rig: Rig, admin: Kube, namespace: str) -> AsyncIterator[Rig]:
    """The rig, and afterwards: this test's module pods gone and both bases without bizs (so the next test starts
    clean even when this one failed half-way)."""
    yield rig
    with contextlib.suppress(Exception):
        await admin.request("DELETE", f"{DEPLOYMENTS.format(ns=namespace)}", body={"propagationPolicy": "Background"})
    with contextlib.suppress(Exception):
        await admin.request("DELETE", f"/api/v1/namespaces/{namespace}/pods", body={"gracePeriodSeconds": 0})

    async def empty() -> bool:
        return all(not v for v in (await rig.all_bizs()).values())

    try:
        await wait_until(empty, 30, what="bizs gone after the test")
    except AssertionError:
        for base in rig.bases:  # vkprovider did not clean up: do it by hand, but let the test report it
            for name, version, _ in await base.bizs():
                await base.arklet("uninstallBiz", {"bizName": name, "bizVersion": version})
        raise


# ---------------------------------------------------------------------------------------------------- helpers

def seed_deployment(env: str, version: str = "0.0.1", replicas: int | None = None) -> dict[str, Any]:
    """samples/module-deployment.yaml as written, except: image = the built biz1 jar (file://), BIZ_VERSION, the
    base.koupleless.io/version affinity value (1.1.1, as written) and this env's toleration + affinity term."""
    dep = yaml.safe_load((SAMPLES / "module-deployment.yaml").read_text())
    dep["metadata"].pop("namespace", None)
    if replicas is not None:
        dep["spec"]["replicas"] = replicas
    spec = dep["spec"]["template"]["spec"]
    container = spec["containers"][0]
    container["image"] = jar_url(f"biz1-{version}-ark-biz.jar")
    container["env"] = [{"name": "BIZ_VERSION", "value": version}]
    spec["tolerations"].append({"key": "schedule.koupleless.io/node-env", "operator": "Equal", "value": env,
                                "effect": "NoExecute"})
    expressions = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]
    for expr in expressions:
        if expr["key"] == "base.koupleless.io/version":
            expr["values"] = [BASE_VERSION]
    expressions.append({"key": "virtual-kubelet.koupleless.io/env", "operator": "In", "values": [env]})
    return dep


def spread(dep: dict[str, Any]) -> dict[str, Any]:
    """One pod per base (the vnodes' kubernetes.io/hostname differ)."""
    dep["spec"]["template"]["spec"]["topologySpreadConstraints"] = [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": APP}}}]
    return dep


def is_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return status.get("phase") == "Running" and conds.get("Ready") == "True"


def version_of(pod: dict[str, Any]) -> str:
    return str(pod["spec"]["containers"][0]["env"][0]["value"])


async def pods_of(admin: Kube, namespace: str, selector: str = f"app={APP}") -> list[dict[str, Any]]:
    got = await admin.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector})
    return [p for p in got["items"] if not p["metadata"].get("deletionTimestamp")]


async def ready_pods(admin: Kube, namespace: str, count: int, version: str,
                     timeout_s: float = 90) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        got = await admin.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": f"app={APP}"})
        pods = got["items"]
        ok = (len(pods) == count and all(is_ready(p) and version_of(p) == version for p in pods)
              and not any(p["metadata"].get("deletionTimestamp") for p in pods))
        if ok:
            return pods
        seen["pods"] = [(p["metadata"]["name"], p["spec"].get("nodeName"), (p.get("status") or {}).get("phase"),
                         (p.get("status") or {}).get("reason"), bool(p["metadata"].get("deletionTimestamp")))
                        for p in pods]
        return None

    seen: dict[str, Any] = {}
    try:
        return list(await wait_until(check, timeout_s, what=f"{count} Running+Ready pods of biz1 {version}"))
    except AssertionError as exc:
        raise AssertionError(f"{exc}; pods: {seen.get('pods')}") from None


async def serves(base: BaseJvm) -> str | None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        status, text = await base.get("/biz1/version")
        return text if status == 200 else None
    return None


# ---------------------------------------------------------------------------------------------------- tests

async def test_two_real_bases_become_ready_vnodes_with_their_metadata(rig: Rig, admin: Kube) -> None:
    async def nodes() -> dict[str, dict[str, Any]] | None:
        got = await admin.get("/api/v1/nodes",
                              params={"labelSelector": f"virtual-kubelet.koupleless.io/env={rig.env}"})
        ready = {n["metadata"]["name"]: n for n in got["items"]
                 if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))}
        return ready if len(ready) == 2 else None

    ready = await wait_until(nodes, 40, what="2 Ready vnodes")
    for base in rig.bases:
        node = ready[base.node_name(rig.env)]
        labels = node["metadata"]["labels"]
        assert labels["base.koupleless.io/name"] == BASE_NAME, labels
        assert labels["base.koupleless.io/version"] == BASE_VERSION, labels
        assert labels["base.koupleless.io/cluster-name"] == base.cluster, labels
        assert labels["virtual-kubelet.koupleless.io/env"] == rig.env, labels


async def test_seed_deployment_installs_a_real_biz_that_serves_and_goes_away(clean: Rig, admin: Kube,
                                                                             namespace: str) -> None:
    rig = clean
    await admin.create(DEPLOYMENTS.format(ns=namespace), seed_deployment(rig.env))
    (pod,) = await ready_pods(admin, namespace, 1, "0.0.1")
    base = rig.base_of_node(pod["spec"]["nodeName"])
    assert await base.bizs() == [("biz1", "0.0.1", "activated")]
    assert await serves(base) == "0.0.1"
    other = next(b for b in rig.bases if b is not base)
    assert await other.bizs() == []

    # `kubectl delete pod`: its biz is uninstalled; the ReplicaSet's replacement is installed wherever it lands.
    await admin.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}",
                        body={"gracePeriodSeconds": 0})

    async def replaced() -> dict[str, Any] | None:
        pods = [p for p in await pods_of(admin, namespace) if p["metadata"]["uid"] != pod["metadata"]["uid"]]
        if len(pods) != 1 or not is_ready(pods[0]):
            return None
        bizs = await rig.all_bizs()
        where = rig.base_of_node(pods[0]["spec"]["nodeName"]).identity
        want = {b.identity: ([("biz1", "0.0.1", "activated")] if b.identity == where else []) for b in rig.bases}
        return pods[0] if bizs == want else None

    new = await wait_until(replaced, 60, what="replacement pod Ready, exactly one biz1 on its base")
    assert await serves(rig.base_of_node(new["spec"]["nodeName"])) == "0.0.1"

    # `kubectl delete deployment`: no pod and no biz left anywhere.
    await admin.request("DELETE", f"{DEPLOYMENTS.format(ns=namespace)}/{APP}", body={"propagationPolicy": "Foreground"})

    async def gone() -> bool:
        return not await pods_of(admin, namespace) and all(not v for v in (await rig.all_bizs()).values())

    await wait_until(gone, 60, what="pods gone and biz1 gone from queryAllBiz on both bases")
    assert [await serves(b) for b in rig.bases] == [None, None]


async def test_rolling_update_replaces_the_web_biz_in_place(clean: Rig, admin: Kube, namespace: str) -> None:
    """Two replicas, one per base; then BIZ_VERSION (and image) 0.0.2. A surge pod lands on a base that runs 0.0.1:
    arklet refuses a second web biz1 ("Child name [biz1] is not unique"), vkprovider must retry with
    installStrategy uninstallThenInstall. End: every pod 0.0.2 and Ready, no 0.0.1 anywhere, 0.0.2 served."""
    rig = clean
    await admin.create(DEPLOYMENTS.format(ns=namespace), spread(seed_deployment(rig.env, replicas=2)))
    pods = await ready_pods(admin, namespace, 2, "0.0.1")
    assert {p["spec"]["nodeName"] for p in pods} == {b.node_name(rig.env) for b in rig.bases}
    assert [await serves(b) for b in rig.bases] == ["0.0.1", "0.0.1"]

    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "biz1", "image": jar_url("biz1-0.0.2-ark-biz.jar"),
         "env": [{"name": "BIZ_VERSION", "value": "0.0.2"}]}]}}}}
    await admin.patch(f"{DEPLOYMENTS.format(ns=namespace)}/{APP}", patch)

    async def rolled() -> dict[str, Any] | None:
        pods = [p for p in await pods_of(admin, namespace) if p["status"].get("phase") not in ("Failed", "Succeeded")]
        if len(pods) != 2 or not all(is_ready(p) and version_of(p) == "0.0.2" for p in pods):
            return None
        bizs = await rig.all_bizs()
        hosts = {rig.base_of_node(p["spec"]["nodeName"]).identity for p in pods}
        ok = all(bizs[h] == [("biz1", "0.0.2", "activated")] for h in hosts) and all(
            ("biz1", "0.0.1") not in {(n, v) for n, v, _ in bz} for bz in bizs.values())
        return {"hosts": hosts, "bizs": bizs} if ok else None

    try:
        done = await wait_until(rolled, 120, what="rollout to 0.0.2 with no 0.0.1 left")
    except AssertionError as exc:
        pods = await pods_of(admin, namespace)
        detail = [(p["metadata"]["name"], p["spec"].get("nodeName"), version_of(p), p["status"].get("phase"),
                   p["status"].get("reason"), (p["status"].get("message") or "")[:300]) for p in pods]
        raise AssertionError(f"{exc}\npods: {detail}\nbizs: {await rig.all_bizs()}") from None
    for base in rig.bases:
        assert await serves(base) == ("0.0.2" if base.identity in done["hosts"] else None)
    # A rolling update should leave no failed pods behind. If vkprovider marks the replaced 0.0.1 pod Failed
    # (BizDeactivate), its ReplicaSet creates replacements that fail too, and Failed pods of a scaled-down
    # ReplicaSet are never deleted.
    failed = [(p["metadata"]["name"], version_of(p), p["status"].get("reason"), p["status"].get("message"))
              for p in await pods_of(admin, namespace) if p["status"].get("phase") == "Failed"]
    assert not failed, f"rollout left {len(failed)} Failed pods: {failed}"


async def test_broken_biz_reports_arklets_failure_on_the_pod_and_as_a_warning(clean: Rig, admin: Kube,
                                                                             namespace: str) -> None:
    rig = clean
    pod = yaml.safe_load((SAMPLES / "module-pod-v1.yaml").read_text())
    del pod["spec"]["affinity"]  # the sample selects the demo cluster of `make run`; this base is another
    pod["metadata"] = {"name": "broken", "labels": {"module-controller.koupleless.io/component": "module",
                                                    "app": "broken"}}
    container = pod["spec"]["containers"][0]
    container["name"] = "broken"
    container["image"] = jar_url("broken-0.0.1-ark-biz.jar")
    container["env"] = [{"name": "BIZ_VERSION", "value": "0.0.1"}]
    pod["spec"]["tolerations"].append({"key": "schedule.koupleless.io/node-env", "operator": "Equal",
                                       "value": rig.env, "effect": "NoExecute"})
    pod["spec"]["nodeSelector"] = {"virtual-kubelet.koupleless.io/env": rig.env}
    await admin.create(f"/api/v1/namespaces/{namespace}/pods", pod)

    async def reported() -> tuple[str, list[dict[str, Any]]] | None:
        got = await admin.get(f"/api/v1/namespaces/{namespace}/pods/broken")
        message = got["status"].get("message") or ""
        events = (await admin.get(f"/api/v1/namespaces/{namespace}/events"))["items"]
        warnings = [e for e in events if e["type"] == "Warning" and e["involvedObject"].get("name") == "broken"]
        return (message, warnings) if message and warnings else None

    message, warnings = await wait_until(reported, 60, what="broken pod message and Warning event")
    # arklet 2.1.6 answers CMD_PROCESS_INTERNAL_ERROR, message "Internal Error: java.lang.reflect.
    # InvocationTargetException"; the real cause is the last "Caused by:" of errorStackTrace.
    arklet_words = ("InvocationTargetException", "start fails on purpose")
    assert any(w in message for w in arklet_words), message
    assert any(any(w in (e.get("message") or "") for w in arklet_words) for e in warnings), warnings
    assert ("broken", "0.0.1") not in {(n, v) for bz in (await rig.all_bizs()).values() for n, v, _ in bz}


async def test_killed_base_comes_back_with_its_modules(clean: Rig, admin: Kube, namespace: str) -> None:
    """SIGKILL one base JVM that runs a module, start it again (same identity and ports): the biz is installed
    again and the pod is Running+Ready again."""
    rig = clean
    await admin.create(DEPLOYMENTS.format(ns=namespace), spread(seed_deployment(rig.env, replicas=2)))
    await ready_pods(admin, namespace, 2, "0.0.1")
    victim = rig.bases[0]
    victim.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    assert victim.proc is not None and victim.proc.returncode == -signal.SIGKILL
    victim.spawn()
    await victim.wait_ready()

    async def back() -> bool:
        pods = await pods_of(admin, namespace)
        on_victim = [p for p in pods if p["spec"].get("nodeName") == victim.node_name(rig.env)]
        return (len(pods) == 2 and all(is_ready(p) for p in pods) and len(on_victim) == 1
                and await victim.bizs() == [("biz1", "0.0.1", "activated")])

    await wait_until(back, 90, what="module back on the restarted base")
    assert await serves(victim) == "0.0.1", f"restarted base after {time.monotonic() - killed_at:.0f}s"


async def test_readiness_probes_run_against_the_real_biz(clean: Rig, admin: Kube, namespace: str) -> None:
    """Issue 29 on a real base: a module pod whose readinessProbe asks the real biz1 (GET /biz1/version on the
    base's Spring Boot port) becomes Ready; one whose probe asks a path biz1 does not serve stays Running but not
    Ready, with the kubelet's Unhealthy Warning naming the 404, although its biz is ACTIVATED on its base."""
    rig = clean
    template = seed_deployment(rig.env)["spec"]["template"]
    pods = {}
    for name, base, path in (("probed", rig.bases[0], "/biz1/version"), ("unready", rig.bases[1], "/biz1/missing")):
        pod = json.loads(json.dumps(template))
        pod["metadata"] = {"name": name, "labels": {**pod["metadata"]["labels"], "app": name}}
        pod["spec"]["nodeName"] = base.node_name(rig.env)
        pod["spec"]["containers"][0]["readinessProbe"] = {
            "httpGet": {"path": path, "port": base.server_port}, "periodSeconds": 1, "failureThreshold": 1}
        pods[name] = await admin.create(f"/api/v1/namespaces/{namespace}/pods", pod)

    async def probed() -> dict[str, Any] | None:
        pod = await admin.get(f"/api/v1/namespaces/{namespace}/pods/probed")
        return pod if is_ready(pod) else None

    await wait_until(probed, 90, what="the pod whose probe the real biz answers Ready")
    assert await serves(rig.bases[0]) == "0.0.1"

    async def unhealthy() -> tuple[dict[str, Any], list[str]] | None:
        pod = await admin.get(f"/api/v1/namespaces/{namespace}/pods/unready")
        events = (await admin.get(f"/api/v1/namespaces/{namespace}/events"))["items"]
        warnings = [str(e.get("message")) for e in events if e["type"] == "Warning" and e["reason"] == "Unhealthy"
                    and e["involvedObject"].get("name") == "unready"]
        activated = await rig.bases[1].bizs() == [("biz1", "0.0.1", "activated")]
        return (pod, warnings) if warnings and activated and pod["status"].get("phase") == "Running" else None

    pod, warnings = await wait_until(unhealthy, 90, what="the pod whose probe gets a 404: Running, Unhealthy Warning")
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
    assert conditions.get("Ready") == "False" and conditions.get("ContainersReady") == "False", conditions
    assert any("404" in w for w in warnings), warnings
