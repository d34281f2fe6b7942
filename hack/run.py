"""`make run`: vkprovider in the foreground with simulated bases; Ctrl-C stops everything it started.

Without KUBECONFIG it brings up the local control plane first (and stops it again at the end) and runs vkprovider
with the restricted identity the Helm chart would give it. With KUBECONFIG it uses that cluster as it is. When
metrics-server is installed (`make metrics-server`; `make test` installs it too) it runs on the local control plane
as well, so `kubectl top node` shows each base's CPU and memory: vkprovider's kubelet API then serves on 127.0.0.1
with a certificate of the cluster's CA, which metrics-server verifies.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCALCLUSTER = ROOT / "hack/controlplane/localcluster.py"
PY = sys.executable


ZONES = "zone-a,zone-b,zone-c"


def sim_groups(bases: int) -> list[list[str]]:
    """The simulated bases every sample in samples/ is written for (see the README's samples table).

    The seeds' Deployments ask for base version 1.1.1 (seed 000) and 1.0.0 (seed 003, spread over zones), the
    DaemonSet for every base named base; the BizDeactivate demo (module-pod-v1/v2) has a base of its own in
    cluster "demo", which no other sample selects, and says its own pod capacity (20, the README's capacity line).
    """
    if bases <= 0:
        return []
    groups = []
    for i, version in enumerate(("1.1.1", "1.0.0")):
        groups.append(["--bases", str(bases), "--base-version", version, "--zone", ZONES,
                       "--identity-prefix", f"base-{version.replace('.', '')}", "--control-port", str(7780 + i)])
    groups.append(["--bases", "1", "--base-version", "2.0.0", "--cluster-name", "demo", "--identity-prefix",
                   "demo", "--control-port", "7782", "--max-pods", "20"])
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bases", type=int, default=3, help="simulated bases per base version (0 for none)")
    parser.add_argument("--sim-args", default="", help="extra arguments for `vkprovider sim`")
    args = parser.parse_args()
    env = dict(os.environ)
    started_cluster = False
    cluster_dir = ROOT / ".local" / "cluster"
    metrics_server = None
    if not env.get("KUBECONFIG"):
        subprocess.run([PY, str(LOCALCLUSTER), "up", "--dir", str(cluster_dir)], check=True)
        started_cluster = True
        env["KUBECONFIG"] = str(cluster_dir / "vkprovider.kubeconfig")
        print(f"local control plane up; admin kubeconfig: {ROOT / '.local/kubeconfig'}", flush=True)
        installed = subprocess.run([str(ROOT / "hack/controlplane/metrics-server.sh"), "--installed"],
                                   stdout=subprocess.PIPE, text=True, check=False)
        if installed.returncode == 0:
            metrics_server = installed.stdout.strip()
            pki = cluster_dir / "pki"
            env.setdefault("VKP_KUBELET_ADDRESS", "127.0.0.1")
            env.setdefault("VKP_KUBELET_TLS_CERT", str(pki / "kubelet-serving.crt"))
            env.setdefault("VKP_KUBELET_TLS_KEY", str(pki / "kubelet-serving.key"))
        else:
            print("metrics-server is not installed: `make metrics-server` once for kubectl top node", flush=True)
    port = env.setdefault("HTTP_TUNNEL_LISTEN_PORT", "7777")
    env.setdefault("ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE", "true")  # samples/module-deployment-peer.yaml
    # Secure by default here too: each simulated base sends its own token, derived from this session's secret.
    secret = env.setdefault("VKP_HEARTBEAT_SECRET", secrets.token_hex(16))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([PY, "-m", "vkprovider", "run"], env=env))
        for group in sim_groups(args.bases):
            sim = [PY, "-m", "vkprovider", "sim", *group, "--endpoint", f"http://127.0.0.1:{port}",
                   "--token-secret", secret, *args.sim_args.split()]
            procs.append(subprocess.Popen(sim, env=env))
        if metrics_server is not None:
            subprocess.run([PY, str(LOCALCLUSTER), "metrics-server", "--dir", str(cluster_dir), "--binary",
                            metrics_server], check=True)
        total = 2 * args.bases + (1 if args.bases > 0 else 0)
        print(f"vkprovider and {total} simulated bases (versions 1.1.1 and 1.0.0 in zones zone-a..c, one demo base) "
              f"running; try: kubectl --kubeconfig {ROOT / '.local/kubeconfig'} get nodes -L "
              "topology.kubernetes.io/zone   (Ctrl-C stops)", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return next(p.returncode for p in procs if p.returncode is not None) or 0
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if metrics_server is not None:  # its APIService goes too: a registered group nobody serves stalls discovery
            subprocess.run([PY, str(LOCALCLUSTER), "metrics-server", "--dir", str(cluster_dir), "--stop"],
                           check=False)
        if started_cluster:
            subprocess.run([PY, str(LOCALCLUSTER), "down", "--dir", str(cluster_dir)], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
