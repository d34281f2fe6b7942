"""What a base offers the scheduler, and whether it is under memory pressure. Pure rules, no I/O.

**Pod capacity** (``status.capacity.pods`` = ``allocatable.pods``; the scheduler places no more pods on the vnode:
"Too many pods") is the first of:

1. the base's own word, the heartbeat label ``base.koupleless.io/max-pods`` (in ``baseMetadata.labels`` or the
   top-level ``labels`` extension; it is also a label of the Node): a whole number 1..65535. Any other value is
   ignored, said once (an ``InvalidMaxPods`` Warning Event on the Node) and the next rule applies;
2. ``VKP_NODE_MAX_PODS_BY_BASE``, for bases that cannot say it themselves: ``name:version=N`` for the base's name
   and version, then ``name=N`` for its name (rules separated by ``;``, e.g. ``small:1.0.0=8;small=16;big=400``);
3. ``VKP_NODE_MAX_PODS``, every other base.

65535 is the most any controller wrote (the Go controller's capacity for every base); a larger number would only
risk a quantity the apiserver refuses.

**cpu** is health's ``cpu.count`` when positive. **memory** (capacity = allocatable) is the JVM's max metaspace
when the base has one (the Go controller's capacity); a base run without ``-XX:MaxMetaspaceSize`` reports -1
(docs/protocol.md), and then its max heap (``max heap memory(M)``); neither: no memory resource at all, never 0 (a
vnode with 0 memory refuses every pod that requests any). Allocatable is not max minus committed, as the Go
controller had it: committed memory moves with every GC, and a status following it is rewritten at every answer.

**Memory pressure** (the MemoryPressure condition, with the kubelet's reasons and messages) follows the base's
metaspace use = ``java used metaspace`` / ``java max metaspace``, with hysteresis: above
``VKP_METASPACE_PRESSURE_HIGH`` the base is under pressure, below ``VKP_METASPACE_PRESSURE_LOW`` it is not, in
between it stays as it was. A base without a max metaspace (-1) is never under pressure: committed metaspace is no
limit (the JVM commits it as it loads classes; an idle real base reported used/committed = 0.991), so there is no
fraction to judge by. A base that has not answered yet (after a restart or a takeover) keeps what its Node says:
the state lives on the Node (``pressure_shown``), so a restart neither clears nor raises it. A high mark of 1
turns pressure off (used metaspace never exceeds its max).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vkprovider.core.model import BaseHealth, BaseHeartbeat

LABEL_MAX_PODS = "base.koupleless.io/max-pods"
MAX_PODS_LIMIT = 65535
CONDITION_MEMORY_PRESSURE = "MemoryPressure"
#: The kubelet's words (pkg/kubelet/nodestatus/setters.go MemoryPressureCondition), and its Events' reasons.
PRESSURE_REASON = {True: "KubeletHasInsufficientMemory", False: "KubeletHasSufficientMemory"}
PRESSURE_MESSAGE = {True: "kubelet has insufficient memory available",
                    False: "kubelet has sufficient memory available"}
PRESSURE_EVENT = {True: "NodeHasInsufficientMemory", False: "NodeHasSufficientMemory"}

_NAME = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?$")  # a label value: base names and versions are
_WHOLE = re.compile(r"^[0-9]+$")

#: (base name, base version or None for every version) -> pod capacity
MaxPodsTable = Mapping[tuple[str, str | None], int]


def _pods(text: str) -> int | None:
    """A pod capacity, or None when ``text`` is not a whole number 1..65535."""
    if not _WHOLE.match(text):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_PODS_LIMIT else None


def parse_max_pods_by_base(text: str) -> dict[tuple[str, str | None], int]:
    """``name:version=N;name=N`` -> table; raises ValueError with one line naming the rule."""
    table: dict[tuple[str, str | None], int] = {}
    for raw in text.split(";"):
        rule = raw.strip()
        if not rule:
            continue
        base, eq, count = rule.partition("=")
        if not eq:
            raise ValueError(f"rule {rule!r} is not name=N or name:version=N")
        name, colon, version = (part.strip() for part in base.partition(":"))
        if name == "*":
            raise ValueError(f"rule {rule!r}: '*' is not a base name (the default of every base is "
                             "VKP_NODE_MAX_PODS)")
        if not _NAME.match(name):
            raise ValueError(f"rule {rule!r}: {name!r} is not a base name")
        if colon and not _NAME.match(version):
            raise ValueError(f"rule {rule!r}: {version!r} is not a base version")
        pods = _pods(count.strip())
        if pods is None:
            raise ValueError(f"rule {rule!r}: {count.strip()!r} is not a whole number 1..{MAX_PODS_LIMIT}")
        key = (name, version if colon else None)
        if key in table:
            raise ValueError(f"rule {rule!r}: {name}{':' + version if colon else ''} is given twice")
        table[key] = pods
    return table


@dataclass(frozen=True, slots=True)
class PodCapacity:
    """A vnode's pod capacity, which rule gave it, and what was wrong with the base's own word (None: nothing)."""

    pods: int
    source: str
    problem: str | None = None


def pod_capacity(hb: BaseHeartbeat, table: MaxPodsTable, default: int) -> PodCapacity:
    """The pod capacity of the base's vnode (see the module docstring for the order)."""
    problem = None
    said = dict(hb.labels).get(LABEL_MAX_PODS)
    if said is not None:
        pods = _pods(said)
        if pods is not None:
            return PodCapacity(pods, "label")
        problem = f"label {LABEL_MAX_PODS}={said[:63]!r} is not a whole number 1..{MAX_PODS_LIMIT}"
    name, version = hb.metadata.name, hb.metadata.version
    for key, source in (((name, version), f"{name}:{version}"), ((name, None), name)):
        pods = table.get(key)
        if pods is not None:
            return PodCapacity(pods, f"VKP_NODE_MAX_PODS_BY_BASE {source}", problem)
    return PodCapacity(default, "VKP_NODE_MAX_PODS", problem)


def memory_capacity(health: BaseHealth | None) -> int | None:
    """The vnode's memory in bytes: max metaspace, else max heap, else None (never 0)."""
    if health is None:
        return None
    for value in (health.memory_max_bytes, health.heap_max_bytes):
        if value is not None and value > 0:
            return value
    return None


def metaspace_use(health: BaseHealth) -> float | None:
    """Used / max metaspace, or None when the base does not give both (no max: no limit to press against)."""
    top, used = health.memory_max_bytes, health.memory_used_bytes
    if top is None or top <= 0 or used is None:
        return None
    return used / top


@dataclass(frozen=True, slots=True)
class PressureThresholds:
    """``VKP_METASPACE_PRESSURE_HIGH`` / ``_LOW``: fractions of the max metaspace, 0 < low < high <= 1."""

    high: float = 0.9
    low: float = 0.8


def memory_pressure(before: bool, health: BaseHealth | None, limits: PressureThresholds) -> bool:
    """Whether the base is under memory pressure now, given whether it was (hysteresis)."""
    if health is None:
        return before
    use = metaspace_use(health)
    if use is None:
        return False
    if use > limits.high:
        return True
    if use < limits.low:
        return False
    return before


def pressure_shown(node: Mapping[str, Any] | None) -> bool:
    """Whether the Node says its base is under memory pressure (the state a restart or a takeover starts from)."""
    for cond in ((node or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == CONDITION_MEMORY_PRESSURE:
            return bool(cond.get("status") == "True")
    return False


def describe_use(health: BaseHealth | None) -> str:
    """``metaspace 93% used (476Mi of 512Mi)`` for an Event, or what the base did not say."""
    if health is None:
        return "no health answer yet"
    use = metaspace_use(health)
    if use is None:
        return "the base reports no max metaspace"
    mib = 1024 * 1024
    return (f"metaspace {use:.0%} used ({(health.memory_used_bytes or 0) // mib}Mi of "
            f"{(health.memory_max_bytes or 0) // mib}Mi)")
