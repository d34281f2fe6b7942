"""A real Prometheus (Debian's binary) scrapes a real `vkprovider run` on the local control plane and alerts.

Prometheus runs on 127.0.0.1 with a 1 s scrape and evaluation interval, a temp TSDB and the chart's alert rules
(charts/vkprovider/files/alerts.yaml) loaded through a plain scrape config (any job name: the rules find
vkprovider by vkprovider_build_info). With two simulated bases Ready, every rule evaluates without error, no
alert is pending or firing, and every query of the Grafana dashboard runs and finds data. Then one base is
stopped through the simulator's control API and the test measures, from the stop: vkprovider's own gauge
(vkprovider_vnodes{ready="unknown"}), the Node's Ready turning Unknown, the series in Prometheus, and
VkproviderBasesUnreachable pending and firing in Prometheus's /api/v1/alerts (and in ALERTS).

The copy of the rules this test loads has VkproviderBasesUnreachable's `for:` rewritten from 5m to 5s (the only
change), so the test takes seconds rather than minutes; the harness's provider declares a silent base
unreachable after VKP_BASE_UNREACHABLE_AFTER=8 s (production default 25 s). The measured times are printed and
written to .local/test-logs/prometheus-alert-timings.json.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import aiohttp
import yaml

from tests import promtext
from tests.integration.harness import LOGS, wait_ready_vnodes, wait_until
from tests.operations import promql
from tests.operations.common import ALERTS, dashboard_queries
from vkprovider.kube.client import Kube

ALERT = "VkproviderBasesUnreachable"
JOB = "vkprovider-under-test"  # any job name: the rules and the dashboard find vkprovider by its build info
TEST_FOR = "5s"
HEARTBEAT_S = 2


def rules_with_short_for() -> dict[str, Any]:
    rules = yaml.safe_load(ALERTS.read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == ALERT]
    assert rule["for"] == "5m", "the production duration this test shortens"
    rule["for"] = TEST_FOR
    return dict(rules)


def gauge(text: str, name: str, **labels: str) -> float | None:
    found = promtext.samples(text, name, **labels)
    return found[0].value if found else None


def ready_status(node: dict[str, Any]) -> str | None:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status"))
    return None


async def test_a_stopped_base_fires_the_unreachable_alert(admin: Kube, env_name: str, provider_factory: Any,
                                                          sim_factory: Any, prometheus: Any,
                                                          http: aiohttp.ClientSession) -> None:
    provider = await provider_factory()
    sim = await sim_factory(provider.endpoint, "--bases", "2", "--heartbeat-interval", str(HEARTBEAT_S),
                            "--identity-prefix", env_name)
    await wait_ready_vnodes(admin, env_name, 2, timeout_s=60)
    unreachable_after = float(provider.env["VKP_BASE_UNREACHABLE_AFTER"])

    prom = prometheus([{"job_name": JOB,
                        "static_configs": [{"targets": [f"127.0.0.1:{provider.metrics_port}"]}]}],
                      rules_with_short_for())

    async def query(expr: str) -> list[dict[str, Any]]:
        return list((await prom.api(http, "query", query=expr))["result"])

    async def two_ready_scraped() -> bool:
        got = await query('sum(vkprovider_vnodes{ready="true"}) == 2 and sum(up) == 1')
        return bool(got)

    await wait_until(two_ready_scraped, 30, 0.5, "Prometheus to scrape vkprovider with 2 Ready vnodes")

    # Healthy: every rule evaluates cleanly on real series, and nothing is pending or firing.
    await asyncio.sleep(4)
    groups = (await prom.api(http, "rules"))["groups"]
    evaluated = [r for g in groups for r in g["rules"]]
    assert len(evaluated) == 20
    assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []
    active = (await prom.api(http, "alerts"))["alerts"]
    assert active == [], f"alerts on a healthy vkprovider: {active}"

    # Every dashboard query runs on the real series, and shows data when vkprovider exports its metrics.
    exported = {promql.family_of(line.split("{")[0].split(" ")[0])
                for line in (await provider.metrics()).splitlines() if line and not line.startswith("#")}
    empty = []
    for title, expr in dashboard_queries():
        concrete = (expr.replace("$__rate_interval", "10s").replace('"$job"', f'"{JOB}"')
                    .replace('"$instance"', '".*"'))
        result = await query(concrete)
        families = {promql.family_of(s.metric) for s in promql.selectors(expr)} - {"up"}
        if not result and families <= exported:
            empty.append((title, concrete))
    assert empty == [], f"dashboard queries with no data: {empty}"

    identity = (await sim.bases())[0]["identity"]
    node_name = f"vnode.{identity}.{env_name}"
    stopped_wall = time.time()
    t0 = time.monotonic()
    await sim.stop_base(identity)
    marks: dict[str, float] = {}
    firing: dict[str, Any] = {}
    deadline = t0 + unreachable_after + 60
    while "firing" not in marks:
        assert time.monotonic() < deadline, f"no firing {ALERT} in time; seen so far: {marks}"
        now = time.monotonic() - t0
        if "metric" not in marks and gauge(await provider.metrics(), "vkprovider_vnodes", ready="unknown") == 1:
            marks["metric"] = now
        if "node_unknown" not in marks and ready_status(await admin.get(f"/api/v1/nodes/{node_name}")) == "Unknown":
            marks["node_unknown"] = now
        if "scraped" not in marks and await query('sum(vkprovider_vnodes{ready!="true"}) > 0'):
            marks["scraped"] = now
        for alert in (await prom.api(http, "alerts"))["alerts"]:
            if alert["labels"]["alertname"] == ALERT:
                marks.setdefault("pending", now)  # a firing alert was pending first (maybe between polls)
                if alert["state"] == "firing":
                    marks["firing"] = now
                    firing = alert
        await asyncio.sleep(0.2)

    # The same through ALERTS, the series Prometheus keeps of its alerts.
    series = await query(f'ALERTS{{alertname="{ALERT}", alertstate="firing"}}')
    assert len(series) == 1 and series[0]["metric"]["severity"] == "warning", series

    assert firing["labels"] == {"alertname": ALERT, "job": JOB, "severity": "warning"}
    assert firing["annotations"]["summary"] == "1 vnode(s) not Ready"
    assert firing["annotations"]["description"].startswith(f"1 vnode(s) of vkprovider job {JOB}")
    assert firing["annotations"]["description"].endswith("See docs/operations.md#vkproviderbasesunreachable")
    others = {a["labels"]["alertname"] for a in (await prom.api(http, "alerts"))["alerts"]} - {ALERT}
    assert others == set(), f"only the unreachable alert is active, not {others}"

    active_at = datetime.fromisoformat(firing["activeAt"][:26].rstrip("Z") + "+00:00").timestamp()
    timings = {
        "unreachable_after_s": unreachable_after, "heartbeat_interval_s": HEARTBEAT_S, "for": TEST_FOR,
        "scrape_and_evaluation_interval_s": 1,
        **{f"{k}_s": round(v, 2) for k, v in marks.items()},
        "pending_by_activeAt_s": round(active_at - stopped_wall, 2),
    }
    (LOGS / "prometheus-alert-timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"\nbase stopped -> {json.dumps(timings)}")
    # The chain: silence past VKP_BASE_UNREACHABLE_AFTER (counted from the base's last heartbeat, up to one
    # heartbeat interval, 2 s, before the stop), the 2 s gauge refresh, a 1 s scrape, a 1 s evaluation, the for:.
    assert unreachable_after - 2.5 <= marks["metric"] <= unreachable_after + 5, marks
    assert marks["metric"] - 0.5 <= marks["scraped"] <= marks["metric"] + 4, marks
    assert marks["scraped"] - 0.5 <= marks["pending"] <= marks["scraped"] + 4, marks
    assert marks["pending"] + 5 <= marks["firing"] + 0.5 <= marks["pending"] + 9, marks
