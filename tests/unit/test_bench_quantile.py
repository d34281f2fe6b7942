"""bench.metrics.histogram_quantile: the quantile of what a cumulative Prometheus histogram counted between two reads
(the burst scenario reads vkprovider's pod start histogram before and after), as Prometheus interpolates it; and
bench.report.target, a target's row with the machine's own floor next to it."""

from __future__ import annotations

import math

from bench.metrics import histogram_quantile

BEFORE = {0.5: 10.0, 1.0: 10.0, 2.0: 10.0, math.inf: 10.0}  # 10 observations before the window, all <= 0.5 s


def test_only_what_was_counted_between_the_reads() -> None:
    after = {0.5: 10.0, 1.0: 30.0, 2.0: 110.0, math.inf: 110.0}  # in the window: 20 in (0.5, 1], 80 in (1, 2]
    assert histogram_quantile(0.5, BEFORE, after) == 1.0 + (2.0 - 1.0) * (50 - 20) / 80  # rank 50: inside (1, 2]
    assert histogram_quantile(0.1, BEFORE, after) == 0.5 + 0.5 * 10 / 20  # rank 10 of the 20 in (0.5, 1]


def test_past_the_last_bound_it_is_that_bound_and_nothing_counted_is_nan() -> None:
    after = {0.5: 10.0, 1.0: 10.0, 2.0: 10.0, math.inf: 20.0}  # all 10 new ones above 2 s
    assert histogram_quantile(0.99, BEFORE, after) == 2.0
    assert math.isnan(histogram_quantile(0.5, BEFORE, dict(BEFORE)))


def test_a_target_carries_the_machines_floor_measured_in_the_same_run() -> None:
    from bench.report import target

    plain = target("ratio_to_scheduler_only", 2.7, 2.0)
    assert plain == {"name": "ratio_to_scheduler_only", "value": 2.7, "target": "<= 2", "pass": False}
    past = target("ratio_to_scheduler_only", 2.7, 2.0, floor=2.08)
    assert (past["pass"], past["floor"], past["floor_pass"]) == (False, 2.08, False)
    within = target("bound_to_running_p99_s", 1.96, 2.0, floor=1.84)
    assert (within["pass"], within["floor_pass"]) == (True, True)
    assert "floor" not in target("x", 1.0, 2.0, floor=math.nan)  # no floor measured (limit not run)


def test_the_apiservers_refusals_are_summed_by_flow_schema() -> None:
    from bench.metrics import refused_by_flow_schema

    text = "\n".join([
        "# HELP apiserver_flowcontrol_rejected_requests_total [BETA] Number of requests rejected by API Priority",
        'apiserver_flowcontrol_rejected_requests_total{flow_schema="kube-scheduler",priority_level="workload-high",'
        'reason="queue-full"} 188',
        'apiserver_flowcontrol_rejected_requests_total{flow_schema="kube-scheduler",priority_level="workload-high",'
        'reason="time-out"} 2',
        'apiserver_flowcontrol_rejected_requests_total{flow_schema="kube-system-service-accounts",'
        'priority_level="workload-high",reason="queue-full"} 728',
        'apiserver_flowcontrol_dispatched_requests_total{flow_schema="kube-scheduler",'
        'priority_level="workload-high"} 9',
    ])
    assert refused_by_flow_schema(text) == {"kube-scheduler": 190.0, "kube-system-service-accounts": 728.0}
