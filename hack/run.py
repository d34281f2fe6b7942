"""`make run`: vkprovider in the foreground with simulated bases; Ctrl-C stops everything it started.

Without KUBECONFIG it brings up the local control plane first (and stops it again at the end) and runs vkprovider
with the restricted identity the Helm chart would give it. With KUBECONFIG it uses that cluster as it is.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bases", type=int, default=3, help="simulated bases per base version (0 for none)")
    parser.add_argument("--sim-args", default="", help="extra arguments for `vkprovider sim`")
    args = parser.parse_args()
    env = dict(os.environ)
    started_cluster = False
    cluster_dir = ROOT / ".local" / "cluster"
    if not env.get("KUBECONFIG"):
        subprocess.run([PY, str(ROOT / "hack/controlplane/localcluster.py"), "up", "--dir", str(cluster_dir)],
                       check=True)
        started_cluster = True
        env["KUBECONFIG"] = str(cluster_dir / "vkprovider.kubeconfig")
        print(f"local control plane up; admin kubeconfig: {ROOT / '.local/kubeconfig'}", flush=True)
    port = env.setdefault("HTTP_TUNNEL_LISTEN_PORT", "7777")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([PY, "-m", "vkprovider", "run"], env=env))
        if args.bases > 0:
            # The seeds' samples ask for base version 1.1.1 (Deployment) and 1.0.0 (anti-affinity, DaemonSet):
            # run both kinds so every sample in samples/ schedules as written.
            for i, version in enumerate(("1.1.1", "1.0.0")):
                sim = [PY, "-m", "vkprovider", "sim", "--bases", str(args.bases), "--base-version", version,
                       "--identity-prefix", f"base-{version.replace('.', '')}", "--control-port", str(7780 + i),
                       "--endpoint", f"http://127.0.0.1:{port}", *args.sim_args.split()]
                procs.append(subprocess.Popen(sim, env=env))
        print(f"vkprovider and {2 * args.bases} simulated bases (versions 1.1.1 and 1.0.0) running; try: "
              f"kubectl --kubeconfig {ROOT / '.local/kubeconfig'} get nodes -w   (Ctrl-C stops)", flush=True)
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
        if started_cluster:
            subprocess.run([PY, str(ROOT / "hack/controlplane/localcluster.py"), "down", "--dir", str(cluster_dir)],
                           check=False)


if __name__ == "__main__":
    raise SystemExit(main())
