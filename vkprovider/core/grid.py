"""Timers rounded up to a shared grid, so that the work vkprovider gives itself comes in batches, not one by one.

Waking up costs a process CPU of its own, apart from the work it wakes for, and far more on a virtual machine
whose idle CPUs halt: on the machine the bench runs on, an arklet call cost 0.49-0.58 ms of CPU when 25 a second
came at random times and 0.25-0.28 ms when the same calls came on the one-second grid (``python -m bench.micro
wakeups``, two runs). Most of what vkprovider does on its own is due tens of seconds ahead (the biz list poll of
every base, every vnode's next look, health reads, retries): a timer that fires a small fraction of its delay later
changes nothing anyone sees, and with hundreds of them one wake-up then serves every timer of a grid step. The probe
manager starts the checks due in one slice together with the same rounding (``round_up``).

A delay is rounded up to the coarsest of ``STEPS_S`` that is at most ``1 / MAX_LATE`` of it (a 30 s poll lands on
the next whole second, at most 1 s late; a 2 s retry on the next quarter second); a delay too short for the
finest step is kept exact.
"""

from __future__ import annotations

import math

STEPS_S = (1.0, 0.5, 0.25, 0.1)  # coarsest first
MAX_LATE = 8  # a timer fires at most 1/8 of its delay later than asked


def step_for(delay_s: float) -> float:
    """The grid step for a timer ``delay_s`` ahead; 0.0 when it stays exact."""
    for step in STEPS_S:
        if step * MAX_LATE <= delay_s:
            return step
    return 0.0


def round_up(when: float, step_s: float) -> float:
    """The first multiple of ``step_s`` at or after ``when`` (``when`` itself for a step of 0)."""
    return math.ceil(when / step_s) * step_s if step_s > 0 else when


def round_down(when: float, step_s: float) -> float:
    """The last multiple of ``step_s`` at or before ``when`` (``when`` itself for a step of 0)."""
    return math.floor(when / step_s) * step_s if step_s > 0 else when


def on_grid(when: float, delay_s: float) -> float:
    """The time at or after ``when`` on the grid of ``step_for(delay_s)`` (``when`` itself when exact)."""
    return round_up(when, step_for(delay_s))


def next_tick(now: float, step_s: float) -> float:
    """The first multiple of ``step_s`` after ``now``: periodic loops of one process wake up together."""
    return (math.floor(now / step_s) + 1) * step_s
