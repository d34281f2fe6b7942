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
    """True when ``current`` already carries every field of ``wanted`` (extra fields in ``current`` are fine)."""
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
