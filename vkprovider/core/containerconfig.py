"""A module container's configuration, resolved as the kubelet resolves a container's: args and environment.

A biz gets its container's ``args`` as installBiz ``args`` (its ``main`` receives them; Spring Boot reads
``--name=value`` as properties) and its environment as installBiz ``envs`` (a map). ``resolve`` computes both with
no I/O, from the pod, the container and ``Lookups`` (the ConfigMaps and Secrets it references, read beforehand by
``vkprovider.kube.refs.RefStore``, and the facts of the base that a kubelet would know about its node). The rules are
the kubelet's (pkg/kubelet/kubelet_pods.go ``makeEnvironmentVariables``), so a pod means the same here as on a
kubelet:

- ``envFrom`` first, in order: every key of the ConfigMap's ``data`` (not ``binaryData``) or the Secret's ``data``,
  with ``prefix`` prepended; a later source overrides an earlier one. Then ``env`` in order, overriding ``envFrom``.
- An ``env`` entry with a non-empty ``value`` is expanded (``expand``): ``$(NAME)`` is replaced by the value NAME
  has *so far* (``envFrom`` keys and the entries above it); ``$$`` is a literal ``$``; a reference to an unknown
  name is left as written. An empty ``value`` with ``valueFrom`` is resolved from its source:

  - ``fieldRef``: ``metadata.name``, ``metadata.namespace``, ``metadata.uid``, ``metadata.labels['k']``,
    ``metadata.annotations['k']`` (empty when absent), ``spec.nodeName`` (the vnode), ``spec.serviceAccountName``,
    ``status.hostIP(s)`` and ``status.podIP(s)``: the base's IP (``Lookups.host_ips`` / ``pod_ips``; a module runs in
    the base's JVM, so the pod's IP is the base's, as the pod status vkprovider writes says);
  - ``resourceFieldRef``: ``limits.*`` / ``requests.*`` of ``cpu``, ``memory``, ``ephemeral-storage`` (and
    ``hugepages-*``) of the container (or of ``containerName``), divided by ``divisor`` (default 1) and rounded up.
    A limit that is unset (or zero) is the node's allocatable, as the kubelet defaults it: here the vnode's
    ``status.allocatable`` (``Lookups.allocatable``): ``cpu`` = the base's CPU count and ``memory`` = its maximum
    metaspace from ``health`` (vkprovider/core/node.py), ``ephemeral-storage`` unknown. With no allocatable for a
    resource (a base that did not say) the value is ``0``, as on a kubelet whose node lacks it. An unset request is
    ``0``;
  - ``configMapKeyRef`` / ``secretKeyRef``: the key's value.

- ``args`` are expanded with the final environment (the kubelet's ``ExpandContainerCommandAndArgs``). ``command``
  is not used: a biz's entry point is its jar's main class.
- A missing ConfigMap or Secret, or a missing key, is the kubelet's ``CreateContainerConfigError`` with the
  kubelet's message (``configmap "x" not found``, ``couldn't find key k in ConfigMap ns/x``, ``secret "x" not
  found``, ``couldn't find key k in Secret ns/x``) unless the reference is ``optional: true``: then the entry (or the
  whole ``envFrom`` source) is skipped. The first problem in the kubelet's order is the one reported.
  ``ConfigError.waiting_for`` names the object whose appearing (or changing) may fix it.
- Unlike a kubelet there are no Service environment variables (``KUBERNETES_SERVICE_HOST`` ...): a biz does not run
  on the pod network. ``$(KUBERNETES_SERVICE_HOST)`` stays as written, as any unknown reference.

Secrets are never shown: ``Resolved`` and ``Lookups`` print no values (their ``repr`` lists names only), and
``Resolved.redact`` blanks every value read from a Secret in text that leaves vkprovider (a base's error message
can quote an argument). ConfigError messages name objects and keys, never values.

A running biz is not restarted when a ConfigMap or Secret it read changes (neither does a kubelet restart a running
container); the next install of it (a reinstall after a base restart, a new pod) resolves again with the values of
that time. ``BIZ_VERSION`` is also read by ``core.module`` (literal or ``fieldRef``), before anything is looked up.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

__all__ = [
    "CONFIG_ERROR",
    "POD_ONLY_FIELDS",
    "ConfigError",
    "FieldRefError",
    "Lookups",
    "Ref",
    "RefError",
    "Resolved",
    "config_map_data",
    "container_references",
    "expand",
    "field_ref_value",
    "parse_quantity",
    "pod_references",
    "referenced_annotations",
    "resolve",
    "resource_field_value",
    "secret_data",
]

CONFIG_ERROR: Final = "CreateContainerConfigError"
"""The kubelet's container waiting reason when a container's configuration cannot be made."""

CONFIG_MAP: Final = "ConfigMap"
SECRET: Final = "Secret"

#: fieldRef paths whose value depends on the pod alone (``core.module`` accepts them for BIZ_VERSION).
POD_ONLY_FIELDS: Final = frozenset({"metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
                                    "spec.serviceAccountName"})
_SUBSCRIPTED: Final = frozenset({"metadata.annotations", "metadata.labels"})
#: The labels the kubelet's ConvertDownwardAPIFieldLabel accepts (others: "field label not supported").
_CONVERTIBLE: Final = frozenset({"metadata.annotations", "metadata.labels", "metadata.name", "metadata.namespace",
                                 "metadata.uid", "spec.nodeName", "spec.restartPolicy", "spec.serviceAccountName",
                                 "spec.schedulerName", "status.phase", "status.hostIP", "status.hostIPs",
                                 "status.podIP", "status.podIPs"})
_LIMITED: Final = ("cpu", "memory", "ephemeral-storage")  # limits the kubelet defaults to the node's allocatable
_INT64_MAX: Final = 2**63 - 1
REDACTED: Final = "***"
MIN_REDACTED_LENGTH: Final = 4
"""Secret values shorter than this are not blanked in messages (``1`` or ``on`` would blank half a message)."""


# --- references ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Ref:
    """A ConfigMap or Secret a container refers to."""

    kind: str  # CONFIG_MAP or SECRET
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class RefError:
    """Why a referenced object could not be read. ``not_found``: it does not exist (an ``optional`` reference is
    then skipped); otherwise the API refused or failed (``transient`` when trying again may help)."""

    message: str
    not_found: bool = False
    transient: bool = False


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _namespace(pod: Mapping[str, Any]) -> str:
    return _text(_mapping(pod.get("metadata")).get("namespace"))


def container_references(namespace: str, container: Mapping[str, Any]) -> frozenset[Ref]:
    """Every ConfigMap and Secret ``container`` refers to (envFrom and env valueFrom), optional or not."""
    refs: set[Ref] = set()
    for raw in _list(container.get("envFrom")):
        source = _mapping(raw)
        for key, kind in (("configMapRef", CONFIG_MAP), ("secretRef", SECRET)):
            name = _text(_mapping(source.get(key)).get("name"))
            if name:
                refs.add(Ref(kind, namespace, name))
    for var in _list(container.get("env")):
        value_from = _mapping(_mapping(var).get("valueFrom"))
        for key, kind in (("configMapKeyRef", CONFIG_MAP), ("secretKeyRef", SECRET)):
            name = _text(_mapping(value_from.get(key)).get("name"))
            if name:
                refs.add(Ref(kind, namespace, name))
    return frozenset(refs)


def pod_references(pod: Mapping[str, Any]) -> frozenset[Ref]:
    """Every ConfigMap and Secret the pod's containers refer to."""
    namespace = _namespace(pod)
    refs: frozenset[Ref] = frozenset()
    for container in _list(_mapping(pod.get("spec")).get("containers")):
        refs |= container_references(namespace, _mapping(container))
    return refs


def config_map_data(obj: Mapping[str, Any]) -> dict[str, str]:
    """A ConfigMap's ``data`` (what env can use; ``binaryData`` is not, as on a kubelet)."""
    return {str(k): _text(v) for k, v in _mapping(obj.get("data")).items()}


def secret_data(obj: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's ``data``, base64-decoded (bytes that are not UTF-8 become U+FFFD: JSON carries text only)."""
    out: dict[str, str] = {}
    for key, value in _mapping(obj.get("data")).items():
        try:
            raw = base64.b64decode(_text(value), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        out[str(key)] = raw.decode("utf-8", "replace")
    return out


# --- what resolve needs and gives ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lookups:
    """What ``resolve`` may read: the referenced objects' data (``config_map_data`` / ``secret_data``, or why not),
    and the base's facts. Its repr names the objects, never their data."""

    objects: Mapping[Ref, Mapping[str, str] | RefError] = field(default_factory=dict)
    host_ips: tuple[str, ...] = ()
    pod_ips: tuple[str, ...] = ()  # empty: the same as host_ips (a biz runs in the base's JVM)
    allocatable: Mapping[str, str] = field(default_factory=dict)  # the vnode's status.allocatable

    def __repr__(self) -> str:
        return (f"Lookups(objects=[{', '.join(sorted(map(str, self.objects)))}], host_ips={self.host_ips}, "
                f"pod_ips={self.pod_ips}, allocatable={dict(self.allocatable)})")


@dataclass(frozen=True, slots=True)
class Resolved:
    """A container's installBiz ``args`` and ``envs``. Its repr shows the variable names, never a value."""

    args: tuple[str, ...] = ()
    envs: tuple[tuple[str, str], ...] = ()
    secret_values: frozenset[str] = frozenset()  # values read from Secrets, for ``redact``

    def __repr__(self) -> str:
        return f"Resolved({len(self.args)} args, envs=[{', '.join(name for name, _ in self.envs)}])"

    def env_map(self) -> dict[str, str]:
        return dict(self.envs)

    def redact(self, text: str) -> str:
        """``text`` with every value read from a Secret (``MIN_REDACTED_LENGTH`` characters or more) replaced by
        ``***``: for a base's answers about this biz before they reach pod status, Events or logs."""
        for value in sorted(self.secret_values, key=len, reverse=True):
            if len(value) >= MIN_REDACTED_LENGTH:
                text = text.replace(value, REDACTED)
        return text


@dataclass(frozen=True, slots=True)
class ConfigError:
    """The container cannot be configured now (the kubelet's ``CreateContainerConfigError``).

    ``waiting_for``: the object whose appearing or changing may fix it (try again then, and on a backoff anyway);
    ``transient``: the object could not be read (an API failure), not found missing.
    """

    message: str
    reason: str = CONFIG_ERROR
    waiting_for: frozenset[Ref] = frozenset()
    transient: bool = False


class FieldRefError(ValueError):
    """A fieldRef or resourceFieldRef that cannot be resolved; the text is the kubelet's."""


# --- $(VAR) expansion ------------------------------------------------------------------------------------------


def expand(text: str, mapping: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (third_party/forked/golang/expansion): ``$(NAME)`` becomes
    ``mapping[NAME]``, or stays ``$(NAME)`` when NAME is unknown; ``$$`` is one ``$``; a ``$`` before anything else,
    an unterminated ``$(``, and a ``$`` at the end stay as written. Nested references are not expanded."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    length = len(text)
    while cursor < length:
        if text[cursor] == "$" and cursor + 1 < length:
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            if following == "$":
                out.append("$")
                advance = 1
            elif following == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = text[cursor + 2 : close]
                    out.append(mapping.get(name, f"$({name})"))
                    advance = close - cursor
            else:
                out.append("$" + following)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


# --- fieldRef --------------------------------------------------------------------------------------------------


def _split_subscript(path: str) -> tuple[str, str] | None:
    """``metadata.labels['k']`` -> ``("metadata.labels", "k")`` (the kubelet's SplitMaybeSubscriptedPath)."""
    if not path.endswith("']"):
        return None
    head, sep, subscript = path[:-2].partition("['")
    if not sep or not head:
        return None
    return head, subscript


def _format_map(values: Mapping[str, Any]) -> str:
    return "\n".join(f"{key}={_go_quote(_text(values[key]))}" for key in sorted(values))


def _go_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def field_ref_value(pod: Mapping[str, Any], field_ref: Mapping[str, Any], *, host_ips: tuple[str, ...] = (),
                    pod_ips: tuple[str, ...] = ()) -> str:
    """The value of an env ``fieldRef`` (the kubelet's podFieldSelectorRuntimeValue). Raises FieldRefError."""
    version = _text(field_ref.get("apiVersion")) or "v1"
    path = _text(field_ref.get("fieldPath"))
    if version != "v1":
        raise FieldRefError(f"unsupported pod version: {version}")
    metadata = _mapping(pod.get("metadata"))
    subscripted = _split_subscript(path)
    if subscripted is not None:
        head, key = subscripted
        if head not in _SUBSCRIPTED:
            raise FieldRefError(f"field label does not support subscript: {path}")
        return _text(_mapping(metadata.get(head.partition(".")[2])).get(key))
    if path == "spec.host":
        path = "spec.nodeName"
    if path not in _CONVERTIBLE:
        raise FieldRefError(f"field label not supported: {path}")
    spec = _mapping(pod.get("spec"))
    pods = pod_ips or host_ips
    simple = {
        "spec.nodeName": lambda: _text(spec.get("nodeName")),
        "spec.serviceAccountName": lambda: _text(spec.get("serviceAccountName")),
        "status.hostIP": lambda: host_ips[0] if host_ips else "",
        "status.hostIPs": lambda: ",".join(host_ips),
        "status.podIP": lambda: pods[0] if pods else "",
        "status.podIPs": lambda: ",".join(pods),
        "metadata.annotations": lambda: _format_map(_mapping(metadata.get("annotations"))),
        "metadata.labels": lambda: _format_map(_mapping(metadata.get("labels"))),
        "metadata.name": lambda: _text(metadata.get("name")),
        "metadata.namespace": lambda: _text(metadata.get("namespace")),
        "metadata.uid": lambda: _text(metadata.get("uid")),
    }
    getter = simple.get(path)
    if getter is None:
        raise FieldRefError(f"unsupported fieldPath: {path}")
    return getter()


# --- resourceFieldRef ------------------------------------------------------------------------------------------

_QUANTITY: Final = re.compile(
    r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$")
_SUFFIXES: Final = {"": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
                    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
                    "P": Fraction(10**15), "E": Fraction(10**18), "Ki": Fraction(2**10), "Mi": Fraction(2**20),
                    "Gi": Fraction(2**30), "Ti": Fraction(2**40), "Pi": Fraction(2**50), "Ei": Fraction(2**60)}


def parse_quantity(text: object) -> Fraction:
    """A Kubernetes resource quantity (``500m``, ``1.5Gi``, ``2e3``) as an exact number. Raises ValueError."""
    match = _QUANTITY.match(_text(text).strip())
    if match is None:
        raise ValueError(f"quantities must match the regular expression '{_QUANTITY.pattern}': {text!r}")
    number, exponent, suffix = match.groups()
    value = Fraction(number)
    if exponent is not None:
        power = int(exponent[1:])
        if abs(power) > 1000:
            raise ValueError(f"quantity exponent out of range: {text!r}")
        return value * Fraction(10) ** power
    return value * _SUFFIXES[suffix or ""]


def _ceil_ratio(value: Fraction, divisor: Fraction) -> str:
    """The kubelet's convertQuantityToString: ceil(value / divisor) as an integer, 0 for nothing, saturated."""
    if value <= 0 or divisor <= 0:
        return "0"
    return str(min(math.ceil(value / divisor), _INT64_MAX))


def _find_container(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    spec = _mapping(pod.get("spec"))
    for container in [*_list(spec.get("containers")), *_list(spec.get("initContainers"))]:
        if _text(_mapping(container).get("name")) == name:
            return _mapping(container)
    return None


def resource_field_value(pod: Mapping[str, Any], container: Mapping[str, Any], selector: Mapping[str, Any],
                         allocatable: Mapping[str, str]) -> str:
    """The value of an env ``resourceFieldRef`` (the kubelet's containerResourceRuntimeValue after
    defaultPodLimitsForDownwardAPI). Raises FieldRefError."""
    target_name = _text(selector.get("containerName"))
    target = container if not target_name else _find_container(pod, target_name)
    if target is None:
        raise FieldRefError(f"container {target_name} not found")
    resource = _text(selector.get("resource"))
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not (name in _LIMITED or name.startswith("hugepages-")):
        raise FieldRefError(f"unsupported container resource : {resource}")
    try:
        divisor = parse_quantity(selector["divisor"]) if selector.get("divisor") not in (None, "", 0, "0") \
            else Fraction(1)
        if divisor == 0:
            divisor = Fraction(1)
        resources = _mapping(target.get("resources"))
        raw = _mapping(resources.get(kind)).get(name)
        value = parse_quantity(raw) if raw not in (None, "") else Fraction(0)
        if kind == "limits" and name in _LIMITED and value == 0 and allocatable.get(name) not in (None, ""):
            value = parse_quantity(allocatable[name])
    except ValueError as exc:
        raise FieldRefError(str(exc)) from None
    return _ceil_ratio(value, divisor)


# --- resolve ---------------------------------------------------------------------------------------------------


def _read(lookups: Lookups, ref: Ref) -> Mapping[str, str] | RefError:
    found = lookups.objects.get(ref)
    if found is None:
        return RefError(f"{ref.kind.lower()} {ref.name!r} was not looked up", transient=True)
    return found


def _optional(ref_spec: Mapping[str, Any]) -> bool:
    return ref_spec.get("optional") is True


def _unreadable(ref: Ref, error: RefError) -> ConfigError:
    return ConfigError(error.message, waiting_for=frozenset({ref}), transient=error.transient)


def resolve(pod: Mapping[str, Any], container: Mapping[str, Any], lookups: Lookups) -> Resolved | ConfigError:
    """The container's installBiz ``args`` and ``envs``, or why they cannot be made now (module docstring)."""
    namespace = _namespace(pod)
    env: dict[str, str] = {}
    secrets: set[str] = set()
    for raw in _list(container.get("envFrom")):
        source = _mapping(raw)
        prefix = _text(source.get("prefix"))
        for key, kind in (("configMapRef", CONFIG_MAP), ("secretRef", SECRET)):
            ref_spec = source.get(key)
            if not isinstance(ref_spec, Mapping):
                continue
            ref = Ref(kind, namespace, _text(ref_spec.get("name")))
            data = _read(lookups, ref)
            if isinstance(data, RefError):
                if data.not_found and _optional(ref_spec):
                    break
                return _unreadable(ref, data)
            for name, value in data.items():
                env[prefix + name] = value
            if kind == SECRET:
                secrets.update(data.values())
            break  # one source per envFrom entry, as the kubelet's switch
    host_ips = lookups.host_ips
    pod_ips = lookups.pod_ips or host_ips
    for item in _list(container.get("env")):
        var = _mapping(item)
        name = _text(var.get("name"))
        value = _text(var.get("value"))
        value_from = var.get("valueFrom")
        if value:
            value = expand(value, env)
        elif isinstance(value_from, Mapping):
            resolved = _value_from(pod, container, namespace, value_from, lookups, host_ips, pod_ips, secrets)
            if isinstance(resolved, ConfigError):
                return resolved
            if resolved is None:
                continue  # an optional reference that is missing: the variable is not set
            value = resolved
        env[name] = value
    args = tuple(expand(_text(arg), env) for arg in _list(container.get("args")))
    return Resolved(args=args, envs=tuple(env.items()), secret_values=frozenset(secrets))


def _value_from(pod: Mapping[str, Any], container: Mapping[str, Any], namespace: str,
                value_from: Mapping[str, Any], lookups: Lookups, host_ips: tuple[str, ...],
                pod_ips: tuple[str, ...], secrets: set[str]) -> str | ConfigError | None:
    """One env valueFrom: its value, None for a missing optional reference, or the ConfigError."""
    try:
        if isinstance(value_from.get("fieldRef"), Mapping):
            return field_ref_value(pod, value_from["fieldRef"], host_ips=host_ips, pod_ips=pod_ips)
        if isinstance(value_from.get("resourceFieldRef"), Mapping):
            return resource_field_value(pod, container, value_from["resourceFieldRef"], lookups.allocatable)
    except FieldRefError as exc:
        return ConfigError(str(exc))
    for key, kind in (("configMapKeyRef", CONFIG_MAP), ("secretKeyRef", SECRET)):
        selector = value_from.get(key)
        if not isinstance(selector, Mapping):
            continue
        ref = Ref(kind, namespace, _text(selector.get("name")))
        optional = _optional(selector)
        data = _read(lookups, ref)
        if isinstance(data, RefError):
            if data.not_found and optional:
                return None
            return _unreadable(ref, data)
        item = _text(selector.get("key"))
        if item not in data:
            if optional:
                return None
            return ConfigError(f"couldn't find key {item} in {kind} {namespace}/{ref.name}",
                               waiting_for=frozenset({ref}))
        if kind == SECRET:
            secrets.add(data[item])
        return data[item]
    return ""  # a valueFrom with no source the kubelet knows: the variable is set, empty


def referenced_annotations(containers: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The annotation keys the containers' env fieldRefs read (``metadata.annotations['k']``)."""
    keys: set[str] = set()
    for container in containers:
        for var in _list(_mapping(container).get("env")):
            field_ref = _mapping(_mapping(_mapping(var).get("valueFrom")).get("fieldRef"))
            split = _split_subscript(_text(field_ref.get("fieldPath")))
            if split is not None and split[0] == "metadata.annotations":
                keys.add(split[1])
    return frozenset(keys)
