"""The metric names and labels vkprovider exports, against a golden list (tests/unit/metrics.golden).

Dashboards and alert rules (charts/vkprovider/files, docs/) are written against these names: a rename must be a
decision, made here. No metric may carry a label whose values grow with the cluster (a pod, base, node or biz
name): the series count stays flat with 1,000 bases (tests/integration/test_operations.py measures it).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from prometheus_client import REGISTRY

import vkprovider

GOLDEN = Path(__file__).with_name("metrics.golden")
UNBOUNDED = {"pod", "node", "base", "biz", "identity", "name_version", "namespace", "instance_id"}


def exported() -> list[str]:
    for module in pkgutil.walk_packages(vkprovider.__path__, "vkprovider."):
        if ".sim" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    out = set()
    for collector in set(REGISTRY._names_to_collectors.values()):
        name = getattr(collector, "_name", None)
        if name:
            out.add(f"{collector._type} {name} {','.join(collector._labelnames)}")
    return sorted(out)


def test_metric_names_and_labels_are_the_golden_ones() -> None:
    assert exported() == GOLDEN.read_text().splitlines()


def test_the_names_controller_dashboards_use_are_there() -> None:
    names = {line.split()[1] for line in exported()}
    for wanted in ("controller_runtime_reconcile", "controller_runtime_reconcile_errors",
                   "controller_runtime_reconcile_time_seconds", "controller_runtime_active_workers",
                   "controller_runtime_max_concurrent_reconciles", "workqueue_depth", "workqueue_adds",
                   "workqueue_queue_duration_seconds", "workqueue_work_duration_seconds",
                   "workqueue_unfinished_work_seconds", "workqueue_longest_running_processor_seconds",
                   "workqueue_retries", "rest_client_requests", "vkprovider_build_info"):
        assert wanted in names, wanted  # counters are listed without their _total suffix


def test_no_label_grows_with_the_cluster() -> None:
    for line in exported():
        labels = set(line.split()[2].split(",")) if len(line.split()) > 2 else set()
        assert not labels & UNBOUNDED, line
