"""The end of the integration session: vkprovider's ClusterRole grants exactly what it uses, by the apiserver's word.

This file runs last in tests/integration (its name), when every other test has run vkprovider against the local
control plane under the restricted identity "vkprovider", bound only to charts/vkprovider/files/rbac-rules.yaml.
The apiserver audit-logs every request of that identity (AUDIT_POLICY in hack/controlplane/localcluster.py; reads
too), so from the log of this session:

- vkprovider was never refused (no 403), whatever test ran it: a right missing from the file shows here even when
  the refusal was retried away or only logged;
- every right of the file was exercised at least once: no unused right. Only a session that ran the whole
  tests/integration directory can say so; any other session skips this part, saying why.

"vkprovider" here is the program: its requests carry the User-Agent ``vkprovider/<version> (<CLIENT_ID>)``. Tests
that use the same credentials themselves (to prove that Secrets are refused, say) send another User-Agent and are
left out. vkprovider/kube/rights.py says why each right is needed; tests/unit/test_rights.py that the code uses
exactly these.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import figure
from tests.integration import audit
from vkprovider.kube import rights

# Set when pytest collects this file, before any test of the session runs: the session's part of the audit log
# (a cluster kept between sessions with VKPROVIDER_TEST_KEEP_CLUSTER=1 holds older sessions' requests too).
SESSION_START = datetime.now(UTC)
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RBAC_RULES = REPO / "charts" / "vkprovider" / "files" / "rbac-rules.yaml"
PROGRAM = re.compile(r"^vkprovider/\S+ \(.+\)$")  # the User-Agent of a running vkprovider (vkprovider/kube/client.py)
# The one refusal that is not about rights: NamespaceLifecycle admission refuses new Events in a namespace being
# deleted (docs/operations.md, VkproviderApiserverForbidden) - RBAC allowed the request.
TERMINATING = "because it is being terminated"

Key = tuple[str, str, str, str]  # (group, resource[/subresource], verb, resourceName or "")


@dataclass
class Session:
    """What vkprovider asked the apiserver in this session."""

    requests: int = 0
    others: Counter[str] = field(default_factory=Counter)  # the vkprovider identity used by tests: User-Agent -> n
    refused: dict[str, audit.Request] = field(default_factory=dict)  # auditID -> the 403
    terminating: int = 0
    used: Counter[Key] = field(default_factory=Counter)


def _granted() -> set[Key]:
    return rights.granted(yaml.safe_load(RBAC_RULES.read_text()))


def _under(request: audit.Request, granted: set[Key]) -> Key | None:
    """The rule entry of the rules file that allowed this request (None: a non-resource URL, or not the file's)."""
    for name in (request.name, ""):
        key = (request.group, request.full_resource, request.verb, name)
        if request.full_resource and key in granted:
            return key
    return None


def _localcluster() -> Any:
    sys.path.insert(0, str(REPO / "hack" / "controlplane"))
    try:
        import localcluster
    finally:
        sys.path.pop(0)
    return localcluster


def read_session(log: Path, since: datetime) -> Session:
    granted = _granted()
    out = Session()
    for request in audit.requests(log, since=since):
        if not PROGRAM.match(request.user_agent):
            if request.stage == "ResponseComplete":
                out.others[request.user_agent] += 1
            continue
        if request.stage == "ResponseComplete":
            out.requests += 1
        if request.code == 403:
            if request.resource == "events" and request.decision == "allow" and TERMINATING in request.message:
                out.terminating += 1
            else:
                out.refused[request.audit_id] = request
            continue
        key = _under(request, granted)
        if key is not None:
            out.used[key] += 1
    return out


def _show(key: Key) -> str:
    group, resource, verb, name = key
    return f"{verb} {group or 'core'}/{resource}{' ' + name if name else ''}"


@pytest.fixture(scope="module")
def session(kube_cluster: Any) -> Session:
    log = kube_cluster.audit_log
    if log is None:
        pytest.skip("no audit log: this session runs on an external cluster (VKPROVIDER_TEST_KUBECONFIG); the local "
                    "control plane audit-logs vkprovider's requests")
    out = read_session(log, SESSION_START)
    granted = _granted()
    figure(f"rbac: {out.requests} vkprovider requests in this session ({len(out.refused)} refused, "
          f"{out.terminating} Events refused in namespaces being deleted); {len(out.used)} of {len(granted)} "
          f"rights used (unused: {', '.join(_show(k) for k in sorted(granted - set(out.used))) or 'none'}); "
          f"tests' own requests as vkprovider: {sum(out.others.values())}")
    return out


def _whole_directory_not_run(request: pytest.FixtureRequest) -> str | None:
    """Why this session cannot say that every right is used (it did not run all of tests/integration), or None."""
    session = request.session
    ran = Counter(Path(item.path).resolve() for item in session.items)
    missing = sorted(p.name for p in HERE.glob("test_*.py") if ran[p.resolve()] == 0)
    if missing:
        return f"this session did not run all of tests/integration (not collected: {', '.join(missing)})"
    base = session.config.invocation_params.dir
    picked = [a for a in session.config.args if "::" in a and (base / a.split("::", 1)[0]).resolve().parent == HERE]
    if picked:
        return f"this session ran single tests of tests/integration ({', '.join(picked)})"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return "cannot tell whether tests were deselected (no terminal reporter, -p no:terminal)"
    deselected = [i for i in reporter.stats.get("deselected", []) if HERE in Path(i.path).resolve().parents]
    if deselected:
        return f"this session deselected {len(deselected)} test(s) of tests/integration (-k, -m, --deselect, --lf)"
    return None


def test_vkprovider_was_never_refused(session: Session) -> None:
    """No 403 for any request of a running vkprovider in this session: its ClusterRole lacks nothing it asked."""
    lines = sorted({f"{r.verb} {r.group or 'core'}/{r.full_resource or r.uri}"
                    f"{' ' + r.namespace + '/' if r.namespace else ' '}{r.name} by {r.replica}: "
                    f"{r.why or r.message}" for r in session.refused.values()})
    assert not lines, (f"vkprovider was refused {len(session.refused)} time(s) in this session; "
                       f"charts/vkprovider/files/rbac-rules.yaml lacks: " + "; ".join(lines[:20]))


def test_every_right_was_used(session: Session, request: pytest.FixtureRequest, kube_cluster: Any) -> None:
    """Every right of rbac-rules.yaml was exercised by a running vkprovider in this session: no unused right."""
    why_not = _whole_directory_not_run(request)
    if why_not is not None:
        pytest.skip(f"'every right used' needs the whole tests/integration directory in one session: {why_not}")
    policy = kube_cluster.state_dir / "audit-policy.yaml"
    if policy.read_text() != _localcluster().AUDIT_POLICY:
        pytest.skip(f"the cluster in {kube_cluster.state_dir} was started with another audit policy (kept from an "
                    f"older run?), which may not log every read; restart it")
    unused = sorted(_granted() - set(session.used))
    reasons = []
    for key in unused:
        right = rights.covering(*key)
        reasons.append(f"{_show(key)} ({right.reason if right else 'not in vkprovider/kube/rights.py'})")
    assert not unused, (f"{len(unused)} right(s) of rbac-rules.yaml no running vkprovider used in this session "
                        f"(drop them, or test the code that needs them): " + "; ".join(reasons))
