"""The figures a scenario computes from what it counted: percentiles of its own clocks, and what vkprovider's and the
apiserver's ``/metrics`` say between two reads.

Why it exists: every scenario reports the same kinds of figures (a latency's p50/p99, vkprovider's API writes, the
apiserver's writes by resource, its refusals by FlowSchema, a histogram's quantile over a window); computed once
here, they mean the same thing in every result. The Prometheus text is read with prometheus-client's parser
(``tests/promtext.py``), never with a regex. Everything here is pure: a scenario reads the text, these compute.
"""

from __future__ import annotations

import math

from tests import promtext

WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
APISERVER_WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE")
EXCHANGES = {  # what vkprovider sends or receives, by kind: the samples of its /metrics that count them
    "api_requests": "rest_client_requests_total",
    "heartbeats_in": "vkprovider_heartbeats_total",
    "arklet_calls": "vkprovider_tunnel_request_duration_seconds_count",
    "watch_events_in": "vkprovider_informer_events_total",
}


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0..100) of ``values``; nan for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """The q-quantile (0..1) of what a cumulative histogram counted between two reads, interpolated within its
    bucket as Prometheus's histogram_quantile does (the last finite bound when it falls in +Inf)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def histogram(text: str, name: str, **labels: str) -> dict[float, float]:
    """One histogram as {upper bound: cumulative count}, its series that carry ``labels`` summed."""
    out: dict[float, float] = {}
    for s in promtext.samples(text, name + "_bucket", **labels):
        bound = float(s.labels["le"])  # "+Inf" reads as inf
        out[bound] = out.get(bound, 0.0) + s.value
    return out


def sum_and_count(text: str, name: str, **labels: str) -> tuple[float, float]:
    """(sum, count) of one histogram, its series that carry ``labels`` summed."""
    return promtext.total(text, name + "_sum", **labels), promtext.total(text, name + "_count", **labels)


def mean_between(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The mean of what a histogram observed between two :func:`sum_and_count` reads (nan for nothing)."""
    count = after[1] - before[1]
    return (after[0] - before[0]) / count if count > 0 else math.nan


def provider_writes(text: str) -> float:
    """vkprovider's API writes so far (its client's requests with a write method)."""
    by_method = promtext.by_label(text, "rest_client_requests_total", "method")
    return sum(n for method, n in by_method.items() if method in WRITE_METHODS)


def module_reconciles(text: str) -> float:
    """vkprovider's module reconciles so far (every result)."""
    return promtext.total(text, "controller_runtime_reconcile_total", controller="module")


def exchanges(text: str) -> dict[str, float]:
    """Cumulative network exchanges of vkprovider by kind (see ``EXCHANGES``)."""
    return {kind: promtext.total(text, name) for kind, name in EXCHANGES.items()}


def apiserver_writes(text: str) -> dict[str, float]:
    """Writes the apiserver served, by verb and resource[/subresource] (every client, from its /metrics)."""
    out: dict[str, float] = {}
    for s in promtext.samples(text, "apiserver_request_total"):
        labels = s.labels
        if labels.get("verb") not in APISERVER_WRITE_VERBS:
            continue
        what = labels.get("resource", "?") + ("/" + labels["subresource"] if labels.get("subresource") else "")
        key = f"{labels['verb']} {what}"
        out[key] = out.get(key, 0.0) + s.value
    return out


def writes_between(before: dict[str, float], after: dict[str, float], minutes: float,
                   nodes: int) -> dict[str, float]:
    """Writes per node per minute by resource and verb between two :func:`apiserver_writes` reads."""
    per = {k: (v - before.get(k, 0.0)) / max(nodes, 1) / max(minutes, 1e-9) for k, v in after.items()}
    return {k: round(v, 3) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0.0005}


def refused_by_flow_schema(metrics_text: str) -> dict[str, float]:
    """The apiserver's ``apiserver_flowcontrol_rejected_requests_total`` summed by FlowSchema (over its reasons)."""
    out: dict[str, float] = {}
    for s in promtext.samples(metrics_text, "apiserver_flowcontrol_rejected_requests_total"):
        key = s.labels.get("flow_schema", "?")
        out[key] = out.get(key, 0.0) + s.value
    return out


def refused_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What was refused between two reads of :func:`refused_by_flow_schema`, by FlowSchema (none left out)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def events_between(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Events recorded between two ``Bench.event_counts`` reads, by component and reason."""
    out: dict[str, int] = {}
    for uid, (what, count) in after.items():
        new = count - before.get(uid, (what, 0))[1]
        if new > 0:
            out[what] = out.get(what, 0) + new
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def control_plane_work(before: dict[str, str], after: dict[str, str]) -> dict[str, float]:
    """What the control plane did between two ``Bench.component_metrics`` reads, as counts that do not depend on
    how fast it ran: each component's Go allocations (GB: its work, where CPU seconds also count the waits of
    a shared machine), the watch events the apiserver sent by resource, the requests it refused with a 429 by
    verb and resource, and the scheduler's attempts by result. Read against the same figures of a floor, they say
    whether a scenario made the control plane do more or only gave it less CPU."""
    def delta(component: str, name: str, label: str) -> dict[str, float]:
        was = promtext.by_label(before[component], name, label)
        now = promtext.by_label(after[component], name, label)
        return {k: v - was.get(k, 0.0) for k, v in now.items() if v - was.get(k, 0.0) > 0}

    def refused(text: str) -> dict[str, float]:  # the apiserver's 429s by verb and resource[/subresource]
        found: dict[str, float] = {}
        for s in promtext.samples(text, "apiserver_request_total", code="429"):
            sub = s.labels.get("subresource")
            key = f"refused_{s.labels.get('verb', '')} {s.labels.get('resource', '')}{'/' + sub if sub else ''}"
            found[key] = found.get(key, 0.0) + s.value
        return found

    out: dict[str, float] = {}
    for component, text in after.items():
        allocated = (promtext.total(text, "go_memstats_alloc_bytes_total")
                     - promtext.total(before[component], "go_memstats_alloc_bytes_total"))
        out[f"alloc_gb_{component}"] = round(allocated / 1e9, 2)
    api = "kube-apiserver"
    for resource, n in delta(api, "apiserver_watch_events_total", "resource").items():
        if n >= 100:
            out[f"watch_events_{resource}"] = n
    for resource, n in delta(api, "apiserver_watch_events_sizes_sum", "resource").items():
        if n >= 1e6:
            out[f"watch_mb_{resource}"] = round(n / 1e6, 1)
    was_refused = refused(before[api])
    out |= {k: n - was_refused.get(k, 0.0) for k, n in refused(after[api]).items() if n > was_refused.get(k, 0.0)}
    for result, n in delta("kube-scheduler", "scheduler_schedule_attempts_total", "result").items():
        out[f"scheduler_attempts_{result}"] = n
    return out


STALL_GAP_S = 0.5  # a pause in a stage's progress at least this long counts as a stall


def progress_stalls(start: float, stages: dict[str, list[float]], gap_s: float = STALL_GAP_S) -> dict[str, float]:
    """Where a run made no progress: for each stage (``{"created": [times], ...}``: when each pod reached it) and
    for all stages together (``any``), the seconds between ``start`` and the stage's last event spent in pauses
    of at least ``gap_s`` with no pod reaching it, and the longest such pause. A rollout's time is CPU spent, or
    waiting with nothing moving (a refused create or binding retried after its backoff); read against the same
    figures of a floor, they say which of the two a longer run spent its time on."""
    def gaps(times: list[float]) -> tuple[float, float]:
        stalled = longest = 0.0
        last = start
        for t in sorted(times):
            if t - last >= gap_s:
                stalled += t - last
                longest = max(longest, t - last)
            last = max(last, t)
        return stalled, longest

    out: dict[str, float] = {}
    for stage, times in (*stages.items(), ("any", [t for ts in stages.values() for t in ts])):
        stalled, longest = gaps(times)
        out[f"{stage}_stalled_s"] = round(stalled, 2)
        out[f"{stage}_longest_stall_s"] = round(longest, 2)
    return out
