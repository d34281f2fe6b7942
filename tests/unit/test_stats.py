"""A vnode's /metrics/resource and /stats/summary from its base's health answers (core.stats): the exact series
metrics-server reads, the counter taken from arklet's own ticks, and nothing invented for module pods."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vkprovider.core import stats
from vkprovider.core.model import BaseHealth, CpuTicks
from vkprovider.core.stats import Reading

MIB = 1024 * 1024
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def health(total_ms: float | None = 18360.0, user: float = 2.5, system: float = 0.8, heap: int | None = 100 * MIB,
           non_heap: int | None = 70 * MIB, metaspace: int | None = 50 * MIB, uptime: float | None = 14.0
           ) -> BaseHealth:
    return BaseHealth(cpu_count=2, memory_used_bytes=metaspace, heap_used_bytes=heap, non_heap_used_bytes=non_heap,
                      cpu=CpuTicks(total_ms, user, system) if total_ms is not None else None, uptime_s=uptime)


@pytest.mark.parametrize(
    ("h", "expected"),
    [
        (health(), 0.606),  # 18,360 ms of ticks, 3.3 % of them busy: 605.88 ms, whole milliseconds
        (health(total_ms=0, user=0, system=0), 0.0),
        (health(total_ms=1_000_000, user=75, system=25), 1000.0),  # every CPU busy all along
        (health(total_ms=None), None),  # an arklet that sent no CPU figures
        # The busy ticks (7) did not move while the total did: the float product must not dip below 7 ms.
        (health(total_ms=18360, user=100 * 13 / 18360, system=0), 0.013),
    ],
)
def test_cpu_seconds_is_arklets_busy_time_since_it_started(h: BaseHealth, expected: float | None) -> None:
    assert stats.cpu_seconds(h) == expected


@pytest.mark.parametrize(
    ("h", "expected"),
    [
        (health(), 170 * MIB),  # used heap + used non-heap
        (health(non_heap=None), 150 * MIB),  # no non-heap sent: the used Metaspace stands in
        (health(non_heap=None, metaspace=None), 100 * MIB),
        (health(heap=None), None),  # no heap, no working set (metrics-server then leaves the vnode out)
    ],
)
def test_working_set_is_the_jvms_used_heap_and_non_heap(h: BaseHealth, expected: int | None) -> None:
    assert stats.working_set_bytes(h) == expected


@pytest.mark.parametrize(
    ("latest", "earlier", "expected"),
    [
        # 10 s apart, 2.5 s more busy time: a quarter of a core
        (Reading(T0 + 10, health(total_ms=20000, user=50, system=0)), Reading(T0, health(total_ms=15000, user=50,
                                                                                             system=0)), 250_000_000),
        (Reading(T0 + 10, health()), None, None),  # one answer: no rate yet
        (Reading(T0, health()), Reading(T0, health()), None),  # the same moment twice
        (Reading(T0 + 10, health(total_ms=100, user=10, system=0)), Reading(T0, health()), None),  # base restarted
        (Reading(T0 + 10, health(total_ms=None)), Reading(T0, health()), None),
    ],
)
def test_usage_nano_cores_is_the_rate_between_two_answers(latest: Reading, earlier: Reading | None,
                                                           expected: int | None) -> None:
    assert stats.usage_nano_cores(latest, earlier) == expected


@pytest.mark.parametrize(
    ("latest", "now", "due"),
    [(None, T0, True), (Reading(T0, health()), T0 + 30, False), (Reading(T0, health()), T0 + 30.1, True)],
)
def test_a_scrape_asks_the_base_again_only_past_the_max_age(latest: Reading | None, now: float, due: bool) -> None:
    assert stats.refresh_due(latest, now, 30.0) is due


def test_resource_metrics_is_what_a_kubelet_serves_with_the_answers_time():
    text = stats.resource_metrics(Reading(T0 + 0.25, health()))
    assert text == (
        "# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n"
        "# TYPE node_cpu_usage_seconds_total counter\n"
        "node_cpu_usage_seconds_total 0.606 1800000000250\n"
        "# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n"
        "# TYPE node_memory_working_set_bytes gauge\n"
        "node_memory_working_set_bytes 178257920 1800000000250\n"
        "# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise\n"
        "# TYPE scrape_error gauge\n"
        "scrape_error 0\n"
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n"
        "# TYPE resource_scrape_error gauge\n"
        "resource_scrape_error 0\n")
    # A Prometheus parser reads it back: the series metrics-server looks for, with the answer's time (ms).
    samples = {s.name: s for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["node_cpu_usage_seconds_total"].value == 0.606
    assert samples["node_memory_working_set_bytes"].value == 178257920
    assert samples["node_cpu_usage_seconds_total"].timestamp == T0 + 0.25
    assert not any(name.startswith(("container_", "pod_")) for name in samples)  # nothing per module


@pytest.mark.parametrize(
    ("latest", "series"),
    [
        (None, set()),  # no answer from the base yet
        (Reading(T0, health(total_ms=None)), set()),  # half a figure is no figure
        (Reading(T0, health(heap=None)), set()),
    ],
)
def test_resource_metrics_without_both_figures_is_a_scrape_error(latest: Reading | None, series: set[str]) -> None:
    text = stats.resource_metrics(latest)
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert {n for n in samples if n.startswith("node_")} == series
    assert samples["resource_scrape_error"] == 1 and samples["scrape_error"] == 1


def test_stats_summary_has_the_kubelets_shape_and_no_pods():
    earlier = Reading(T0, health(total_ms=15000, user=50, system=0))
    latest = Reading(T0 + 10, health(total_ms=20000, user=50, system=0, uptime=3600))
    got: dict[str, Any] = stats.stats_summary("vnode.b1.dev", latest, earlier)
    assert got == {
        "node": {
            "nodeName": "vnode.b1.dev",
            "systemContainers": [],
            "startTime": "2027-01-15T07:00:10Z",  # the answer's time less the JVM's run time
            "cpu": {"time": "2027-01-15T08:00:10Z", "usageCoreNanoSeconds": 10_000_000_000,
                    "usageNanoCores": 250_000_000},
            "memory": {"time": "2027-01-15T08:00:10Z", "workingSetBytes": 170 * MIB},
        },
        "pods": [],
    }
    bare = stats.stats_summary("vnode.b1.dev", Reading(T0, health(total_ms=None, heap=None, uptime=None)), None)
    assert bare == {"node": {"nodeName": "vnode.b1.dev", "systemContainers": [], "startTime": None}, "pods": []}
