"""vkprovider/kube/rights.py, charts/vkprovider/files/rbac-rules.yaml and the code agree on vkprovider's rights.

The declaration must equal the rules file (the ClusterRole), and a static scan of vkprovider/ (not the
simulator, a separate program) must find exactly the declared rights used: every call of the kube facade
(``kube.get/list_all/watch/create/patch/replace/delete/request``) and every ``Informer(kube, path)`` (a LIST and
a WATCH on its path), with the path worked out from the code - string literals, f-strings, local variables,
``self.<attribute>`` assignments and small path helpers of the same module or class. A new API call whose path
the scan cannot work out fails here too, so nothing slips past it unseen. Whether the rights are really used at
run time (and never refused) is tests/integration/test_zz_rbac.py's part.
"""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from vkprovider.kube import rights

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "vkprovider"
RBAC_RULES = REPO / "charts" / "vkprovider" / "files" / "rbac-rules.yaml"

UNKNOWN = "\x00"  # a part of a path the scan cannot know (an object's name, a namespace from settings)

# kube facade method -> the RBAC verb on a collection path, and on an object's path
FACADE_VERBS = {
    "get": ("list", "get"),
    "list_all": ("list", "list"),
    "watch": ("watch", "watch"),
    "create": ("create", "create"),
    "patch": ("patch", "patch"),
    "replace": ("update", "update"),
    "delete": ("deletecollection", "delete"),
}
HTTP_VERBS = {"GET": ("list", "get"), "POST": ("create", "create"), "PUT": ("update", "update"),
              "PATCH": ("patch", "patch"), "DELETE": ("deletecollection", "delete")}
KUBE_RECEIVERS = {"kube", "_kube"}  # `kube.x(...)`, `self.kube.x(...)`, `self._kube.x(...)`

# The only facade calls whose path is not code the scan can follow: the Informer's own LIST and WATCH of the
# path it was given - each `Informer(kube, path)` call site is scanned instead.
UNRESOLVED_BY_DESIGN = {("kube/informer.py", "list_all"), ("kube/informer.py", "watch")}


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse``, again on CPython 3.11.7's "AST constructor recursion depth mismatch": the AST module's
    recursion counter is the interpreter's, not the call's, so another AST being built meanwhile (code another
    thread or the garbage collector runs mid-parse) can trip it; the source is not at fault. Seen twice in CI runs
    of the whole suite, never alone."""
    for _ in range(4):
        try:
            return ast.parse(source, filename)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
    return ast.parse(source, filename)


@dataclass(frozen=True)
class Use:
    group: str
    resource: str
    verb: str
    name: str  # a literal object name, else ""
    where: str  # file relative to vkprovider/, and line

    @property
    def file(self) -> str:
        return self.where.split(":", 1)[0]


# --------------------------------------------------------------------------------------- the static scan


class _Module:
    def __init__(self, path: Path) -> None:
        self.rel = path.relative_to(PACKAGE).as_posix()
        self.tree = parse(path.read_text(), str(path))
        self.functions = {n.name: n for n in self.tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        self.classes = {n.name: n for n in self.tree.body if isinstance(n, ast.ClassDef)}
        self.constants: dict[str, list[ast.expr]] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.constants.setdefault(target.id, []).append(node.value)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                self.constants.setdefault(node.target.id, []).append(node.value)


@dataclass
class _Scope:
    module: _Module
    cls: ast.ClassDef | None
    func: ast.FunctionDef | ast.AsyncFunctionDef | None
    bound: dict[str, set[str]]


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def _params(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    return [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]


def _local_values(func: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> list[ast.expr] | None:
    """What ``name`` is assigned in ``func`` (None when never; [] when only by unpacking or a loop)."""
    found: list[ast.expr] | None = None
    for node in ast.walk(func):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == name:
                    found = [*(found or []), node.value]
                elif any(isinstance(t, ast.Name) and t.id == name for t in ast.walk(target)):
                    found = found or []
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr) and isinstance(node.target, ast.Name) \
                and node.target.id == name:
            value = node.value
            found = [*(found or []), value] if value is not None and not isinstance(node, ast.AugAssign) else \
                (found or [])
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension) and any(
                isinstance(t, ast.Name) and t.id == name for t in ast.walk(node.target)):
            found = found or []
    return found


def _call(func: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call, caller: _Scope, callee: _Scope,
          *, method: bool, depth: int) -> set[str]:
    params = _params(func)[1 if method else 0:]
    defaults: dict[str, ast.expr] = {}
    positional = [*func.args.posonlyargs, *func.args.args][1 if method else 0:]
    for param, default in zip(positional[len(positional) - len(func.args.defaults):], func.args.defaults,
                              strict=True):
        defaults[param.arg] = default
    for param, kw_default in zip(func.args.kwonlyargs, func.args.kw_defaults, strict=True):
        if kw_default is not None:
            defaults[param.arg] = kw_default
    bound: dict[str, set[str]] = {}
    for param, arg in zip(positional, call.args, strict=False):
        bound[param.arg] = _values(arg, caller, depth + 1)
    for keyword in call.keywords:
        if keyword.arg is not None:
            bound[keyword.arg] = _values(keyword.value, caller, depth + 1)
    for param in params:
        if param.arg not in bound:
            bound[param.arg] = _values(defaults[param.arg], callee, depth + 1) if param.arg in defaults else {UNKNOWN}
    scope = _Scope(callee.module, callee.cls, func, bound)
    out: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Return) and node.value is not None:
            out |= _values(node.value, scope, depth + 1)
    return out or {UNKNOWN}


def _values(expr: ast.expr, scope: _Scope, depth: int = 0) -> set[str]:
    """The strings ``expr`` may be; parts the scan cannot know are UNKNOWN (never empty)."""
    if depth > 12:
        return {UNKNOWN}
    if isinstance(expr, ast.Constant):
        return {expr.value} if isinstance(expr.value, str) else {UNKNOWN}
    if isinstance(expr, ast.JoinedStr):
        parts = [_values(v.value, scope, depth + 1) if isinstance(v, ast.FormattedValue) else _values(v, scope, depth)
                 for v in expr.values]
        return {"".join(p) for p in itertools.product(*parts)}
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return {a + b for a in _values(expr.left, scope, depth + 1) for b in _values(expr.right, scope, depth + 1)}
    if isinstance(expr, ast.IfExp):
        test = _values(expr.test, scope, depth + 1) if isinstance(expr.test, ast.Name) else {UNKNOWN, ""}
        out: set[str] = set()
        if any(test):
            out |= _values(expr.body, scope, depth + 1)
        if not all(test):
            out |= _values(expr.orelse, scope, depth + 1)
        return out
    if isinstance(expr, ast.Name):
        if expr.id in scope.bound:
            return scope.bound[expr.id]
        if scope.func is not None:
            assigned = _local_values(scope.func, expr.id)
            if assigned is not None:
                return set().union(*(_values(v, scope, depth + 1) for v in assigned)) if assigned else {UNKNOWN}
            if any(p.arg == expr.id for p in _params(scope.func)):
                return {UNKNOWN}
        if expr.id in scope.module.constants:
            top = _Scope(scope.module, None, None, {})
            return set().union(*(_values(v, top, depth + 1) for v in scope.module.constants[expr.id]))
        return {UNKNOWN}
    if (isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self"
            and scope.cls is not None):
        out = set()
        for method in _methods(scope.cls).values():
            for node in ast.walk(method):
                if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if any(isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
                           and t.attr == expr.attr for t in targets):
                        out |= _values(node.value, _Scope(scope.module, scope.cls, method, {}), depth + 1)
        return out or {UNKNOWN}
    if isinstance(expr, ast.Call):
        func = expr.func
        if isinstance(func, ast.Name) and func.id in scope.module.functions:
            return _call(scope.module.functions[func.id], expr, scope, _Scope(scope.module, None, None, {}),
                         method=False, depth=depth)
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self"
                and scope.cls is not None and func.attr in _methods(scope.cls)):
            return _call(_methods(scope.cls)[func.attr], expr, scope, scope, method=True, depth=depth)
    return {UNKNOWN}


def _parse_path(path: str) -> tuple[str, str, str | None] | None:
    """(group, resource[/subresource], object name or None for a collection) of an API path; None for a path
    that is not a resource's (``/version``) or whose group or resource the scan cannot know."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return None
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    if not rest or len(rest) > 3 or UNKNOWN in group or UNKNOWN in rest[0] or (len(rest) == 3 and UNKNOWN in rest[2]):
        return None
    resource = rest[0] + (f"/{rest[2]}" if len(rest) == 3 else "")
    return group, resource, rest[1] if len(rest) > 1 else None


def _uses_of(path_expr: ast.expr, verbs: list[tuple[str, str]], scope: _Scope, where: str) -> list[Use] | None:
    found: list[Use] = []
    for path in _values(path_expr, scope):
        parsed = _parse_path(path)
        if parsed is None:
            if path.startswith("/") and UNKNOWN not in path:
                continue  # a literal non-resource path (/version): no RBAC right of its own
            return None
        group, resource, name = parsed
        for on_collection, on_object in verbs:
            literal = name if name is not None and UNKNOWN not in name else ""
            found.append(Use(group, resource, on_collection if name is None else on_object, literal, where))
    return found


def scan() -> tuple[list[Use], list[tuple[str, str, int]]]:
    """Every right vkprovider/ (not sim/) uses, and the facade calls whose path could not be worked out."""
    uses: list[Use] = []
    unresolved: list[tuple[str, str, int]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "sim" in path.relative_to(PACKAGE).parts:
            continue
        module = _Module(path)
        contexts: list[tuple[ast.ClassDef | None, ast.FunctionDef | ast.AsyncFunctionDef]] = []
        for node in module.tree.body:
            if isinstance(node, ast.ClassDef):
                contexts += [(node, m) for m in _methods(node).values()]
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                contexts.append((None, node))
        for cls, func in contexts:
            scope = _Scope(module, cls, func, {})
            for call in (n for n in ast.walk(func) if isinstance(n, ast.Call)):
                where = f"{module.rel}:{call.lineno}"
                target = call.func
                callee = target.attr if isinstance(target, ast.Attribute) else \
                    target.id if isinstance(target, ast.Name) else ""
                if callee == "Informer":
                    found = _uses_of(call.args[1], [("list", "list"), ("watch", "watch")], scope, where)
                    label = "Informer"
                elif isinstance(target, ast.Attribute) and _receiver(target.value) in KUBE_RECEIVERS and (
                        callee in FACADE_VERBS or callee == "request"):
                    label = callee
                    if callee == "request":
                        method = call.args[0]
                        assert isinstance(method, ast.Constant), f"{where}: kube.request with a computed method"
                        verbs, path_expr = [HTTP_VERBS[str(method.value).upper()]], call.args[1]
                    else:
                        verbs, path_expr = [FACADE_VERBS[callee]], call.args[0]
                    found = _uses_of(path_expr, verbs, scope, where)
                else:
                    continue
                if found is None:
                    unresolved.append((module.rel, label, call.lineno))
                else:
                    uses += found
    return uses, unresolved


def _receiver(expr: ast.expr) -> str:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        return expr.attr
    return ""


# --------------------------------------------------------------------------------------- the tests


def _file_rules() -> list[dict[str, object]]:
    loaded = yaml.safe_load(RBAC_RULES.read_text())
    assert isinstance(loaded, list)
    return loaded


def test_the_declaration_is_the_rbac_rules_file() -> None:
    declared = {(r.group, r.resource, r.verb, name) for r in rights.RIGHTS for name in (r.names or ("",))}
    in_file = rights.granted(_file_rules())
    assert declared == in_file, (f"only in vkprovider/kube/rights.py: {sorted(declared - in_file)}; "
                                 f"only in rbac-rules.yaml: {sorted(in_file - declared)}")
    assert rights.granted(rights.rules()) == in_file
    # ...and in the file's grouping and order, so the two read side by side.
    assert rights.rules() == _file_rules()


def test_each_right_is_declared_once_with_a_reason_naming_its_code() -> None:
    keys = [(r.group, r.resource, r.verb, r.names) for r in rights.RIGHTS]
    assert len(keys) == len(set(keys)), "a right is declared twice"
    for right in rights.RIGHTS:
        assert right.reason.strip(), f"{right}: no reason"
        assert "\n" not in right.reason, f"{right}: the reason is one line"
        files = re.findall(r"[\w/]+\.py", right.reason)
        assert files, f"{right}: the reason names no file of vkprovider/"
        for name in files:
            assert (PACKAGE / name).is_file(), f"{right}: vkprovider/{name} does not exist"


def test_the_scan_works_out_every_api_call() -> None:
    uses, unresolved = scan()
    assert {(f, label) for f, label, _ in unresolved} <= UNRESOLVED_BY_DESIGN, (
        f"API calls whose path the scan cannot work out (make the path a literal or f-string, or teach the scan): "
        f"{[u for u in unresolved if (u[0], u[1]) not in UNRESOLVED_BY_DESIGN]}")
    assert len({u.where for u in uses}) >= 25, "the scan found suspiciously few API calls"


def test_the_code_uses_exactly_the_declared_rights() -> None:
    uses, _ = scan()
    undeclared = sorted({f"{u.verb} {u.group or 'core'}/{u.resource}{' ' + u.name if u.name else ''} at {u.where}"
                         for u in uses if rights.covering(u.group, u.resource, u.verb, u.name) is None})
    assert not undeclared, f"the code uses rights vkprovider/kube/rights.py does not declare: {undeclared}"
    unused = [r for r in rights.RIGHTS if not any(r.allows(u.group, u.resource, u.verb, u.name) for u in uses)]
    assert not unused, f"declared rights no code in vkprovider/ uses: {unused}"


def test_each_reason_names_a_file_that_uses_the_right() -> None:
    uses, _ = scan()
    for right in rights.RIGHTS:
        named = set(re.findall(r"[\w/]+\.py", right.reason))
        found_in = {u.file for u in uses if right.allows(u.group, u.resource, u.verb, u.name)}
        assert named & found_in, f"{right.verb} {right.resource}: the reason names {sorted(named)}, the code " \
                                 f"using it is in {sorted(found_in)}"


def test_the_scan_reads_paths_the_way_the_apiserver_does() -> None:
    """The path parser against the apiserver's own request-info rules, on the shapes vkprovider uses."""
    u = UNKNOWN
    assert _parse_path("/api/v1/nodes") == ("", "nodes", None)
    assert _parse_path(f"/api/v1/nodes/{u}/status") == ("", "nodes/status", u)
    assert _parse_path(f"/api/v1/namespaces/{u}/pods/{u}/status") == ("", "pods/status", u)
    assert _parse_path(f"/api/v1/namespaces/{u}/events") == ("", "events", None)
    assert _parse_path(f"/api/v1/namespaces/{u}") == ("", "namespaces", u)
    assert _parse_path("/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication") == (
        "", "configmaps", "extension-apiserver-authentication")
    assert _parse_path(f"/apis/coordination.k8s.io/v1/namespaces/{u}/leases") == ("coordination.k8s.io", "leases",
                                                                                  None)
    assert _parse_path("/apis/authorization.k8s.io/v1/subjectaccessreviews") == ("authorization.k8s.io",
                                                                                 "subjectaccessreviews", None)
    assert _parse_path("/version") is None
    assert _parse_path(u) is None


def test_the_scan_follows_helpers_defaults_and_attributes() -> None:
    """A small module with the patterns vkprovider uses: the scan resolves each to its right."""
    source = '''
NS = "kube-node-lease"

def _path(d):
    md = d["metadata"]
    return f"/apis/apps/v1/namespaces/{md['namespace']}/deployments/{md['name']}"

class Keeper:
    def __init__(self, kube, settings):
        self.kube = kube
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{settings.namespace}/leases"

    def _lease_path(self, node: str = "") -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
        return f"{base}/{node}" if node else base

    async def go(self, node, d):
        await self.kube.create(self._lease_path(), {})
        await self.kube.get(self._lease_path(node))
        await self.kube.get(f"{self.path}/x")
        await self.kube.patch(_path(d), {})
        await self.kube.request("DELETE", f"/api/v1/namespaces/{d}/pods/{node}")
        await self.kube.get(self.somewhere_else)
'''
    module = _Module.__new__(_Module)
    module.rel = "sample.py"
    module.tree = parse(source)
    module.functions = {n.name: n for n in module.tree.body if isinstance(n, ast.FunctionDef)}
    module.classes = {n.name: n for n in module.tree.body if isinstance(n, ast.ClassDef)}
    module.constants = {"NS": [ast.Constant("kube-node-lease")]}
    cls = module.classes["Keeper"]
    go = _methods(cls)["go"]
    scope = _Scope(module, cls, go, {})
    got = []
    for call in (n for n in ast.walk(go) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and _receiver(n.func.value) == "kube"):
        if call.func.attr == "request":
            verbs, expr = [HTTP_VERBS["DELETE"]], call.args[1]
        else:
            verbs, expr = [FACADE_VERBS[call.func.attr]], call.args[0]
        found = _uses_of(expr, verbs, scope, f"sample.py:{call.lineno}")
        got.append(None if found is None else sorted((x.group, x.resource, x.verb, x.name) for x in found))
    assert got == [
        [("coordination.k8s.io", "leases", "create", "")],
        [("coordination.k8s.io", "leases", "get", "")],
        [("coordination.k8s.io", "leases", "get", "x")],
        [("apps", "deployments", "patch", "")],
        [("", "pods", "delete", "")],
        None,  # an attribute nothing assigns: reported, not guessed
    ]
