"""tests/promtext.py: a series of a /metrics answer read with prometheus-client's parser, by its sample name and the
labels it must carry, as the tests and bench/ read vkprovider's and the apiserver's metrics."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tests import promtext


def exposition() -> str:
    """What vkprovider's /metrics looks like: prometheus-client's own exposition (``_created`` samples included)."""
    registry = CollectorRegistry()
    writes = Counter("vkprovider_pod_status_writes", "status writes", ["phase"], registry=registry)
    writes.labels("Running").inc(7)
    writes.labels("Pending").inc(2)
    requests = Counter("rest_client_requests", "requests", ["code", "method", "host"], registry=registry)
    requests.labels("200", "PATCH", "a").inc(5)
    requests.labels("429", "PATCH", "a").inc(1)
    requests.labels("201", "POST", "b").inc(3)
    duration = Histogram("rest_client_request_duration_seconds", "latency", ["verb", "host"], buckets=(0.1, 1.0),
                         registry=registry)
    for value in (0.05, 0.5, 2.0):
        duration.labels("PATCH", "a").observe(value)
    duration.labels("PATCHX", "a").observe(0.05)  # a label value that contains another: never mixed in
    return generate_latest(registry).decode()


def test_a_counter_is_read_by_its_total_samples_and_never_its_created_ones() -> None:
    text = exposition()
    assert "vkprovider_pod_status_writes_created" in text
    assert promtext.total(text, "vkprovider_pod_status_writes_total") == 9.0
    assert promtext.by_label(text, "vkprovider_pod_status_writes_total", "phase") == {"Running": 7.0, "Pending": 2.0}


def test_labels_select_whatever_else_a_series_carries_and_in_any_order() -> None:
    text = exposition()
    assert promtext.total(text, "rest_client_requests_total", method="PATCH") == 6.0
    assert promtext.total(text, "rest_client_requests_total", code="429") == 1.0
    assert promtext.total(text, "rest_client_requests_total", host="b", method="POST") == 3.0
    assert promtext.total(text, "rest_client_requests_total", method="DELETE") == 0.0
    assert promtext.total(text, "no_such_series") == 0.0


def test_a_histograms_buckets_sum_and_count_are_samples_of_their_own() -> None:
    text = exposition()
    buckets = {s.labels["le"]: s.value for s in promtext.samples(text, "rest_client_request_duration_seconds_bucket",
                                                                   verb="PATCH")}
    assert buckets == {"0.1": 1.0, "1.0": 2.0, "+Inf": 3.0}
    assert math.isclose(promtext.total(text, "rest_client_request_duration_seconds_sum", verb="PATCH"), 2.55)
    assert promtext.total(text, "rest_client_request_duration_seconds_count") == 4.0


def test_escaped_label_values_and_text_without_type_lines_read_as_written() -> None:
    text = "\n".join([
        "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
        'apiserver_request_total{code="201",resource="pods",subresource="",verb="POST"} 12',
        'apiserver_request_total{code="200",resource="leases",subresource="",verb="PATCH"} 4e+03',
        'weird_total{why="a \\"quoted\\" word, a } and a comma"} 1',
        "",
    ])
    assert promtext.total(text, "apiserver_request_total", verb="PATCH") == 4000.0
    assert promtext.by_label(text, "apiserver_request_total", "resource") == {"pods": 12.0, "leases": 4000.0}
    assert promtext.samples(text, "weird_total")[0].labels["why"] == 'a "quoted" word, a } and a comma'


def test_a_series_whose_name_extends_anothers_is_never_read_with_it() -> None:
    text = "\n".join(['x_total{a="1"} 1', 'x_total_more{a="1"} 5', "# TYPE y counter", "y_total 2",
                      "y_total_created 1.7e+09", ""])
    assert (promtext.total(text, "x_total"), promtext.total(text, "x_total_more")) == (1.0, 5.0)
    assert promtext.total(text, "y_total") == 2.0
