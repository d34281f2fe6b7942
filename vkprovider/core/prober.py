"""The probe state machine of module containers, kept as kubelet keeps it: what a probe's results mean.

Why it exists: ``core.probe`` says what a probe is (parsed from the pod); this module says what its results do to a
container's started, ready and restart, as kubelet's prober does, with no I/O (``vkprovider.probes`` runs the checks
and the schedule, ``core.podstatus`` turns the states into pod status).

The probe state machine (``pkg/kubelet/prober/worker.go`` and ``prober_manager.go``; here "the container started"
means "the biz became ACTIVATED", and a new ACTIVATED time is a new container):

- no probe before ``initialDelaySeconds`` after the container started, then one every ``periodSeconds``;
- a result is published only after ``successThreshold`` consecutive successes or ``failureThreshold`` consecutive
  failures; below a threshold the published result stays what it was;
- initial results: readiness Failure (a container with a readiness probe is not ready before its first success),
  liveness Success, startup Unknown (not started);
- the startup probe gates the others: readiness and liveness do not run until startup has succeeded, and startup
  stops once it has; a container without a startup probe is started as soon as it runs;
- liveness failing past its threshold, or startup failing past its threshold, means the container must be
  restarted (here: the biz reinstalled): the probe goes on hold until a new container (a new ACTIVATED time)
  resets every probe of it; the restart message is kubelet's Killing message;
- ``ready`` = started and (no readiness probe, or readiness Success) and no restart due (kubelet kills such a
  container at once; here the reinstall may wait, and a biz that failed its liveness probe takes no traffic
  meanwhile); ``started`` = running and (no startup probe, or startup Success); a restart that was due is done
  once the biz stops running or runs again (a new ACTIVATED time);
- while the pod is being deleted, liveness and startup read Success and stop (a quiet shutdown); readiness goes on;
- a container that vkprovider first sees already running for ``INHERIT_AFTER_S`` or more (vkprovider restarted
  or took the pods over from another replica) keeps the ready/started it showed until its own probes have a
  result, as kubelet keeps them across its own restart (``setReadyStateOnKubeletRestart``): a takeover does not
  flap every pod to not-ready;
- Events as kubelet's prober records them: Warning ``Unhealthy`` "Readiness probe failed: <output>" on each failed
  check, Warning ``ProbeWarning`` "Readiness probe warning: <output>" (a redirect not followed), Normal
  ``Killing`` "Container <name> failed liveness probe, will be restarted" when a restart becomes due.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from vkprovider.core.probe import ContainerProbes, ProbeKind, ProbeSpec

#: A container first seen running for this long keeps the ready/started it showed until its probes have a result
#: (kubelet's ``kubeletRestartGracePeriod``).
INHERIT_AFTER_S: Final = 10.0
REASON_UNHEALTHY: Final = "Unhealthy"
REASON_PROBE_WARNING: Final = "ProbeWarning"
REASON_KILLING: Final = "Killing"


# --- results and the state machine -----------------------------------------------------------------------------


class Result(enum.Enum):
    """A probe's published result (kubelet's ``results.Result``)."""

    UNKNOWN = "Unknown"
    SUCCESS = "Success"
    FAILURE = "Failure"


class CheckResult(enum.Enum):
    """What one check said (kubelet's ``probe.Result``): a WARNING counts as a success (a redirect not followed)."""

    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One check: its result and kubelet's output text (the failure message, the body on success)."""

    result: CheckResult
    output: str = ""


_INITIAL: Final = {ProbeKind.READINESS: Result.FAILURE, ProbeKind.LIVENESS: Result.SUCCESS,
                   ProbeKind.STARTUP: Result.UNKNOWN}


@dataclass(slots=True)
class ProbeTracker:
    """One probe of one container (kubelet's worker): consecutive results against the thresholds, the schedule."""

    spec: ProbeSpec
    result: Result = Result.UNKNOWN
    probed: bool = False  # a result was published since the container started
    last: CheckResult | None = None
    run: int = 0
    on_hold: bool = False  # failed past its threshold: no more checks until a new container
    stopped: bool = False  # the pod is being deleted (liveness, startup)
    due_at: float | None = None  # when the next check may run; None: not before the container runs
    epoch: int = 0  # changes with every new container: a check started before it does not count after it

    def reset(self, started_at: float) -> None:
        """A new container started at ``started_at``: initial result, counters cleared, first check after
        ``initialDelaySeconds``."""
        self.epoch += 1
        self.result = _INITIAL[self.spec.kind]
        self.probed = False
        self.last = None
        self.run = 0
        self.on_hold = False
        self.stopped = False
        self.due_at = started_at + self.spec.initial_delay_s

    def halt(self) -> None:
        """The container stopped running: readiness Failure; nothing runs until it starts again."""
        self.epoch += 1
        if self.spec.kind is ProbeKind.READINESS:
            self.result = Result.FAILURE
        self.due_at = None
        self.last = None
        self.run = 0

    def skip(self, now: float) -> None:
        """The next check is one period after the one due (a ticker's), or now if that has passed already."""
        self.due_at = max((self.due_at if self.due_at is not None else now) + self.spec.period_s, now)

    def record(self, outcome: Outcome, now: float) -> bool:
        """Count one check that ran at ``now``; True when the published result changed."""
        result = CheckResult.FAILURE if outcome.result is CheckResult.FAILURE else CheckResult.SUCCESS
        if self.last is result:
            self.run += 1
        else:
            self.last, self.run = result, 1
        self.skip(now)
        if result is CheckResult.FAILURE and self.run < self.spec.failure_threshold:
            return False
        if result is CheckResult.SUCCESS and self.run < self.spec.success_threshold:
            return False
        published = Result.FAILURE if result is CheckResult.FAILURE else Result.SUCCESS
        changed = published is not self.result or not self.probed
        self.result = published
        self.probed = True
        if self.spec.kind is ProbeKind.STARTUP or (self.spec.kind is ProbeKind.LIVENESS
                                                    and published is Result.FAILURE):
            self.on_hold = True  # startup: done (or failed); liveness: failed; either way until a new container
            self.run = 0
        return changed


@dataclass(frozen=True, slots=True)
class ProbeEvent:
    """An Event kubelet's prober would record about a container."""

    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ContainerProbeState:
    """What the pod status shows of one container's probes.

    ``ready`` and ``started`` as kubelet sets them; ``restart`` says why the container must be restarted (the biz
    reinstalled) when a liveness or startup probe failed past its threshold, None otherwise; ``grace_s`` is the
    probe's ``terminationGracePeriodSeconds`` for that stop, when it has one; ``message`` is the latest failed
    check's output until that probe succeeds again (not shown in a pod status: kubelet puts it in Events only);
    ``problems`` are the container's probes that are not run (exec, unresolvable), one Warning Event each.
    """

    ready: bool
    started: bool
    restart: str | None = None
    grace_s: int | None = None
    message: str = ""
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def shown(self) -> tuple[bool, bool, str | None]:
        """The part of it a pod status shows (what ``on_change`` is about)."""
        return self.ready, self.started, self.restart


class ContainerProber:
    """The three probes of one container and what they add up to (kubelet's ``UpdatePodStatus`` for one container).

    Feed it what the base says (``observe``) and the checks' outcomes (``record``); read ``view()``.
    """

    __slots__ = ("_inherit", "_message_kind", "_seen", "message", "name", "probes", "restart", "restart_grace_s",
                 "running_since", "terminating", "trackers")

    def __init__(self, probes: ContainerProbes) -> None:
        self.name = probes.container
        self.probes = probes
        self.trackers: dict[ProbeKind, ProbeTracker] = {
            kind: ProbeTracker(spec) for kind in ProbeKind
            if (spec := probes.spec(kind)) is not None and spec.counts}
        self.running_since: float | None = None
        self.restart: str | None = None
        self.restart_grace_s: int | None = None
        self.message = ""
        self.terminating = False
        self._inherit: tuple[bool, bool] | None = None  # (ready, started) shown before vkprovider saw it
        self._seen = False
        self._message_kind: ProbeKind | None = None

    # --- inputs

    def observe(self, activated_at: float | None, now: float, *, shown_ready: bool = False,
                shown_started: bool = False, spread: float = 0.0) -> None:
        """The biz is ACTIVATED since ``activated_at`` (None: it is not). A new time is a new container: every
        probe starts over, and a restart that was due is done. When this is the first time the container is seen
        and it has run for ``INHERIT_AFTER_S`` or more, ``shown_ready`` / ``shown_started`` (what the pod status
        showed, the pod being Ready) hold until its probes have results, and its first checks are put off by
        ``spread`` (0..1) of their period (a takeover spreads them, as kubelet's workers after its restart)."""
        first, self._seen = not self._seen, True
        if activated_at is None:
            if self.running_since is not None:
                self.running_since = None
                self._inherit = None
                self.restart = None
                self.restart_grace_s = None
                for tracker in self.trackers.values():
                    tracker.halt()
            return
        if activated_at == self.running_since:
            return
        inherited = first and now - activated_at >= INHERIT_AFTER_S
        self.running_since = activated_at
        self.restart = None
        self.restart_grace_s = None
        self.message, self._message_kind = "", None
        self._inherit = (shown_ready, shown_started) if inherited else None
        for tracker in self.trackers.values():
            tracker.reset(activated_at)
            if inherited and tracker.due_at is not None:
                tracker.due_at = max(tracker.due_at, now + spread * tracker.spec.period_s)
        if self.terminating:
            self._quiet()

    def begin_termination(self) -> None:
        """The pod is being deleted: liveness and startup read Success and stop; readiness goes on."""
        if self.terminating:
            return
        self.terminating = True
        self._quiet()

    def _quiet(self) -> None:
        for kind in (ProbeKind.LIVENESS, ProbeKind.STARTUP):
            tracker = self.trackers.get(kind)
            if tracker is not None and self.running_since is not None:
                tracker.result, tracker.probed, tracker.stopped = Result.SUCCESS, True, True
        self.restart = None
        self.restart_grace_s = None

    def record(self, kind: ProbeKind, outcome: Outcome, now: float) -> list[ProbeEvent]:
        """One check of ``kind`` ran at ``now``: count it, and return the Events kubelet would record."""
        tracker = self.trackers.get(kind)
        if tracker is None or self.running_since is None or not self._may_run(kind, tracker):
            return []
        events: list[ProbeEvent] = []
        if outcome.result is CheckResult.FAILURE:
            self.message = f"{kind.label} probe failed: {outcome.output}"
            self._message_kind = kind
            events.append(ProbeEvent("Warning", REASON_UNHEALTHY, self.message))
        elif self._message_kind is kind:
            self.message, self._message_kind = "", None  # that probe is fine again
        if outcome.result is CheckResult.WARNING:
            events.append(ProbeEvent("Warning", REASON_PROBE_WARNING, f"{kind.label} probe warning: {outcome.output}"))
        tracker.record(outcome, now)
        if tracker.result is Result.FAILURE and kind is not ProbeKind.READINESS and self.restart is None:
            self.restart = f"Container {self.name} failed {kind.value} probe, will be restarted"
            self.restart_grace_s = tracker.spec.termination_grace_period_s
            events.append(ProbeEvent("Normal", REASON_KILLING, self.restart))
        return events

    # --- scheduling

    def _may_run(self, kind: ProbeKind, tracker: ProbeTracker) -> bool:
        if not tracker.spec.runnable or tracker.on_hold or tracker.stopped or tracker.due_at is None:
            return False
        if self.restart is not None:
            return False  # the container is on its way out: kubelet's workers wait for the new one
        started = self.started
        return not started if kind is ProbeKind.STARTUP else started

    def may_run(self, kind: ProbeKind) -> bool:
        """Whether a check of ``kind`` may run now (gates, hold, a restart due), its due time aside."""
        tracker = self.trackers.get(kind)
        return tracker is not None and self.running_since is not None and self._may_run(kind, tracker)

    def runnable(self) -> list[tuple[ProbeKind, float]]:
        """The probes that may run now or later, with the time each is due (gates applied)."""
        if self.running_since is None:
            return []
        return [(kind, tracker.due_at) for kind, tracker in self.trackers.items()
                if self._may_run(kind, tracker) and tracker.due_at is not None]

    # --- outputs

    def _result(self, kind: ProbeKind) -> Result | None:
        tracker = self.trackers.get(kind)
        return None if tracker is None else tracker.result

    @property
    def started(self) -> bool:
        if self.running_since is None:
            return False
        tracker = self.trackers.get(ProbeKind.STARTUP)
        if tracker is None:
            return True
        if not tracker.probed and self._inherit is not None:
            return self._inherit[1]
        return tracker.result is Result.SUCCESS

    @property
    def ready(self) -> bool:
        if not self.started or self.restart is not None:
            return False
        tracker = self.trackers.get(ProbeKind.READINESS)
        if tracker is None:
            return True
        if not tracker.probed and self._inherit is not None:
            return self._inherit[0]
        return tracker.result is Result.SUCCESS

    def view(self) -> ContainerProbeState:
        return ContainerProbeState(ready=self.ready, started=self.started, restart=self.restart,
                                   grace_s=self.restart_grace_s, message=self.message, problems=self.probes.problems)


def probe_states(probers: Sequence[ContainerProber]) -> dict[str, ContainerProbeState]:
    """``view()`` of each, by container name."""
    return {p.name: p.view() for p in probers}
