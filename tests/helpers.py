"""Polling helpers for tests against a real cluster, where every effect (scheduling, controllers) is eventual.

`await wait_for(lambda: ...)` / `wait_for_sync(lambda: ...)` call a predicate until it returns something
truthy and return that value, or fail with a message naming what was awaited and the last value or error seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
FIGURES = Path(__file__).resolve().parent.parent / ".local" / "test-logs" / "figures.txt"


class WaitTimeout(AssertionError):
    """The awaited condition did not hold in time (an AssertionError, so pytest reports it as a failure)."""


def _fail(what: str, timeout: float, last: object, error: BaseException | None) -> WaitTimeout:
    detail = f"last error: {error!r}" if error is not None else f"last value: {last!r}"
    return WaitTimeout(f"timed out after {timeout:g}s waiting for {what or 'condition'} ({detail})"[:2000])


async def wait_for(predicate: Callable[[], T | Awaitable[T]], timeout: float = 30.0, interval: float = 0.2,
                   what: str = "", ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Poll `predicate` (sync or async) until it returns a truthy value; return that value.

    Exceptions of the types in `ignore` count as "not yet"; others propagate at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            last, error = result, None
            if result:
                return result
        except ignore as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _fail(what, timeout, last, error)
        await asyncio.sleep(interval)


def wait_for_sync(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "",
                  ignore: tuple[type[BaseException], ...] = ()) -> T:
    """The blocking twin of `wait_for`, for synchronous tests and fixtures."""
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            result = predicate()
            last, error = result, None
            if result:
                return result
        except ignore as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _fail(what, timeout, last, error)
        time.sleep(interval)


def figure(name: str, value: Any = None) -> None:
    """A measured figure for the closing note: printed (seen with -s) and appended to .local/test-logs/figures.txt.
    ``figure("x", 3)`` records ``x = 3``; ``figure("x = 3, y = 4")`` records the text as it is."""
    line = f"FIGURE {name}" if value is None else f"FIGURE {name} = {value}"
    print(line)
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES.open("a") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
