"""bench.report: a result is written as bench/results/<scenario>.json ({"scenario", "params", "metrics",
"targets"}) and read back as written, the committed ones included, and the table shows each target with its verdict
and floor, then every other metric."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.report import RESULTS, Result, table, target

COMMITTED = sorted(RESULTS.glob("*.json")) + sorted(RESULTS.glob("split-cores/*.json"))


def test_a_result_reads_back_as_it_was_written(tmp_path: Path) -> None:
    written = Result("burst", {"bases": 100}, {"total_s": 1.02, "apiserver_refused_by_flow_schema": {}},
                     [target("bound_to_running_p99_s", 0.259, 2.0, floor=0.266)])
    written.write(tmp_path)
    read = Result.read(tmp_path / "burst.json")
    assert (read.scenario, read.params, read.metrics, read.targets) == (
        written.scenario, written.params, written.metrics, written.targets)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_committed_result_reads_and_makes_its_table(path: Path) -> None:
    result = Result.read(path)
    assert result.scenario == path.stem
    lines = table([result])
    assert lines[0].split() == ["scenario", "metric", "value", "target"]
    shown = {line.split()[1] for line in lines[2:]}
    assert shown == set(result.metrics) | {t["name"] for t in result.targets}
    for t in result.targets:
        row = next(line for line in lines[2:] if line.split()[1] == t["name"])
        assert ("PASS" if t["pass"] else "MISS") in row
        assert ("machine's floor" in row) == ("floor" in t)


def test_the_committed_results_are_there() -> None:
    assert {p.stem for p in RESULTS.glob("*.json")} >= {"limit", "register", "density", "burst", "rollout", "steady",
                                                        "churn", "replicas"}
