"""A real, local Kubernetes control plane for vkprovider's tests and `make run` / `make cluster`.

vkprovider registers Koupleless bases as virtual Nodes, so its tests need what a real cluster does with such
nodes: kube-scheduler binding pods to them, the node-lifecycle controller marking them NotReady and tainting
them, Deployments becoming ReplicaSets and Pods, and RBAC refusing what the Helm chart does not grant. This
script runs the genuine components from the `kcp` multi-call binary (see build.sh) - no kubelet, no mocks:

    etcd  ->  kube-apiserver (TLS, client-cert auth, Node,RBAC, service-account keys)
          ->  kube-controller-manager (every default controller, see CONTROLLERS) + kube-scheduler (own client certs)

Everything binds 127.0.0.1 on free ports, runs detached in its own process group (logs in DIR/logs, state in
DIR/state.json) and is stopped by `down`. Needs only the standard library and `cryptography`.

    localcluster.py up     [--dir .local/cluster] [--node-monitor-grace-period 20s] [--apiserver-port N] ...
    localcluster.py status [--dir ...] [--json]
    localcluster.py down   [--dir ...] [--purge]

`up` writes DIR/admin.kubeconfig (system:masters) and DIR/vkprovider.kubeconfig (user "vkprovider", bound
only to the ClusterRole made from charts/vkprovider/files/rbac-rules.yaml); with the default --dir the admin
kubeconfig is also copied to .local/kubeconfig.

    localcluster.py metrics-server [--dir ...] [--binary PATH] [--metric-resolution 15s]

runs a real metrics-server (hack/controlplane/metrics-server.sh builds it) as one more component of the cluster
(`down` stops it) and registers it as the APIService v1beta1.metrics.k8s.io, so `kubectl top` works. Aggregation
needs nothing more of the apiserver than its front-proxy flags: the APIService names a Service of type
ExternalName `localhost`, which the aggregator dials at the APIService's port without kube-proxy or endpoints.
metrics-server verifies the kubelets it scrapes against the cluster CA, which issues pki/kubelet-serving.crt for
127.0.0.1 (vkprovider's VKP_KUBELET_TLS_CERT/KEY), and scrapes them as user system:metrics-server.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEFAULT_DIR = REPO / ".local" / "cluster"
RBAC_RULES = REPO / "charts" / "vkprovider" / "files" / "rbac-rules.yaml"
FLOWCONTROL = REPO / "charts" / "vkprovider" / "files" / "flowcontrol.yaml"
PROVIDER_USER = "vkprovider"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
#: Every controller a default kube-controller-manager runs: "*" is the on-by-default set of the binary's own
#: version (this Kubernetes has no cloud-provider controller left in kube-controller-manager), so `kubectl drain`
#: meets the disruption controller and a Service its EndpointSlices, as in any cluster. The ones that need inputs
#: get them in component_argv (the CSR signer: the local CA); node-ipam stays off as by default
#: (--allocate-node-cidrs=false), and the disabled-by-default ones (bootstrap-signer, token-cleaner,
#: selinux-warning) stay disabled.
CONTROLLERS = ("*",)
SERVICE_CIDR = "10.0.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


class UpError(Exception):
    """Start-up failed; `component` names whose log tail is worth showing."""

    def __init__(self, message: str, component: str | None = None) -> None:
        super().__init__(message)
        self.component = component


def log(msg: str) -> None:
    print(f"localcluster: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------- PKI


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # ECDSA: fast to make, accepted by every component


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False, server: bool = False,
          sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + dt.timedelta(days=3650 if ca else 825))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    # KeyUsage(digital_signature, content_commitment, key_encipherment, data_encipherment, key_agreement,
    #          key_cert_sign, crl_sign, encipher_only, decipher_only)
    builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, ca, ca, False, False),
                                    critical=True)
    if not ca:
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    # Key identifiers, as real cluster CAs carry them: a verifier picks the right issuer among CAs of one name.
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


CLIENTS: dict[str, tuple[str, str | None]] = {  # file stem -> (CN, O)
    "admin": ("kubernetes-admin", "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", None),
    "kube-scheduler": ("system:kube-scheduler", None),
    PROVIDER_USER: (PROVIDER_USER, None),
    # How the apiserver authenticates to kubelets (vkprovider's kubelet API: kubectl logs on module pods).
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
    # metrics-server, to the apiserver and to the kubelets it scrapes (ClusterRole system:metrics-server).
    "metrics-server": ("system:metrics-server", None),
}
METRICS_SERVER_SERVICE = "metrics-server.kube-system.svc"  # the name the aggregator checks its certificate for

# With --audit: every request of vkprovider's identity, with its User-Agent (which names the replica): tests see
# which replica wrote what, and tests/integration/test_zz_rbac.py that vkprovider was never refused and used every
# right of its ClusterRole. The first matching rule wins: writes to Leases and Deployments with their request and
# response (so a hand-over's new holder and the order of writes show), everything else - reads too - at Metadata.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: RequestResponse
  users: ["vkprovider"]
  verbs: ["create", "update", "patch", "delete"]
  resources:
  - group: "coordination.k8s.io"
    resources: ["leases"]
  - group: "apps"
    resources: ["deployments"]
- level: Metadata
  users: ["vkprovider"]
- level: None
"""


def _ca(pki: Path, stem: str, cn: str) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
    """The CA ``stem``.crt/.key in ``pki``, created when missing - never replaced: a new CA under the same name
    would leave clients that cached the old one (the extension-apiserver-authentication bundle) unable to verify."""
    name = _name(cn)
    crt, key_path = pki / f"{stem}.crt", pki / f"{stem}.key"
    if crt.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(crt.read_bytes()).subject, key
    key = _key()
    _write_key(key_path, key)
    crt.write_bytes(_cert(name, key, name, key, ca=True).public_bytes(serialization.Encoding.PEM))
    return name, key


def _issue(pki: Path, stem: str, subject: x509.Name, ca: tuple[x509.Name, ec.EllipticCurvePrivateKey],
           **kw: Any) -> None:
    if (pki / f"{stem}.crt").exists() and (pki / f"{stem}.key").exists():
        return
    key = _key()
    cert = _cert(subject, key, ca[0], ca[1], **kw)
    _write_key(pki / f"{stem}.key", key)
    (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_pki(pki: Path) -> None:
    """CA, apiserver serving cert, a client cert per identity, service-account key pair (kept across ups; only
    what is missing is issued, by the CA already there)."""
    pki.mkdir(parents=True, exist_ok=True)
    ca = _ca(pki, "ca", "vkprovider-local-ca")
    sans: list[x509.GeneralName] = [
        x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                  "kubernetes.default.svc.cluster.local")]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1", "10.0.0.1")]
    _issue(pki, "apiserver", _name("kube-apiserver"), ca, server=True, sans=sans)
    local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    # vkprovider's kubelet API on 127.0.0.1 (VKP_KUBELET_TLS_CERT/KEY), which metrics-server verifies.
    _issue(pki, "kubelet-serving", _name("vkprovider-kubelet"), ca, server=True, sans=local)
    _issue(pki, "metrics-server-serving", _name("metrics-server"), ca, server=True,
           sans=[x509.DNSName(METRICS_SERVER_SERVICE), *local])
    for stem, (cn, org) in CLIENTS.items():
        _issue(pki, stem, _name(cn, org), ca)
    # Front-proxy CA: the request-header authentication of the aggregation layer. Without it the
    # extension-apiserver-authentication ConfigMap lacks a CA and scheduler / controller-manager log errors.
    front_proxy = _ca(pki, "front-proxy-ca", "vkprovider-local-front-proxy-ca")
    _issue(pki, "front-proxy-client", _name("front-proxy-client"), front_proxy)
    if not (pki / "sa.key").exists() or not (pki / "sa.pub").exists():
        sa_key = _key()
        _write_key(pki / "sa.key", sa_key)
        (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def write_kubeconfig(path: Path, pki: Path, server: str, user: str, stem: str) -> None:
    """A self-contained kubeconfig (certificates embedded), so it can be copied anywhere."""
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority-data: {b64("ca.crt")}
users:
- name: {user}
  user:
    client-certificate-data: {b64(f"{stem}.crt")}
    client-key-data: {b64(f"{stem}.key")}
contexts:
- name: {user}@local
  context:
    cluster: local
    user: {user}
current-context: {user}@local
""")
    path.chmod(0o600)


# -------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return []
    return [] if state in ("Z", "X") else raw.decode(errors="replace").split("\0")


def ours(pid: int, cluster_dir: Path) -> bool:
    """True while pid is alive and is one of this cluster's processes (guards against recycled pids)."""
    return any(str(cluster_dir) in arg for arg in _cmdline(pid))


def stray_pids(cluster_dir: Path) -> list[int]:
    """Every live kcp process whose command line mentions this cluster's directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            args = _cmdline(int(entry.name))
            if args and Path(args[0]).name == "kcp" and any(str(cluster_dir) in a for a in args):
                found.append(int(entry.name))
    return found


# Popen objects of the processes this process started, so a failure can say how a component ended.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(name: str, argv: list[str], cluster_dir: Path) -> int:
    """Start one component in a process group of its own (so `down` can signal it with everything it forked).

    It stays in the caller's session and is the caller's child: no setsid, so a supervisor that tracks the
    caller's session or process tree (a CI runner, pytest calling `up` in-process) still sees it as its own.
    """
    logs = cluster_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                process_group=0, close_fds=True, cwd=cluster_dir)
    _CHILDREN[proc.pid] = proc
    (cluster_dir / "pids").mkdir(exist_ok=True)
    (cluster_dir / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def log_tail(cluster_dir: Path, name: str, lines: int = 40) -> str:
    path = cluster_dir / "logs" / f"{name}.log"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def recorded_pids(cluster_dir: Path) -> dict[str, int]:
    pids = {}
    for path in sorted((cluster_dir / "pids").glob("*.pid")) if (cluster_dir / "pids").is_dir() else []:
        try:
            pids[path.stem] = int(path.read_text().strip())
        except ValueError:
            continue
    return pids


def _exists(pid: int) -> bool:
    """The pid is still in the process table (running, exiting or a not yet reaped zombie)."""
    return Path(f"/proc/{pid}").exists()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def how_it_ended(pid: int) -> str:
    """'exited with code N' or 'was killed by SIGNAME' for a child of this process; 'exited' otherwise."""
    proc = _CHILDREN.get(pid)
    code = proc.poll() if proc is not None else None
    if code is None:
        return "exited"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name} (not by this script)"
    return f"exited with code {code}"


def _reap(pids: Iterable[int]) -> None:
    """Collect the exit status of those that are our own children, so no zombie is left behind."""
    for pid in pids:
        proc = _CHILDREN.get(pid)
        if proc is not None and proc.poll() is not None:  # poll() reaps it
            del _CHILDREN[pid]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def stop_all(cluster_dir: Path, grace_s: float = 10.0) -> list[str]:
    """Stop every recorded process group in stages - clients first, etcd last - SIGTERM, then SIGKILL.

    The order matters: a kube-apiserver whose etcd is already gone hangs in its shutdown (it deletes its
    identity lease) until a request timeout, so it is stopped while etcd still answers.
    """
    pids = {n: p for n, p in recorded_pids(cluster_dir).items() if p != os.getpid()}
    stages = [["watchdog"], ["metrics-server", "kube-scheduler", "kube-controller-manager"], ["kube-apiserver"],
              ["etcd"]]
    staged = {n for stage in stages for n in stage}
    stages.append([n for n in pids if n not in staged])
    stopped = []
    for stage in stages:
        group = {n: pids[n] for n in stage if n in pids and ours(pids[n], cluster_dir)}
        for name, pid in group.items():
            _signal_group(pid, signal.SIGTERM)
            stopped.append(name)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_running(p) for p in group.values()):
            time.sleep(0.05)
        for pid in group.values():
            if _running(pid):
                _signal_group(pid, signal.SIGKILL)
    for pid in stray_pids(cluster_dir):  # e.g. a child that left its group: nothing of ours may survive
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # Wait until the processes have left the process table (reaped by init), so `pgrep kcp` shows nothing.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _reap(pids.values())
        if not stray_pids(cluster_dir) and not any(_exists(p) and not _running(p) for p in pids.values()):
            break
        time.sleep(0.05)
    for name in pids:
        (cluster_dir / "pids" / f"{name}.pid").unlink(missing_ok=True)
    return stopped


# ------------------------------------------------------------------------------------------------ health


def _ssl_admin(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _ssl_insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # kube-scheduler / controller-manager serve self-signed, loopback only
    return ctx


def http_get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode(errors="replace")
    except (OSError, ssl.SSLError) as err:
        return 0, str(err)


def probe(url: str, ctx: ssl.SSLContext | None, must_contain: str = "") -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        code, body = http_get(url, ctx)
        return code == 200 and must_contain in body, f"HTTP {code}: {body}"

    return check


def wait(what: str, component: str, cluster_dir: Path, pid: int | None, timeout_s: float,
         probe: Callable[[], tuple[bool, str]]) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        ok, last = probe()
        if ok:
            return
        if pid is not None and not ours(pid, cluster_dir):
            raise UpError(f"{component} {how_it_ended(pid)} while waiting for {what}", component)
        time.sleep(0.2)
    raise UpError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last.strip()[:300]})",
                  component)


def load_state(cluster_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((cluster_dir / "state.json").read_text()))
    except (OSError, ValueError):
        return {}


def health(cluster_dir: Path, state: dict[str, Any]) -> dict[str, str]:
    """Per component: 'ok' or why not."""
    result: dict[str, str] = {}
    pids = recorded_pids(cluster_dir)
    pki = cluster_dir / "pki"
    ports = state.get("ports", {})
    for name in COMPONENTS:
        pid = pids.get(name)
        if pid is None or not ours(pid, cluster_dir):
            result[name] = "not running"
            continue
        if name == "etcd":
            code, body = http_get(f"http://127.0.0.1:{ports.get('etcd')}/health")
            ok = code == 200 and '"true"' in body
        elif name == "kube-apiserver":
            code, body = http_get(f"https://127.0.0.1:{ports.get('apiserver')}/readyz", _ssl_admin(pki))
            ok = code == 200
        else:
            port = ports.get("controller_manager" if name == "kube-controller-manager" else "scheduler")
            code, body = http_get(f"https://127.0.0.1:{port}/healthz", _ssl_insecure())
            ok = code == 200
        result[name] = "ok" if ok else f"unhealthy (HTTP {code}: {body.strip()[:120]})"
    return result


# ---------------------------------------------------------------------------------------------------- up


def resolve_kcp(args: argparse.Namespace) -> str:
    if args.kcp:
        return str(Path(args.kcp).resolve())
    if os.environ.get("KCP_BIN"):
        return str(Path(os.environ["KCP_BIN"]).resolve())
    cmd = [str(HERE / "build.sh")] + ([args.k8s_version] if args.k8s_version else [])
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()
    return out[-1]


def rbac_manifest() -> str:
    """ClusterRole vkprovider = exactly the rules of rbac-rules.yaml (a YAML list, embedded by indenting)."""
    rules = "\n".join(("  " + line) if line.strip() else "" for line in RBAC_RULES.read_text().splitlines())
    return f"""apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {PROVIDER_USER}
  labels: {{app.kubernetes.io/name: vkprovider, app.kubernetes.io/managed-by: localcluster}}
rules:
{rules}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {PROVIDER_USER}
  labels: {{app.kubernetes.io/name: vkprovider, app.kubernetes.io/managed-by: localcluster}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {PROVIDER_USER}}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {PROVIDER_USER}}}
"""


def flowcontrol_manifest() -> str:
    """vkprovider's APF priority level and flow schema (the chart's files/flowcontrol.yaml) for user vkprovider."""
    import yaml

    fc = yaml.safe_load(FLOWCONTROL.read_text())
    labels = {"app.kubernetes.io/name": "vkprovider", "app.kubernetes.io/managed-by": "localcluster"}
    schema = {k: v for k, v in fc["flowSchema"].items() if k != "rules"}
    rules = [{"subjects": [{"kind": "User", "user": {"name": PROVIDER_USER}}], **rule}
             for rule in fc["flowSchema"]["rules"]]
    docs = [
        {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
         "metadata": {"name": PROVIDER_USER, "labels": labels}, "spec": fc["priorityLevel"]},
        {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
         "metadata": {"name": PROVIDER_USER, "labels": labels},
         "spec": {"priorityLevelConfiguration": {"name": PROVIDER_USER}, **schema, "rules": rules}},
    ]
    leases = fc.get("leaseFlowSchema")
    if leases:
        lease_schema = {k: v for k, v in leases.items() if k not in ("rules", "priorityLevel")}
        lease_rules = [{"subjects": [{"kind": "User", "user": {"name": PROVIDER_USER}}], **rule}
                       for rule in leases["rules"]]
        docs.append({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
                     "metadata": {"name": f"{PROVIDER_USER}-node-leases", "labels": labels},
                     "spec": {"priorityLevelConfiguration": {"name": leases["priorityLevel"]}, **lease_schema,
                              "rules": lease_rules}})
    return "---\n".join(json.dumps(doc) + "\n" for doc in docs)


def apply_rbac(kcp: str, kubeconfig: Path) -> None:
    proc = subprocess.run([kcp, "kubectl", "--kubeconfig", str(kubeconfig), "apply", "--server-side",
                           "--force-conflicts", "--field-manager=localcluster", "-f", "-"],
                          input=rbac_manifest() + "---\n" + flowcontrol_manifest(), text=True, capture_output=True,
                          check=False)
    if proc.returncode != 0:
        raise UpError(f"applying the vkprovider ClusterRole failed: {proc.stderr.strip()}", "kube-apiserver")


def pick_ports(args: argparse.Namespace, old: dict[str, int]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for key in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler"):
        if key == "apiserver" and args.apiserver_port:
            ports[key] = args.apiserver_port
            if not port_is_free(ports[key]):
                raise UpError(f"--apiserver-port {ports[key]} is in use")
            continue
        prev = old.get(key)  # keep ports stable across restarts (kubeconfigs, etcd member URLs)
        port = prev if prev and port_is_free(prev) else free_port()
        while port in ports.values():
            port = free_port()
        ports[key] = port
    return ports


def audit_args(d: Path, args: argparse.Namespace) -> list[str]:
    if not getattr(args, "audit", False):
        return []
    policy = d / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    return [f"--audit-policy-file={policy}", f"--audit-log-path={d / 'logs' / 'audit.log'}",
            # MB: a whole test session fits in the log and its backups (tests/integration/audit.py reads them all)
            "--audit-log-maxsize=1000", "--audit-log-maxbackup=2", "--audit-log-format=json"]


def component_argv(kcp: str, d: Path, ports: dict[str, int],
                   args: argparse.Namespace) -> dict[str, list[str]]:
    pki = d / "pki"
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    verbosity = f"--v={args.v}"
    return {
        "etcd": [
            kcp, "etcd", "--name=local", f"--data-dir={d / 'etcd'}", f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}", f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}", f"--initial-cluster=local={peer_url}",
            "--log-level=warn", f"--unsafe-no-fsync={'true' if not args.fsync else 'false'}",
        ],
        "kube-apiserver": [
            kcp, "kube-apiserver", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}", f"--etcd-servers={etcd_url}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}", f"--service-account-issuer={SA_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--endpoint-reconciler-type=none",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--profiling=false", verbosity, *audit_args(d, args), *args.apiserver_arg,
        ],
        "kube-controller-manager": [
            kcp, "kube-controller-manager", f"--kubeconfig={d / 'kube-controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={d / 'kube-controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={d / 'kube-controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['controller_manager']}",
            "--leader-elect=false", f"--controllers={','.join(CONTROLLERS)}",
            f"--node-monitor-grace-period={args.node_monitor_grace_period}",
            f"--node-monitor-period={args.node_monitor_period}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            # The CSR signer issues from the cluster's CA, as kubeadm's clusters do.
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            # The volume controllers probe for FlexVolume drivers and create the directory when missing: inside
            # the cluster's directory, not /usr/libexec of the machine.
            f"--flex-volume-plugin-dir={d / 'flexvolume'}",
            "--profiling=false", verbosity, *args.controller_manager_arg,
        ],
        "kube-scheduler": [
            kcp, "kube-scheduler", f"--kubeconfig={d / 'kube-scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={d / 'kube-scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={d / 'kube-scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}", "--leader-elect=false",
            "--profiling=false", verbosity, *args.scheduler_arg,
        ],
    }


def start_watchdog(d: Path, owner_pid: int, purge: bool) -> None:
    argv = [sys.executable, str(Path(__file__).resolve()), "_watchdog", "--dir", str(d),
            "--owner-pid", str(owner_pid)] + (["--purge"] if purge else [])
    with open(d / "logs" / "watchdog.log", "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                process_group=0, close_fds=True)
    _CHILDREN[proc.pid] = proc
    (d / "pids" / "watchdog.pid").write_text(f"{proc.pid}\n")


def summary(d: Path, state: dict[str, Any]) -> str:
    kcp = state.get("kcp", "kcp")
    return (f"server:               {state.get('server')}\n"
            f"admin kubeconfig:     {d / 'admin.kubeconfig'}\n"
            f"vkprovider kubeconfig: {d / 'vkprovider.kubeconfig'}  (RBAC: ClusterRole {PROVIDER_USER})\n"
            f"etcd:                 {state.get('etcd_url')}\n"
            f"logs:                 {d / 'logs'}\n"
            f"try:                  {kcp} kubectl --kubeconfig {d / 'admin.kubeconfig'} get --raw /readyz")


def cmd_up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    d: Path = args.dir
    d.mkdir(parents=True, exist_ok=True)
    kcp = resolve_kcp(args)
    old = load_state(d)
    if old and all(v == "ok" for v in health(d, old).values()):
        apply_rbac(old["kcp"], d / "admin.kubeconfig")  # keep the ClusterRole in sync with the rules file
        publish(args, d)
        log(f"already up ({time.monotonic() - t0:.1f}s)")
        print(summary(d, old))
        return 0
    if recorded_pids(d) or stray_pids(d):
        log("a previous instance is partly running; stopping it first (data kept)")
        stop_all(d)
    ports = old.get("ports", {})
    for attempt in range(1, args.attempts + 1):
        try:
            state = start(args, d, kcp, ports)
            break
        except UpError as err:
            log(f"FAILED (attempt {attempt} of {args.attempts}): {err}")
            if err.component:
                log(f"last lines of {d / 'logs' / (err.component + '.log')}:")
                print(log_tail(d, err.component), file=sys.stderr)
            stop_all(d)
            if attempt == args.attempts:
                return 1
            ports = {}  # the next attempt takes fresh ports, in case one was taken meanwhile
        except BaseException:
            stop_all(d)
            raise
    publish(args, d)
    log(f"up in {time.monotonic() - t0:.1f}s")
    print(summary(d, state))
    return 0


def publish(args: argparse.Namespace, d: Path) -> None:
    if d.resolve() == DEFAULT_DIR.resolve():
        shutil.copyfile(d / "admin.kubeconfig", REPO / ".local" / "kubeconfig")
        (REPO / ".local" / "kubeconfig").chmod(0o600)


def start(args: argparse.Namespace, d: Path, kcp: str, old_ports: dict[str, int]) -> dict[str, Any]:
    pki = d / "pki"
    ensure_pki(pki)
    ports = pick_ports(args, old_ports)
    server = f"https://127.0.0.1:{ports['apiserver']}"
    write_kubeconfig(d / "admin.kubeconfig", pki, server, "admin", "admin")
    write_kubeconfig(d / "vkprovider.kubeconfig", pki, server, PROVIDER_USER, PROVIDER_USER)
    for comp in ("kube-controller-manager", "kube-scheduler"):
        write_kubeconfig(d / f"{comp}.kubeconfig", pki, server, comp, comp)
    argv = component_argv(kcp, d, ports, args)
    state: dict[str, Any] = {"kcp": kcp, "server": server, "ports": ports,
                             "etcd_url": f"http://127.0.0.1:{ports['etcd']}", "dir": str(d),
                             "node_monitor_grace_period": args.node_monitor_grace_period}
    (d / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    admin_ctx = _ssl_admin(pki)
    insecure = _ssl_insecure()

    pid = spawn("etcd", argv["etcd"], d)
    pid_api = spawn("kube-apiserver", argv["kube-apiserver"], d)  # it retries etcd meanwhile
    wait("etcd /health", "etcd", d, pid, args.timeout, probe(f"{state['etcd_url']}/health", None, '"true"'))
    wait("kube-apiserver /readyz", "kube-apiserver", d, pid_api, args.timeout,
         probe(f"{server}/readyz", admin_ctx))
    pid_cm = spawn("kube-controller-manager", argv["kube-controller-manager"], d)
    pid_s = spawn("kube-scheduler", argv["kube-scheduler"], d)
    apply_rbac(kcp, d / "admin.kubeconfig")
    local = "https://127.0.0.1"
    wait("kube-scheduler /readyz", "kube-scheduler", d, pid_s, args.timeout,
         probe(f"{local}:{ports['scheduler']}/readyz", insecure))
    wait("kube-controller-manager /healthz", "kube-controller-manager", d, pid_cm, args.timeout,
         probe(f"{local}:{ports['controller_manager']}/healthz", insecure))
    # Its controllers really run once the serviceaccount controller has made the default ServiceAccount.
    wait("ServiceAccount default/default (controller-manager working)", "kube-controller-manager", d, pid_cm,
         args.timeout, probe(f"{server}/api/v1/namespaces/default/serviceaccounts/default", admin_ctx))
    if args.owner_pid:
        start_watchdog(d, args.owner_pid, args.purge_on_owner_exit)
    return state


# --------------------------------------------------------------------------------------------- metrics-server


def metrics_server_manifest(port: int, ca_pem: bytes) -> str:
    """metrics-server's rights (as its own manifests give them, to user system:metrics-server), the ExternalName
    Service the aggregator reaches it through, and the APIService v1beta1.metrics.k8s.io."""
    user = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:metrics-server"}
    labels = {"app.kubernetes.io/name": "metrics-server", "app.kubernetes.io/managed-by": "localcluster"}
    docs: list[dict[str, Any]] = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:metrics-server", "labels": labels},
         "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                   {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:metrics-server", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:metrics-server"},
         "subjects": [user]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "metrics-server:system:auth-delegator", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
         "subjects": [user]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "metrics-server-auth-reader", "namespace": "kube-system", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "extension-apiserver-authentication-reader"},
         "subjects": [user]},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "metrics-server", "namespace": "kube-system", "labels": labels},
         "spec": {"type": "ExternalName", "externalName": "localhost",
                  "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": "v1beta1.metrics.k8s.io", "labels": labels},
         "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                  "versionPriority": 100, "caBundle": base64.b64encode(ca_pem).decode(),
                  "service": {"name": "metrics-server", "namespace": "kube-system", "port": port}}},
    ]
    return "---\n".join(json.dumps(doc) + "\n" for doc in docs)


def metrics_server_binary(args: argparse.Namespace) -> str:
    if args.binary:
        return str(Path(args.binary).resolve())
    out = subprocess.run([str(HERE / "metrics-server.sh")], check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def stop_metrics_server(d: Path, state: dict[str, Any]) -> int:
    """Unregister metrics.k8s.io (a registered group nobody serves fails discovery, and with it namespace
    deletion), then stop the process."""
    if state.get("kcp") and (d / "admin.kubeconfig").exists():
        subprocess.run([state["kcp"], "kubectl", "--kubeconfig", str(d / "admin.kubeconfig"), "delete",
                        "--ignore-not-found", "--wait=false", "apiservice/v1beta1.metrics.k8s.io",
                        "-n", "kube-system", "service/metrics-server"], capture_output=True, check=False, timeout=60)
    pid = recorded_pids(d).get("metrics-server")
    if pid is not None and ours(pid, d):
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)
        if _running(pid):
            _signal_group(pid, signal.SIGKILL)
        _reap([pid])
    (d / "pids" / "metrics-server.pid").unlink(missing_ok=True)
    log("metrics-server stopped and unregistered")
    return 0


def cmd_metrics_server(args: argparse.Namespace) -> int:
    """Start metrics-server against the running cluster in --dir (idempotent) and wait until the apiserver serves
    metrics.k8s.io through it."""
    d: Path = args.dir
    state = load_state(d)
    if args.stop:
        return stop_metrics_server(d, state)
    if not state or health(d, state).get("kube-apiserver") != "ok":
        log(f"no running cluster in {d}: `up` first")
        return 1
    pki = d / "pki"
    ensure_pki(pki)
    kcp, server = state["kcp"], state["server"]
    pid = recorded_pids(d).get("metrics-server")
    port = int(state.get("metrics_server_port") or 0)
    running = pid is not None and ours(pid, d) and port
    if not running:
        port = free_port()
    # Its rights first: it reads the front-proxy CA from kube-system at start and stops when it cannot.
    proc = subprocess.run([kcp, "kubectl", "--kubeconfig", str(d / "admin.kubeconfig"), "apply", "--server-side",
                           "--force-conflicts", "--field-manager=localcluster", "-f", "-"],
                          input=metrics_server_manifest(port, (pki / "ca.crt").read_bytes()), text=True,
                          capture_output=True, check=False)
    if proc.returncode != 0:
        log(f"registering metrics-server failed: {proc.stderr.strip()}")
        return 1
    if not running:
        binary = metrics_server_binary(args)
        kubeconfig = d / "metrics-server.kubeconfig"
        write_kubeconfig(kubeconfig, pki, server, "system:metrics-server", "metrics-server")
        argv = [binary, f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", f"--secure-port={port}",
                f"--tls-cert-file={pki / 'metrics-server-serving.crt'}",
                f"--tls-private-key-file={pki / 'metrics-server-serving.key'}",
                # A vnode's kubelet port is its Node's (vkprovider's KUBELET_PROXY_PORT), its address the
                # holding replica's, verified against the cluster CA (pki/kubelet-serving.crt).
                "--kubelet-use-node-status-port", "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                # It must stay below nine tenths of the resolution (10s at least); vkprovider answers within 3 s.
                f"--metric-resolution={args.metric_resolution}", "--kubelet-request-timeout=8s", f"--v={args.v}"]
        pid = spawn("metrics-server", argv, d)
        state["metrics_server_port"] = port
        (d / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    try:
        wait("the APIService v1beta1.metrics.k8s.io Available", "metrics-server", d, pid, args.timeout,
             probe(f"{server}/apis/metrics.k8s.io/v1beta1", _ssl_admin(pki), '"nodes"'))
    except UpError as err:
        log(f"FAILED: {err}")
        print(log_tail(d, "metrics-server"), file=sys.stderr)
        return 1
    log(f"metrics-server on 127.0.0.1:{port} (pid {pid}), serving metrics.k8s.io: kubectl top node")
    return 0


# ------------------------------------------------------------------------------------------ down, status


def cmd_down(args: argparse.Namespace) -> int:
    d: Path = args.dir
    if not d.exists():
        log(f"nothing at {d}")
        return 0
    stopped = stop_all(d)
    left = stray_pids(d)
    if left:
        log(f"processes still running: {left}")
        return 1
    log(f"stopped {', '.join(stopped) or 'nothing (was not running)'}")
    if args.purge:
        shutil.rmtree(d, ignore_errors=True)
        if d.resolve() == DEFAULT_DIR.resolve():
            (REPO / ".local" / "kubeconfig").unlink(missing_ok=True)
        log(f"removed {d}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    d: Path = args.dir
    state = load_state(d)
    comps = health(d, state) if state else dict.fromkeys(COMPONENTS, "not running")
    up = all(v == "ok" for v in comps.values())
    if args.json:
        print(json.dumps({"up": up, "components": comps, **state,
                          "admin_kubeconfig": str(d / "admin.kubeconfig"),
                          "provider_kubeconfig": str(d / "vkprovider.kubeconfig")}, indent=2))
    else:
        pids = recorded_pids(d)
        for name in COMPONENTS:
            print(f"{name:24} pid {pids.get(name, '-')!s:>7}  {comps[name]}")
        down = all(v == "not running" for v in comps.values())
        print(f"cluster: {'UP' if up else 'DOWN' if down else 'DEGRADED'}")
        if state and up:
            print(summary(d, state))
    return 0 if up else 1


def cmd_watchdog(args: argparse.Namespace) -> int:
    """Stops the cluster when the process that asked for it (e.g. pytest) dies without calling `down`."""
    while (args.dir / "state.json").exists():
        try:
            os.kill(args.owner_pid, 0)
        except ProcessLookupError:
            log(f"owner {args.owner_pid} is gone: stopping the cluster")
            return cmd_down(args)
        except PermissionError:
            pass
        time.sleep(1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=lambda p: Path(p).resolve(), default=DEFAULT_DIR,
                        help="state directory (default: .local/cluster)")
    up = sub.add_parser("up", parents=[common], help="start (idempotent)")
    up.add_argument("--k8s-version", default=None, help="default: hack/controlplane/VERSION")
    up.add_argument("--kcp", default=None, help="path to a kcp binary (default: $KCP_BIN or build.sh)")
    up.add_argument("--apiserver-port", type=int, default=0, help="fixed port (default: a free one)")
    up.add_argument("--node-monitor-grace-period", default="20s")
    up.add_argument("--node-monitor-period", default="2s")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for each component")
    up.add_argument("--attempts", type=int, default=3, help="start attempts when a component dies starting")
    up.add_argument("--fsync", action="store_true", help="let etcd fsync (default: off, faster)")
    up.add_argument("--audit", action="store_true",
                    help="audit-log vkprovider's requests to DIR/logs/audit.log (tests read who wrote what)")
    up.add_argument("--v", default="1", help="klog verbosity of the Kubernetes components")
    up.add_argument("--apiserver-arg", action="append", default=[], help="extra kube-apiserver flag")
    up.add_argument("--controller-manager-arg", action="append", default=[], help="extra flag")
    up.add_argument("--scheduler-arg", action="append", default=[], help="extra kube-scheduler flag")
    up.add_argument("--owner-pid", type=int, default=0, help="stop the cluster when this process exits")
    up.add_argument("--purge-on-owner-exit", action="store_true", help="with --owner-pid: also delete --dir")
    down = sub.add_parser("down", parents=[common], help="stop everything started by up")
    down.add_argument("--purge", action="store_true", help="also delete the dir (etcd data, certs, logs)")
    status = sub.add_parser("status", parents=[common], help="print state; exit 0 only when healthy")
    status.add_argument("--json", action="store_true")
    ms = sub.add_parser("metrics-server", parents=[common], help="run metrics-server (kubectl top) on the cluster")
    ms.add_argument("--binary", default=None, help="metrics-server binary (default: metrics-server.sh installs it)")
    ms.add_argument("--metric-resolution", default="15s", help="how often it scrapes every node (at least 10s)")
    ms.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the APIService")
    ms.add_argument("--v", default="1", help="klog verbosity")
    ms.add_argument("--stop", action="store_true", help="unregister metrics.k8s.io and stop metrics-server")
    dog = sub.add_parser("_watchdog", parents=[common])
    dog.add_argument("--owner-pid", type=int, required=True)
    dog.add_argument("--purge", action="store_true")
    args = parser.parse_args(argv)
    handler = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "metrics-server": cmd_metrics_server,
               "_watchdog": cmd_watchdog}[args.cmd]
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
