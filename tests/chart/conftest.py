"""The chart tests' tools come from hack/chart/tools.sh (`make chart-tools`), which may build them first."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The first test to use helm / kubeconform may `go install` them (`make test` does it before, then the
    # fixture is a no-op): on a fresh machine that takes longer than the default per-test timeout.
    for item in items:
        if "tools" in getattr(item, "fixturenames", ()) and item.path.parent.name == "chart":
            item.add_marker(pytest.mark.timeout(1800))
