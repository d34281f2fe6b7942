"""Does an object already hold what we would write? Compared the way the apiserver stores it.

The apiserver drops empty strings and nulls (``omitempty``) and adds fields of its own (``lastState``,
defaults), so an exact ``!=`` between what a controller wants and what it reads back is true forever and turns
every reconcile into a write. ``holds`` compares only the fields we set, with ``None``, ``""``, ``{}`` and
``[]`` all meaning "not set".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _unset(value: Any) -> bool:
    return value is None or value in ("", {}, [])


def holds(current: Any, wanted: Any) -> bool:
    """True when ``current`` already carries every field of ``wanted`` (extra fields in ``current`` are fine).

    Parsed JSON is dicts, lists, strings, numbers and booleans: those are told by their exact type first, as the
    abstract ``Mapping``/``Sequence`` checks cost more than the comparison itself (a rollout compares every pod's
    status on every pass over its base; docs/performance.md, "Measured reasons in the code")."""
    kind = type(wanted)
    if kind is str:
        return current == wanted if wanted else _unset(current)
    if kind is dict:
        if not wanted:
            return _unset(current)
        if type(current) is not dict and not isinstance(current, Mapping):
            return False
        get = current.get
        for key, value in wanted.items():  # noqa: SIM110 - a loop: all() over a generator costs more (performance.md)
            if not holds(get(key), value):
                return False
        return True
    if kind is list:
        if not wanted:
            return _unset(current)
        if type(current) is not list and (not isinstance(current, Sequence) or isinstance(current, str)):
            return False
        if len(current) != len(wanted):
            return False
        for have, want in zip(current, wanted, strict=True):  # noqa: SIM110 - as above
            if not holds(have, want):
                return False
        return True
    if kind is bool or kind is int or kind is float:
        return bool(current == wanted)
    return _holds_generic(current, wanted)


def _holds_generic(current: Any, wanted: Any) -> bool:
    """``holds`` for any other type (tuples, other mappings and sequences, None)."""
    if _unset(wanted):
        return _unset(current)
    if isinstance(wanted, Mapping):
        if not isinstance(current, Mapping):
            return False
        return all(holds(current.get(key), value) for key, value in wanted.items())
    if isinstance(wanted, Sequence) and not isinstance(wanted, str):
        if not isinstance(current, Sequence) or isinstance(current, str) or len(current) != len(wanted):
            return False
        return all(holds(c, w) for c, w in zip(current, wanted, strict=True))
    return bool(current == wanted)
