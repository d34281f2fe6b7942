"""The README as printed: `make run` (the embedded default), then the README's kubectl commands, then every outcome
of the README's samples table, then the seeds' manifests verbatim.

Nothing here is a copy of the README: the commands and the expected outcomes are read from README.md, so when the
README changes this test changes with it. `make run` starts its own local control plane in .local/cluster and its
own simulated bases on the ports it prints; the test stops it with Ctrl-C (SIGINT), as a user would.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import figure, wait_for_sync

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
SEEDS = Path(__file__).resolve().parent / "seeds"


def code_block_after(marker: str) -> list[str]:
    """The lines of the first ```sh block after ``marker`` in the README (comments stripped)."""
    tail = README[README.index(marker):]
    block = re.search(r"```sh\n(.*?)```", tail, re.S)
    assert block, f"no sh block after {marker!r}"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.split("#", 1)[0].strip()]


def expected_outcomes() -> dict[str, dict[str, int]]:
    """`name: Phase=N ...` from the last column of the samples table."""
    table = README[README.index("## Samples"):]
    table = table[: table.index("\n## ", 5)] if "\n## " in table[5:] else table
    outcomes: dict[str, dict[str, int]] = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`samples/"):
            continue
        spec = re.match(r"`([\w.-]+): ((?:\w+=\d+ ?)+)`", cells[2])
        assert spec, f"samples table row without an outcome: {row}"
        outcomes[spec.group(1)] = {k: int(v) for k, v in (p.split("=") for p in spec.group(2).split())}
    return outcomes


def kubectl_argv(kcp: str) -> list[str]:
    """`kubectl` as the README means it: the one on PATH, else the project's own build."""
    found = shutil.which("kubectl")
    return [found] if found else [kcp, "kubectl"]


class MakeRun:
    """`make run` in its own process group, its output kept."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        self.lines: list[str] = []
        self.proc = subprocess.Popen(["make", "run"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, process_group=0)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def running(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"make run exited with {self.proc.returncode}:\n{self.output()}")
        return any("simulated bases" in line and "running" in line for line in self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def make_run() -> Any:
    # Only this test's `make run` may own .local/cluster's control plane and the fixed ports it uses.
    subprocess.run([sys.executable, str(REPO / "hack/controlplane/localcluster.py"), "down", "--dir",
                    str(REPO / ".local/cluster")], capture_output=True, check=False, timeout=120)
    run = MakeRun()
    try:
        wait_for_sync(run.running, timeout=300, interval=0.5, what="make run to say its bases are running")
        # make run's cluster keeps what an earlier (interrupted) run left: start from the README's state.
        kubectl = kubectl_argv(yaml.safe_load((REPO / ".local" / "cluster" / "state.json").read_text())["kcp"])
        for leftover in ("samples/", str(SEEDS / "seed-003-deployment.yaml")):
            kc(kubectl, "delete", "-f", leftover, "--wait=true", "--ignore-not-found", timeout=120)
        yield run
    finally:
        run.stop()


def sh(argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=REPO, text=True, capture_output=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc


def readme_kubectl(line: str, kubectl: list[str]) -> list[str]:
    argv = shlex.split(line)
    assert argv[0] == "kubectl", line
    return [*kubectl, *argv[1:]]


def kc(kubectl: list[str], *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """kubectl with make run's admin kubeconfig (what the README's commands use)."""
    return sh([*kubectl, "--kubeconfig", ".local/kubeconfig", *args], check=check, timeout=timeout)


def pods_by_sample(kubectl: list[str]) -> dict[str, list[dict[str, Any]]]:
    out = kc(kubectl, "get", "pods", "-n", "default", "-o", "yaml")
    pods: dict[str, list[dict[str, Any]]] = {}
    for pod in yaml.safe_load(out.stdout)["items"]:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        sample = (pod["metadata"].get("labels") or {}).get("sample")
        if sample:
            pods.setdefault(sample, []).append(pod)
    return pods


def phases(pods: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pod in pods:
        phase = pod["status"].get("phase", "Pending")
        ready = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}.get("Ready")
        if phase == "Running" and ready != "True":
            phase = "Running(not ready)"
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def test_the_readme_demo_as_printed(make_run: MakeRun) -> None:
    assert "make run" in code_block_after("## The two commands")[0]
    state = (REPO / ".local" / "cluster" / "state.json")
    kcp = yaml.safe_load(state.read_text())["kcp"]
    kubectl = kubectl_argv(kcp)
    commands = code_block_after("With `make run` going")
    assert any("apply -f samples/" in c for c in commands), commands

    def seven_ready() -> bool:
        out = kc(kubectl, "get", "nodes", "-o", "yaml").stdout
        nodes = yaml.safe_load(out)["items"]
        ready = [n for n in nodes if {c["type"]: c["status"] for c in n["status"].get("conditions", [])}
                 .get("Ready") == "True"]
        return len(ready) == 7

    wait_for_sync(seven_ready, timeout=60, interval=0.5, what="make run's 7 vnodes Ready")
    outputs = [sh(readme_kubectl(line, kubectl)) for line in commands]
    nodes_out = outputs[0].stdout
    for zone in ("zone-a", "zone-b", "zone-c"):
        assert zone in nodes_out, nodes_out  # the README promises zones: -L shows them

    expected = expected_outcomes()
    assert {"test-module-deployment", "test-module-deployment-spread", "test-module-daemonset", "biz1-pod",
            "biz1-pod-v2"} <= set(expected), expected
    started = time.monotonic()
    seen: dict[str, Any] = {}

    def all_as_documented() -> bool:
        pods = pods_by_sample(kubectl)
        seen.update({name: phases(pods.get(name, [])) for name in expected})
        return all(seen[name] == want for name, want in expected.items())

    try:
        wait_for_sync(all_as_documented, timeout=60, interval=1.0, what="every sample in its documented state")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nseen: {seen}\nexpected: {expected}\nmake run:\n{make_run.output()}") from None
    figure(f"readme_samples_settled_s = {time.monotonic() - started:.1f}")
    pods = pods_by_sample(kubectl)
    pending = [p for p in pods["test-module-deployment-spread"] if p["status"].get("phase") == "Pending"]
    scheduled = {c["type"]: c for c in pending[0]["status"]["conditions"]}["PodScheduled"]
    assert scheduled["reason"] == "Unschedulable" and "anti-affinity" in scheduled["message"], scheduled
    zones = {}
    for pod in pods["test-module-deployment-spread"]:
        if pod["status"].get("phase") == "Running":
            node = kc(kubectl, "get", "node", pod["spec"]["nodeName"], "-o",
                      "jsonpath={.metadata.labels.topology\\.kubernetes\\.io/zone}").stdout
            zones[node] = zones.get(node, 0) + 1
    assert zones == {"zone-a": 1, "zone-b": 1, "zone-c": 1}, zones
    for line in code_block_after("Once a module pod runs"):
        logs = sh(readme_kubectl(line, kubectl)).stdout
        assert "installing from" in logs and "installed in" in logs and "state ACTIVATED" in logs, logs
        figure(f"readme kubectl logs: {logs.strip().splitlines()[-1][:160]}")
    for line in code_block_after("`kubectl top node` shows"):
        top: dict[str, Any] = {}

        def every_vnode_measured(line: str = line, top: dict[str, Any] = top) -> bool:
            out = sh(readme_kubectl(line, kubectl), check=False)
            top["out"] = out.stdout + out.stderr
            rows = [row.split() for row in out.stdout.strip().splitlines()[1:]]
            return out.returncode == 0 and len(rows) == 7 and all(
                row[0].startswith("vnode.") and row[1].endswith("m") and row[3].endswith("Mi") for row in rows)

        try:
            wait_for_sync(every_vnode_measured, timeout=120, interval=2.0, what="kubectl top node on every vnode")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {top.get('out')} (is metrics-server installed? make metrics-server)\n"
                                 f"make run:\n{make_run.output()}") from None
        figure("readme kubectl top node", "\n" + str(top["out"]).strip())
        memory = {row.split()[3] for row in str(top["out"]).strip().splitlines()[1:]}
        assert len(memory) > 1, top["out"]  # each base says its own figures
    failed = pods["biz1-pod"][0]["status"]
    assert failed["reason"] == "BizDeactivate" and "0.0.2" in failed["message"], failed
    # Nothing fights: a later look shows the same, with no pod created since (no BizDeactivate loop).
    names_before = {p["metadata"]["name"] for ps in pods.values() for p in ps}
    time.sleep(5)
    again = pods_by_sample(kubectl)
    assert {p["metadata"]["name"] for ps in again.values() for p in ps} == names_before
    assert {name: phases(again.get(name, [])) for name in expected} == seen

    kc(kubectl, "delete", "-f", "samples/", "--wait=true", timeout=120)
    wait_for_sync(lambda: not pods_by_sample(kubectl), timeout=60, interval=1.0, what="the samples gone")


def test_each_sample_applies_alone(make_run: MakeRun) -> None:
    """Each file alone reaches the table's state, except biz1-pod, whose BizDeactivate needs module-pod-v2."""
    kcp = yaml.safe_load((REPO / ".local" / "cluster" / "state.json").read_text())["kcp"]
    kubectl = kubectl_argv(kcp)
    expected = expected_outcomes()
    alone = {**expected, "biz1-pod": {"Running": 1}}
    files = {yaml.safe_load(f.read_text())["metadata"]["name"]: f for f in sorted((REPO / "samples").glob("*.yaml"))}
    for sample in sorted((REPO / "samples").glob("*.yaml")):
        relative = str(sample.relative_to(REPO))
        kc(kubectl, "apply", "-f", relative)
        doc = yaml.safe_load(sample.read_text())
        template = (doc.get("spec") or {}).get("template") or doc
        name = (template["metadata"].get("labels") or {})["sample"]
        seen: dict[str, Any] = {}

        def as_documented(name: str = name, seen: dict[str, Any] = seen) -> bool:
            seen["phases"] = phases(pods_by_sample(kubectl).get(name, []))
            return bool(seen["phases"] == alone[name])

        try:
            wait_for_sync(as_documented, timeout=60, interval=1.0, what=f"{relative} alone")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {seen}, expected {alone[name]}") from None
        kc(kubectl, "delete", "-f", relative, "--wait=true", timeout=120)
        wait_for_sync(lambda name=name: name not in pods_by_sample(kubectl), timeout=60, interval=1.0,
                      what=f"{relative} gone")
    assert files


def test_the_seeds_manifests_verbatim(make_run: MakeRun) -> None:
    kcp = yaml.safe_load((REPO / ".local" / "cluster" / "state.json").read_text())["kcp"]
    kubectl = kubectl_argv(kcp)
    # Seed 000 as printed is refused by Kubernetes itself (its selector does not match its template labels):
    # samples/module-deployment.yaml is it with that fixed, and runs (the test above).
    refused = kc(kubectl, "apply", "--dry-run=server", "-f", str(SEEDS / "seed-000-deployment.yaml"), check=False)
    assert refused.returncode != 0 and "does not match template" in refused.stderr, refused.stderr
    # Seed 003 as printed (the samples are gone: its name is seed 000's, its pods share the spread sample's
    # labels): it runs its one replica on a base of version 1.0.0.
    kc(kubectl, "apply", "-f", str(SEEDS / "seed-003-deployment.yaml"))

    def seed_003_running() -> Any:
        out = kc(kubectl, "get", "pods", "-n", "default", "-l", "module.koupleless.io/name=biz1", "-o", "yaml")
        pods = [p for p in yaml.safe_load(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]
        ready = [p for p in pods if p["status"].get("phase") == "Running"
                 and {c["type"]: c["status"] for c in p["status"].get("conditions", [])}.get("Ready") == "True"]
        return ready if len(pods) == 1 and len(ready) == 1 else None

    try:
        pods = wait_for_sync(seed_003_running, timeout=60, interval=1.0, what="seed 003's Deployment Running")
        node = pods[0]["spec"]["nodeName"]
        label = "jsonpath={.metadata.labels.base\\.koupleless\\.io/version}"
        version = kc(kubectl, "get", "node", node, "-o", label).stdout
        assert version == "1.0.0"
    finally:  # make run's cluster outlives the test: leave it as the README's demo expects it
        kc(kubectl, "delete", "-f", str(SEEDS / "seed-003-deployment.yaml"), "--wait=true", "--ignore-not-found",
           timeout=120)


RELEASES = (REPO / "docs" / "releases.md").read_text()


def test_the_release_walkthrough_as_printed(make_run: MakeRun) -> None:
    """docs/releases.md's "Try it on `make run`" commands, run as printed, each followed by what it leads to."""
    kcp = yaml.safe_load((REPO / ".local" / "cluster" / "state.json").read_text())["kcp"]
    kubectl = kubectl_argv(kcp)
    tail = RELEASES[RELEASES.index("### Try it on `make run`"):]
    block = re.search(r"```sh\n(.*?)```", tail, re.S)
    assert block
    commands = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    name = "test-module-deployment-batched"

    def state() -> tuple[bool, dict[str, Any], dict[str, int]]:
        out = kc(kubectl, "get", "deployment", name, "-o", "yaml").stdout
        d = yaml.safe_load(out)
        raw = (d["metadata"].get("annotations") or {}).get("release.koupleless.io/state") or "{}"
        versions: dict[str, int] = {}
        for pod in pods_by_sample(kubectl).get(name, []):
            ready = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}.get("Ready") == "True"
            if ready:
                version = pod["spec"]["containers"][0]["env"][0]["value"]
                versions[version] = versions.get(version, 0) + 1
        return bool(d["spec"].get("paused")), yaml.safe_load(raw), versions

    def reaches(paused: bool, batch: int, phase: str, versions: dict[str, int]) -> None:
        seen: dict[str, Any] = {}

        def there() -> bool:
            now = state()
            seen["now"] = now
            return now[0] == paused and now[1].get("batch") == batch and now[1].get("phase") == phase and \
                now[2] == versions

        try:
            wait_for_sync(there, timeout=90, interval=0.5, what=f"batch {batch} {phase}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {seen}") from None

    after = {
        "apply": (False, 3, "Done", {"0.0.1": 3}),
        "patch": (True, 1, "Waiting", {"0.0.1": 2, "0.0.2": 1}),
        "annotate": (True, 2, "Waiting", {"0.0.1": 1, "0.0.2": 2}),
        "resume": (False, 3, "Done", {"0.0.2": 3}),
        "undo": (True, 1, "Waiting", {"0.0.2": 2, "0.0.1": 1}),
    }
    try:
        for line in commands:
            out = sh(readme_kubectl(line, kubectl))
            words = shlex.split(line)[3:]  # after `kubectl --kubeconfig <file>`
            verb = words[1] if words[0] == "rollout" else words[0]
            if verb == "get" and words[1] == "events":
                assert "BatchReady" in out.stdout and "confirmed-batch=2" in out.stdout, out.stdout
            elif verb == "get":
                assert out.stdout.startswith("true ") and '"phase":"Waiting"' in out.stdout, out.stdout
            else:
                reaches(*after[verb])
    finally:
        kc(kubectl, "delete", "-f", "samples/module-deployment-batched.yaml", "--wait=true", "--ignore-not-found",
           timeout=120)


def test_the_capacity_and_memory_pressure_lines_as_printed(make_run: MakeRun) -> None:
    """The README's capacity and memory-pressure lines, run as printed: the demo base's own pod capacity (its
    max-pods label) next to the others' default; the control API call fills a base's Metaspace, and within the
    health interval the kubectl line shows the kubelet's reason and the node-lifecycle controller's taint. The
    pressure is cleared afterwards (the README's ``metaspaceMiB=90``), so the demo stays as the README describes it."""
    kubectl = kubectl_argv(yaml.safe_load((REPO / ".local" / "cluster" / "state.json").read_text())["kcp"])
    capacity, fill, look = code_block_after("Each vnode's pod capacity and memory pressure")
    assert fill.startswith("curl ") and "metaspaceMiB=480" in fill and "metaspaceMiB=90" in README
    node = shlex.split(look)[5]
    table: dict[str, Any] = {}

    def every_vnode_sized() -> bool:
        # make run's cluster keeps the Nodes of an earlier run: wait for this run's vkprovider to have sized them
        out = sh(readme_kubectl(capacity, kubectl), check=False).stdout
        table["out"] = out
        rows = [row.split() for row in out.strip().splitlines()[1:]]
        pods = {row[0]: row[1] for row in rows if len(row) == 3 and row[2] != "<none>"}
        return len(rows) == 7 and node in pods and all(
            p == ("20" if n.startswith("vnode.demo-") else "200") for n, p in pods.items()) and len(pods) == 7

    try:
        wait_for_sync(every_vnode_sized, timeout=90, interval=0.5,
                      what="make run's 7 vnodes sized: the demo base's own 20 pods, the others VKP_NODE_MAX_PODS")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {table.get('out')}") from None
    figure("readme capacity", "\n" + str(table["out"]).strip())
    shown: dict[str, str] = {}

    def says(reason: str, tainted: bool) -> bool:
        shown["out"] = sh(readme_kubectl(look, kubectl)).stdout.strip()
        words = shown["out"].split()
        return bool(words) and words[0] == reason and \
            ("node.kubernetes.io/memory-pressure" in words[1:]) is tainted

    try:
        started = time.monotonic()
        assert '"metaspaceUsedBytes":503316480' in sh(shlex.split(fill)).stdout.replace(" ", "")
        try:
            wait_for_sync(lambda: says("KubeletHasInsufficientMemory", True), timeout=90, interval=1.0,
                          what="MemoryPressure and its taint on make run's base")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {shown}") from None
        figure(f"readme_pressure_shown_s = {time.monotonic() - started:.1f}")
    finally:
        started = time.monotonic()
        sh(shlex.split(fill.replace("metaspaceMiB=480", "metaspaceMiB=90")))
        wait_for_sync(lambda: says("KubeletHasSufficientMemory", False), timeout=90, interval=1.0,
                      what="the pressure cleared again")
        figure(f"readme_pressure_cleared_s = {time.monotonic() - started:.1f}")
