"""Session fixtures giving tests a REAL Kubernetes control plane (no mocks), started lazily, stopped reliably.

`kube_cluster` is requested only by tests that need a cluster, so `pytest tests/unit` never starts one. It
either uses an existing cluster (env VKPROVIDER_TEST_KUBECONFIG, plus VKPROVIDER_TEST_PROVIDER_KUBECONFIG for
vkprovider's restricted identity) or runs hack/controlplane/localcluster.py `up` once per test run and `down`
at the end (finalizer + atexit + a watchdog tied to this process, so nothing outlives pytest).

Environment:
  VKPROVIDER_TEST_KUBECONFIG            use this cluster instead of starting one
  VKPROVIDER_TEST_PROVIDER_KUBECONFIG   its restricted vkprovider identity (default: the admin kubeconfig)
  VKPROVIDER_TEST_CLUSTER_DIR           state dir for the local cluster (default: a fresh temp dir)
  VKPROVIDER_TEST_KEEP_CLUSTER=1        leave the local cluster running (reused by the next run in that dir)
  VKPROVIDER_TEST_NODE_GRACE            --node-monitor-grace-period (default 20s)
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.mqtt_broker"]

REPO = Path(__file__).resolve().parents[1]
LOCALCLUSTER = REPO / "hack" / "controlplane" / "localcluster.py"


@dataclass(frozen=True)
class KubeCluster:
    """What a test needs to talk to the cluster."""

    admin_kubeconfig: Path
    provider_kubeconfig: Path
    server: str
    kubectl_cmd: tuple[str, ...] = ("kubectl",)
    etcd_url: str | None = None  # only for the local cluster (tests may compact etcd through it)
    managed: bool = False  # True when this test run started it
    state_dir: Path | None = field(default=None)

    @property
    def audit_log(self) -> Path | None:
        """The apiserver's audit log: every request vkprovider makes, at Metadata level (--audit)."""
        return self.state_dir / "logs" / "audit.log" if self.state_dir is not None else None

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run kubectl as cluster admin; raises (with stderr) on failure when `check`."""
        proc = subprocess.run([*self.kubectl_cmd, "--kubeconfig", str(self.admin_kubeconfig), *args],
                              input=input, text=True, capture_output=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): "
                                 f"{proc.stderr.strip()}")
        return proc


def _localcluster() -> Any:
    """hack/controlplane/localcluster.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("localcluster", LOCALCLUSTER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("localcluster", module)
    spec.loader.exec_module(module)
    return module


def _kcp_path() -> str:
    out = subprocess.run([str(REPO / "hack" / "controlplane" / "build.sh")], check=True, text=True,
                         stdout=subprocess.PIPE).stdout
    return out.strip().splitlines()[-1]


def _server_of(kubeconfig: Path) -> str:
    import yaml

    cfg = yaml.safe_load(kubeconfig.read_text())
    current = cfg.get("current-context")
    ctx = next((c["context"] for c in cfg.get("contexts", []) if c["name"] == current), None)
    cluster_name = ctx["cluster"] if ctx else cfg["clusters"][0]["name"]
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == cluster_name)
    return str(cluster["server"])


def _external_cluster(kubeconfig: str) -> KubeCluster:
    admin = Path(kubeconfig).expanduser().resolve()
    if not admin.is_file():
        pytest.fail(f"VKPROVIDER_TEST_KUBECONFIG={kubeconfig}: no such file")
    provider = Path(os.environ.get("VKPROVIDER_TEST_PROVIDER_KUBECONFIG") or admin).expanduser().resolve()
    kubectl: tuple[str, ...] = ("kubectl",) if shutil.which("kubectl") else (_kcp_path(), "kubectl")
    return KubeCluster(admin_kubeconfig=admin, provider_kubeconfig=provider, server=_server_of(admin),
                       kubectl_cmd=kubectl)


class _LocalCluster:
    """Owns one `localcluster.py up` ... `down` cycle; `stop` is safe to call twice (finalizer and atexit)."""

    def __init__(self) -> None:
        fixed = os.environ.get("VKPROVIDER_TEST_CLUSTER_DIR")
        self.keep = os.environ.get("VKPROVIDER_TEST_KEEP_CLUSTER") == "1"
        self.dir = Path(fixed).resolve() if fixed else Path(tempfile.mkdtemp(prefix="vkp-test-cluster-"))
        self.purge = not fixed
        self.stopped = False

    def start(self) -> KubeCluster:
        grace = os.environ.get("VKPROVIDER_TEST_NODE_GRACE", "20s")
        cmd = [sys.executable, str(LOCALCLUSTER), "up", "--dir", str(self.dir),
               "--node-monitor-grace-period", grace, "--audit"]
        if not self.keep:  # a watchdog stops the cluster even if pytest is killed
            cmd += ["--owner-pid", str(os.getpid())] + (["--purge-on-owner-exit"] if self.purge else [])
        # In-process, so the components are children of this process and stay in its session: a CI runner
        # that tracks its own process tree sees them as its own (`make cluster` daemonizes them instead).
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = _localcluster().main(cmd[2:])
        if code != 0:
            self.stop()
            pytest.fail(f"could not start the local control plane ({' '.join(cmd)}):\n{err.getvalue()[-6000:]}",
                        pytrace=False)
        state = json.loads((self.dir / "state.json").read_text())
        return KubeCluster(admin_kubeconfig=self.dir / "admin.kubeconfig",
                           provider_kubeconfig=self.dir / "vkprovider.kubeconfig", server=state["server"],
                           kubectl_cmd=(state["kcp"], "kubectl"), etcd_url=state.get("etcd_url"),
                           managed=True, state_dir=self.dir)

    def stop(self) -> None:
        if self.stopped or self.keep:
            return
        self.stopped = True
        subprocess.run([sys.executable, str(LOCALCLUSTER), "down", "--dir", str(self.dir),
                        *(["--purge"] if self.purge else [])], capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    """The cluster for this test run: an existing one (VKPROVIDER_TEST_KUBECONFIG) or a fresh local one."""
    external = os.environ.get("VKPROVIDER_TEST_KUBECONFIG")
    if external:
        yield _external_cluster(external)
        return
    local = _LocalCluster()
    atexit.register(local.stop)
    try:
        yield local.start()
    finally:
        local.stop()


@pytest.fixture(scope="session")
async def kube_api(kube_cluster: KubeCluster) -> AsyncIterator[Any]:
    """A kubernetes_asyncio ApiClient authenticated as cluster admin (session scoped)."""
    from kubernetes_asyncio import config

    client = await config.new_client_from_config(config_file=str(kube_cluster.admin_kubeconfig))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def namespace(kube_api: Any) -> AsyncIterator[str]:
    """A fresh namespace (with its default ServiceAccount, so pods can be created) deleted afterwards."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.rest import ApiException

    from tests.helpers import wait_for

    core = client.CoreV1Api(kube_api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"vkprovider.test/ephemeral": "true"})))

    async def has_default_sa() -> bool:
        try:
            await core.read_namespaced_service_account("default", name)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    await wait_for(has_default_sa, timeout=30, what=f"ServiceAccount {name}/default")
    try:
        yield name
    finally:
        try:  # deletion finishes in the background (namespace controller); don't wait for it
            await core.delete_namespace(name, propagation_policy="Background")
        except ApiException as err:
            if err.status != 404:
                raise
