"""Just enough PromQL reading to check alert rules and dashboard panels against tests/unit/metrics.golden.

``selectors(expr)`` finds every series selector of an expression (metric name and the label names it matches on)
and ``grouping_labels(expr)`` the labels of ``by``/``without``/``on``/``ignoring``/``group_*`` clauses. It is not
a parser: it is exact for the expressions this project writes (string literals, label matchers, ranges,
Grafana's ``$variables``), and a name it cannot place counts as a metric name, so a typo fails loudly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "unit" / "metrics.golden"

_WORDS = """
    abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max clamp_min count
    count_over_time count_values day_of_month day_of_week day_of_year days_in_month delta deriv exp floor group
    histogram_count histogram_fraction histogram_quantile histogram_sum holt_winters hour idelta increase irate
    label_join label_replace last_over_time ln log10 log2 max max_over_time min min_over_time minute month
    predict_linear present_over_time quantile quantile_over_time rate resets round scalar sgn sort sort_desc sqrt
    stddev stddev_over_time stdvar stdvar_over_time sum sum_over_time time timestamp topk vector year
    and or unless by without on ignoring group_left group_right bool offset inf nan
"""
FUNCTIONS_AND_KEYWORDS = frozenset(_WORDS.split())
#: Labels Prometheus puts on every target (plain scrape configs: job, instance; the ServiceMonitor adds the rest).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "endpoint", "container", "le"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}|(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:]*\s*\()")
_MATCHER = re.compile(r"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*")


@dataclass(frozen=True)
class Selector:
    metric: str
    labels: frozenset[str]


def _blank_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def _clean(expr: str) -> str:
    expr = _VARIABLE.sub("1", _blank_strings(expr))
    expr = _RANGE.sub("", expr)
    return _GROUPING.sub(" ", expr)


def selectors(expr: str) -> list[Selector]:
    """Every series selector in ``expr``: its metric name and the label names of its matchers."""
    out = []
    for match in _SELECTOR.finditer(_clean(expr)):
        if match.group(2) is not None:  # name{...} or {...}
            labels = frozenset(m.group(1) for m in _MATCHER.finditer(match.group(2)))
            name = match.group(1) or ""
            if name in FUNCTIONS_AND_KEYWORDS:  # sum{...} cannot happen; by{...} neither
                raise AssertionError(f"unexpected selector {match.group(0)!r} in {expr!r}")
            out.append(Selector(name, labels))
        else:
            name = match.group(3)
            if name.lower() in FUNCTIONS_AND_KEYWORDS or re.fullmatch(r"[0-9.e+-]+", name):
                continue
            out.append(Selector(name, frozenset()))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Label names of the expression's by/without/on/ignoring/group_left/group_right clauses."""
    found: set[str] = set()
    for match in _GROUPING.finditer(_VARIABLE.sub("1", _blank_strings(expr))):
        found.update(part.strip() for part in match.group(2).split(",") if part.strip())
    return found


def golden() -> dict[str, frozenset[str]]:
    """Series names vkprovider exports (counters with _total, histograms' _bucket/_sum/_count) -> their labels."""
    series: dict[str, frozenset[str]] = {}
    for line in GOLDEN.read_text().splitlines():
        parts = line.split(" ")
        kind, name = parts[0], parts[1]
        labels = frozenset(label for label in (parts[2] if len(parts) > 2 else "").split(",") if label)
        if kind == "counter":
            series[f"{name}_total"] = labels
        elif kind == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = labels
            series[f"{name}_count"] = labels
        else:
            series[name] = labels
    return series


def golden_families() -> set[str]:
    """The metric names of metrics.golden as listed (counters without _total)."""
    return {line.split(" ")[1] for line in GOLDEN.read_text().splitlines()}


def family_of(series_name: str) -> str:
    for suffix in ("_total", "_bucket", "_sum", "_count"):
        if series_name.endswith(suffix) and series_name.removesuffix(suffix) in golden_families():
            return series_name.removesuffix(suffix)
    return series_name


def problems(expr: str, extra: dict[str, frozenset[str]] | None = None) -> list[str]:
    """What in ``expr`` is not in metrics.golden: unknown series names, unknown label names."""
    known = {**golden(), "up": frozenset(), **(extra or {})}
    every_label = set().union(*known.values()) | TARGET_LABELS
    found = []
    for sel in selectors(expr):
        if not sel.metric:
            found.append(f"selector without a metric name in {expr!r}")
            continue
        if sel.metric not in known:
            found.append(f"unknown metric {sel.metric!r}")
            continue
        unknown = sel.labels - known[sel.metric] - TARGET_LABELS - {"__name__"}
        if unknown:
            found.append(f"{sel.metric} has no label(s) {sorted(unknown)}")
    unknown_grouping = grouping_labels(expr) - every_label
    if unknown_grouping:
        found.append(f"grouping by unknown label(s) {sorted(unknown_grouping)}")
    return found
