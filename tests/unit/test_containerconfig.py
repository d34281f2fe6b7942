"""vkprovider/core/containerconfig.py: a module container's args and env, resolved as the kubelet resolves them.

The tables mirror Kubernetes' own: third_party/forked/golang/expansion/expand_test.go (every case of its
doExpansionTest and TestMapReference) and pkg/kubelet/kubelet_pods_test.go TestMakeEnvironmentVariables (the
cases that do not depend on Service links, which a biz does not get), plus the kubelet's error messages.
"""

from __future__ import annotations

import base64
import logging
from fractions import Fraction
from typing import Any

import pytest

from vkprovider.core.containerconfig import (
    CONFIG_ERROR,
    CONFIG_MAP,
    SECRET,
    ConfigError,
    FieldRefError,
    Lookups,
    Ref,
    RefError,
    Resolved,
    config_map_data,
    container_references,
    expand,
    field_ref_value,
    parse_quantity,
    pod_references,
    resolve,
    secret_data,
)
from vkprovider.core.model import BizSpec
from vkprovider.core.module import pod_modules, trim_pod

NS = "team-a"
CONTEXT = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}

# (name, input, expected): expand_test.go's doExpansionTest, case for case
EXPANSION = [
    ("whole string", "$(VAR_A)", "A"),
    ("repeat", "$(VAR_A)-$(VAR_A)", "A-A"),
    ("beginning", "$(VAR_A)-1", "A-1"),
    ("middle", "___$(VAR_B)___", "___B___"),
    ("end", "___$(VAR_C)", "___C"),
    ("compound", "$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
    ("escape & expand", "$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
    ("compound escape", "$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
    ("mixed in escapes", "f000-$$VAR_A", "f000-$VAR_A"),
    ("backslash escape ignored", "foo\\$(VAR_C)bar", "foo\\Cbar"),
    ("backslash escape ignored 2", "foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
    ("lots of backslashes", "foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
    ("nested var references", "$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
    ("nested var references second type", "$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
    ("value is a reference", "$(VAR_REF)", "$(VAR_A)"),
    ("value is a reference x 2", "%%$(VAR_REF)--$(VAR_REF)%%", "%%$(VAR_A)--$(VAR_A)%%"),
    ("empty var", "foo$(VAR_EMPTY)bar", "foobar"),
    ("unterminated expression", "foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
    ("expression without operator", "f00__(VAR_A)__", "f00__(VAR_A)__"),
    ("shell special vars pass through", "$?_boo_$!", "$?_boo_$!"),
    ("bare operators are ignored", "$VAR_A", "$VAR_A"),
    ("undefined vars are passed through", "$(VAR_DNE)", "$(VAR_DNE)"),
    ("multiple (even) operators, var undefined", "$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
    ("multiple (even) operators, var defined", "$$$$$$(VAR_A)", "$$$(VAR_A)"),
    ("multiple (odd) operators, var undefined", "$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
    ("multiple (odd) operators, var defined", "$$$$$$$(VAR_A)", "$$$A"),
    ("missing open expression", "$VAR_A)", "$VAR_A)"),
    ("shell syntax ignored", "${VAR_A}", "${VAR_A}"),
    ("trailing incomplete expression not consumed", "$(VAR_B)_______$(A", "B_______$(A"),
    ("trailing incomplete expression, no content, is not consumed", "$(VAR_C)_______$(", "C_______$("),
    ("operator at end of input string is preserved", "$(VAR_A)foobarzab$", "Afoobarzab$"),
    ("shell escaped incomplete expr", "foo-\\$(VAR_A", "foo-\\$(VAR_A"),
    ("lots of $( in middle", "--$($($($($--", "--$($($($($--"),
    ("lots of $( in beginning", "$($($($($--foo$(", "$($($($($--foo$("),
    ("lots of $( at end", "foo0--$($($($(", "foo0--$($($($("),
    ("escaped operators in variable names are not escaped", "$(foo$$var)", "$(foo$$var)"),
    ("newline not expanded", "\n", "\n"),
    ("non-ASCII around a reference", "é$(VAR_A)ü$", "éAü$"),
    ("empty reference", "$()", "$()"),
]


@pytest.mark.parametrize(("name", "text", "expected"), EXPANSION, ids=[c[0] for c in EXPANSION])
def test_expansion_is_kubernetes_expansion(name: str, text: str, expected: str) -> None:
    assert expand(text, CONTEXT) == expected


def test_a_value_sees_the_variables_defined_before_it() -> None:
    """expand_test.go TestMapReference: each value expands with the ones declared so far."""
    declared: dict[str, str] = {}
    for name, value in [("FOO", "bar"), ("ZOO", "$(FOO)-1"), ("BLU", "$(ZOO)-2")]:
        declared[name] = expand(value, declared)
    assert declared == {"FOO": "bar", "ZOO": "bar-1", "BLU": "bar-1-2"}


# --- resolve ---------------------------------------------------------------------------------------------------


def pod(*containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "dapi-test-pod-name", "namespace": NS, "uid": "0f3a-uid",
                     "labels": {"app": "biz1", "version": "0.0.7"},
                     "annotations": {"team": "payments", "koupleless.io/version": "1.2.3"}},
        "spec": {"nodeName": "vnode.base-a.dev", "serviceAccountName": "special",
                 "containers": list(containers), **spec},
    }


def biz(**fields: Any) -> dict[str, Any]:
    return {"name": "biz1", "image": "https://repo/biz1.jar", **fields}


def field(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def cm(name: str) -> Ref:
    return Ref(CONFIG_MAP, NS, name)


def secret(name: str) -> Ref:
    return Ref(SECRET, NS, name)


OBJECTS: dict[Ref, Any] = {
    cm("app-config"): {"LOG_LEVEL": "debug", "REGION": "eu", "PORT": "8080"},
    cm("other"): {"REGION": "us", "EXTRA": "x"},
    secret("db"): {"password": "s3cr3t-pw", "user": "admin"},
    cm("missing"): RefError('configmap "missing" not found', not_found=True),
    secret("missing"): RefError('secret "missing" not found', not_found=True),
    cm("forbidden"): RefError('configmaps "forbidden" is forbidden: User "vkprovider" cannot get resource'),
    cm("flaky"): RefError("GET configmaps/flaky: 503 Service Unavailable", transient=True),
}
LOOKUPS = Lookups(OBJECTS, host_ips=("10.0.0.5",), allocatable={"cpu": "4", "memory": "512Mi"})


def env_of(result: Resolved | ConfigError) -> dict[str, str]:
    assert isinstance(result, Resolved), result
    return result.env_map()


# (case, container fields, expected env) - kubelet_pods_test.go TestMakeEnvironmentVariables, without Services
RESOLVED = [
    ("literals", {"env": [{"name": "FOO", "value": "BAR"}, {"name": "EMPTY"}]}, {"FOO": "BAR", "EMPTY": ""}),
    ("downward api pod", {"env": [
        {"name": "POD_NAME", **field("metadata.name")}, {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "POD_NODE_NAME", **field("spec.nodeName")},
        {"name": "POD_SERVICE_ACCOUNT_NAME", **field("spec.serviceAccountName")},
        {"name": "POD_IP", **field("status.podIP")}, {"name": "POD_IPS", **field("status.podIPs")},
        {"name": "HOST_IP", **field("status.hostIP")}, {"name": "HOST_IPS", **field("status.hostIPs")},
        {"name": "POD_UID", **field("metadata.uid")}]},
     {"POD_NAME": "dapi-test-pod-name", "POD_NAMESPACE": NS, "POD_NODE_NAME": "vnode.base-a.dev",
      "POD_SERVICE_ACCOUNT_NAME": "special", "POD_IP": "10.0.0.5", "POD_IPS": "10.0.0.5", "HOST_IP": "10.0.0.5",
      "HOST_IPS": "10.0.0.5", "POD_UID": "0f3a-uid"}),
    ("labels and annotations by key, empty when absent", {"env": [
        {"name": "APP", **field("metadata.labels['app']")}, {"name": "TEAM", **field("metadata.annotations['team']")},
        {"name": "NONE", **field("metadata.labels['nope']")}]},
     {"APP": "biz1", "TEAM": "payments", "NONE": ""}),
    ("env expansion", {"env": [
        {"name": "TEST_LITERAL", "value": "test-test-test"}, {"name": "POD_NAME", **field("metadata.name")},
        {"name": "OUT_OF_ORDER_TEST", "value": "$(OUT_OF_ORDER_TARGET)"},
        {"name": "OUT_OF_ORDER_TARGET", "value": "FOO"}, {"name": "EMPTY_VAR"},
        {"name": "EMPTY_TEST", "value": "foo-$(EMPTY_VAR)"}, {"name": "POD_NAME_TEST2", "value": "test2-$(POD_NAME)"},
        {"name": "POD_NAME_TEST3", "value": "$(POD_NAME_TEST2)-3"},
        {"name": "LITERAL_TEST", "value": "literal-$(TEST_LITERAL)"},
        {"name": "TEST_UNDEFINED", "value": "$(UNDEFINED_VAR)"},
        {"name": "SERVICE_VAR_TEST", "value": "$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"}]},
     {"TEST_LITERAL": "test-test-test", "POD_NAME": "dapi-test-pod-name",
      "OUT_OF_ORDER_TEST": "$(OUT_OF_ORDER_TARGET)", "OUT_OF_ORDER_TARGET": "FOO", "EMPTY_VAR": "",
      "EMPTY_TEST": "foo-", "POD_NAME_TEST2": "test2-dapi-test-pod-name",
      "POD_NAME_TEST3": "test2-dapi-test-pod-name-3", "LITERAL_TEST": "literal-test-test-test",
      "TEST_UNDEFINED": "$(UNDEFINED_VAR)",
      # no Service variables for a biz: the references stay as written
      "SERVICE_VAR_TEST": "$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"}),
    ("configmap keys", {"env": [
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "LOG_LEVEL"}}},
        {"name": "URL", "value": "http://$(LEVEL).example:$(PORT)"}]},
     {"LEVEL": "debug", "URL": "http://debug.example:$(PORT)"}),
    ("configmap envFrom with a prefix; env overrides envFrom; later envFrom wins",
     {"envFrom": [{"configMapRef": {"name": "app-config"}, "prefix": "p_"}, {"configMapRef": {"name": "app-config"}},
                  {"configMapRef": {"name": "other"}}],
      "env": [{"name": "EXTRA", "value": "from-env"}, {"name": "ECHO", "value": "$(p_REGION)/$(REGION)"}]},
     {"p_LOG_LEVEL": "debug", "p_REGION": "eu", "p_PORT": "8080", "LOG_LEVEL": "debug", "REGION": "us",
      "PORT": "8080", "EXTRA": "from-env", "ECHO": "eu/us"}),
    ("secret keys and envFrom", {
        "envFrom": [{"secretRef": {"name": "db"}, "prefix": "DB_"}],
        "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "DSN", "value": "$(DB_user):$(PW)@db"}]},
     {"DB_password": "s3cr3t-pw", "DB_user": "admin", "PW": "s3cr3t-pw", "DSN": "admin:s3cr3t-pw@db"}),
    ("optional references that are missing are skipped", {
        "envFrom": [{"configMapRef": {"name": "missing", "optional": True}},
                    {"secretRef": {"name": "missing", "optional": True}}],
        "env": [{"name": "A", "value": "kept"},
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "x", "optional": True}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "nope",
                                                                 "optional": True}}},
                {"name": "C", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nope", "optional": True}}}]},
     {"A": "kept"}),
    ("a literal value wins over valueFrom", {"env": [
        {"name": "X", "value": "lit", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k"}}}]},
     {"X": "lit"}),
    ("resources: limits, requests, divisors, rounded up", {
        "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}, "requests": {"cpu": "250m", "memory": "100M"}},
        "env": [{"name": "LCPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "LCPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                {"name": "LMEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                                        "divisor": "1Mi"}}},
                {"name": "RCPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
                {"name": "RMEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory",
                                                                        "divisor": "1Mi"}}},
                {"name": "RSTORE", "valueFrom": {"resourceFieldRef": {"resource": "requests.ephemeral-storage"}}}]},
     {"LCPU": "2", "LCPU_M": "1500", "LMEM_MI": "1024", "RCPU": "1", "RMEM_MI": "96", "RSTORE": "0"}),
    ("unset limits are the vnode's allocatable; without one, 0", {
        "env": [{"name": "LCPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "LMEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "LSTORE", "valueFrom": {"resourceFieldRef": {"resource": "limits.ephemeral-storage"}}},
                {"name": "RCPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}}]},
     {"LCPU": "4", "LMEM": "512", "LSTORE": "0", "RCPU": "0"}),
]


@pytest.mark.parametrize(("case", "fields", "expected"), RESOLVED, ids=[c[0] for c in RESOLVED])
def test_env_is_resolved_as_the_kubelet_does(case: str, fields: dict[str, Any], expected: dict[str, str]) -> None:
    container = biz(**fields)
    assert env_of(resolve(pod(container), container, LOOKUPS)) == expected


def test_the_env_keeps_its_declaration_order() -> None:
    container = biz(envFrom=[{"configMapRef": {"name": "other"}}], env=[{"name": "Z", "value": "1"},
                                                                        {"name": "A", "value": "2"}])
    result = resolve(pod(container), container, LOOKUPS)
    assert isinstance(result, Resolved)
    assert [name for name, _ in result.envs] == ["REGION", "EXTRA", "Z", "A"]


def test_args_are_expanded_with_the_final_environment() -> None:
    container = biz(env=[{"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "app-config",
                                                                              "key": "LOG_LEVEL"}}},
                         {"name": "POD", **field("metadata.name")}],
                    args=["--logging.level.root=$(LEVEL)", "--pod=$(POD)", "$$(LEVEL)", "$(NOPE)", "plain"],
                    command=["ignored"])
    result = resolve(pod(container), container, LOOKUPS)
    assert isinstance(result, Resolved)
    assert result.args == ("--logging.level.root=debug", "--pod=dapi-test-pod-name", "$(LEVEL)", "$(NOPE)", "plain")


def test_a_resource_of_another_container_is_read_by_name() -> None:
    sidecar = {"name": "side", "image": "busybox", "resources": {"limits": {"memory": "64Mi"}}}
    container = biz(env=[{"name": "SIDE_MEM", "valueFrom": {"resourceFieldRef": {
        "containerName": "side", "resource": "limits.memory", "divisor": "1Mi"}}}])
    assert env_of(resolve(pod(container, sidecar), container, LOOKUPS)) == {"SIDE_MEM": "64"}


# (case, container fields, expected message, waiting_for, transient)
FAILURES = [
    ("configmap not found", {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k"}}}]},
     'configmap "missing" not found', {cm("missing")}, False),
    ("configmap key not found", {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "app-config",
                                                                                         "key": "k"}}}]},
     f"couldn't find key k in ConfigMap {NS}/app-config", {cm("app-config")}, False),
    ("secret not found", {"envFrom": [{"secretRef": {"name": "missing"}}]},
     'secret "missing" not found', {secret("missing")}, False),
    ("secret key not found", {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "token"}}}]},
     f"couldn't find key token in Secret {NS}/db", {secret("db")}, False),
    ("an optional reference that cannot be read is still an error (only not-found is skipped)",
     {"envFrom": [{"configMapRef": {"name": "forbidden", "optional": True}}]},
     'configmaps "forbidden" is forbidden: User "vkprovider" cannot get resource', {cm("forbidden")}, False),
    ("an API failure", {"envFrom": [{"configMapRef": {"name": "flaky"}}]},
     "GET configmaps/flaky: 503 Service Unavailable", {cm("flaky")}, True),
    ("a reference nobody looked up", {"envFrom": [{"configMapRef": {"name": "unread"}}]},
     "configmap 'unread' was not looked up", {cm("unread")}, True),
    ("envFrom is checked before env (the kubelet's order)",
     {"envFrom": [{"secretRef": {"name": "missing"}}],
      "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k"}}}]},
     'secret "missing" not found', {secret("missing")}, False),
    ("a field the kubelet does not know", {"env": [{"name": "X", **field("spec.nope")}]},
     "field label not supported: spec.nope", set(), False),
    ("a field the kubelet converts but cannot extract", {"env": [{"name": "X", **field("status.phase")}]},
     "unsupported fieldPath: status.phase", set(), False),
    ("a subscript on a field without one", {"env": [{"name": "X", **field("metadata.name['x']")}]},
     "field label does not support subscript: metadata.name['x']", set(), False),
    ("another API version", {"env": [{"name": "X", "valueFrom": {"fieldRef": {"apiVersion": "v2",
                                                                              "fieldPath": "metadata.name"}}}]},
     "unsupported pod version: v2", set(), False),
    ("an unknown resource", {"env": [{"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}}]},
     "unsupported container resource : limits.gpu", set(), False),
    ("another container that does not exist",
     {"env": [{"name": "X", "valueFrom": {"resourceFieldRef": {"containerName": "ghost", "resource": "limits.cpu"}}}]},
     "container ghost not found", set(), False),
]


@pytest.mark.parametrize(("case", "fields", "message", "waiting", "transient"), FAILURES, ids=[c[0] for c in FAILURES])
def test_a_missing_reference_is_the_kubelets_create_container_config_error(
        case: str, fields: dict[str, Any], message: str, waiting: set[Ref], transient: bool) -> None:
    container = biz(**fields)
    result = resolve(pod(container), container, LOOKUPS)
    assert result == ConfigError(message, CONFIG_ERROR, frozenset(waiting), transient)


def test_references_are_every_configmap_and_secret_named() -> None:
    container = biz(envFrom=[{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "s"}, "prefix": "S_"}],
                    env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "b", "key": "k", "optional": True}}},
                         {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}},
                         {"name": "Z", **field("metadata.name")}, {"name": "L", "value": "x"}])
    other = {"name": "side", "image": "x", "env": [{"name": "Q", "valueFrom": {"secretKeyRef": {"name": "u",
                                                                                                  "key": "k"}}}]}
    assert container_references(NS, container) == {cm("a"), secret("s"), cm("b"), secret("t")}
    assert pod_references(pod(container, other)) == {cm("a"), secret("s"), cm("b"), secret("t"), secret("u")}


def test_object_data_is_what_env_can_use() -> None:
    assert config_map_data({"data": {"a": "1"}, "binaryData": {"b": "AA=="}}) == {"a": "1"}
    encoded = {k: base64.b64encode(v).decode() for k, v in {"pw": "é!".encode(), "raw": b"\xff\x00"}.items()}
    assert secret_data({"data": {**encoded, "bad": "%%%"}}) == {"pw": "é!", "raw": "\ufffd\x00", "bad": ""}
    assert secret_data({}) == {} and config_map_data({"data": None}) == {}


@pytest.mark.parametrize(("text", "value"), [
    ("1", Fraction(1)), ("250m", Fraction(1, 4)), ("1.5", Fraction(3, 2)), (".5", Fraction(1, 2)),
    ("1Ki", Fraction(1024)), ("1Mi", Fraction(2**20)), ("2Gi", Fraction(2 * 2**30)), ("100M", Fraction(10**8)),
    ("1e3", Fraction(1000)), ("1E3", Fraction(1000)), ("1E", Fraction(10**18)), ("1Ei", Fraction(2**60)),
    ("5n", Fraction(5, 10**9)), ("-1", Fraction(-1)), ("+2k", Fraction(2000)), ("1.", Fraction(1)),
])
def test_quantities_parse_exactly(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "1Kb", "abc", "1.2.3", "1e", "Mi", "1e99999"])
def test_bad_quantities_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_a_bad_quantity_in_a_pod_is_a_config_error_not_a_crash() -> None:
    container = biz(resources={"limits": {"cpu": "lots"}},
                    env=[{"name": "C", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}])
    result = resolve(pod(container), container, LOOKUPS)
    assert isinstance(result, ConfigError) and "quantities must match" in result.message


def test_whole_label_maps_are_formatted_like_the_downward_api() -> None:
    assert field_ref_value(pod(), {"fieldPath": "metadata.labels"}) == 'app="biz1"\nversion="0.0.7"'
    with pytest.raises(FieldRefError):
        field_ref_value(pod(), {"fieldPath": "metadata.nope"})


def test_garbage_in_a_container_is_no_crash() -> None:
    container: dict[str, Any] = {"name": "biz1", "env": [None, 3, {"name": "A", "value": 7},
                                                         {"name": "B", "valueFrom": "x"},
                                                         {"name": "C", "valueFrom": {"unknownRef": {}}}],
                                 "envFrom": ["x", {"configMapRef": "y"}], "args": [1, None]}
    assert env_of(resolve(pod(container), container, LOOKUPS)) == {"": "", "A": "7", "B": "", "C": ""}


# --- secrets never shown ---------------------------------------------------------------------------------------


def test_secrets_appear_in_no_repr_and_no_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """A BizSpec carrying a Secret, formatted every way vkprovider formats one: the value is nowhere."""
    container = biz(env=[{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
                    args=["--db.password=$(PW)"])
    resolved = resolve(pod(container), container, LOOKUPS)
    assert isinstance(resolved, Resolved)
    spec = BizSpec("biz1", "1.0.0", "https://repo/biz1.jar").with_config(resolved.args, resolved.envs)
    assert spec.envs == (("PW", "s3cr3t-pw"),) and spec.args == ("--db.password=s3cr3t-pw",)
    log = logging.getLogger("vkprovider.test")
    with caplog.at_level(logging.DEBUG):
        log.info("installing %s", spec)
        log.info("installing %r (%s)", spec, resolved)
        log.info("lookups %s", LOOKUPS)
        log.warning("spec %s", [spec, {"spec": spec}])
    shown = " ".join([repr(spec), str(spec), f"{spec}", repr(resolved), str(resolved), repr(LOOKUPS), caplog.text])
    assert "s3cr3t-pw" not in shown and "admin" not in shown
    assert "biz1" in shown and "PW" in shown  # names are shown, values are not
    assert spec.key == BizSpec("biz1", "1.0.0", "https://repo/biz1.jar").key


def test_a_message_quoting_a_secret_is_redacted() -> None:
    container = biz(envFrom=[{"secretRef": {"name": "db"}}], env=[{"name": "SHORT", "value": "on"}])
    resolved = resolve(pod(container), container, LOOKUPS)
    assert isinstance(resolved, Resolved)
    message = "Failed to bind 'db.password' value 's3cr3t-pw' for user admin (on)"
    # every key of the Secret is redacted (envFrom took them all); "on" is no Secret's
    assert resolved.redact(message) == "Failed to bind 'db.password' value '***' for user *** (on)"
    # values shorter than 4 characters are left alone: they would blank half a message
    assert Resolved(secret_values=frozenset({"admin", "x"})).redact("user admin x") == "user *** x"


# --- BIZ_VERSION from a fieldRef, and the cache's trimmed pod ----------------------------------------------------


@pytest.mark.parametrize(("env", "version", "problem"), [
    ({"value": "1.0.0"}, "1.0.0", None),
    (field("metadata.labels['version']"), "0.0.7", None),
    (field("metadata.annotations['koupleless.io/version']"), "1.2.3", None),
    (field("metadata.labels['nope']"), None, "env BIZ_VERSION is empty (fieldRef metadata.labels['nope'])"),
    (field("status.podIP"), None, "BIZ_VERSION cannot come from fieldRef 'status.podIP': it is not a field of the pod"),
    ({"valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "V"}}}, None,
     "BIZ_VERSION must be a literal value or a fieldRef (a pod label or annotation); configMapKeyRef, "
     "secretKeyRef and resourceFieldRef are not supported"),
    ({"valueFrom": {"fieldRef": {"apiVersion": "v9", "fieldPath": "metadata.name"}}}, None,
     "BIZ_VERSION: unsupported pod version: v9"),
])
def test_biz_version_may_come_from_a_label_or_annotation(env: dict[str, Any], version: str | None,
                                                         problem: str | None) -> None:
    p = pod(biz(env=[{"name": "BIZ_VERSION", **env}]))
    for candidate in (p, trim_pod(p)):  # the informer cache keeps what the fieldRef reads
        mods = pod_modules(candidate, frozenset({"https"}))
        assert [b.version for b in mods.bizs] == ([version] if version else [])
        assert [pr.message for pr in mods.problems] == ([problem] if problem else [])
        assert all(pr.reason == "MissingBizVersion" for pr in mods.problems)


def test_the_trimmed_pod_resolves_as_the_whole_one() -> None:
    container = biz(
        args=["--x=$(A)"], resources={"limits": {"cpu": "2"}, "requests": {"memory": "1Gi"}},
        envFrom=[{"configMapRef": {"name": "app-config"}, "prefix": "C_"}],
        env=[{"name": "A", **field("metadata.annotations['team']")}, {"name": "B", **field("spec.serviceAccountName")},
             {"name": "C", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
             {"name": "D", "valueFrom": {"resourceFieldRef": {"containerName": "init", "resource": "limits.memory"}}},
             {"name": "BIZ_VERSION", "value": "1.0.0"}])
    whole = pod(container, {"name": "side", "image": "x", "resources": {"limits": {"cpu": "9"}}},
                initContainers=[{"name": "init", "image": "y", "resources": {"limits": {"memory": "32Mi"}}}])
    whole["metadata"]["annotations"]["unrelated"] = "big" * 100
    trimmed = trim_pod(whole)
    assert resolve(trimmed, trimmed["spec"]["containers"][0], LOOKUPS) == resolve(whole, container, LOOKUPS)
    assert env_of(resolve(trimmed, trimmed["spec"]["containers"][0], LOOKUPS))["D"] == str(32 * 2**20)
    assert "unrelated" not in trimmed["metadata"]["annotations"]
    assert "resources" not in trimmed["spec"]["containers"][1]  # nothing reads the sidecar's


def test_lookups_show_object_names_never_data() -> None:
    shown = repr(LOOKUPS)
    assert "ConfigMap team-a/app-config" in shown and "Secret team-a/db" in shown
    assert "s3cr3t-pw" not in shown and "debug" not in shown
