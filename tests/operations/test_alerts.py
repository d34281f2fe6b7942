"""The alert rules (charts/vkprovider/files/alerts.yaml): valid for promtool, tested by promtool, documented.

`promtool check rules` and `promtool test rules tests/operations/alerts_test.yaml` (Debian's prometheus package,
installed when missing) must pass; every alert must be shown firing and silent there, name only metrics of
tests/unit/metrics.golden, carry a severity and a summary and a description pointing at its docs/operations.md
section, and find vkprovider's targets without depending on a job name.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.operations import promql
from tests.operations.common import ALERTS, OPERATIONS_DOC

UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
SEVERITIES = {"critical", "warning", "info"}
#: Metric names other programs export too: an expression using them must be joined with vkprovider's targets.
SHARED = re.compile(r"\b(up|workqueue_\w+|controller_runtime_\w+|rest_client_\w+)\b(?!\s*\()")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert set(doc) == {"groups"}, "a plain Prometheus rules file: one key, groups"
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [r["alert"] for r in rules()]


def test_promtool_check_rules(prometheus_bins: dict[str, str]) -> None:
    proc = subprocess.run([prometheus_bins["promtool"], "check", "rules", str(ALERTS)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout, proc.stdout


def test_promtool_unit_tests(prometheus_bins: dict[str, str]) -> None:
    proc = subprocess.run([prometheus_bins["promtool"], "test", "rules", str(UNIT_TESTS)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_every_alert_is_shown_firing_and_silent() -> None:
    doc = yaml.safe_load(UNIT_TESTS.read_text())
    assert doc["rule_files"] == ["../../charts/vkprovider/files/alerts.yaml"]
    fired: set[str] = set()
    silent_when_healthy: set[str] = set()
    silent_before_for: set[str] = set()
    for group in doc["tests"]:
        for check in group.get("alert_rule_test", []):
            if check["exp_alerts"]:
                fired.add(check["alertname"])
            elif group["name"].startswith("healthy"):
                silent_when_healthy.add(check["alertname"])
            else:
                silent_before_for.add(check["alertname"])
    names = set(alert_names())
    assert names - fired == set(), "alerts never shown firing"
    assert names - silent_when_healthy == set(), "alerts not checked silent on the healthy series"
    with_for = {r["alert"] for r in rules() if r.get("for")}
    assert with_for - silent_before_for == set(), "alerts with a for: not checked silent before it has passed"


def test_each_alert_has_severity_summary_and_a_documented_runbook() -> None:
    doc = OPERATIONS_DOC.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", doc, re.M)}
    names = alert_names()
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in rules():
        name = rule["alert"]
        assert re.fullmatch(r"Vkprovider[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        link = re.search(r"See docs/operations\.md#([a-z0-9-]+)$", rule["annotations"]["description"])
        assert link, f"{name}: the description must end with 'See docs/operations.md#<section>'"
        assert link.group(1) == name.lower(), f"{name}: points at #{link.group(1)}"
        assert link.group(1) in anchors, f"{name}: docs/operations.md has no section #{link.group(1)}"
        assert f"`{name}`" in doc or f"### {name}" in doc, name


def test_expressions_use_only_exported_metrics() -> None:
    for rule in rules():
        assert promql.problems(rule["expr"]) == [], rule["alert"]


def test_shared_metric_names_are_joined_with_vkproviders_targets() -> None:
    """`up`, workqueue_*, controller_runtime_* and rest_client_* also come from other controllers (the
    kube-controller-manager, operators): each use is scoped by vkprovider_build_info; no rule names a job."""
    for rule in rules():
        expr = rule["expr"]
        assert "job=" not in expr.replace(" ", "") and "job!" not in expr, f"{rule['alert']}: no job matcher"
        if SHARED.search(expr):
            assert re.search(r"on \(job, instance\) (max_over_time\()?vkprovider_build_info", expr), rule["alert"]
