"""Which bizs a pod asks for: container name = bizName, image = biz jar URL, env BIZ_VERSION = version (a literal, or
a fieldRef to a pod label or annotation).

Pure parsing of pod dicts (raw JSON from the API). Problems are returned per container, never raised, so one
bad container gives that pod a clear reason without stopping anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from vkprovider.core.containerconfig import POD_ONLY_FIELDS, FieldRefError, field_ref_value, referenced_annotations
from vkprovider.core.model import BizSpec, InstallStrategy

MODULE_LABELS = ("module-controller.koupleless.io/component", "virtual-kubelet.koupleless.io/component")
MODULE_LABEL_VALUE = "module"
BIZ_VERSION_ENV = "BIZ_VERSION"
#: How a new version may make room next to another version of its biz (``core.model.InstallStrategy``).
INSTALL_STRATEGY_ANNOTATION = "module.koupleless.io/install-strategy"
_STRATEGIES = {s.value: s for s in InstallStrategy}


@dataclass(frozen=True, slots=True)
class ContainerProblem:
    """Why a container cannot become a biz."""

    container: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class PodModules:
    """The bizs of one pod and the containers that could not be turned into bizs."""

    bizs: tuple[BizSpec, ...]
    problems: tuple[ContainerProblem, ...]
    sidecars: tuple[str, ...] = ()  # containers whose image is not a jar: not installed, never block Ready
    strategy: InstallStrategy = InstallStrategy.AUTO


def is_module_pod(pod: Mapping[str, Any]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return any(labels.get(key) == MODULE_LABEL_VALUE for key in MODULE_LABELS)


def pod_key(pod: Mapping[str, Any]) -> str:
    md = pod.get("metadata") or {}
    return f"{md.get('namespace', '')}/{md.get('name', '')}"


def is_terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def workload_of(pod: Mapping[str, Any]) -> str | None:
    """The workload a pod belongs to: ``ns/Deployment/name`` for ReplicaSet pods (old and new ReplicaSets of one
    Deployment are one workload), ``ns/Kind/name`` for other controllers, None for bare pods."""
    md = pod.get("metadata") or {}
    owner = next((o for o in md.get("ownerReferences") or [] if o.get("controller")), None)
    if owner is None:
        return None
    name = str(owner.get("name", ""))
    kind = str(owner.get("kind", ""))
    if kind == "ReplicaSet":
        template_hash = (md.get("labels") or {}).get("pod-template-hash")
        if template_hash and name.endswith("-" + template_hash):
            return f"{md.get('namespace', '')}/Deployment/{name[: -len(template_hash) - 1]}"
    return f"{md.get('namespace', '')}/{kind}/{name}"


def is_biz_image(image: str) -> bool:
    """A container is a biz when its image names a jar (the Go controller's rule: the image contains ".jar").

    Any other container of a module pod (a sidecar) is not installed and does not block the pod's readiness.
    """
    return ".jar" in image


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """Which biz jar URLs may be handed to a base.

    ``schemes``: allowed URL schemes (``file`` only when listed). ``hosts``: when non-empty, the only allowed
    hosts, for every scheme; a ``file:`` URL's host is ``localhost`` (``file:///x.jar`` and
    ``file://localhost/x.jar`` alike), so local jars need ``localhost`` in the list.
    """

    schemes: frozenset[str]
    hosts: frozenset[str] = frozenset()


def check_biz_url(url: str, schemes: frozenset[str] | UrlPolicy, hosts: frozenset[str] = frozenset()) -> str | None:
    """None if the URL may be given to a base, else why not."""
    policy = schemes if isinstance(schemes, UrlPolicy) else UrlPolicy(schemes, hosts)
    allowed = ", ".join(sorted(policy.schemes))
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return f"image {url[:200]!r} is not a URL: {exc}"
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        return f"image {url[:200]!r} is not a biz jar URL (expected one of {allowed}://...)"
    if scheme not in policy.schemes:
        return f"biz URL scheme {scheme!r} is not allowed (allowed: {allowed})"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return "biz URL contains whitespace or control characters"
    if scheme == "file":
        if not parts.path:
            return f"biz URL {url[:200]!r} has no path"
        host = host or "localhost"
    elif not host:
        return f"biz URL {url[:200]!r} has no host"
    if policy.hosts and (host or "").lower() not in policy.hosts:
        return f"biz URL host {host!r} is not in the allowed list ({', '.join(sorted(policy.hosts))})"
    return None


@dataclass(frozen=True, slots=True)
class NamespacePolicy:
    """Which namespaces may install code on bases of which cluster (``base.koupleless.io/cluster-name``).

    ``rules`` maps a namespace (or ``*`` for every other one) to the allowed cluster names (``*`` = any). With no
    rules everything is allowed; with rules, a namespace that no rule names (and no ``*`` rule) may install
    nothing.
    """

    rules: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def refusal(self, namespace: str, cluster: str) -> str | None:
        """None when pods of ``namespace`` may install on a base of ``cluster``, else why not."""
        if not self.rules:
            return None
        allowed = self.rules.get(namespace, self.rules.get("*"))
        if allowed is None:
            return f"namespace {namespace!r} may not install bizs on any base (VKP_BIZ_NAMESPACE_POLICY)"
        if "*" in allowed or cluster in allowed:
            return None
        return (f"namespace {namespace!r} may not install bizs on bases of cluster {cluster!r} "
                f"(allowed: {', '.join(sorted(allowed))}; VKP_BIZ_NAMESPACE_POLICY)")


def parse_namespace_policy(text: str) -> NamespacePolicy:
    """``ns1=clusterA|clusterB;ns2=*;*=shared`` → NamespacePolicy. Raises ValueError with a short reason."""
    rules: dict[str, frozenset[str]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        namespace, sep, clusters = part.partition("=")
        namespace = namespace.strip()
        names = frozenset(c.strip() for c in clusters.split("|") if c.strip())
        if not sep or not namespace or not names:
            raise ValueError(f"rule {part!r} is not namespace=cluster[|cluster...]")
        if namespace in rules:
            raise ValueError(f"namespace {namespace!r} appears twice")
        rules[namespace] = names
    return NamespacePolicy(rules)


def _biz_version(pod: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The biz version: env BIZ_VERSION's literal value (not expanded), or its ``fieldRef`` resolved from the pod
    (a label or an annotation, say; ``core.containerconfig.POD_ONLY_FIELDS``). Other sources are refused: the
    version names the biz before any ConfigMap or Secret is read (no I/O here)."""
    for env in container.get("env") or []:
        if env.get("name") != BIZ_VERSION_ENV:
            continue
        literal = str(env.get("value") or "").strip()
        value_from = env.get("valueFrom")
        if not literal and value_from is not None:
            field_ref = value_from.get("fieldRef") if isinstance(value_from, Mapping) else None
            if not isinstance(field_ref, Mapping):
                return None, ("BIZ_VERSION must be a literal value or a fieldRef (a pod label or annotation); "
                              "configMapKeyRef, secretKeyRef and resourceFieldRef are not supported")
            path = str(field_ref.get("fieldPath") or "")
            if path not in POD_ONLY_FIELDS and not path.startswith(("metadata.labels['", "metadata.annotations['")):
                return None, f"BIZ_VERSION cannot come from fieldRef {path[:100]!r}: it is not a field of the pod"
            try:
                literal = field_ref_value(pod, field_ref).strip()
            except FieldRefError as exc:
                return None, f"BIZ_VERSION: {exc}"
            if not literal:
                return None, f"env BIZ_VERSION is empty (fieldRef {path[:100]})"
        return (literal, None) if literal else (None, "env BIZ_VERSION is empty")
    return None, "container has no env BIZ_VERSION (the biz version is required)"


def pod_modules(pod: Mapping[str, Any], schemes: frozenset[str] | UrlPolicy,
                hosts: frozenset[str] = frozenset()) -> PodModules:
    policy = schemes if isinstance(schemes, UrlPolicy) else UrlPolicy(schemes, hosts)
    bizs: list[BizSpec] = []
    problems: list[ContainerProblem] = []
    sidecars: list[str] = []
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    raw_strategy = annotations.get(INSTALL_STRATEGY_ANNOTATION)
    strategy = _STRATEGIES.get(str(raw_strategy).strip()) if raw_strategy is not None else InstallStrategy.AUTO
    for container in (pod.get("spec") or {}).get("containers") or []:
        name = str(container.get("name") or "")
        url = str(container.get("image") or "")
        if not is_biz_image(url):
            sidecars.append(name)
            continue
        version, version_problem = _biz_version(pod, container)
        url_problem = check_biz_url(url, policy)
        if strategy is None:
            problems.append(ContainerProblem(name, "InvalidInstallStrategy", (
                f"annotation {INSTALL_STRATEGY_ANNOTATION}={str(raw_strategy)[:100]!r} is not one of "
                f"{', '.join(_STRATEGIES)}")))
        elif version_problem:
            problems.append(ContainerProblem(name, "MissingBizVersion", version_problem))
        elif url_problem:
            problems.append(ContainerProblem(name, "InvalidBizURL", url_problem))
        else:
            assert version is not None
            bizs.append(BizSpec(name=name, version=version, url=url))
    return PodModules(tuple(bizs), tuple(problems), tuple(sidecars), strategy or InstallStrategy.AUTO)


_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences", "creationTimestamp",
                  "deletionTimestamp", "deletionGracePeriodSeconds")
_KEPT_ANNOTATIONS = frozenset({INSTALL_STRATEGY_ANNOTATION})
#: Besides its name and image, what a container keeps in the cache: its configuration (``containerconfig.resolve``)
#: and what a kubelet runs for it (probes, lifecycle hooks, the ports they name).
_KEPT_CONTAINER = ("args", "command", "env", "envFrom", "ports", "readinessProbe", "livenessProbe", "startupProbe",
                   "lifecycle")
_KEPT_SPEC = ("readinessGates", "terminationGracePeriodSeconds")  # besides the node (what probes and stops read)




def trim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """The part of a pod vkprovider reads, for its cache: memory grows with module pods at a few KB each.

    Kept: identity and ownership metadata, labels, the annotations vkprovider reads (the install strategy, and those
    an env fieldRef reads), deletion facts; the node and (when a fieldRef reads it) the service account; each
    container's name, image and configuration (args, env, envFrom, and its resources when a resourceFieldRef
    reads them), its probes and lifecycle hooks; the readiness gates and the grace period; the whole status (it is
    compared with what vkprovider writes). ``containerconfig.resolve`` and ``pod_modules`` give the same answers on
    the trimmed pod as on the whole one.
    """
    md = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    containers_in = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    kept_metadata = {k: md[k] for k in _KEPT_METADATA if k in md}
    wanted = _KEPT_ANNOTATIONS | referenced_annotations(containers_in)
    annotations = {k: v for k, v in (md.get("annotations") or {}).items() if k in wanted}
    if annotations:
        kept_metadata["annotations"] = annotations
    reads_resources = {str(ref.get("containerName") or "") for c in containers_in for ref in _resource_refs(c)}
    reads_account = any(_field_path(var) == "spec.serviceAccountName" for c in containers_in
                        for var in c.get("env") or [])
    containers = []
    for container in containers_in:
        kept: dict[str, Any] = {"name": container.get("name"), "image": container.get("image")}
        for key in _KEPT_CONTAINER:
            if container.get(key):
                kept[key] = container[key]
        named = container.get("name") in reads_resources or ("" in reads_resources and _resource_refs(container))
        if named and container.get("resources"):
            kept["resources"] = container["resources"]
        containers.append(kept)
    trimmed_spec: dict[str, Any] = {"containers": containers}
    init = [{"name": c.get("name"), "resources": c["resources"]} for c in spec.get("initContainers") or []
            if isinstance(c, dict) and c.get("name") in reads_resources and c.get("resources")]
    if init:  # a resourceFieldRef may name an init container
        trimmed_spec["initContainers"] = init
    if spec.get("nodeName"):
        trimmed_spec["nodeName"] = spec["nodeName"]
    for key in _KEPT_SPEC:
        if spec.get(key):
            trimmed_spec[key] = spec[key]
    if reads_account and spec.get("serviceAccountName"):
        trimmed_spec["serviceAccountName"] = spec["serviceAccountName"]
    return {
        "apiVersion": pod.get("apiVersion", "v1"),
        "kind": pod.get("kind", "Pod"),
        "metadata": kept_metadata,
        "spec": trimmed_spec,
        "status": pod.get("status") or {},
    }


def _resource_refs(container: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    refs = []
    for var in container.get("env") or []:
        value_from = var.get("valueFrom") if isinstance(var, Mapping) else None
        ref = value_from.get("resourceFieldRef") if isinstance(value_from, Mapping) else None
        if isinstance(ref, Mapping):
            refs.append(ref)
    return refs


def _field_path(var: object) -> str:
    value_from = var.get("valueFrom") if isinstance(var, Mapping) else None
    field_ref = value_from.get("fieldRef") if isinstance(value_from, Mapping) else None
    return str(field_ref.get("fieldPath") or "") if isinstance(field_ref, Mapping) else ""
