"""The container image really runs vkprovider: its own binary, as its non-root user, on the real control plane.

The image (localhost/vkprovider:<version>, `make image`) is mounted read-only and its ENTRYPOINT + CMD run with
chroot (see conftest.py), against the local control plane with the chart's RBAC identity (the kubeconfig of
user "vkprovider", bound to the ClusterRole made from charts/vkprovider/files/rbac-rules.yaml). The simulated
base runs from the repo's virtualenv, outside the image, and heartbeats to the chrooted vkprovider on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KubeCluster
from tests.image.conftest import MountedImage
from tests.integration.harness import LOGS, SimProcess, free_port, wait_until
from vkprovider import __version__

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.image
UID = 65532


def test_the_containerfile_is_the_one_recipe() -> None:
    """One recipe and one ignore file for podman and docker, so no copy can drift: the Containerfile (docker is given
    -f), and .dockerignore, which podman and buildah read when there is no .containerignore."""
    assert not (REPO / "Dockerfile").exists() and not (REPO / ".containerignore").exists()
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*"):] == ["*", "!pyproject.toml", "!README.md", "!vkprovider/", "**/__pycache__",
                                            "**/*.pyc"]  # the context: what the image needs, nothing else
    text = (REPO / "Containerfile").read_text()
    assert re.search(r"^ARG VERSION=(\S+)$", text, re.M).group(1) == __version__  # type: ignore[union-attr]
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert 'ENTRYPOINT ["vkprovider"]' in text and 'CMD ["run"]' in text


def test_image_metadata_and_contents(image: MountedImage) -> None:
    cfg = image.config
    assert cfg["User"] == f"{UID}:{UID}", "numeric, so the kubelet can enforce runAsNonRoot"
    assert cfg["Entrypoint"] == ["vkprovider"] and cfg["Cmd"] == ["run"]
    assert {"7777/tcp", "9090/tcp", "8081/tcp", "10250/tcp"} <= set(cfg.get("ExposedPorts") or {})
    labels = image.labels
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.title"] == "vkprovider"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert "org.opencontainers.image.source" in labels
    assert re.fullmatch(r"[0-9a-f]{64}", labels["dev.vkprovider.inputs"])
    assert image.ref.endswith(f":{__version__}")
    root = image.root
    site = next((root / "opt/vkprovider/lib").glob("python3.*/site-packages"))
    assert (site / "vkprovider" / "__init__.py").is_file()
    # installed from the wheel, with no build tools, no pip, no wheels and no pip cache left behind
    assert not list(site.glob("pip")) and not (root / "opt/vkprovider/bin/pip").exists()
    assert not (root / "wheels").exists() and not (root / "root/.cache").exists()
    assert not (root / "opt/build").exists() and not (root / "src").exists()
    assert not [p for p in ("usr/bin/gcc", "usr/bin/cc", "usr/bin/make") if (root / p).exists()]
    assert f"vkprovider:x:{UID}:{UID}:" in (root / "etc/passwd").read_text()


def test_image_version_as_its_non_root_user(image: MountedImage) -> None:
    probe = 'import os, sys; print(os.getuid(), os.getgid(), sys.version_info[:2] >= (3, 11))'
    out = subprocess.run(image.command(["--version"]), env=image.env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"vkprovider {__version__}"
    # the same user, with the interpreter the entrypoint runs on
    who = subprocess.run(image.command(["python3", "-c", probe], entrypoint=False), env=image.env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert who.returncode == 0, who.stderr
    assert who.stdout.split() == [str(UID), str(UID), "True"]


class ChrootProvider:
    """`vkprovider run` from the mounted image (ENTRYPOINT + CMD) as its user, with a private writable /tmp."""

    def __init__(self, image: MountedImage, kubeconfig: Path, env_name: str, workdir: Path) -> None:
        self.image = image
        self.http_port, self.metrics_port, self.probe_port, self.kubelet_port = (free_port() for _ in range(4))
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kubeconfig, workdir / "kubeconfig")
        for path in (workdir, workdir / "kubeconfig"):
            os.chown(path, UID, UID)
        (workdir / "kubeconfig").chmod(0o600)
        workdir.chmod(0o700)
        self.workdir = workdir
        self.env = {
            **image.env,
            "KUBECONFIG": "/tmp/kubeconfig",
            "NAMESPACE": "default",
            "ENV": env_name,
            "CLIENT_ID": f"vkprovider-image-{env_name}",
            "HTTP_TUNNEL_LISTEN_PORT": str(self.http_port),
            "VKP_HTTP_TUNNEL_HOST": "127.0.0.1",
            "VKP_METRICS_PORT": str(self.metrics_port),
            "VKP_PROBE_PORT": str(self.probe_port),
            "KUBELET_PROXY_PORT": str(self.kubelet_port),
            "VKP_KUBELET_ADDRESS": "127.0.0.1",
            "VKP_ALLOW_UNAUTHENTICATED_BASES": "true",
            "VKP_LOG_FORMAT": "json",  # as the chart runs it
        }
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"image-vkprovider-{env_name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        binds = {str(self.workdir): "/tmp"}
        resolv = Path("/etc/resolv.conf")
        if resolv.is_file() and (self.image.root / "etc/resolv.conf").exists():
            binds[str(resolv)] = "/etc/resolv.conf"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.image.command(binds=binds), env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, process_group=0)

    async def wait_ready(self, timeout_s: float = 60) -> None:
        import urllib.error
        import urllib.request

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"vkprovider from the image exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}/readyz", timeout=2) as resp:
                    return bool(resp.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        async def check() -> bool:
            return await asyncio.to_thread(ready)

        try:
            await wait_until(check, timeout_s, interval_s=0.3, what="/readyz of vkprovider in the image")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode


def module_pod(env_name: str, namespace: str) -> dict[str, Any]:
    """A bare module Pod as in samples/ (biz1 0.0.1), pinned to this test's vnodes by their env label."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "biz1-pod", "namespace": namespace,
                     "labels": {"module-controller.koupleless.io/component": "module"}},
        "spec": {
            "containers": [{
                "name": "biz1",
                "image": "https://serverless-opensource.oss-cn-shanghai.aliyuncs.com/module-packages/test_modules/"
                         "biz1-0.0.1-ark-biz.jar",
                "env": [{"name": "BIZ_VERSION", "value": "0.0.1"}]}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "base.koupleless.io/stack", "operator": "In", "values": ["java"]},
                    {"key": "virtual-kubelet.koupleless.io/env", "operator": "In", "values": [env_name]}]}]}}},
            "tolerations": [{"key": "schedule.koupleless.io/virtual-node", "operator": "Equal", "value": "True",
                             "effect": "NoExecute"}],
        },
    }


async def kubectl_json(cluster: KubeCluster, *args: str) -> Any:
    proc = await asyncio.to_thread(cluster.kubectl, *args, "-o", "json")
    return json.loads(proc.stdout)


async def test_image_registers_a_base_and_runs_a_module(image: MountedImage, kube_cluster: KubeCluster,
                                                         tmp_path: Path) -> None:
    env_name = "img" + uuid.uuid4().hex[:8]
    namespace = f"t-{env_name}"
    provider = ChrootProvider(image, kube_cluster.provider_kubeconfig, env_name, tmp_path / "image-tmp")
    sim: SimProcess | None = None
    selector = f"virtual-kubelet.koupleless.io/env={env_name}"
    kube_cluster.kubectl("create", "namespace", namespace)
    try:
        provider.start()
        await provider.wait_ready()
        sim = SimProcess(provider.endpoint, "--bases", "1", "--heartbeat-interval", "3", "--identity-prefix",
                         env_name, "--base-version", "1.1.1", name=f"image-sim-{env_name}")
        await sim.start()
        identity = f"{env_name}-0000"

        async def vnode_ready() -> Any:
            nodes = (await kubectl_json(kube_cluster, "get", "nodes", "-l", selector))["items"]
            ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                             for c in n.get("status", {}).get("conditions", []))]
            return ready[0] if len(nodes) == 1 and ready else None

        try:
            node = await wait_until(vnode_ready, 45, what="the simulated base's vnode Ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nvkprovider (image) log:\n{provider.tail()}") from None
        assert node["metadata"]["name"] == f"vnode.{identity}.{env_name}"

        pod = module_pod(env_name, namespace)
        kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))

        async def pod_ready() -> Any:
            got = await kubectl_json(kube_cluster, "get", "pod", "-n", namespace, pod["metadata"]["name"])
            status = got.get("status") or {}
            conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
            return got if status.get("phase") == "Running" and conds.get("Ready") == "True" else None

        try:
            got = await wait_until(pod_ready, 60, what="the module pod Running and Ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nvkprovider (image) log:\n{provider.tail()}") from None
        assert got["spec"]["nodeName"] == node["metadata"]["name"]

        async def biz_activated() -> Any:
            bases = {b["identity"]: b for b in await sim.bases()}  # type: ignore[union-attr]
            bizs = [(z["bizName"], z["bizVersion"], z["bizState"].upper()) for z in bases[identity]["bizs"]]
            return bizs if bizs == [("biz1", "0.0.1", "ACTIVATED")] else None

        await wait_until(biz_activated, 30, what="biz1 0.0.1 ACTIVATED on the simulated base")

        # Deleting the pod uninstalls the biz: the whole lifecycle ran through the image.
        kube_cluster.kubectl("delete", "pod", "-n", namespace, pod["metadata"]["name"], "--wait=false")

        async def biz_gone() -> bool:
            bases = {b["identity"]: b for b in await sim.bases()}  # type: ignore[union-attr]
            return not bases[identity]["bizs"]

        await wait_until(biz_gone, 60, what="biz1 uninstalled after the pod was deleted")
        started = time.monotonic()
        code = provider.stop()
        assert code == 0, f"vkprovider from the image ended with {code} on SIGTERM:\n{provider.tail()}"
        assert time.monotonic() - started < 30
    finally:
        if sim is not None:
            sim.kill()
        provider.stop()
        kube_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        kube_cluster.kubectl("delete", "nodes", "-l", selector, "--wait=false", check=False)
