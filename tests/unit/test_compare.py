"""core.compare.holds: its fast paths for parsed JSON answer exactly as the general rule does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vkprovider.core.compare import holds


def reference(current: Any, wanted: Any) -> bool:
    """The rule as written before the fast paths: only the fields ``wanted`` sets, None/""/{}/[] all unset."""

    def unset(value: Any) -> bool:
        return value is None or value in ("", {}, [])

    if unset(wanted):
        return unset(current)
    if isinstance(wanted, Mapping):
        if not isinstance(current, Mapping):
            return False
        return all(reference(current.get(key), value) for key, value in wanted.items())
    if isinstance(wanted, Sequence) and not isinstance(wanted, str):
        if not isinstance(current, Sequence) or isinstance(current, str) or len(current) != len(wanted):
            return False
        return all(reference(c, w) for c, w in zip(current, wanted, strict=True))
    return bool(current == wanted)


scalars = st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from(["", "a", "b"]) | st.sampled_from([0.0, 1.5])
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["x", "y", "z"]), inner, max_size=3) | st.tuples(inner, inner), max_leaves=12)


@settings(max_examples=3000, deadline=None)
@given(json_values, json_values)
def test_holds_answers_as_the_general_rule(current: Any, wanted: Any) -> None:
    assert holds(current, wanted) == reference(current, wanted)


@settings(max_examples=1000, deadline=None)
@given(json_values)
def test_a_value_holds_itself(value: Any) -> None:
    assert holds(value, value)


def test_what_the_apiserver_drops_or_adds_is_no_difference() -> None:
    assert holds({"a": 1, "lastState": {}, "extra": "x"}, {"a": 1, "b": None, "c": "", "d": {}, "e": []})
    assert not holds({"a": 1}, {"a": 2})
    assert not holds({"a": [1, 2]}, {"a": [1]})
    assert not holds("ab", ["a", "b"]) and not holds({"a": "x"}, ["a"])
    assert holds(True, 1) and holds(1, 1.0)  # as == says
