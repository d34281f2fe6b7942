"""The one backoff policy: how long to wait before trying again, everywhere vkprovider retries.

Every retry in vkprovider (an API call, a re-LIST, a failed reconcile, a reconnect to the broker, a failed biz
install or uninstall, a failed status write) waits ``Backoff.delay(attempt)``: exponential growth from
``initial_s``, capped at ``max_s``, with jitter so a thousand keys that failed together do not retry together.
The caps are deliberately short for things that wait on an outside cause (apiserver, broker, base): once the
cause is gone, recovery follows within seconds instead of after a minute-long sleep. Biz installs are the
exception that proves the rule: a jar that fails to start fails again, so they back off like kubelet's
CrashLoopBackOff (to five minutes), and a base coming back resets them.

Pure (no asyncio): the random source is injectable so the bounds are unit-tested.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": the delay lies in [ceiling/2, ceiling]."""

    initial_s: float
    max_s: float
    factor: float = 2.0

    def ceiling(self, attempt: int) -> float:
        """The largest delay after ``attempt`` consecutive failures (1-based)."""
        exponent = max(0, attempt - 1)
        if exponent > 60:  # 2**60 overflows nothing here but is far past any cap
            return self.max_s
        return float(min(self.max_s, self.initial_s * self.factor**exponent))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure (1-based), jittered."""
        ceiling = self.ceiling(attempt)
        return ceiling * (0.5 + 0.5 * rand())


#: A single Kubernetes API call (5xx, 429 without Retry-After, connection refused).
API_CALL = Backoff(initial_s=0.2, max_s=5.0)
#: An informer's re-LIST / re-WATCH after an error: blind while waiting, so the cap is short.
INFORMER = Backoff(initial_s=0.5, max_s=5.0)
#: A reconcile that raised (the work queue's per-key retry).
RECONCILE = Backoff(initial_s=0.5, max_s=10.0)
#: Reconnecting to the MQTT broker.
MQTT_RECONNECT = Backoff(initial_s=0.25, max_s=5.0)
#: A pod status write that failed (the pod is retried, not its whole base).
STATUS_WRITE = Backoff(initial_s=0.5, max_s=10.0)
#: A query to a base (health, queryAllBiz) whose connection failed: retried within the same call.
ARKLET_QUERY = Backoff(initial_s=0.1, max_s=1.0)
#: A biz install that failed on the base: kubelet's CrashLoopBackOff shape (10 s doubling to 5 min).
BIZ_INSTALL = Backoff(initial_s=2.0, max_s=300.0)
#: A biz uninstall that failed (an orphan left in the JVM): retried, never in a tight loop.
BIZ_UNINSTALL = Backoff(initial_s=2.0, max_s=120.0)
#: A kept root task (a tunnel's connection loop or listener) that raised, started again (``supervisor.keep``).
ROOT_RESTART = Backoff(initial_s=1.0, max_s=30.0)
