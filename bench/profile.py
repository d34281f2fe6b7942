"""``--profile``: py-spy over vkprovider during a scenario, and the functions where it spent its samples.

Why it exists: a scenario's figures say how much CPU vkprovider used; a profile of the same run says where, which is
what a change to a hot path is decided on (docs/performance.md). Sampling from outside the process (py-spy) costs
vkprovider nothing; the raw stacks stay in ``bench/results/<scenario>-profile.txt``, the top 25 frames of
vkprovider's own code go into the result's ``profile_top``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
from pathlib import Path

from bench.report import log

VKPROVIDER_FRAME = re.compile(r"\((?:[^)]*/)?vkprovider/(?!.*site-packages)")


def start(pid: int | None, duration: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy over process ``pid`` into ``out`` (collapsed stacks, sampled 100/s, idle frames left out)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists() or pid is None:
        log("profile: py-spy not installed in the virtualenv (pip install py-spy); no profile")
        return None
    out.unlink(missing_ok=True)
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration", str(int(duration)), "--format",
                             "raw", "--rate", "100", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def finish(profiler: subprocess.Popen[bytes], out: Path) -> list[str]:
    """The functions where vkprovider spent its samples (inclusive share), most first."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(profiler.wait, 120)
    return top_frames(out)


def top_frames(out: Path) -> list[str]:
    """The 25 frames of vkprovider's own code with the most samples in py-spy's raw output ``out``."""
    if not out.exists():
        return []
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        # a frame is "function (path/file.py:line)"; py-spy gives vkprovider's paths relative or absolute
        frames = {f.split(" (", 1)[0] + " " + f.rsplit("/", 1)[-1].split(":", 1)[0].rstrip(")")
                  for f in stack.split(";") if VKPROVIDER_FRAME.search(f)}
        for frame in frames:
            inclusive[frame] = inclusive.get(frame, 0) + count
    top = sorted(inclusive.items(), key=lambda kv: -kv[1])[:25]
    return [f"{100 * n / max(total, 1):.1f}% {frame}" for frame, n in top]
