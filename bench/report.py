"""What a run reports: each scenario's result as ``bench/results/<scenario>.json`` (``{"scenario", "params",
"metrics", "targets"}``) and ``<scenario>.png``, its targets with the machine's floor next to them, and the table on
stdout.

Why it exists: the JSON files are the record (committed after a full run, compared across commits, quoted by
docs/performance.md), so one type writes them and reads them back, and the table is made from exactly what was
written. A target is a row that says how far from issue 17's goal a figure is, and, when limit measured it, how far
the machine's own floor is: a miss whose floor misses too is the control plane's.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    """A progress line on stdout, timestamped."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def target(name: str, value: float, limit: float, *, at_most: bool = True,
           floor: float | None = None) -> dict[str, Any]:
    """A target of issue 17. ``floor`` is the same quantity measured in the same run for a kubelet fleet that costs
    nothing (limit's null kubelet fleet): what this machine's control plane allows any kubelet, so a miss whose floor
    misses too is the control plane's, by as much as the floor is past the target."""
    def meets(v: float) -> bool:
        return (v <= limit if at_most else v >= limit) if not math.isnan(v) else False

    row: dict[str, Any] = {"name": name, "value": round(value, 4), "target": f"{'<=' if at_most else '>='} {limit:g}",
                           "pass": meets(value)}
    if floor is not None and not math.isnan(floor):
        row["floor"] = round(floor, 4)
        row["floor_pass"] = meets(floor)
    return row


@dataclass
class Result:
    scenario: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    chart: Callable[[Path], None] | None = None

    def write(self, results: Path = RESULTS) -> None:
        """``<scenario>.json`` and, when there is a chart, ``<scenario>.png`` in ``results``."""
        results.mkdir(parents=True, exist_ok=True)
        body = {"scenario": self.scenario, "params": self.params, "metrics": self.metrics, "targets": self.targets}
        (results / f"{self.scenario}.json").write_text(json.dumps(body, indent=2, default=float) + "\n")
        if self.chart is not None:
            try:
                self.chart(results / f"{self.scenario}.png")
            except Exception as exc:  # a chart must not lose the numbers
                log(f"chart for {self.scenario} failed: {exc!r}")

    @classmethod
    def read(cls, path: Path) -> Result:
        """A result as :meth:`write` wrote it (bench.micro's, without params or targets, reads too)."""
        body = json.loads(path.read_text())
        return cls(body["scenario"], body.get("params", {}), body.get("metrics", {}), body.get("targets", []))


def table(results: list[Result]) -> list[str]:
    """The lines of the table: every target (value, goal, PASS or MISS, the floor), then every other metric."""
    rows: list[tuple[str, str, str, str]] = []
    for r in results:
        for t in r.targets:
            floor = ("" if "floor" not in t else
                     f"  (machine's floor {t['floor']:g}: {'within' if t['floor_pass'] else 'past'} the target)")
            rows.append((r.scenario, t["name"], f"{t['value']:g}",
                         f"{t['target']}  {'PASS' if t['pass'] else 'MISS'}{floor}"))
        for k, v in r.metrics.items():
            if not any(t["name"] == k for t in r.targets):
                rows.append((r.scenario, k, str(v), ""))
    header = ("scenario", "metric", "value", "target")
    widths = [max(len(row[i]) for row in [*rows, header]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return [line.format(*header), "  ".join("-" * w for w in widths), *(line.format(*row) for row in rows)]


def print_table(results: list[Result], where: Path = RESULTS) -> None:
    for line in table(results):
        print(line)
    print(f"\nresults: {where}/<scenario>.json and .png")
