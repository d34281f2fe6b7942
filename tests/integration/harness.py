"""Processes the integration tests run for real: `vkprovider run` and `vkprovider sim`, plus an admin API client.

Both run as separate processes (as in production), so a test can SIGKILL vkprovider or stop a simulated base
and watch the real control plane react.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / ".local" / "test-logs"
#: The heartbeat secret of test providers; simulated bases derive their own tokens from it (secure by default).
TEST_SECRET = "vkprovider-test-secret-0123456789"


class ProviderProcess:
    """`vkprovider run` against the test cluster with the restricted RBAC identity."""

    def __init__(self, kubeconfig: str, env_name: str, **overrides: str) -> None:
        self.env_name = env_name
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.probe_port = free_port()
        self.kubelet_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "ENV": env_name,
            "CLIENT_ID": f"vkprovider-{env_name}",
            "HTTP_TUNNEL_LISTEN_PORT": str(self.http_port),
            "VKP_HTTP_TUNNEL_HOST": "127.0.0.1",
            "VKP_METRICS_PORT": str(self.metrics_port),
            "VKP_PROBE_PORT": str(self.probe_port),
            "KUBELET_PROXY_PORT": str(self.kubelet_port),
            "VKP_KUBELET_ADDRESS": "127.0.0.1",
            "VKP_HEARTBEAT_SECRET": TEST_SECRET,
            "VKP_LOG_LEVEL": "INFO",
            "VKP_BASE_UNREACHABLE_AFTER": "8",
            "VKP_BASE_DEAD_AFTER": "40",
            "VKP_BASE_QUERY_INTERVAL": "10",
            "VKP_ORPHAN_GRACE": "5",
            **overrides,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"vkprovider-{env_name}-{self.env['CLIENT_ID']}.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def start(self, timeout_s: float = 30.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([sys.executable, "-m", "vkprovider", "run"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, process_group=0)
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"vkprovider exited with {self.proc.returncode}: {self.tail()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.probe_port}/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"vkprovider not ready within {timeout_s}s: {self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=20)

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
                return await resp.text()


class SimProcess:
    """`vkprovider sim` with its control API."""

    def __init__(self, endpoint: str, *args: str, name: str = "sim", secret: str | None = TEST_SECRET) -> None:
        self.args = ["--endpoint", endpoint, "--control-port", "0", *(["--token-secret", secret] if secret else []),
                     *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.control = ""
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"

    async def start(self, timeout_s: float = 60.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "vkprovider", "sim", *self.args],
                                     stdout=subprocess.PIPE, stderr=open(self.log_path, "ab"),  # noqa: SIM115
                                     process_group=0)
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), timeout_s)
            if not line:
                raise RuntimeError(f"sim exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            text = line.decode().strip()
            if text.startswith("SIM READY"):
                port = dict(part.split("=", 1) for part in text.split()[2:])["control"]
                self.control = f"http://127.0.0.1:{port}"
                loop.run_in_executor(None, self._drain)
                return
        raise RuntimeError("sim did not become ready")

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for _ in iter(self.proc.stdout.readline, b""):
            pass

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.control + path, **kw) as resp:
                resp.raise_for_status()
                return await resp.json(content_type=None)

    async def bases(self) -> list[dict[str, Any]]:
        return list(await self.call("GET", "/bases"))

    async def stats(self) -> dict[str, Any]:
        return dict(await self.call("GET", "/stats"))

    async def stop_base(self, identity: str, *, partition: bool = False) -> None:
        """The base's JVM dies (it restarts empty); with ``partition`` the network to it is cut (it keeps its bizs)."""
        await self.call("POST", f"/bases/{identity}/stop", params={"partition": "true"} if partition else None)

    async def start_base(self, identity: str, *, static_bizs: list[str] | None = None) -> None:
        """Start the base's JVM again; ``static_bizs`` ("name:version"): the bizs it ships from this start on."""
        await self.call("POST", f"/bases/{identity}/start",
                        json={"staticBizs": static_bizs} if static_bizs is not None else None)

    async def deactivate_base(self, identity: str) -> None:
        await self.call("POST", f"/bases/{identity}/deactivate")

    async def activate_base(self, identity: str) -> None:
        await self.call("POST", f"/bases/{identity}/activate")

    async def set_usage(self, identity: str, *, cpu: float | None = None, heap_mib: float | None = None,
                        metaspace_mib: float | None = None) -> Any:
        """What the base's health says it uses from now on: the busy fraction of its CPUs, its used heap, its used
        Metaspace (memory pressure); vkprovider sees it at its next health read."""
        params = {k: str(v) for k, v in (("cpu", cpu), ("heapMiB", heap_mib), ("metaspaceMiB", metaspace_mib))
                  if v is not None}
        return await self.call("POST", f"/bases/{identity}/usage", params=params)

    async def hold_biz_lists(self, identity: str) -> None:
        """MQTT bases: take and stamp queryAllBiz answers but do not publish them (a delaying broker)."""
        await self.call("POST", f"/bases/{identity}/hold-biz-lists")

    async def release_biz_lists(self, identity: str, count: int | None = None) -> int:
        """Publish the ``count`` oldest held answers late, as they were taken (the rest are lost); stop holding."""
        query = "" if count is None else f"?count={count}"
        return int((await self.call("POST", f"/bases/{identity}/release-biz-lists{query}"))["released"])

    async def install_direct(self, identity: str, name: str, version: str, url: str = "") -> Any:
        """Install a biz on the base behind vkprovider's back (an orphan, or what another controller did)."""
        body = {"bizName": name, "bizVersion": version, **({"bizUrl": url} if url else {})}
        return await self.call("POST", f"/bases/{identity}/bizs", json=body)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)


async def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.5, what: str = "condition") -> Any:
    """Poll an async predicate until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = await predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}"[:3000])
        await asyncio.sleep(interval_s)


# --- what module tests share ------------------------------------------------------------------------------

SEED_TOLERATION = {"key": "schedule.koupleless.io/virtual-node", "operator": "Equal", "value": "True",
                   "effect": "NoExecute"}



def module_pod(name: str, env: str, *, biz: str = "biz1", version: str = "0.0.1", image: str = "",
               labels: dict[str, str] | None = None, node: str | None = None, **spec: Any) -> dict[str, Any]:
    """A module Pod in the seeds' shape, kept on this test's vnodes (env label) or pinned to one node."""
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"module-controller.koupleless.io/component": "module",
                                              **(labels or {})}},
        "spec": {
            "containers": [{"name": biz, "image": image or f"https://repo.example.com/{biz}-{version}-ark-biz.jar",
                            "env": [{"name": "BIZ_VERSION", "value": version}]}],
            "tolerations": [SEED_TOLERATION],
            "nodeSelector": {"virtual-kubelet.koupleless.io/env": env},
            **spec,
        },
    }
    if node is not None:
        pod["spec"]["nodeSelector"]["kubernetes.io/hostname"] = node
    return pod


async def pods_of(admin: Any, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    params = {"labelSelector": selector} if selector else None
    return list((await admin.get(f"/api/v1/namespaces/{namespace}/pods", params=params))["items"])


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def is_ready(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and condition(pod, "Ready").get("status") == "True"


async def ready_vnodes(admin: Any, env: str) -> list[dict[str, Any]]:
    got = await admin.get("/api/v1/nodes", params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env}"})
    return [n for n in got["items"] if condition(n, "Ready").get("status") == "True"]


async def wait_ready_vnodes(admin: Any, env: str, count: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        nodes = await ready_vnodes(admin, env)
        return nodes if len(nodes) == count else None

    result: list[dict[str, Any]] = await wait_until(enough, timeout_s, what=f"{count} Ready vnodes")
    return result


async def installs(sim: SimProcess) -> dict[str, int]:
    """install calls per base/name:version since the simulator started."""
    return dict((await sim.stats())["installsByBiz"])


async def uninstalls(sim: SimProcess) -> dict[str, int]:
    return dict((await sim.stats())["uninstallsByBiz"])
