"""Prometheus text (a ``/metrics`` answer) read with prometheus-client's own parser, for the tests and bench/.

Why it exists: picking a series out of the text with a regex or a line prefix reads what the lines happen to look
like, not what they say: a label's order, an escaped quote or a ``_created`` sample next to a counter changes what
it finds. ``prometheus_client.parser`` reads the exposition as Prometheus does; this module is the one place tests
and the benchmark ask it for a series, by its sample name (``x_total``, ``x_bucket``, ``x_sum``) and the labels it
must carry (others may be there too).
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str, name: str, **labels: str) -> list[Sample]:
    """Every sample named ``name`` whose labels include ``labels`` (a counter's are ``<name>_total``).

    Only the sample lines of that name reach the parser (read as untyped: each sample keeps the name it is written
    with): the apiserver's answer is tens of thousands of lines, and parsing it whole took most of a second of the
    benchmark's time, some of it inside a timed window."""
    end = len(name)
    lines = [line for line in text.splitlines() if line.startswith(name) and line[end:end + 1] in ("{", " ")]
    found: list[Sample] = []
    for family in text_string_to_metric_families("\n".join(lines)):
        found += [s for s in family.samples
                  if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return found


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` that carry ``labels`` (0.0 when there is none)."""
    return sum(s.value for s in samples(text, name, **labels))


def by_label(text: str, name: str, label: str, **labels: str) -> dict[str, float]:
    """The samples named ``name`` that carry ``labels``, summed by the value of ``label`` (e.g. a phase)."""
    out: dict[str, float] = {}
    for s in samples(text, name, **labels):
        key = s.labels.get(label, "")
        out[key] = out.get(key, 0.0) + s.value
    return out
