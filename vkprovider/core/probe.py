"""Container probes and preStop hooks of module pods, kept as kubelet keeps them: parsing and the probe state machine.

Why it exists: a module pod used to be Ready as soon as arklet said its biz was ACTIVATED, whatever its
``readinessProbe``, ``livenessProbe`` or ``startupProbe`` said. A biz is a container whose process is the base's JVM
and whose network is the base's (a Spring Boot base serves every biz on its own port, under ``/<bizName>``), so
the probes can be run as kubelet runs them, against the pod IP (= the base's IP). This module is the pure half:
what a probe is, and what its results mean; ``vkprovider.probes`` runs the checks and the schedule.

Parsing (raw pod JSON as the API returns it; a bad field is a problem for that probe, never an exception):

- handlers: ``httpGet`` (``host`` empty = the pod IP, ``port`` a number or the name of one of the container's
  ``ports``, else a number in a string, as kubelet's ``ResolveContainerPort``; ``scheme`` HTTP or HTTPS; ``path``;
  ``httpHeaders``), ``tcpSocket`` (host, port), ``grpc`` (port, ``service`` default ""), ``exec`` (recognised, never
  run: a biz has no process of its own to exec in); a port that does not resolve makes an :class:`Unresolvable`
  handler, which, as in kubelet, never yields a result;
- numbers, with the apiserver's defaults: ``initialDelaySeconds`` 0, ``periodSeconds`` 10, ``timeoutSeconds`` 1,
  ``successThreshold`` 1 (must be 1 for liveness and startup: anything else is a problem and 1 is used),
  ``failureThreshold`` 3; a value below its minimum is a problem and the default is used;
- a probe-level ``terminationGracePeriodSeconds`` is carried (it bounds the stop a liveness or startup failure
  causes);
- ``lifecycle.preStop``: ``httpGet`` and ``sleep`` (``sleep.seconds``) run, ``exec`` is recognised and skipped,
  ``tcpSocket`` is not run (kubelet does not run it either).

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

Ready conditions with readiness gates (kubelet's ``GeneratePodReadyCondition``) are in ``core.podstatus``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

#: A container first seen running for this long keeps the ready/started it showed until its probes have a result
#: (kubelet's ``kubeletRestartGracePeriod``).
INHERIT_AFTER_S: Final = 10.0
#: At most this much of an HTTP answer's body is read (kubelet's ``maxRespBodyLength``, 10 KiB).
MAX_BODY_BYTES: Final = 10 * 1024
#: Redirects to the same host are followed up to this many times (Go's http.Client default).
MAX_REDIRECTS: Final = 10

REASON_UNHEALTHY: Final = "Unhealthy"
REASON_PROBE_WARNING: Final = "ProbeWarning"
REASON_KILLING: Final = "Killing"
REASON_UNSUPPORTED: Final = "UnsupportedProbe"
REASON_FAILED_PRE_STOP: Final = "FailedPreStopHook"

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 token)
_DEFAULTS: Final = {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1,
                    "failureThreshold": 3}
_MINIMUM: Final = {"initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1,
                   "failureThreshold": 1}


class ProbeKind(enum.StrEnum):
    """The three probes of a container, in the order kubelet evaluates their gates."""

    STARTUP = "startup"
    READINESS = "readiness"
    LIVENESS = "liveness"

    @property
    def label(self) -> str:
        """As kubelet writes it in Events: "Startup", "Readiness", "Liveness"."""
        return self.value.capitalize()

    @property
    def field(self) -> str:
        """The container field: ``startupProbe``, ``readinessProbe``, ``livenessProbe``."""
        return self.value + "Probe"


# --- handlers ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpGet:
    """An HTTP GET; a 2xx or 3xx answer is success. ``host`` "" means the pod IP."""

    port: int
    path: str = ""
    host: str = ""
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()

    def url(self, pod_ip: str) -> str:
        """The URL kubelet would GET (``formatURL``): an empty path is the root, IPv6 hosts are bracketed."""
        host = self.host or pod_ip
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        path = self.path if self.path.startswith("/") else "/" + self.path
        return f"{self.scheme.lower()}://{host}:{self.port}{path}"

    def describe(self) -> str:
        return f"http-get {self.scheme.lower()}://{self.host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True)
class TcpSocket:
    """A TCP connect; success when it connects. ``host`` "" means the pod IP."""

    port: int
    host: str = ""

    def describe(self) -> str:
        return f"tcp-socket {self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Grpc:
    """The standard ``grpc.health.v1.Health/Check`` on the pod IP; success when the answer is SERVING."""

    port: int
    service: str = ""

    def describe(self) -> str:
        return f"grpc <pod>:{self.port} {self.service}".rstrip()


@dataclass(frozen=True, slots=True)
class Exec:
    """A command in the container: recognised, never run (a biz has no process of its own to exec in)."""

    command: tuple[str, ...]

    def describe(self) -> str:
        return "exec [" + " ".join(self.command) + "]"


@dataclass(frozen=True, slots=True)
class Sleep:
    """A preStop ``sleep``: wait this many seconds (bounded by the pod's grace period)."""

    seconds: int

    def describe(self) -> str:
        return f"sleep {self.seconds}s"


@dataclass(frozen=True, slots=True)
class Unresolvable:
    """A handler that cannot be run (no handler, a port name the container does not have): kubelet's probe error.
    A probe with it never has a result of its own."""

    why: str

    def describe(self) -> str:
        return f"invalid ({self.why})"


ProbeHandler = HttpGet | TcpSocket | Grpc | Exec | Unresolvable
LifecycleHandler = HttpGet | Sleep | Exec | Unresolvable


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One probe of one container, defaults filled in."""

    kind: ProbeKind
    handler: ProbeHandler
    initial_delay_s: int = 0
    period_s: int = 10
    timeout_s: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace_period_s: int | None = None

    @property
    def runnable(self) -> bool:
        """Whether vkprovider runs it (HTTP, TCP, gRPC); exec is not run and counts as no probe."""
        return isinstance(self.handler, HttpGet | TcpSocket | Grpc)

    @property
    def counts(self) -> bool:
        """Whether it takes part in the container's state: every handler but exec (an unresolvable probe holds the
        container at its initial result, as kubelet's erroring probe does)."""
        return not isinstance(self.handler, Exec)

    def describe(self) -> str:
        """As ``kubectl describe pod`` shows a probe."""
        return (f"{self.handler.describe()} delay={self.initial_delay_s}s timeout={self.timeout_s}s "
                f"period={self.period_s}s #success={self.success_threshold} #failure={self.failure_threshold}")


@dataclass(frozen=True, slots=True)
class ContainerProbes:
    """Everything about one container that probing and stopping need."""

    container: str
    startup: ProbeSpec | None = None
    readiness: ProbeSpec | None = None
    liveness: ProbeSpec | None = None
    pre_stop: LifecycleHandler | None = None
    problems: tuple[str, ...] = ()  # what could not be parsed, or will not be run (exec): one Warning each

    def spec(self, kind: ProbeKind) -> ProbeSpec | None:
        if kind is ProbeKind.STARTUP:
            return self.startup
        if kind is ProbeKind.READINESS:
            return self.readiness
        return self.liveness

    @property
    def any(self) -> bool:
        """Whether any probe takes part (an exec-only container behaves as one without probes)."""
        return any(s is not None and s.counts for s in (self.startup, self.readiness, self.liveness))


# --- parsing -------------------------------------------------------------------------------------------------


def _port_of(raw: object, container: Mapping[str, Any]) -> int | str:
    """kubelet's ``ResolveContainerPort``: a number, a named container port, or a number in a string; a str is why
    it does not resolve."""
    if isinstance(raw, bool):
        return f"invalid port {raw!r}"
    if isinstance(raw, int):
        port = raw
    elif isinstance(raw, str) and raw:
        named = next((p.get("containerPort") for p in container.get("ports") or []
                      if isinstance(p, Mapping) and p.get("name") == raw), None)
        if isinstance(named, int) and not isinstance(named, bool):
            port = named
        else:
            try:
                port = int(raw)
            except ValueError:
                return f"port {raw!r} is not a number and no port of container {container.get('name', '')!r} " \
                       "has that name"
    else:
        return "no port"
    if 0 < port < 65536:
        return port
    return f"invalid port number: {port}"


def _text(raw: object) -> str:
    return raw if isinstance(raw, str) else ""


def _http_get(raw: Mapping[str, Any], container: Mapping[str, Any]) -> HttpGet | Unresolvable:
    port = _port_of(raw.get("port"), container)
    if isinstance(port, str):
        return Unresolvable(f"httpGet: {port}")
    scheme = _text(raw.get("scheme")).upper() or "HTTP"
    if scheme not in ("HTTP", "HTTPS"):
        return Unresolvable(f"httpGet: unsupported scheme {scheme!r}")
    headers = tuple((str(h.get("name", "")), str(h.get("value", "")))
                    for h in raw.get("httpHeaders") or [] if isinstance(h, Mapping) and h.get("name"))
    path = _text(raw.get("path"))
    if any(c in path for c in "\r\n\0 ") or any(c in v for _, v in headers for c in "\r\n\0"):
        return Unresolvable("httpGet: the path or a header holds a line break, a space or a NUL")
    bad = next((name for name, _ in headers if not _TOKEN.fullmatch(name)), None)
    if bad is not None:
        return Unresolvable(f"httpGet: {bad!r} is not an HTTP header name")
    return HttpGet(port=port, path=path, host=_text(raw.get("host")), scheme=scheme, headers=headers)


def _tcp_socket(raw: Mapping[str, Any], container: Mapping[str, Any]) -> TcpSocket | Unresolvable:
    port = _port_of(raw.get("port"), container)
    if isinstance(port, str):
        return Unresolvable(f"tcpSocket: {port}")
    return TcpSocket(port=port, host=_text(raw.get("host")))


def _grpc(raw: Mapping[str, Any]) -> Grpc | Unresolvable:
    port = raw.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return Unresolvable(f"grpc: invalid port number: {port}")
    return Grpc(port=port, service=_text(raw.get("service")))


def _exec(raw: Mapping[str, Any]) -> Exec:
    command = raw.get("command")
    return Exec(tuple(str(c) for c in command) if isinstance(command, list) else ())


_HANDLER_KEYS: Final = ("httpGet", "tcpSocket", "grpc", "exec")


def parse_probe(raw: object, kind: ProbeKind, container: Mapping[str, Any]) -> tuple[ProbeSpec | None, list[str]]:
    """One probe of ``container`` (its raw JSON) and the problems found in it; None when it has none."""
    if raw is None:
        return None, []
    where = f"{kind.label} probe of container {container.get('name', '')!r}"
    if not isinstance(raw, Mapping):
        return ProbeSpec(kind, Unresolvable("not an object")), [f"{where}: not an object"]
    problems: list[str] = []
    present = [k for k in _HANDLER_KEYS if raw.get(k) is not None]
    handler: ProbeHandler
    if len(present) != 1:
        handler = Unresolvable("no handler" if not present else "more than one handler: " + ", ".join(present))
    elif not isinstance(raw[present[0]], Mapping):
        handler = Unresolvable(f"{present[0]} is not an object")
    elif present[0] == "httpGet":
        handler = _http_get(raw["httpGet"], container)
    elif present[0] == "tcpSocket":
        handler = _tcp_socket(raw["tcpSocket"], container)
    elif present[0] == "grpc":
        handler = _grpc(raw["grpc"])
    else:
        handler = _exec(raw["exec"])
    if isinstance(handler, Unresolvable):
        problems.append(f"{where}: {handler.why}: it cannot run, so it never succeeds")
    elif isinstance(handler, Exec):
        problems.append(f"{where}: exec probes are not run on a Koupleless base (a biz has no process of its own "
                        "to exec in); it is ignored" + (", readiness follows the biz's ACTIVATED state"
                                                        if kind is ProbeKind.READINESS else ""))
    numbers: dict[str, int] = {}
    for name, default in _DEFAULTS.items():
        value = raw.get(name)
        if value is None:
            numbers[name] = default
        elif not isinstance(value, int) or isinstance(value, bool) or value < _MINIMUM[name]:
            problems.append(f"{where}: {name} {value!r} is invalid (at least {_MINIMUM[name]}); using {default}")
            numbers[name] = default
        else:
            numbers[name] = value
    if kind is not ProbeKind.READINESS and numbers["successThreshold"] != 1:
        problems.append(f"{where}: successThreshold must be 1 for a {kind.value} probe; using 1")
        numbers["successThreshold"] = 1
    grace = raw.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool) or grace < 1):
        problems.append(f"{where}: terminationGracePeriodSeconds {grace!r} is invalid (at least 1); ignored")
        grace = None
    if grace is not None and kind is ProbeKind.READINESS:
        problems.append(f"{where}: terminationGracePeriodSeconds is for liveness and startup probes; ignored")
        grace = None
    spec = ProbeSpec(kind, handler, initial_delay_s=numbers["initialDelaySeconds"], period_s=numbers["periodSeconds"],
                     timeout_s=numbers["timeoutSeconds"], success_threshold=numbers["successThreshold"],
                     failure_threshold=numbers["failureThreshold"], termination_grace_period_s=grace)
    return spec, problems


def parse_lifecycle_handler(raw: object, container: Mapping[str, Any]) -> tuple[LifecycleHandler | None, list[str]]:
    """``lifecycle.preStop`` of ``container``: httpGet and sleep run, exec is skipped (with a problem), tcpSocket
    is not run (deprecated; kubelet does not run it either)."""
    if raw is None:
        return None, []
    where = f"preStop hook of container {container.get('name', '')!r}"
    if not isinstance(raw, Mapping):
        return Unresolvable("not an object"), [f"{where}: not an object"]
    present = [k for k in ("httpGet", "sleep", "exec", "tcpSocket") if raw.get(k) is not None]
    if len(present) != 1:
        why = "no handler" if not present else "more than one handler: " + ", ".join(present)
        return Unresolvable(why), [f"{where}: {why}"]
    body = raw[present[0]]
    if not isinstance(body, Mapping):
        return Unresolvable(f"{present[0]} is not an object"), [f"{where}: {present[0]} is not an object"]
    if present[0] == "httpGet":
        handler = _http_get(body, container)
        if isinstance(handler, Unresolvable):
            return handler, [f"{where}: {handler.why}"]
        return handler, []
    if present[0] == "sleep":
        seconds = body.get("seconds")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
            return Unresolvable(f"sleep: invalid seconds {seconds!r}"), [f"{where}: sleep seconds {seconds!r}"]
        return Sleep(seconds), []
    if present[0] == "exec":
        return _exec(body), [f"{where}: exec hooks are not run on a Koupleless base (a biz has no process of its "
                             "own to exec in); it is skipped"]
    return Unresolvable("tcpSocket hooks are not run"), [f"{where}: tcpSocket hooks are deprecated and not run "
                                                         "(as by kubelet)"]


def container_probes(container: Mapping[str, Any]) -> ContainerProbes:
    """The probes and preStop hook of one container (raw JSON), with every problem found in them."""
    problems: list[str] = []
    specs: dict[ProbeKind, ProbeSpec | None] = {}
    for kind in ProbeKind:
        spec, found = parse_probe(container.get(kind.field), kind, container)
        specs[kind] = spec
        problems += found
    lifecycle = container.get("lifecycle")
    pre_stop: LifecycleHandler | None = None
    if isinstance(lifecycle, Mapping):
        pre_stop, found = parse_lifecycle_handler(lifecycle.get("preStop"), container)
        problems += found
    return ContainerProbes(container=str(container.get("name", "")), startup=specs[ProbeKind.STARTUP],
                           readiness=specs[ProbeKind.READINESS], liveness=specs[ProbeKind.LIVENESS],
                           pre_stop=pre_stop, problems=tuple(problems))


def pod_probes(pod: Mapping[str, Any]) -> dict[str, ContainerProbes]:
    """Every container of ``pod`` by name."""
    containers = (pod.get("spec") or {}).get("containers") or []
    return {str(c.get("name", "")): container_probes(c) for c in containers if isinstance(c, Mapping)}


def termination_grace_period_s(pod: Mapping[str, Any], default: int = 30) -> int:
    """How long a deleted pod may take to stop: ``metadata.deletionGracePeriodSeconds`` when it is being deleted,
    else ``spec.terminationGracePeriodSeconds`` (kubelet's order), else ``default``."""
    for value in ((pod.get("metadata") or {}).get("deletionGracePeriodSeconds"),
                  (pod.get("spec") or {}).get("terminationGracePeriodSeconds")):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return default


def format_pod(pod: Mapping[str, Any]) -> str:
    """kubelet's ``format.Pod``: ``name_namespace(uid)``, as its hook messages name a pod."""
    md = pod.get("metadata") or {}
    return f"{md.get('name', '')}_{md.get('namespace', '')}({md.get('uid', '')})"


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
