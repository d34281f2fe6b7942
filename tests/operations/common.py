"""Paths the operations tests share."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "vkprovider"
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
OPERATIONS_DOC = REPO / "docs" / "operations.md"
CONFIG = REPO / "vkprovider" / "config.py"
