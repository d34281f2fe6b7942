"""Every biz-state → pod-status row of core.podstatus, as a table."""

import json

import pytest

from vkprovider.core.model import BizInfo, BizState, BizStateRecord
from vkprovider.core.module import pod_modules
from vkprovider.core.podstatus import BaseCondition, OpFacts, OpState, pod_status, status_changed, status_patch

SCHEMES = frozenset({"http", "https", "file"})
NOW = "2026-01-01T00:00:00Z"


def pod(*containers, phase=None):
    p = {
        "metadata": {"namespace": "ns", "name": "p", "uid": "u1"},
        "spec": {"containers": list(containers)},
        "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]},
    }
    if phase:
        p["status"]["phase"] = phase
    return p


def container(name="biz1", version="0.0.1", image="http://h/biz1.jar"):
    c = {"name": name, "image": image}
    if version is not None:
        c["env"] = [{"name": "BIZ_VERSION", "value": version}]
    return c


def biz(state, version="0.0.1", reason="", message="", name="biz1"):
    return BizInfo(name, version, state, (BizStateRecord(1_700_000_000_000, state, reason, message),))


@pytest.mark.parametrize(
    ("bizs", "ops", "phase", "state_key", "reason", "ready"),
    [
        ([], {}, "Pending", "waiting", "ContainerCreating", False),
        ([], {"biz1:0.0.1": OpFacts(OpState.INSTALLING)}, "Pending", "waiting", "ContainerCreating", False),
        ([], {"biz1:0.0.1": OpFacts(OpState.INSTALL_FAILED, "boom")}, "Pending", "waiting", "BizInstallFailed", False),
        ([biz(BizState.RESOLVED)], {}, "Pending", "waiting", "BizResolving", False),
        ([biz(BizState.ACTIVATED)], {}, "Running", "running", None, True),
        ([biz(BizState.DEACTIVATED), biz(BizState.ACTIVATED, "0.0.2")], {}, "Failed", "terminated",
         "BizDeactivate", False),
        ([biz(BizState.BROKEN, message="start failed")], {}, "Pending", "waiting", "BizBroken", False),
        ([biz(BizState.STOPPED)], {}, "Pending", "terminated", "BizStopped", False),
        ([biz(BizState.UNKNOWN)], {}, "Pending", "waiting", "BizStateUnknown", False),
    ],
)
def test_biz_state_table(bizs, ops, phase, state_key, reason, ready):
    p = pod(container())
    mods = pod_modules(p, SCHEMES)
    bizmap = {b.key: b for b in bizs}
    opmap = {mods.bizs[0].key: next(iter(ops.values()))} if ops else {}
    st = pod_status(p, mods, bizmap, opmap, base_ip="10.0.0.5", now_iso=NOW)
    assert st["phase"] == phase
    cs = st["containerStatuses"][0]
    assert state_key in cs["state"]
    if reason:
        assert cs["state"][state_key]["reason"] == reason
    assert cs["ready"] is ready
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds["Ready"] == ("True" if ready else "False")
    assert st["hostIP"] == st["podIP"] == "10.0.0.5"
    assert st["startTime"]


def test_deactivated_pod_says_which_version_is_active():
    p = pod(container())
    mods = pod_modules(p, SCHEMES)
    bizs = [biz(BizState.DEACTIVATED, reason="Switched"), biz(BizState.ACTIVATED, "0.0.2")]
    st = pod_status(p, mods, {b.key: b for b in bizs}, {}, base_ip="1.1.1.1", now_iso=NOW)
    assert st["reason"] == "BizDeactivate"
    assert "biz1:0.0.2 is active" in st["message"]


def test_missing_biz_version_gives_reason_and_message():
    p = pod(container(version=None))
    mods = pod_modules(p, SCHEMES)
    assert mods.bizs == () and mods.problems[0].reason == "MissingBizVersion"
    st = pod_status(p, mods, {}, {}, base_ip="1.1.1.1", now_iso=NOW)
    assert st["containerStatuses"][0]["state"]["waiting"]["reason"] == "MissingBizVersion"
    assert "BIZ_VERSION" in st["message"]


@pytest.mark.parametrize("image", ["ftp://h/x.jar", "http:///nohost.jar", "biz1.jar", "http://h/a b.jar"])
def test_invalid_urls_are_problems(image):
    mods = pod_modules(pod(container(image=image)), SCHEMES)
    assert mods.bizs == () and mods.problems[0].reason == "InvalidBizURL"


def test_url_policy_file_only_when_enabled_and_hosts_for_every_scheme():
    from vkprovider.core.module import UrlPolicy, check_biz_url

    web = UrlPolicy(frozenset({"https", "http"}))
    assert "not allowed" in (check_biz_url("file:///opt/biz1.jar", web) or "")
    local = UrlPolicy(frozenset({"https", "file"}), frozenset({"repo.example.com"}))
    assert check_biz_url("https://repo.example.com/biz1.jar", local) is None
    assert "not in the allowed list" in (check_biz_url("https://evil.example.com/biz1.jar", local) or "")
    # file: no longer bypasses the host list: its host is localhost.
    assert "not in the allowed list" in (check_biz_url("file:///opt/biz1.jar", local) or "")
    with_local = UrlPolicy(frozenset({"file"}), frozenset({"localhost"}))
    assert check_biz_url("file:///opt/biz1.jar", with_local) is None


def test_namespace_policy():
    from vkprovider.core.module import parse_namespace_policy

    policy = parse_namespace_policy("team-a=cluster-a|shared;*=shared")
    assert policy.refusal("team-a", "cluster-a") is None
    assert policy.refusal("team-b", "shared") is None
    assert "may not install" in (policy.refusal("team-b", "cluster-a") or "")
    assert parse_namespace_policy("").refusal("x", "y") is None
    with pytest.raises(ValueError):
        parse_namespace_policy("team-a")


def test_sidecars_do_not_block_ready_and_are_not_installed():
    """The Go controller's convention: only containers whose image names a jar are bizs."""
    p = pod(container(), {"name": "envoy", "image": "envoyproxy/envoy:v1.30"})
    mods = pod_modules(p, SCHEMES)
    assert [b.name for b in mods.bizs] == ["biz1"] and mods.sidecars == ("envoy",)
    b = biz(BizState.ACTIVATED)
    st = pod_status(p, mods, {b.key: b}, {}, base_ip="1.1.1.1", now_iso=NOW)
    ready = {c["type"]: c["status"] for c in st["conditions"]}["Ready"]
    assert ready == "True" and st["phase"] == "Running"
    envoy = st["containerStatuses"][1]
    assert envoy["ready"] and "running" in envoy["state"]


def test_a_pod_with_no_biz_container_says_so():
    p = pod({"name": "web", "image": "nginx:latest"})
    mods = pod_modules(p, SCHEMES)
    st = pod_status(p, mods, {}, {}, base_ip="1.1.1.1", now_iso=NOW)
    assert st["phase"] == "Pending" and "no biz container" in st["message"]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "False"


@pytest.mark.parametrize(("base", "reason"), [(BaseCondition.UNREACHABLE, "BaseUnreachable"),
                                              (BaseCondition.DEACTIVATED, "BaseDeactivated")])
def test_pods_of_a_base_that_is_not_ready_are_not_ready(base, reason):
    p = pod(container(), phase="Running")
    mods = pod_modules(p, SCHEMES)
    b = biz(BizState.ACTIVATED)
    st = pod_status(p, mods, {b.key: b}, {}, base_ip="1.1.1.1", now_iso=NOW, base=base, base_message="gone")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == reason
    assert st["phase"] == "Running" and not st["containerStatuses"][0]["ready"]
    assert "running" in st["containerStatuses"][0]["state"]  # the biz still runs as far as anyone knows
    p["status"] = st
    back = pod_status(p, mods, {b.key: b}, {}, base_ip="1.1.1.1", now_iso=NOW)
    assert {c["type"]: c["status"] for c in back["conditions"]}["Ready"] == "True"


def test_with_base_not_ready_flips_readiness_of_an_unknown_status():
    from vkprovider.core.podstatus import with_base_not_ready

    current = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
               "containerStatuses": [{"name": "biz1", "ready": True, "state": {"running": {}}}]}
    st = with_base_not_ready(current, BaseCondition.UNREACHABLE, "base silent", NOW)
    assert st is not None and st["containerStatuses"][0]["ready"] is False
    assert {c["type"]: c["reason"] for c in st["conditions"]}["Ready"] == "BaseUnreachable"
    assert with_base_not_ready(st, BaseCondition.UNREACHABLE, "base silent", NOW) is None
    assert with_base_not_ready(current, BaseCondition.READY, "", NOW) is None


def test_failed_installs_and_lost_bizs_count_as_restarts():
    """restartCount as kubelet counts it: every retry after a failed start, and every reinstall of a biz that
    ran and was lost (a base restart). Counted on transitions of the shown status, so a restart keeps it."""
    p = pod(container())
    mods = pod_modules(p, SCHEMES)
    key = mods.bizs[0].key
    first = OpFacts(OpState.INSTALL_FAILED, "jar not found", attempts=1, failed_at_ms=1_700_000_000_000)
    st = pod_status(p, mods, {}, {key: first}, base_ip="1.1.1.1", now_iso=NOW)
    cs = st["containerStatuses"][0]
    assert cs["restartCount"] == 0 and cs["state"]["waiting"]["reason"] == "BizInstallFailed"
    assert cs["lastState"]["terminated"]["reason"] == "BizInstallFailed"
    assert cs["lastState"]["terminated"]["finishedAt"] == "2023-11-14T22:13:20Z"
    p["status"] = st
    second = OpFacts(OpState.INSTALL_FAILED, "jar not found", attempts=2, failed_at_ms=1_700_000_010_000)
    st = pod_status(p, mods, {}, {key: second}, base_ip="1.1.1.1", now_iso=NOW)
    assert st["containerStatuses"][0]["restartCount"] == 1
    p["status"] = st
    assert pod_status(p, mods, {}, {key: second}, base_ip="1.1.1.1", now_iso=NOW)["containerStatuses"][0][
        "restartCount"] == 1  # the same failure shown again is not another restart
    b = biz(BizState.ACTIVATED)
    p["status"] = pod_status(p, mods, {b.key: b}, {}, base_ip="1.1.1.1", now_iso=NOW)
    lost = pod_status(p, mods, {}, {}, base_ip="1.1.1.1", now_iso=NOW)  # the base restarted without it
    assert lost["containerStatuses"][0]["restartCount"] == 2
    # Lost and installed again before the "waiting" status was written: the new start time says so.
    again = biz(BizState.ACTIVATED)
    again = BizInfo("biz1", "0.0.1", BizState.ACTIVATED, (BizStateRecord(1_700_000_999_000, BizState.ACTIVATED),))
    assert pod_status(p, mods, {again.key: again}, {}, base_ip="1.1.1.1", now_iso=NOW)["containerStatuses"][0][
        "restartCount"] == 2


def test_image_and_image_id_report_what_runs():
    p = pod(container(image="http://h/biz1-new.jar"))
    mods = pod_modules(p, SCHEMES)
    b = biz(BizState.ACTIVATED)
    op = OpFacts(OpState.IDLE, installed_url="http://h/biz1-old.jar")
    cs = pod_status(p, mods, {b.key: b}, {b.key: op}, base_ip="1.1.1.1", now_iso=NOW)["containerStatuses"][0]
    assert cs["image"] == cs["imageID"] == "http://h/biz1-old.jar"
    cs = pod_status(p, mods, {}, {}, base_ip="1.1.1.1", now_iso=NOW)["containerStatuses"][0]
    assert cs["image"] == "http://h/biz1-new.jar" and cs["imageID"] == ""


def test_started_at_without_an_activated_record_is_kept_not_renewed():
    p = pod(container())
    mods = pod_modules(p, SCHEMES)
    b = BizInfo("biz1", "0.0.1", BizState.ACTIVATED)  # a base that sends no state records
    first = pod_status(p, mods, {b.key: b}, {}, base_ip="1.1.1.1", now_iso=NOW)
    p["status"] = first
    later = pod_status(p, mods, {b.key: b}, {}, base_ip="1.1.1.1", now_iso="2026-01-01T01:00:00Z")
    assert later["containerStatuses"][0]["state"]["running"]["startedAt"] == NOW
    assert not status_changed(later, first)


def test_finished_container_keeps_its_state():
    p = pod(container(), phase="Running")
    mods = pod_modules(p, SCHEMES)
    shown = {"terminated": {"exitCode": 0, "reason": "BizDeactivate", "message": "biz biz1:0.0.1 was deactivated",
                            "finishedAt": "2026-01-01T00:00:00Z"}}
    st = pod_status(p, mods, {}, {}, base_ip="1.1.1.1", now_iso="2026-02-02T00:00:00Z",
                    finished={"biz1": shown})
    assert st["containerStatuses"][0]["state"] == shown and st["phase"] == "Failed"
    st = pod_status(p, mods, {}, {}, base_ip="1.1.1.1", now_iso=NOW, finished={"biz1": shown},
                    replaced_in_rollout=frozenset({"biz1"}))
    assert st["phase"] == "Running" and st["reason"] == "BizDeactivate"


def test_not_a_module_pod_gets_one_condition_once():
    from vkprovider.core.podstatus import not_a_module_condition

    p = {"metadata": {"name": "ds-x"}, "status": {"phase": "Pending"}}
    patch = not_a_module_condition(p, NOW)
    assert patch is not None and patch["conditions"][0]["reason"] == "NotAModule"
    assert "phase" not in patch  # not Failed: its controller would recreate it forever
    p["status"]["conditions"] = patch["conditions"]
    assert not_a_module_condition(p, NOW) is None


def test_running_pod_stays_running_when_its_base_lost_the_biz():
    p = pod(container(), phase="Running")
    st = pod_status(p, pod_modules(p, SCHEMES), {}, {}, base_ip="1.1.1.1", now_iso=NOW)
    assert st["phase"] == "Running"
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "False"


def test_status_change_detection_ignores_times_only():
    p = pod(container())
    mods = pod_modules(p, SCHEMES)
    b = biz(BizState.ACTIVATED)
    first = pod_status(p, mods, {b.key: b}, {}, base_ip="1.1.1.1", now_iso=NOW)
    assert status_changed(first, p["status"])
    p["status"] = first
    again = pod_status(p, mods, {b.key: b}, {}, base_ip="1.1.1.1", now_iso="2026-01-01T00:05:00Z")
    assert not status_changed(again, p["status"])
    assert again["conditions"] == first["conditions"]


def test_pod_scheduled_condition_is_not_in_the_patch():
    p = pod(container())
    st = pod_status(p, pod_modules(p, SCHEMES), {}, {}, base_ip="1.1.1.1", now_iso=NOW)
    assert "PodScheduled" not in {c["type"] for c in st["conditions"]}  # strategic merge keeps it


def test_pod_replaced_by_its_own_rollout_stays_running_not_ready():
    p = pod(container(), phase="Running")
    mods = pod_modules(p, SCHEMES)
    bizs = [biz(BizState.DEACTIVATED, reason="Switched"), biz(BizState.ACTIVATED, "0.0.2")]
    st = pod_status(p, mods, {b.key: b for b in bizs}, {}, base_ip="1.1.1.1", now_iso=NOW,
                    replaced_in_rollout=frozenset({"biz1"}))
    assert st["phase"] == "Running" and st["reason"] == "BizDeactivate"
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "False"


def test_workload_of_joins_the_replicasets_of_one_deployment():
    from vkprovider.core.module import workload_of

    def owned(kind, name, template_hash=None):
        labels = {"pod-template-hash": template_hash} if template_hash else {}
        return {"metadata": {"namespace": "ns", "labels": labels,
                             "ownerReferences": [{"kind": kind, "name": name, "controller": True}]}}

    assert workload_of(owned("ReplicaSet", "web-abc", "abc")) == workload_of(owned("ReplicaSet", "web-def", "def"))
    assert workload_of(owned("ReplicaSet", "web-abc", "abc")) == "ns/Deployment/web"
    assert workload_of(owned("DaemonSet", "ds")) == "ns/DaemonSet/ds"
    assert workload_of({"metadata": {"namespace": "ns"}}) is None


def strategic_merge_status(current: dict, patch: dict) -> dict:
    """What the apiserver stores for a strategic-merge patch of pod status (conditions by type, containers by
    name, nulls delete) and then with empty/None fields dropped (omitempty)."""
    def merge(cur, pat):
        if isinstance(pat, dict) and isinstance(cur, dict):
            out = dict(cur)
            for k, v in pat.items():
                if v is None:
                    out.pop(k, None)
                elif k in ("conditions", "containerStatuses"):
                    key = "type" if k == "conditions" else "name"
                    have = {item[key]: item for item in cur.get(k) or []}
                    out[k] = [merge(have.get(item[key], {}), item) for item in v]
                else:
                    out[k] = merge(cur.get(k), v)
            return out
        return pat
    return json.loads(json.dumps(merge(current, patch)))


def test_a_written_status_reads_back_as_unchanged_and_drops_stale_reasons():
    """Pending (reason ContainersNotReady, waiting) -> Running: the stored status keeps neither, and the next
    reconcile sees no change (it used to rewrite every running pod on every biz query)."""
    p = pod(container())
    mods = pod_modules(p, SCHEMES)
    pending = pod_status(p, mods, {}, {}, base_ip="1.1.1.1", now_iso=NOW)
    p["status"] = strategic_merge_status(p.get("status") or {}, status_patch(pending))
    b = biz(BizState.ACTIVATED)
    running = pod_status(p, mods, {b.key: b}, {}, base_ip="1.1.1.1", now_iso=NOW)
    assert status_changed(running, p["status"])
    p["status"] = strategic_merge_status(p["status"], status_patch(running))
    ready = {c["type"]: c for c in p["status"]["conditions"]}["Ready"]
    assert ready["status"] == "True" and "reason" not in ready
    assert set(p["status"]["containerStatuses"][0]["state"]) == {"running"}
    again = pod_status(p, mods, {b.key: b}, {}, base_ip="1.1.1.1", now_iso="2026-01-01T00:05:00Z")
    assert not status_changed(again, p["status"])


def test_times_in_milliseconds_show_as_rfc3339_seconds_in_utc() -> None:
    from vkprovider.core.podstatus import ms_to_iso

    assert ms_to_iso(0) == "1970-01-01T00:00:00Z"
    assert ms_to_iso(1_700_000_000_999) == "2023-11-14T22:13:20Z"  # truncated to the second, never rounded up
    assert ms_to_iso(1_700_000_001_000) == "2023-11-14T22:13:21Z"


@pytest.mark.parametrize(("value", "strategy"), [
    (None, "auto"), ("auto", "auto"), ("installOnly", "installOnly"),
    (" uninstallThenInstall ", "uninstallThenInstall"),
])
def test_a_workload_chooses_its_install_strategy_by_annotation(value, strategy):
    from vkprovider.core.module import INSTALL_STRATEGY_ANNOTATION, trim_pod

    p = pod(container())
    if value is not None:
        p["metadata"]["annotations"] = {INSTALL_STRATEGY_ANNOTATION: value, "other": "x"}
    mods = pod_modules(trim_pod(p), SCHEMES)  # the cache's trimmed copy keeps the annotation
    assert mods.strategy.value == strategy and len(mods.bizs) == 1 and mods.problems == ()


def test_an_unknown_install_strategy_is_refused_with_a_clear_reason():
    from vkprovider.core.module import INSTALL_STRATEGY_ANNOTATION

    p = pod(container())
    p["metadata"]["annotations"] = {INSTALL_STRATEGY_ANNOTATION: "yolo"}
    mods = pod_modules(p, SCHEMES)
    assert mods.bizs == () and mods.problems[0].reason == "InvalidInstallStrategy"
    assert "'yolo'" in mods.problems[0].message and "installOnly" in mods.problems[0].message
    st = pod_status(p, mods, {}, {}, base_ip="1.1.1.1", now_iso=NOW)
    assert st["containerStatuses"][0]["state"]["waiting"]["reason"] == "InvalidInstallStrategy"
