"""Which bizs a pod asks for: container name = bizName, image = biz jar URL, env BIZ_VERSION = version.

Pure parsing of pod dicts (raw JSON from the API). Problems are returned per container, never raised, so one
bad container gives that pod a clear reason without stopping anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from vkprovider.core.model import BizSpec

MODULE_LABELS = ("module-controller.koupleless.io/component", "virtual-kubelet.koupleless.io/component")
MODULE_LABEL_VALUE = "module"
BIZ_VERSION_ENV = "BIZ_VERSION"


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


def check_biz_url(url: str, schemes: frozenset[str], hosts: frozenset[str]) -> str | None:
    """None if the URL may be given to a base, else why not."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"image {url!r} is not a URL: {exc}"
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        return f"image {url!r} is not a biz jar URL (expected one of {', '.join(sorted(schemes))}://...)"
    if scheme not in schemes:
        return f"biz URL scheme {scheme!r} is not allowed (allowed: {', '.join(sorted(schemes))})"
    if scheme != "file" and not parts.hostname:
        return f"biz URL {url!r} has no host"
    if scheme == "file" and not parts.path:
        return f"biz URL {url!r} has no path"
    if hosts and scheme != "file" and (parts.hostname or "").lower() not in hosts:
        return f"biz URL host {parts.hostname!r} is not in the allowed list"
    return None


def _biz_version(container: Mapping[str, Any]) -> tuple[str | None, str | None]:
    for env in container.get("env") or []:
        if env.get("name") == BIZ_VERSION_ENV:
            if "valueFrom" in env:
                return None, "BIZ_VERSION must be a literal value, valueFrom is not supported"
            value = str(env.get("value") or "").strip()
            return (value, None) if value else (None, "env BIZ_VERSION is empty")
    return None, "container has no env BIZ_VERSION (the biz version is required)"


def pod_modules(pod: Mapping[str, Any], schemes: frozenset[str], hosts: frozenset[str] = frozenset()) -> PodModules:
    bizs: list[BizSpec] = []
    problems: list[ContainerProblem] = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        name = str(container.get("name") or "")
        url = str(container.get("image") or "")
        version, version_problem = _biz_version(container)
        url_problem = check_biz_url(url, schemes, hosts)
        if version_problem:
            problems.append(ContainerProblem(name, "MissingBizVersion", version_problem))
        elif url_problem:
            problems.append(ContainerProblem(name, "InvalidBizURL", url_problem))
        else:
            assert version is not None
            bizs.append(BizSpec(name=name, version=version, url=url))
    return PodModules(tuple(bizs), tuple(problems))
