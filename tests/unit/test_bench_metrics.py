"""bench.metrics: the figures the scenarios compute from vkprovider's and the apiserver's /metrics, read with
prometheus-client's parser (vkprovider's writes, a histogram's buckets and mean, the apiserver's writes by verb and
resource, vkprovider's network exchanges, the control plane's work between two reads)."""

from __future__ import annotations

import math

from bench import metrics

PROVIDER = "\n".join([
    "# HELP rest_client_requests_total Number of HTTP requests, partitioned by status code, method, and host.",
    "# TYPE rest_client_requests_total counter",
    'rest_client_requests_total{code="200",host="h",method="GET"} 40.0',
    'rest_client_requests_total{code="200",host="h",method="PATCH"} 100.0',
    'rest_client_requests_total{code="429",host="h",method="PATCH"} 2.0',
    'rest_client_requests_total{code="201",host="h",method="POST"} 30.0',
    'rest_client_requests_total{code="200",host="h",method="DELETE"} 5.0',
    "# HELP rest_client_requests_created Number of HTTP requests, partitioned by status code, method, and host.",
    "# TYPE rest_client_requests_created gauge",
    'rest_client_requests_created{code="200",host="h",method="PATCH"} 1.7e+09',
    "# HELP vkprovider_pod_start_duration_seconds First sight of a pod to its Running write answered.",
    "# TYPE vkprovider_pod_start_duration_seconds histogram",
    'vkprovider_pod_start_duration_seconds_bucket{le="0.5"} 10.0',
    'vkprovider_pod_start_duration_seconds_bucket{le="1.0"} 30.0',
    'vkprovider_pod_start_duration_seconds_bucket{le="+Inf"} 32.0',
    "vkprovider_pod_start_duration_seconds_count 32.0",
    "vkprovider_pod_start_duration_seconds_sum 20.0",
    "# HELP vkprovider_heartbeats_total Heartbeats received.",
    "# TYPE vkprovider_heartbeats_total counter",
    'vkprovider_heartbeats_total{result="ok",tunnel="http"} 80.0',
    'vkprovider_heartbeats_total{result="unauthorized",tunnel="http"} 3.0',
    "# HELP controller_runtime_reconcile_total Reconciles.",
    "# TYPE controller_runtime_reconcile_total counter",
    'controller_runtime_reconcile_total{controller="module",result="success"} 9.0',
    'controller_runtime_reconcile_total{controller="module",result="requeue"} 1.0',
    'controller_runtime_reconcile_total{controller="node",result="success"} 50.0',
    "",
])

APISERVER = "\n".join([
    "# HELP apiserver_request_total [STABLE] Counter of apiserver requests broken out for each verb, ...",
    "# TYPE apiserver_request_total counter",
    'apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",'
    'subresource="",verb="POST",version="v1"} 12',
    'apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",'
    'subresource="status",verb="PATCH",version="v1"} 30',
    'apiserver_request_total{code="409",component="apiserver",dry_run="",group="",resource="pods",scope="resource",'
    'subresource="status",verb="PATCH",version="v1"} 2',
    'apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",'
    'subresource="",verb="LIST",version="v1"} 7',
    'apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",'
    'resource="leases",scope="resource",subresource="",verb="APPLY",version="v1"} 4',
    "",
])


def test_vkproviders_writes_are_its_requests_with_a_write_method() -> None:
    assert metrics.provider_writes(PROVIDER) == 100.0 + 2.0 + 30.0 + 5.0  # not the GETs, not the _created gauge


def test_a_histogram_reads_as_cumulative_counts_by_bound_and_its_mean_between_two_reads() -> None:
    assert metrics.histogram(PROVIDER, "vkprovider_pod_start_duration_seconds") == {0.5: 10.0, 1.0: 30.0,
                                                                                     math.inf: 32.0}
    after = metrics.sum_and_count(PROVIDER, "vkprovider_pod_start_duration_seconds")
    assert after == (20.0, 32.0)
    assert metrics.mean_between((4.0, 12.0), after) == 16.0 / 20.0
    assert math.isnan(metrics.mean_between(after, after))


def test_exchanges_and_module_reconciles() -> None:
    assert metrics.exchanges(PROVIDER) == {"api_requests": 177.0, "heartbeats_in": 83.0, "arklet_calls": 0.0,
                                           "watch_events_in": 0.0}
    assert metrics.module_reconciles(PROVIDER) == 10.0


def test_the_apiservers_writes_by_verb_and_resource_and_per_node_per_minute() -> None:
    writes = metrics.apiserver_writes(APISERVER)
    assert writes == {"POST pods": 12.0, "PATCH pods/status": 32.0, "APPLY leases": 4.0}  # LIST is no write
    before = {"POST pods": 2.0, "PATCH pods/status": 12.0, "APPLY leases": 4.0}
    assert metrics.writes_between(before, writes, 2.0, 5) == {"PATCH pods/status": 2.0, "POST pods": 1.0}


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (metrics.percentile(values, 50), metrics.percentile(values, 99), metrics.percentile(values, 100)) == (
        50.0, 99.0, 100.0)
    assert math.isnan(metrics.percentile([], 50))


def _apiserver(alloc: float, pod_events: float, pod_bytes: float, lease_events: float, refused_pods: float,
               refused_bindings: float) -> str:
    return "\n".join([
        "# TYPE go_memstats_alloc_bytes_total counter", f"go_memstats_alloc_bytes_total {alloc}",
        "# TYPE apiserver_watch_events_total counter",
        f'apiserver_watch_events_total{{group="",resource="pods",version="v1"}} {pod_events}',
        f'apiserver_watch_events_total{{group="coordination.k8s.io",resource="leases",version="v1"}} {lease_events}',
        "# TYPE apiserver_watch_events_sizes histogram",
        f'apiserver_watch_events_sizes_sum{{group="",resource="pods",version="v1"}} {pod_bytes}',
        f'apiserver_watch_events_sizes_count{{group="",resource="pods",version="v1"}} {pod_events}',
        "# TYPE apiserver_request_total counter",
        f'apiserver_request_total{{code="429",resource="pods",subresource="",verb="POST"}} {refused_pods}',
        f'apiserver_request_total{{code="429",resource="pods",subresource="binding",verb="POST"}} {refused_bindings}',
        'apiserver_request_total{code="201",resource="pods",subresource="",verb="POST"} 9000',
        "",
    ])


def test_the_control_planes_work_between_two_reads_is_counts_that_do_not_depend_on_its_speed() -> None:
    before = {"kube-apiserver": _apiserver(1e9, 100, 3e5, 10, 4, 0),
              "kube-scheduler": "# TYPE go_memstats_alloc_bytes_total counter\ngo_memstats_alloc_bytes_total 2e9\n"
                                "# TYPE scheduler_schedule_attempts_total counter\n"
                                'scheduler_schedule_attempts_total{profile="default",result="scheduled"} 10\n'}
    after = {"kube-apiserver": _apiserver(8.5e9, 15100, 5.53e7, 60, 34, 0),
             "kube-scheduler": "# TYPE go_memstats_alloc_bytes_total counter\ngo_memstats_alloc_bytes_total 1.2e10\n"
                               "# TYPE scheduler_schedule_attempts_total counter\n"
                               'scheduler_schedule_attempts_total{profile="default",result="scheduled"} 5010\n'
                               'scheduler_schedule_attempts_total{profile="default",result="unschedulable"} 3\n'}
    assert metrics.control_plane_work(before, after) == {
        "alloc_gb_kube-apiserver": 7.5, "alloc_gb_kube-scheduler": 10.0,
        "watch_events_pods": 15000.0,  # under 100 events (the Leases' 50) is left out: nothing to read
        "watch_mb_pods": 55.0,
        "refused_POST pods": 30.0,  # refusals that did not grow between the reads (bindings) are left out
        "scheduler_attempts_scheduled": 5000.0, "scheduler_attempts_unschedulable": 3.0,
    }


def test_progress_stalls_counts_pauses_of_each_stage_and_of_all_together() -> None:
    stages = {
        # the first create 1.0 s after the start, then steady, then a 2.1 s pause (a refused create's backoff)
        "created": [11.0, 11.2, 11.4, 13.5, 13.6],
        # bindings follow, with a pause of their own that creates do not share
        "bound": [11.3, 11.5, 11.7, 12.9, 13.8],
        "running": [],  # none yet: no stall counted
    }
    stalls = metrics.progress_stalls(10.0, stages)
    assert stalls["created_stalled_s"] == 3.1 and stalls["created_longest_stall_s"] == 2.1
    assert stalls["bound_stalled_s"] == 3.4 and stalls["bound_longest_stall_s"] == 1.3  # 1.3 + 1.2 + 0.9
    assert stalls["running_stalled_s"] == 0.0 and stalls["running_longest_stall_s"] == 0.0
    # together: 10.0 -> 11.0, 11.7 -> 12.9 and 12.9 -> 13.5; what one stage did while another paused is progress
    assert stalls["any_stalled_s"] == 2.8 and stalls["any_longest_stall_s"] == 1.2


def test_progress_stalls_ignores_pauses_shorter_than_the_gap_and_unsorted_input() -> None:
    stalls = metrics.progress_stalls(0.0, {"bound": [0.9, 0.3, 0.6]}, gap_s=0.5)
    assert stalls == {"bound_stalled_s": 0.0, "bound_longest_stall_s": 0.0,
                      "any_stalled_s": 0.0, "any_longest_stall_s": 0.0}
