"""The test tree itself: `make test` collects every tier in one pytest run, and pytest's default import mode
(rootdir-relative basenames, no packages in most tiers) refuses two test files of the same name in different tiers.
This catches a second `test_x.py` before CI's collection does."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_file_basenames_are_unique_across_tiers() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        if "__pycache__" in path.parts:
            continue
        seen[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"test files sharing a basename (pytest cannot collect both): {clashes}"
