"""The Grafana dashboard (charts/vkprovider/files/dashboard.json): valid, on its data source variable, and built
only from the metrics vkprovider exports (tests/unit/metrics.golden), every one of them shown.

Its queries also run on a real Prometheus scraping a real vkprovider (test_prometheus.py), and the chart ships it
as a ConfigMap (test_chart_files.py).
"""

from __future__ import annotations

import re

import pytest

from tests.operations import promql
from tests.operations.common import DASHBOARD, dashboard, panels
from tests.operations.common import dashboard_queries as queries

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def test_it_is_a_dashboard_on_a_data_source_variable() -> None:
    board = dashboard()
    assert board["uid"] == "vkprovider" and board["title"] == "vkprovider"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == DS
        assert "vkprovider_build_info" in variables[name]["definition"], "targets found by vkprovider's build info"
    assert "__inputs" not in board, "no import-time inputs: the sidecar loads the file as it is"
    assert "${DS_PROMETHEUS}" in DASHBOARD.read_text()


def test_every_panel_and_query_uses_the_data_source_variable() -> None:
    for panel in panels(dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == DS, panel["title"]
        assert panel.get("description"), f"{panel['title']}: says what it shows"


def test_panels_are_laid_out_without_overlap() -> None:
    ids, cells = set(), {}
    for panel in panels(dashboard()):
        assert panel["id"] not in ids, panel["title"]
        ids.add(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize(("title", "expr"), queries())
def test_queries_use_only_exported_metrics_and_labels(title: str, expr: str) -> None:
    assert promql.problems(expr) == [], title


@pytest.mark.parametrize(("title", "expr"), queries())
def test_queries_are_scoped_to_the_chosen_job_and_replicas(title: str, expr: str) -> None:
    """workqueue_*, controller_runtime_* and rest_client_* come from other controllers too: every selector names
    the dashboard's job (found by vkprovider_build_info) and replicas."""
    for match in re.finditer(r"([a-z_:][a-z0-9_:]*)\{([^}]*)\}", expr):
        assert 'job="$job"' in match.group(2) and 'instance=~"$instance"' in match.group(2), (title, match.group(0))
    bare = [s.metric for s in promql.selectors(re.sub(r"\{[^}]*\}", "{x=\"\"}", expr)) if not s.labels]
    assert bare == [], f"{title}: selectors without the job matcher: {bare}"


def test_every_exported_metric_is_on_the_dashboard() -> None:
    shown = {promql.family_of(sel.metric) for _, expr in queries() for sel in promql.selectors(expr)}
    assert promql.golden_families() - shown == set(), "metrics of tests/unit/metrics.golden not on the dashboard"
    titles = [p["title"] for p in panels(dashboard())]
    for wanted in ("Vnodes by readiness", "Vnodes held per replica", "Longest base silence per replica",
                   "Heartbeats by result", "Biz commands by outcome", "Biz command duration p50 / p99",
                   "Pod status writes by phase", "Reconciles by controller and result",
                   "Reconcile errors by controller", "Reconcile duration p50 / p99", "Work queue depth",
                   "Work queue latency p99", "Unfinished work and longest running", "API requests by code",
                   "API latency p50 / p99 by verb", "Lease transitions", "Open connections by listener",
                   "Connections closed by vkprovider", "Build info"):
        assert wanted in titles, wanted
