"""JSON schemas for kubeconform made from a live kube-apiserver's OpenAPI v2 document (no download needed).

kubeconform normally fetches its schemas from GitHub; nothing outside this machine is reachable here, and the
real apiserver of the test control plane describes exactly the Kubernetes version the chart is tried on. This
writes one self-contained schema per kind, named as kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json`
template expects (deployment-apps-v1.json, service-v1.json, clusterrole-rbac-v1.json ...), converted the way
kubernetes-json-schema's openapi2jsonschema does it: references kept inside the file (`#/definitions/...`),
int-or-string and quantities as string-or-number, and, for strict validation, `additionalProperties: false` on
every object with declared properties (the schema-level equivalent of kubectl's strict field validation).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

_INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
_QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}
_PREFIX = "#/definitions/"


def kind_file(group: str, version: str, kind: str) -> str:
    """kubeconform's file name of a kind: {kind}-{first label of the group}-{version}, or {kind}-{version}."""
    suffix = f"-{group.split('.', maxsplit=1)[0].lower()}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_PREFIX):
            found.add(ref[len(_PREFIX):])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _convert(node: Any, strict: bool) -> Any:
    if isinstance(node, dict):
        if node.get("format") == "int-or-string":
            return dict(_INT_OR_STRING)
        out = {k: _convert(v, strict) for k, v in node.items()}
        if strict and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_convert(v, strict) for v in node]
    return node


def _closure(definitions: dict[str, Any], name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in definitions:
            continue
        seen.add(current)
        found: set[str] = set()
        _refs(definitions[current], found)
        todo.extend(found - seen)
    return seen


def _definition(definitions: dict[str, Any], name: str, strict: bool) -> Any:
    if name.endswith(".pkg.api.resource.Quantity"):
        return dict(_QUANTITY)
    return _convert(copy.deepcopy(definitions[name]), strict)


def write_schemas(openapi_v2: dict[str, Any], out: Path, strict: bool = True) -> list[str]:
    """Write a schema file per kind of the document into `out`; returns the file names."""
    definitions: dict[str, Any] = openapi_v2["definitions"]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, definition in sorted(definitions.items()):
        for gvk in definition.get("x-kubernetes-group-version-kind") or []:
            if "apiVersion" not in (definition.get("properties") or {}):
                continue  # list-option kinds (DeleteOptions ...) are no manifests
            names = _closure(definitions, name) - {name}
            schema = _definition(definitions, name, strict)
            schema["definitions"] = {n: _definition(definitions, n, strict) for n in sorted(names)}
            path = out / kind_file(gvk.get("group", ""), gvk["version"], gvk["kind"])
            path.write_text(json.dumps(schema))
            written.append(path.name)
    return written
