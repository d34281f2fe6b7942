"""``make bench``: vkprovider's speed and cost against this machine's own ceiling.

One run brings up the local control plane (.local/bench-cluster), then runs, in order:

- ``limit``    the ceiling: apiserver write throughput (a raw asyncio client creating and patching ConfigMaps),
               scheduler-only placement (N plain fake Nodes, M Deployments of N replicas: time to all bound), and
               the floors of burst and rollout: the same Deployments (1, then M) with a null kubelet in this
               process that marks each pod Running the moment it is bound (the control plane's time alone);
- ``register`` N simulated bases -> N Ready vnodes: time, API writes per node;
- ``density``  pod startup at a sustained rate (the Kubernetes density SLO's shape): bare module pods created at
               R pods/s for T seconds onto the N vnodes, each its own biz -> create->Running and bound->Running
               p50/p99; then the pods are deleted (uninstalls) before the next scenario;
- ``burst``    one Deployment of N replicas (a module pod per vnode) at once -> p50/p99 bound->Running, and how
               much of it is vkprovider's own (its pod start histogram) and the apiserver's answer to its writes;
               then the pods are deleted;
- ``rollout``  the same M x N Deployments on the vnodes -> all Running: total, ratio to ``limit``'s scheduler-only
               time, p50/p99 bound->Running; vkprovider RSS against running pods (bytes per pod, linearity);
- ``steady``   idle bases: vkprovider CPU share, RSS, API writes per node per minute;
- ``churn``    a rolling update of every module: total time, installs and uninstalls the simulator counted;
- ``replicas`` several replicas behind one round-robin endpoint (as a Service): one replica with R bases, then
               3 replicas with 3R bases and a module on each (R: --replica-bases; CPU and RSS per replica against
               the one replica's), then one replica SIGKILLed: re-own p50/p99/max, Ready flips of vnodes and pods,
               installs, uninstalls.

vkprovider, the simulator and the control plane are separate processes; vkprovider uses the restricted RBAC
identity and its production defaults. The control plane is the tests' and ``make run``'s (localcluster.py): its
controller-manager runs every default controller, and ``limit``'s floors run on that same cluster in the same run, so
floors and scenarios compare on one control plane. Each scenario reports every process's cores (``cores_<name>``)
and its run-queue wait (``runq_wait_<name>``: cores' worth of time it was ready to run but had no CPU), so a reader sees
who uses the machine and who is slowed by the others on it. Results: ``bench/results/<scenario>.json``
(``{"scenario", "params", "metrics", "targets"}``) and ``<scenario>.png``; a table on stdout.
It reports; it never fails ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from bench import cores
from bench.context import CLUSTER_DIR, Bench
from bench.report import RESULTS, log, print_table
from bench.scenarios import SCENARIOS, plan


async def run(b: Bench) -> int:
    """Bring up the cluster, run the scenarios asked for (and what they need) in order, write each result, print
    the table; everything started is stopped, whatever happens."""
    todo = plan(b.args.scenarios.split(","))
    if b.args.split_cores:
        cores.pin_threads(os.getpid(), {1})  # vkprovider and the simulator, started from here, inherit CPU 1
    b.cluster_up()
    if b.args.split_cores:
        control_plane = {p.stem: int(p.read_text()) for p in (CLUSTER_DIR / "pids").glob("*.pid")}
        for pid in control_plane.values():
            cores.pin_threads(pid, {0})
        log(f"split cores: the control plane ({', '.join(sorted(control_plane))}) on CPU 0; vkprovider, the "
            "simulator and the bench on CPU 1")
    await b.connect()
    try:
        for name in todo:
            result = await SCENARIOS[name](b)
            result.write(b.results_dir)
            b.results.append(result)
    finally:
        await b.close()
    print_table(b.results, b.results_dir)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 bases, 60 s steady state (about 5 minutes)")
    parser.add_argument("--bases", type=int, default=None, help="simulated bases (1000; --quick: 100)")
    parser.add_argument("--modules", type=int, default=5, help="modules (Deployments) per base (5)")
    parser.add_argument("--steady-seconds", type=float, default=None, help="idle period (300; --quick: 60)")
    parser.add_argument("--heartbeat-interval", type=float, default=12.0, help="base heartbeat period (12 s)")
    parser.add_argument("--scenarios", default="limit,register,density,burst,rollout,steady,churn,replicas")
    parser.add_argument("--replica-bases", type=int, default=334,
                        help="replicas: bases per replica (334: the failover is measured at 1,000 bases; 1,000 per "
                             "replica needs more than this machine's 2 cores: the apiserver's PATCH latency passes "
                             "1 s and lease renewals fall behind)")
    parser.add_argument("--density-rate", type=float, default=20.0, help="density: pods created per second (20)")
    parser.add_argument("--density-seconds", type=float, default=None,
                        help="density: seconds of creating (120; --quick: 30)")
    parser.add_argument("--timeout", type=float, default=900.0, help="per waiting step (s)")
    parser.add_argument("--split-cores", action="store_true",
                        help="the control plane on CPU 0, vkprovider, the simulator and the bench on CPU 1, as in a "
                             "cluster where vkprovider runs on a node of its own: what vkprovider costs the "
                             "control plane's CPU is left out (results in bench/results/split-cores/)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy-profile vkprovider during register, burst, rollout and steady "
                             "(bench/results/<scenario>-profile.txt; needs py-spy)")
    args = parser.parse_args(argv)
    if args.bases is None:
        args.bases = 100 if args.quick else 1000
    if args.steady_seconds is None:
        args.steady_seconds = 60.0 if args.quick else 300.0
    if args.density_seconds is None:
        args.density_seconds = 30.0 if args.quick else 120.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = RESULTS
    if args.split_cores:
        if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
            print("bench: --split-cores needs CPUs 0 and 1", file=sys.stderr)
            return 2
        results = RESULTS / "split-cores"
    return asyncio.run(run(Bench(args, results)))


if __name__ == "__main__":
    raise SystemExit(main())
