"""The Kubernetes objects the scenarios create: module Deployments (samples/module-deployment.yaml, renamed), bare
module pods, fake Nodes and their Ready status.

Why it exists: the same Deployment runs on vkprovider's vnodes (burst, rollout, churn) and on limit's fake nodes
(scheduler-only and the null kubelet floors), so the two compare only if one function builds both, differing in
nothing but where the pods may go.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import yaml

from tests.integration.harness import SEED_TOLERATION

ROOT = Path(__file__).resolve().parent.parent
ENV = "bench"  # the vnodes' env (virtual-kubelet.koupleless.io/env) of every scenario but replicas
FAKE_LABEL = "bench.vkprovider.io/fake"


def module_deployment(index: int, replicas: int, version: str, *, fake_nodes: bool) -> dict[str, Any]:
    """samples/module-deployment.yaml, renamed, spread one replica per node, on vnodes of ENV or fake nodes."""
    dep: dict[str, Any] = yaml.safe_load((ROOT / "samples" / "module-deployment.yaml").read_text())
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
    if fake_nodes:
        spec.pop("affinity", None)
        spec["nodeSelector"] = {FAKE_LABEL: "true"}
    else:
        spec["tolerations"].append({"key": "schedule.koupleless.io/node-env", "operator": "Equal", "value": ENV,
                                    "effect": "NoExecute"})
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        terms["nodeSelectorTerms"][0]["matchExpressions"].append(
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


def module_daemonset(name: str, env: str) -> dict[str, Any]:
    """A DaemonSet of one module (biz1, version 1) on every vnode of ``env``."""
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name, "module-controller.koupleless.io/component": "module"}},
                "spec": {"containers": [{"name": "biz1", "image": "https://repo.example.com/biz1-1-ark-biz.jar",
                                         "env": [{"name": "BIZ_VERSION", "value": "1"}]}],
                         "nodeSelector": {"virtual-kubelet.koupleless.io/env": env},
                         "tolerations": [SEED_TOLERATION]}}}}


def micro_now() -> str:
    """Now as a MicroTime (a Lease's renewTime)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fake_node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {FAKE_LABEL: "true", "kubernetes.io/hostname": name}}}


def ready_status() -> dict[str, Any]:
    """A fake node's status patch: Ready, with a fresh heartbeat time."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"status": {
        "capacity": {"cpu": "4", "memory": "16Gi", "pods": "200"},
        "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "200"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Bench", "message": "fake node",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]}}
