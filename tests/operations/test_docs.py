"""docs/operations.md keeps up with the code: every setting of vkprovider/config.py in the table of its group with
its default, every exported metric, every Event reason vkprovider posts, every alert, and links that resolve."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operations import promql
from tests.operations.common import ALERTS, CONFIG, OPERATIONS_DOC, REPO
from vkprovider.config import GO_ONLY_VARIABLES, Settings, env_name_of

#: config.py's "# --- <group> ---" comments -> the docs' "### <section>" under "## Configure".
SECTIONS = {
    "identity": "Identity",
    "HTTP tunnel": "HTTP tunnel",
    "who may register a base, and what a base may make vkprovider call": "Security",
    "arklet": "Arklet",
    "MQTT tunnel": "MQTT tunnel",
    "virtual nodes": "Vnodes",
    "modules": "Modules",
    "release strategies": "Release strategies",
    "operations": "Operations",
}
#: Events the brief of issue 15 names; the code's own reasons are found below as well.
EVENT_REASONS = ("RegisteredNode", "NodeReady", "NodeNotReady", "RemovingNode", "LeaseTakenOver", "BizInstalled",
                 "BizInstallFailed", "BizUninstalled", "OrphanBizUninstalled", "BizUninstallFailed",
                 "BizUninstallTimeout", "BizNameMismatch", "BizNotAllowed", "InvalidBizURL", "MissingBizVersion",
                 "NotAModule", "NoBizContainer", "InvalidInstallStrategy", "DrainStarted", "Evicted", "EvictionBlocked",
                 "Drained", "DrainTimeout", "DrainCancelled")


def doc() -> str:
    return OPERATIONS_DOC.read_text()


def section(text: str, heading: str, level: int) -> str:
    """The text under ``heading`` down to the next heading of the same or a higher level."""
    marks = "#" * level
    match = re.search(rf"^{marks} {re.escape(heading)}\n(.*?)(?=^#{{1,{level}}} |\Z)", text, re.M | re.S)
    assert match, f"docs/operations.md has no section {marks} {heading}"
    return match.group(1)


def table_rows(text: str) -> dict[str, list[str]]:
    """First cell (without backticks) -> the other cells, of every markdown table row in ``text``."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def settings_groups() -> dict[str, list[str]]:
    """config.py's groups in order, each with its fields in order."""
    source = CONFIG.read_text()
    body = source[source.index("class Settings(BaseSettings):"):]
    groups: dict[str, list[str]] = {}
    current = None
    for line in body.splitlines():
        if line.startswith(("    @", "    def ")):
            break
        marker = re.match(r"    # --- (.+?) -{3,}$", line)
        if marker:
            current = marker.group(1)
            groups[current] = []
            continue
        field = re.match(r"    (\w+): ", line)
        if field and field.group(1) in Settings.model_fields:
            assert current is not None, f"{field.group(1)} comes before any '# --- group ---' comment"
            groups[current].append(field.group(1))
    placed = [f for fields in groups.values() for f in fields]
    assert sorted(placed) == sorted(Settings.model_fields), "every setting belongs to a group"
    return groups


def shown_default(field: str) -> str:
    value: Any = Settings.model_fields[field].default
    if field == "client_id":
        return "host name"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def test_the_configure_sections_are_config_pys_groups_in_order() -> None:
    configure = section(doc(), "Configure", 2)
    headings = re.findall(r"^### (.+)$", configure, re.M)
    groups = list(settings_groups())
    unknown = [g for g in groups if g not in SECTIONS]
    assert unknown == [], f"new group(s) in config.py {unknown}: add a section to docs/operations.md and SECTIONS"
    assert headings == [SECTIONS[g] for g in groups]


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_every_setting_is_documented_in_its_group_with_its_default(field: str) -> None:
    group = next(g for g, fields in settings_groups().items() if field in fields)
    if group not in SECTIONS:
        pytest.fail(f"config.py group {group!r} has no section in docs/operations.md (and SECTIONS)")
    rows = table_rows(section(section(doc(), "Configure", 2), SECTIONS[group], 3))
    name = env_name_of(field)
    assert name in rows, f"{name} ({field}) is missing from the {SECTIONS[group]} table of docs/operations.md"
    default, meaning = rows[name]
    assert shown_default(field) in default, f"{name}: the table says {default!r}, config.py {shown_default(field)}"
    assert meaning, f"{name}: say what it means"
    in_other_groups = [h for g, h in SECTIONS.items() if g != group and name in
                       table_rows(section(section(doc(), "Configure", 2), h, 3))]
    assert in_other_groups == [], f"{name} is also in {in_other_groups}"


def test_the_go_only_variables_are_mentioned() -> None:
    configure = section(doc(), "Configure", 2)
    for name in GO_ONLY_VARIABLES:
        assert f"`{name}`" in configure, name


def test_every_exported_metric_is_in_the_metrics_table() -> None:
    rows = table_rows(section(doc(), "Metrics", 3))
    wanted = set()
    for line in promql.GOLDEN.read_text().splitlines():
        kind, name = line.split(" ")[:2]
        wanted.add(f"{name}_total" if kind == "counter" else name)
    assert wanted - set(rows) == set(), "metrics of tests/unit/metrics.golden not in docs/operations.md#metrics"
    assert set(rows) - wanted == set(), "documented metrics vkprovider does not export"
    golden = {line.split(" ")[1]: line for line in promql.GOLDEN.read_text().splitlines()}
    for name, (kind, labels, meaning) in rows.items():
        line = golden[promql.family_of(name)].split(" ")
        assert kind == line[0], name
        assert set(re.findall(r"`(\w+)`", labels.split(" (")[0])) == {x for x in line[2].split(",") if x}, name
        assert meaning, name


def code_event_reasons() -> set[str]:
    """Reasons written literally in the code's events.normal/warning(...) and _warn_once(...) calls."""
    found = set()
    for path in (REPO / "vkprovider").rglob("*.py"):
        text = path.read_text()
        posted = r"(?:(?:events|scope)\.(?:normal|warning)|_warn_once)\((?:[^()\"]|\([^()]*\))*?\"([A-Z]\w+)\""
        for match in re.finditer(posted, text):
            found.add(match.group(1))
        # reasons that reach an Event through a container problem, a release decision or a Deployment warning
        found.update(re.findall(r"ContainerProblem\(\w+, \"([A-Z]\w+)\"", text))
        found.update(re.findall(r"event=\(\"([A-Z]\w+)\"", text))
        found.update(re.findall(r"self\._warn\(\w+, \w+, \"([A-Z]\w+)\"", text))
    # the fallback reason of a Failed pod's Event (its status reason, e.g. BizDeactivate, is used when there is one)
    return found - {"Failed"}


def test_every_event_reason_is_in_the_events_table() -> None:
    rows = table_rows(section(doc(), "Events", 3))
    code = code_event_reasons()
    assert set(EVENT_REASONS) <= code | {"LeaseTakenOver"}, f"not found in the code: {set(EVENT_REASONS) - code}"
    assert (set(EVENT_REASONS) | code) - set(rows) == set(), "Event reasons missing from docs/operations.md#events"
    for reason, (kind, on, when) in rows.items():
        assert kind in ("Normal", "Warning") and on in ("Node", "Pod", "Deployment") and when, reason


def test_every_alert_has_a_row_and_a_section() -> None:
    text = doc()
    rows = table_rows(section(text, "Alerts", 3))
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert list(rows) == [r["alert"] for r in rules], "the alerts table lists every alert, in the file's order"
    for rule in rules:
        assert rows[rule["alert"]][0] == rule["labels"]["severity"], rule["alert"]
        assert section(text, rule["alert"], 4).strip(), rule["alert"]


def test_relative_links_resolve() -> None:
    text = doc()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (OPERATIONS_DOC.parent / path).resolve().exists(), target
        elif anchor:
            assert anchor in anchors, target
    assert Path(OPERATIONS_DOC.parent / "../charts/vkprovider/README.md").resolve().exists()
