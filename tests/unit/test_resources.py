"""What a base offers the scheduler and whether it is under memory pressure (core/resources.py): tables."""

from __future__ import annotations

import pytest

from vkprovider.core import resources as res
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata

MIB = 1024 * 1024


def beat(name: str = "base", version: str = "1.0.0", **labels: str) -> BaseHeartbeat:
    return BaseHeartbeat(metadata=BaseMetadata("b1", name, version, "default"), host_name="h", ip="10.0.0.5",
                         port=1238, labels=tuple(sorted(labels.items())))


# --- VKP_NODE_MAX_PODS_BY_BASE ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "table"),
    [
        ("", {}),
        ("  ", {}),
        ("small=2", {("small", None): 2}),
        ("small:1.0.0=2", {("small", "1.0.0"): 2}),
        (" small:1.0.0 = 2 ; small=4;big=300 ;", {("small", "1.0.0"): 2, ("small", None): 4, ("big", None): 300}),
        ("base=65535", {("base", None): 65535}),
    ],
)
def test_max_pods_by_base_grammar(text: str, table: dict[tuple[str, str | None], int]) -> None:
    assert res.parse_max_pods_by_base(text) == table


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("small", "rule 'small' is not name=N or name:version=N"),
        ("small=", "rule 'small=': '' is not a whole number 1..65535"),
        ("small=0", "rule 'small=0': '0' is not a whole number 1..65535"),
        ("small=-3", "rule 'small=-3': '-3' is not a whole number 1..65535"),
        ("small=2.5", "rule 'small=2.5': '2.5' is not a whole number 1..65535"),
        ("small=65536", "rule 'small=65536': '65536' is not a whole number 1..65535"),
        ("*=5", "rule '*=5': '*' is not a base name (the default of every base is VKP_NODE_MAX_PODS)"),
        ("=5", "rule '=5': '' is not a base name"),
        ("small:=5", "rule 'small:=5': '' is not a base version"),
        ("a b=5", "rule 'a b=5': 'a b' is not a base name"),
        ("small=2;small=3", "rule 'small=3': small is given twice"),
        ("small:1.0=2;small:1.0=3", "rule 'small:1.0=3': small:1.0 is given twice"),
    ],
)
def test_max_pods_by_base_refusals_name_the_rule(text: str, error: str) -> None:
    with pytest.raises(ValueError) as err:
        res.parse_max_pods_by_base(text)
    assert str(err.value).startswith(error), str(err.value)
    assert "\n" not in str(err.value)


TABLE = res.parse_max_pods_by_base("small:1.0.0=2;small=4;labelled=9")


@pytest.mark.parametrize(
    ("heartbeat", "pods", "source", "problem"),
    [
        (beat("other"), 200, "VKP_NODE_MAX_PODS", None),
        (beat("small", "1.0.0"), 2, "VKP_NODE_MAX_PODS_BY_BASE small:1.0.0", None),  # name:version first
        (beat("small", "2.0.0"), 4, "VKP_NODE_MAX_PODS_BY_BASE small", None),  # then the name
        (beat("labelled", **{res.LABEL_MAX_PODS: "3"}), 3, "label", None),  # the base's own word first
        (beat("other", **{res.LABEL_MAX_PODS: "65535"}), 65535, "label", None),
        # a label that is not a capacity is ignored (and said), the next rule applies
        (beat("labelled", **{res.LABEL_MAX_PODS: "lots"}), 9, "VKP_NODE_MAX_PODS_BY_BASE labelled",
         "label base.koupleless.io/max-pods='lots' is not a whole number 1..65535"),
        (beat("other", **{res.LABEL_MAX_PODS: "0"}), 200, "VKP_NODE_MAX_PODS",
         "label base.koupleless.io/max-pods='0' is not a whole number 1..65535"),
        (beat("other", **{res.LABEL_MAX_PODS: "70000"}), 200, "VKP_NODE_MAX_PODS",
         "label base.koupleless.io/max-pods='70000' is not a whole number 1..65535"),
    ],
)
def test_pod_capacity_precedence(heartbeat: BaseHeartbeat, pods: int, source: str, problem: str | None) -> None:
    got = res.pod_capacity(heartbeat, TABLE, default=200)
    assert (got.pods, got.source, got.problem) == (pods, source, problem)


# --- memory ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("health", "memory"),
    [
        (None, None),
        (BaseHealth(), None),
        (BaseHealth(memory_max_bytes=512 * MIB, heap_max_bytes=6 * 1024 * MIB), 512 * MIB),  # the Go controller's
        (BaseHealth(memory_max_bytes=None, heap_max_bytes=6028 * MIB), 6028 * MIB),  # max metaspace -1: the heap
        (BaseHealth(memory_max_bytes=0, heap_max_bytes=0), None),  # never 0: that would refuse every request
    ],
)
def test_memory_capacity(health: BaseHealth | None, memory: int | None) -> None:
    assert res.memory_capacity(health) == memory


@pytest.mark.parametrize(
    ("health", "use"),
    [
        (BaseHealth(memory_max_bytes=100, memory_used_bytes=93), 0.93),
        (BaseHealth(memory_max_bytes=100, memory_used_bytes=0), 0.0),
        # Without a max metaspace there is no fraction: committed is no limit (the JVM commits as it loads, a real
        # idle base reported used/committed = 0.991; docs/protocol.md).
        (BaseHealth(memory_max_bytes=None, memory_committed_bytes=56623104, memory_used_bytes=56125448), None),
        (BaseHealth(memory_max_bytes=100, memory_used_bytes=None), None),
        (BaseHealth(memory_max_bytes=0, memory_used_bytes=5), None),
    ],
)
def test_metaspace_use(health: BaseHealth, use: float | None) -> None:
    assert res.metaspace_use(health) == use


# --- the pressure state machine ------------------------------------------------------------------------------

LIMITS = res.PressureThresholds(high=0.9, low=0.8)


def used(fraction: float) -> BaseHealth:
    return BaseHealth(memory_max_bytes=1000, memory_used_bytes=round(fraction * 1000))


@pytest.mark.parametrize(
    ("before", "health", "after"),
    [
        (False, used(0.5), False),
        (False, used(0.85), False),  # between: unchanged
        (False, used(0.9), False),  # at the high mark, not above it
        (False, used(0.91), True),  # above high: pressure
        (True, used(0.95), True),
        (True, used(0.85), True),  # between: unchanged (hysteresis)
        (True, used(0.8), True),  # at the low mark, not below it
        (True, used(0.79), False),  # below low: cleared
        (True, None, True),  # no answer yet (a restart, a takeover): what the Node says stands
        (False, None, False),
        # The base answers but cannot say (no max metaspace): no pressure it could be judged by.
        (True, BaseHealth(memory_max_bytes=None, memory_used_bytes=900), False),
    ],
)
def test_memory_pressure_hysteresis(before: bool, health: BaseHealth | None, after: bool) -> None:
    assert res.memory_pressure(before, health, LIMITS) is after


def test_a_walk_through_the_band() -> None:
    state = False
    seen = []
    for fraction in (0.5, 0.85, 0.92, 0.88, 0.81, 0.86, 0.7, 0.85, 0.89):
        state = res.memory_pressure(state, used(fraction), LIMITS)
        seen.append(state)
    assert seen == [False, False, True, True, True, True, False, False, False]


def test_high_one_turns_pressure_off() -> None:
    off = res.PressureThresholds(high=1.0, low=0.8)
    assert res.memory_pressure(False, used(1.0), off) is False


@pytest.mark.parametrize(
    ("condition", "before"),
    [
        ({"type": "MemoryPressure", "status": "True"}, True),
        ({"type": "MemoryPressure", "status": "False"}, False),
        ({"type": "MemoryPressure", "status": "Unknown"}, False),
        (None, False),
    ],
)
def test_after_a_restart_the_state_is_what_the_node_says(condition: dict[str, str] | None, before: bool) -> None:
    node = {"status": {"conditions": [{"type": "Ready", "status": "True"}, *([condition] if condition else [])]}}
    assert res.pressure_shown(node) is before
    assert res.pressure_shown(None) is False
