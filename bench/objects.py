"""The Kubernetes objects the scenarios create: module Deployments (samples/module-deployment.yaml, renamed), bare
module pods, fake Nodes and their Ready status.

Why it exists: the same Deployment runs on vkprovider's vnodes (burst, rollout, churn) and on limit's fake nodes
(scheduler-only and the null kubelet floors), so the two compare only if one function builds both, differing in
nothing but where the pods may go. A fake node is shaped as a vnode for the scheduler (the base labels the sample's
node affinity asks for, the virtual-node taint), so a floor's pods cost the scheduler what vkprovider's do. Until
issue 31's fourth stop they went by a plain nodeSelector to untainted nodes: the scheduler spent 27 CPU-s on the
kubelet fleet's 5,000 pods against 48 on vkprovider's (one run); shaped alike, 33, 42 and 35 against 39, 50 and 49
(three runs, docs/performance.md).
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import yaml

from tests.integration.harness import SEED_TOLERATION
from vkprovider.core.node import TAINT_VIRTUAL_NODE

ROOT = Path(__file__).resolve().parent.parent
ENV = "bench"  # the vnodes' env (virtual-kubelet.koupleless.io/env) of every scenario but replicas
FAKE_LABEL = "bench.vkprovider.io/fake"


def _sample() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "samples" / "module-deployment.yaml").read_text()))


def _affinity_terms(dep: dict[str, Any]) -> list[dict[str, Any]]:
    """The match expressions of the Deployment's required node affinity (the sample's base selectors)."""
    affinity = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    return list(affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"])


def module_deployment(index: int, replicas: int, version: str, *, fake_nodes: bool) -> dict[str, Any]:
    """samples/module-deployment.yaml, renamed, spread one replica per node, on vnodes of ENV or fake nodes: the
    same affinity and tolerations either way, plus the ENV's label (or the fake nodes') to choose between them."""
    dep = _sample()
    dep["metadata"] = {"name": f"module-{index}"}
    app = f"module-{index}"
    dep["spec"]["replicas"] = replicas
    dep["spec"]["selector"] = {"matchLabels": {"app": app}}
    template = dep["spec"]["template"]
    template["metadata"]["labels"]["app"] = app
    spec = template["spec"]
    spec["containers"][0]["name"] = f"biz{index}"
    # One jar per biz, as in a real cluster (a jar's manifest names its biz).
    spec["containers"][0]["image"] = spec["containers"][0]["image"].replace("/biz1-", f"/biz{index}-")
    spec["containers"][0]["env"][0]["value"] = version
    spec["topologySpreadConstraints"] = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                          "whenUnsatisfiable": "DoNotSchedule",
                                          "labelSelector": {"matchLabels": {"app": app}}}]
    spec["tolerations"].append({"key": "schedule.koupleless.io/node-env", "operator": "Equal", "value": ENV,
                                "effect": "NoExecute"})
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    terms["nodeSelectorTerms"][0]["matchExpressions"].append(
        {"key": FAKE_LABEL, "operator": "In", "values": ["true"]} if fake_nodes else
        {"key": "virtual-kubelet.koupleless.io/env", "operator": "In", "values": [ENV]})
    return dep


def module_pod(name: str, biz: str) -> dict[str, Any]:
    """A bare module pod of its own biz ``biz`` (version 1), for the vnodes of ENV."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"module-controller.koupleless.io/component": "module"}},
            "spec": {"containers": [{"name": biz, "image": f"https://repo.example.com/{biz}-1-ark-biz.jar",
                                     "env": [{"name": "BIZ_VERSION", "value": "1"}]}],
                     "tolerations": [SEED_TOLERATION],
                     "nodeSelector": {"virtual-kubelet.koupleless.io/env": ENV}}}


def module_daemonset(name: str, env: str, biz: str = "biz1") -> dict[str, Any]:
    """A DaemonSet of one module (``biz``, version 1) on every vnode of ``env``."""
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name, "module-controller.koupleless.io/component": "module"}},
                "spec": {"containers": [{"name": biz, "image": f"https://repo.example.com/{biz}-1-ark-biz.jar",
                                         "env": [{"name": "BIZ_VERSION", "value": "1"}]}],
                         "nodeSelector": {"virtual-kubelet.koupleless.io/env": env},
                         "tolerations": [SEED_TOLERATION]}}}}


def micro_now() -> str:
    """Now as a MicroTime (a Lease's renewTime)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fake_node(name: str) -> dict[str, Any]:
    """A node the scheduler sees as a vnode of the sample's base: its labels, the virtual-node taint."""
    base = {term["key"]: term["values"][0] for term in _affinity_terms(_sample()) if term["operator"] == "In"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {**base, FAKE_LABEL: "true", "kubernetes.io/hostname": name}},
            "spec": {"taints": [{"key": TAINT_VIRTUAL_NODE, "value": "True", "effect": "NoExecute"}]}}


def kubelet_status(pod: dict[str, Any], host_ip: str = "10.0.0.1") -> dict[str, Any]:
    """The status a kubelet writes when a pod's containers are up: phase, the conditions with their times, the
    addresses and a running state per container, as vkprovider writes for a module (so a floor's pod objects are
    as large as vkprovider's for every watcher; ``kubectl get pods`` shows them READY 1/1)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    containers = (pod.get("spec") or {}).get("containers") or []
    return {"status": {
        "phase": "Running",
        "conditions": [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
                       for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")],
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": host_ip, "podIPs": [{"ip": host_ip}],
        "startTime": now,
        "containerStatuses": [{"name": c["name"], "image": c.get("image", ""), "imageID": c.get("image", ""),
                               "containerID": f"null-kubelet://{c['name']}", "ready": True, "started": True,
                               "restartCount": 0, "state": {"running": {"startedAt": now}}}
                              for c in containers]}}


def ready_status() -> dict[str, Any]:
    """A fake node's status patch: Ready, with a fresh heartbeat time."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"status": {
        "capacity": {"cpu": "4", "memory": "16Gi", "pods": "200"},
        "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "200"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Bench", "message": "fake node",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]}}
