"""The chart ships the operations files as they are: the PrometheusRule's groups are files/alerts.yaml, the
optional Grafana dashboard ConfigMap (grafanaDashboard.enabled) holds files/dashboard.json with the sidecar's
label. docs/ has no copies: docs/operations.md links to the chart's files (one source)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import yaml

from tests.operations.common import ALERTS, CHART, DASHBOARD, REPO

ALL_OPTIONS = REPO / "tests" / "chart" / "all-options.yaml"


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run([helm, "template", "vkp", str(CHART), "--namespace", "vkp-ops", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_no_dashboard_and_no_rules_by_default(helm_bin: str) -> None:
    docs = render(helm_bin)
    assert of_kind(docs, "ConfigMap") == [] and of_kind(docs, "PrometheusRule") == []


def test_the_prometheusrule_is_the_rules_file(helm_bin: str) -> None:
    (rule,) = of_kind(render(helm_bin, "--set", "prometheusRule.enabled=true"), "PrometheusRule")
    assert rule["metadata"]["namespace"] == "vkp-ops"
    assert rule["spec"] == {"groups": yaml.safe_load(ALERTS.read_text())["groups"]}, "not templated, not changed"
    text = json.dumps(rule["spec"])
    assert "{{ $labels.instance }}" in text and "{{ $value | humanizePercentage }}" in text


def test_the_dashboard_configmap(helm_bin: str) -> None:
    (cm,) = of_kind(render(helm_bin, "--set", "grafanaDashboard.enabled=true"), "ConfigMap")
    assert cm["metadata"]["name"] == "vkp-vkprovider-dashboard" and cm["metadata"]["namespace"] == "vkp-ops"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in cm["metadata"]
    (key,) = cm["data"]
    assert key.endswith(".json")
    assert json.loads(cm["data"][key]) == json.loads(DASHBOARD.read_text())
    # kubectl apply keeps a copy in an annotation, limited to 256 KiB with the other annotations
    assert len(json.dumps(cm)) < 200_000


def test_the_dashboard_with_every_option(helm_bin: str) -> None:
    (cm,) = of_kind(render(helm_bin, "-f", str(ALL_OPTIONS)), "ConfigMap")
    options = yaml.safe_load(ALL_OPTIONS.read_text())["grafanaDashboard"]
    assert cm["metadata"]["namespace"] == options["namespace"]
    assert cm["metadata"]["annotations"] == options["annotations"]
    assert options["labels"].items() <= cm["metadata"]["labels"].items()
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["team"] == "platform", "commonLabels"


def test_docs_point_at_the_chart_files_and_hold_no_copies() -> None:
    doc = (REPO / "docs" / "operations.md").read_text()
    assert "../charts/vkprovider/files/alerts.yaml" in doc and "../charts/vkprovider/files/dashboard.json" in doc
    assert not (REPO / "docs" / "alerts.yaml").exists() and not (REPO / "docs" / "dashboard.json").exists()
