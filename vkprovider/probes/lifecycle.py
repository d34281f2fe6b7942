"""A biz container's preStop hook, run before its biz is uninstalled, bounded by the pod's grace period.

Why it exists: a Spring Boot biz often needs a moment between "stop sending me traffic" and "stop" (a
``preStop: sleep`` while endpoints drop the pod, or a ``preStop: httpGet /<biz>/shutdown``). kubelet runs the hook
before it stops a container; vkprovider runs it before ``uninstallBiz``, as kubelet does
(``pkg/kubelet/kuberuntime`` ``executePreStopHook`` and ``pkg/kubelet/lifecycle/handlers.go``):

- ``httpGet``: the probe's GET (same URL rules, same-host redirects, body capped), with
  ``User-Agent: kube-lifecycle/<major>.<minor>``; any HTTP answer is success, whatever its status (kubelet checks
  none); no answer is a failure that is logged and reported (Warning ``FailedPreStopHook``, kubelet's text
  "HTTP lifecycle hook (/path) for Container "c" in Pod "p_ns(uid)" failed - error: ..."), never fatal: the stop
  goes on. An HTTPS hook that meets a plain HTTP server is tried again over HTTP, as kubelet does
  (Warning ``LifecycleHTTPFallback``);
- ``sleep``: wait ``sleep.seconds``; cut short by the deadline, it fails with kubelet's text "container terminated
  before sleep hook finished";
- ``exec``: not run (a biz has no process of its own); reported, the stop goes on;
- everything is bounded by ``deadline`` (``time.monotonic()`` seconds: the pod's deletion time plus its
  ``terminationGracePeriodSeconds``, ``core.probe.termination_grace_period_s``): past it the hook is abandoned and
  the stop goes on, as kubelet stops waiting for a hook after the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from vkprovider.core.probe import (
    REASON_FAILED_PRE_STOP,
    Exec,
    HttpGet,
    LifecycleHandler,
    Sleep,
    Unresolvable,
)
from vkprovider.probes.check import LIFECYCLE_USER_AGENT, CheckError, Prober, TlsError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreStopResult:
    """How the hook went. ``ok`` False means it failed or was not run; ``event`` is the (reason, message) of the
    Warning Event to post, if any; ``took_s`` how long it ran."""

    ok: bool
    message: str = ""
    event: tuple[str, str] | None = None
    took_s: float = 0.0


async def run_pre_stop(handler: LifecycleHandler | None, pod_ip: str, deadline: float, *, container: str = "",
                       pod: str = "", prober: Prober | None = None,
                       clock: Callable[[], float] = time.monotonic) -> PreStopResult:
    """Run ``handler`` (``core.probe.parse_lifecycle_handler``; named ports are resolved there) against ``pod_ip``,
    done by ``deadline``. ``container`` and ``pod`` (``core.probe.format_pod``) name them in messages. Never
    raises for a hook that fails."""
    started = clock()
    if handler is None:
        return PreStopResult(True)
    remaining = deadline - started
    if isinstance(handler, Sleep):
        wanted = float(handler.seconds)
        if wanted <= remaining:
            await asyncio.sleep(wanted)
            return PreStopResult(True, f"slept {handler.seconds}s", took_s=clock() - started)
        await asyncio.sleep(max(0.0, remaining))
        message = (f"Sleep lifecycle hook ({handler.seconds}) for Container {_q(container)} in Pod {_q(pod)} "
                   "failed - error: container terminated before sleep hook finished")
        return PreStopResult(False, message, (REASON_FAILED_PRE_STOP, message), clock() - started)
    if isinstance(handler, Exec):
        command = " ".join(handler.command)
        message = (f"Exec lifecycle hook ([{command}]) for Container {_q(container)} in Pod {_q(pod)} not run: "
                   "exec hooks are not run on a Koupleless base (a biz has no process of its own)")
        return PreStopResult(False, message, (REASON_FAILED_PRE_STOP, message))
    if isinstance(handler, Unresolvable):
        message = f"Cannot run handler: invalid handler: {handler.why}"
        return PreStopResult(False, message, (REASON_FAILED_PRE_STOP, message))
    assert isinstance(handler, HttpGet)
    if remaining <= 0:
        message = (f"HTTP lifecycle hook ({handler.path}) for Container {_q(container)} in Pod {_q(pod)} not "
                   "run: the grace period is over")
        return PreStopResult(False, message, (REASON_FAILED_PRE_STOP, message))
    own = prober is None
    http = prober if prober is not None else Prober()
    try:
        try:
            answer = await http.http_get(handler, pod_ip, remaining, LIFECYCLE_USER_AGENT)
        except TlsError:
            if handler.scheme != "HTTPS":
                raise
            plain = replace(handler, scheme="HTTP",
                            headers=tuple((k, v) for k, v in handler.headers if k.lower() != "authorization"))
            answer = await http.http_get(plain, pod_ip, max(0.001, deadline - clock()), LIFECYCLE_USER_AGENT)
            fallback = (f"request to HTTPS lifecycle hook {handler.host or pod_ip}:{handler.port} got HTTP "
                        "response, retry with HTTP succeeded")
            return PreStopResult(True, f"status {answer.status}", ("LifecycleHTTPFallback", fallback),
                                 clock() - started)
    except CheckError as exc:
        message = (f"HTTP lifecycle hook ({handler.path}) for Container {_q(container)} in Pod {_q(pod)} "
                   f"failed - error: {exc}")
        log.info("%s", message)
        return PreStopResult(False, message, (REASON_FAILED_PRE_STOP, message), clock() - started)
    finally:
        if own:
            await http.close()
    return PreStopResult(True, f"status {answer.status}", took_s=clock() - started)


def _q(text: str) -> str:
    """Go's ``%q`` of a string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
