"""The Helm chart (charts/vkprovider): linted, rendered, validated, dry-run on and installed into a real apiserver.

Two renderings are checked throughout: the default values and tests/chart/all-options.yaml (every documented
option set). Each is validated by kubeconform in strict mode against schemas made from the local control plane's
own OpenAPI document (tests/chart/openapi_schemas.py; nothing can be downloaded here), except the two Prometheus
Operator kinds, ServiceMonitor and PrometheusRule, which are skipped explicitly (`-skip`): their CRDs are not in
the control plane, so there is no schema for them and the server dry-run leaves them out too. helm and
kubeconform come from hack/chart/tools.sh (`make chart-tools`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.openapi_schemas import write_schemas
from tests.conftest import KubeCluster
from vkprovider import __version__

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "vkprovider"
ALL_OPTIONS = Path(__file__).resolve().parent / "all-options.yaml"
RBAC_RULES = CHART / "files" / "rbac-rules.yaml"
CRD_KINDS = ("ServiceMonitor", "PrometheusRule")
VARIANTS = {"default": [], "all-options": ["-f", str(ALL_OPTIONS)]}
DEFAULT_KINDS = ["ClusterRole", "ClusterRoleBinding", "Deployment", "FlowSchema", "FlowSchema", "Pod",
                 "PodDisruptionBudget",
                 "PriorityLevelConfiguration", "Service", "ServiceAccount"]


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    proc = subprocess.run([str(REPO / "hack" / "chart" / "tools.sh")], capture_output=True, text=True,
                          timeout=1800, check=False)
    if proc.returncode != 0:
        pytest.fail(f"installing helm / kubeconform failed (hack/chart/tools.sh):\n{proc.stderr[-3000:]}",
                    pytrace=False)
    return dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())


def helm(tools: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([tools["helm"], *args], capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def render(tools: dict[str, str], *args: str, release: str = "vkp",
           namespace: str = "vkp-chart") -> list[dict[str, Any]]:
    out = helm(tools, "template", release, str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s rendered"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    (ctr,) = spec["containers"]
    return dict(ctr)


def env_of(ctr: dict[str, Any]) -> dict[str, Any]:
    names = [e["name"] for e in ctr["env"]]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in ctr["env"]}


# ------------------------------------------------------------------------------------------ metadata, lint


def test_chart_versions_are_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == __version__ and chart["appVersion"] == __version__


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(tools: dict[str, str], variant: str) -> None:
    proc = helm(tools, "lint", "--strict", str(CHART), *VARIANTS[variant])
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout, proc.stdout


def test_rendered_objects(tools: dict[str, str]) -> None:
    assert sorted(d["kind"] for d in render(tools)) == DEFAULT_KINDS
    assert sorted(d["kind"] for d in render(tools, *VARIANTS["all-options"])) == sorted(
        [*DEFAULT_KINDS, *CRD_KINDS, "ConfigMap"])
    single = render(tools, "--set", "replicaCount=1")
    assert "PodDisruptionBudget" not in {d["kind"] for d in single}, "no PDB with one replica"
    minimal = render(tools, "--set",
                     "rbac.create=false,serviceAccount.create=false,test.enabled=false,flowControl.enabled=false")
    assert sorted(d["kind"] for d in minimal) == ["Deployment", "PodDisruptionBudget", "Service"]
    assert one(minimal, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "default"


# --------------------------------------------------------------------------------------------------- RBAC


def rbac_file_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RBAC_RULES.read_text())
    assert isinstance(rules, list) and rules
    return rules


@pytest.mark.parametrize("variant", VARIANTS)
def test_clusterrole_is_exactly_the_rbac_rules_file(tools: dict[str, str], variant: str) -> None:
    docs = render(tools, *VARIANTS[variant])
    role = one(docs, "ClusterRole")
    assert role["rules"] == rbac_file_rules()
    binding = one(docs, "ClusterRoleBinding")
    sa = one(docs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "vkp-chart"}]
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_the_test_control_plane_binds_the_same_rules() -> None:
    """hack/controlplane/localcluster.py makes the tests' vkprovider identity's ClusterRole from the same file."""
    sys.path.insert(0, str(REPO / "hack" / "controlplane"))
    try:
        import localcluster
    finally:
        sys.path.pop(0)
    assert Path(localcluster.RBAC_RULES).resolve() == RBAC_RULES.resolve()
    docs = [d for d in yaml.safe_load_all(localcluster.rbac_manifest()) if d]
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert role["rules"] == rbac_file_rules()


# --------------------------------------------------------------------------------- the rendered Deployment


def test_defaults(tools: dict[str, str]) -> None:
    docs = render(tools)
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    ctr = container(docs)
    env = env_of(ctr)
    assert env["CLIENT_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}, "each replica: its pod name"
    assert env["NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["VKP_KUBELET_ADDRESS"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["VKP_LOG_FORMAT"] == "json"
    assert env["VKP_ALLOW_UNAUTHENTICATED_BASES"] == "false"
    assert env["ENABLE_HTTP_TUNNEL"] == "true" and env["ENABLE_MQTT_TUNNEL"] == "false"
    assert env["ENV"] == "dev"
    assert ctr["image"] == f"vkprovider:{__version__}", "the tag defaults to the chart's appVersion"
    assert ctr["args"] == ["run"] and "command" not in ctr, "the image's ENTRYPOINT runs"
    sc = ctr["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == 65532 and pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in ctr["volumeMounts"], "the one writable place"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"selector": dep["spec"]["selector"], "maxUnavailable": 1}
    svc = one(docs, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    test_pod = one(docs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert not set(svc["spec"]["selector"].items()) <= set(test_pod["metadata"]["labels"].items()), \
        "the Service must not select the test Pod"
    assert test_pod["spec"]["containers"][0]["image"] == ctr["image"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_port_is_one_value(tools: dict[str, str], variant: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if variant == "all-options":
        values = {**values, **yaml.safe_load(ALL_OPTIONS.read_text())}
    ports = values["ports"]
    docs = render(tools, *VARIANTS[variant])
    ctr = container(docs)
    env = env_of(ctr)
    by_name = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert by_name == ports
    assert (env["HTTP_TUNNEL_LISTEN_PORT"], env["VKP_METRICS_PORT"], env["VKP_PROBE_PORT"],
            env["KUBELET_PROXY_PORT"]) == tuple(str(ports[k]) for k in ("heartbeat", "metrics", "probes", "kubelet"))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert ctr[probe]["httpGet"]["port"] == "probes"
    svc = {p["name"]: (p["port"], p["targetPort"]) for p in one(docs, "Service")["spec"]["ports"]}
    assert svc == {"heartbeat": (ports["heartbeat"], "heartbeat"), "metrics": (ports["metrics"], "metrics"),
                   "probes": (ports["probes"], "probes")}
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    args = one(docs, "Pod")["spec"]["containers"][0]["args"][0]
    assert f':{ports["probes"]}/readyz' in args and f':{ports["metrics"]}/metrics' in args
    if variant == "all-options":
        monitor = one(docs, "ServiceMonitor")
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        assert monitor["spec"]["selector"]["matchLabels"] == one(docs, "Service")["spec"]["selector"]


def test_all_options(tools: dict[str, str]) -> None:
    docs = render(tools, *VARIANTS["all-options"], release="all", namespace="vkp")
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    ctr = container(docs)
    env = env_of(ctr)
    assert dep["metadata"]["name"] == "vkp-all" and dep["spec"]["replicas"] == 3
    assert ctr["image"] == "registry.example.com/koupleless/vkprovider@sha256:" + "0123456789abcdef" * 4
    assert ctr["imagePullPolicy"] == "Always"
    # secrets are mounted as files and passed by path; the MQTT password by secretKeyRef
    assert env["MQTT_PASSWORD"] == {"secretKeyRef": {"name": "mqtt-password", "key": "password"}}
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def secret_file(path: str) -> tuple[str, str]:
        directory, key = path.rsplit("/", 1)
        volume = volumes[mounts[directory]]["secret"]
        assert key in [i["path"] for i in volume["items"]]
        return volume["secretName"], key

    assert secret_file(env["MQTT_CA_PATH"]) == ("mqtt-ca", "ca.crt")
    assert secret_file(env["MQTT_CLIENT_CRT_PATH"]) == ("mqtt-client", "tls.crt")
    assert secret_file(env["MQTT_CLIENT_KEY_PATH"]) == ("mqtt-client", "tls.key")
    assert secret_file(env["VKP_HEARTBEAT_SECRET_FILE"]) == ("vkprovider-heartbeat", "secret")
    assert (env["ENABLE_MQTT_TUNNEL"], env["MQTT_BROKER"], env["MQTT_PORT"], env["MQTT_USERNAME"]) == (
        "true", "mqtt.example.com", "8883", "vkprovider")
    assert env["ENV"] == "prod" and env["VNODE_WORKER_NUM"] == "16" and env["VKP_ORPHAN_GRACE"] == "60"
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["VKP_LOG_FORMAT"] == "text" and env["VKP_LOG_LEVEL"] == "DEBUG"
    assert ctr["envFrom"] == [{"configMapRef": {"name": "vkprovider-extra", "optional": True}}]
    assert pod["priorityClassName"] == "system-cluster-critical" and pod["nodeSelector"]
    assert pod["tolerations"][0]["key"] == "dedicated" and set(pod["affinity"]) == {"nodeAffinity",
                                                                                     "podAntiAffinity"}
    spread = pod["topologySpreadConstraints"]
    assert spread[0]["labelSelector"] == dep["spec"]["selector"], "a constraint without selector gets the chart's"
    assert spread[1]["labelSelector"] == {"matchLabels": {"app.kubernetes.io/instance": "all"}}
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert one(docs, "ServiceMonitor")["metadata"]["namespace"] == "monitoring"
    assert one(docs, "PrometheusRule")["spec"]["groups"] == yaml.safe_load(
        (CHART / "files" / "alerts.yaml").read_text())["groups"], "the rules file, rendered as it is"
    assert one(docs, "ConfigMap")["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert one(docs, "Pod")["spec"]["containers"][0]["image"] == "registry.example.com/koupleless/vkprovider-test:0.1.0"
    svc = one(docs, "Service")["spec"]
    assert svc["type"] == "LoadBalancer" and svc["externalTrafficPolicy"] == "Local"


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
    (["--set", "replicaCount=two"], "replicaCount"),
    (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "logFormat=xml"], "logFormat"),
    (["--set", "ports.metrics=70000"], "ports"),
    (["--set", "env.HTTP_TUNNEL_LISTEN_PORT=1234"], "env.HTTP_TUNNEL_LISTEN_PORT is set by the chart"),
    (["--set", "mqtt.enabled=true"], "mqtt.enabled needs mqtt.broker"),
    (["--set", "http.enabled=false"], "no tunnel enabled"),
    (["--set", "mqtt.enabled=true,mqtt.broker=b,mqtt.passwordSecret.name=p"], "without TLS"),
    (["--set", "ports.metrics=8081"], "must differ"),
])
def test_wrong_values_fail_with_a_message(tools: dict[str, str], args: list[str], message: str) -> None:
    proc = helm(tools, "template", "vkp", str(CHART), *args, check=False)
    assert proc.returncode != 0, f"helm template {args} was accepted"
    assert message in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------ schema and README


def schema_leaves(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if sub.get("type") == "object" and sub.get("additionalProperties") is False:
            yield from schema_leaves(sub, path + ".")
        else:
            yield path


def value_leaves(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and sub.get("additionalProperties") is False:
            yield from value_leaves(value, sub, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_value_has_a_schema_a_default_and_a_readme_row() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    in_schema = set(schema_leaves(schema)) - {"global"}
    in_values = set(value_leaves(values, schema))
    optional = {"podDisruptionBudget.minAvailable"}  # documented, off by default (maxUnavailable is used)
    assert in_values == in_schema - optional
    readme = (CHART / "README.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    assert rows == in_schema, f"README rows missing: {sorted(in_schema - rows)}, extra: {sorted(rows - in_schema)}"


# ------------------------------------------------------------------- kubeconform, dry-run, a real install


@pytest.fixture(scope="session")
def k8s_schemas(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Strict JSON schemas of every kind the test control plane serves, from its /openapi/v2."""
    raw = kube_cluster.kubectl("get", "--raw", "/openapi/v2", timeout=120).stdout
    out = tmp_path_factory.mktemp("k8s-schemas")
    assert len(write_schemas(json.loads(raw), out)) > 50
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_kubeconform_strict(tools: dict[str, str], k8s_schemas: Path, tmp_path: Path, variant: str) -> None:
    manifest = tmp_path / f"{variant}.yaml"
    manifest.write_text(helm(tools, "template", "vkp", str(CHART), "--namespace", "vkp-chart",
                             *VARIANTS[variant]).stdout)
    rendered = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    cmd = [tools["kubeconform"], "-strict", "-summary", "-output", "json",
           "-schema-location", str(k8s_schemas) + "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
           "-skip", ",".join(CRD_KINDS), str(manifest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    skipped = sum(d["kind"] in CRD_KINDS for d in rendered)
    assert summary == {"valid": len(rendered) - skipped, "invalid": 0, "errors": 0, "skipped": skipped}

    # The schemas bite: an unknown field and a wrongly typed port are refused.
    bad = manifest.read_text().replace("revisionHistoryLimit:", "bogusField: 1\n  revisionHistoryLimit:", 1)
    manifest.write_text(bad)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "bogusField" in proc.stdout, proc.stdout


def namespaced(kube_cluster: KubeCluster, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", name)
    return name


@pytest.mark.parametrize("variant", VARIANTS)
def test_server_side_dry_run(tools: dict[str, str], kube_cluster: KubeCluster, variant: str) -> None:
    ns = namespaced(kube_cluster, "chart-dry")
    try:
        docs = [d for d in render(tools, *VARIANTS[variant], namespace=ns) if d["kind"] not in CRD_KINDS]
        stream = yaml.safe_dump_all(docs)
        proc = kube_cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=stream)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert len(lines) == len(docs) and all(line.endswith("(server dry run)") for line in lines), proc.stdout
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


async def test_helm_install_for_real(tools: dict[str, str], kube_cluster: KubeCluster, tmp_path: Path) -> None:
    """`helm install` into the control plane; the chart's ServiceAccount then holds exactly the file's rights.

    No kubelet runs here, so the Deployment's pods are created but stay Pending (and `helm test` cannot run its
    Pod): the identity they would run with is checked instead, and vkprovider is run with that very identity.
    """
    suffix = uuid.uuid4().hex[:6]
    ns, release = f"chart-install-{suffix}", f"vkp{suffix}"  # the ClusterRole's name is the release's
    admin = ["--kubeconfig", str(kube_cluster.admin_kubeconfig)]
    install = helm(tools, "install", release, str(CHART), "--namespace", ns, "--create-namespace", *admin)
    try:
        notes = install.stdout
        assert f"http://{release}-vkprovider.{ns}.svc:7777" in notes, notes
        assert "WARNING: no credential is configured" in notes and "vkprovider token <identity>" in notes
        status = json.loads(helm(tools, "status", release, "--namespace", ns, "-o", "json", *admin).stdout)
        assert status["info"]["status"] == "deployed"

        def pods() -> list[dict[str, Any]]:
            out = kube_cluster.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=provider",
                                       "-o", "json").stdout
            return list(json.loads(out)["items"])

        deadline = time.monotonic() + 30
        while len(pods()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        created = pods()
        assert len(created) == 2, "the Deployment's ReplicaSet made the 2 replicas"
        assert {p["spec"]["serviceAccountName"] for p in created} == {f"{release}-vkprovider"}

        # The ServiceAccount's rights, as the apiserver resolves them through the chart's binding.
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                  "spec": {"namespace": ns}}
        sa = f"system:serviceaccount:{ns}:{release}-vkprovider"
        got = json.loads(kube_cluster.kubectl("create", "--validate=false", "-f", "-", "-o", "json", f"--as={sa}",
                                              input=json.dumps(review)).stdout)["status"]["resourceRules"]

        def allowed(group: str, resource: str, verb: str) -> bool:
            return any((group in r.get("apiGroups", []) or "*" in r.get("apiGroups", []))
                       and (resource in r.get("resources", []) or "*" in r.get("resources", []))
                       and (verb in r["verbs"] or "*" in r["verbs"]) for r in got)

        for rule in rbac_file_rules():
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert allowed(group, resource, verb), f"{sa} cannot {verb} {resource} ({group!r})"
        # Secrets only by name (kube/refs.py; docs/security.md): never listed or watched
        assert allowed("", "secrets", "get") and not allowed("", "secrets", "list")
        assert not allowed("", "secrets", "watch") and not allowed("", "namespaces", "delete")

        # vkprovider itself, with a token of the chart's ServiceAccount, starts and gets ready.
        token = kube_cluster.kubectl("create", "token", f"{release}-vkprovider", "-n", ns).stdout.strip()
        kubeconfig = yaml.safe_load(kube_cluster.admin_kubeconfig.read_text())
        kubeconfig["users"] = [{"name": "sa", "user": {"token": token}}]
        kubeconfig["contexts"] = [{"name": "sa", "context": {"cluster": kubeconfig["clusters"][0]["name"],
                                                            "user": "sa", "namespace": ns}}]
        kubeconfig["current-context"] = "sa"
        path = tmp_path / "sa.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        path.chmod(0o600)
        await run_provider_until_ready(path, ns)
    finally:
        helm(tools, "uninstall", release, "--namespace", ns, "--wait", "--timeout", "60s", *admin, check=False)
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


async def run_provider_until_ready(kubeconfig: Path, namespace: str) -> None:
    from tests.integration.harness import ProviderProcess

    env_name = "chart" + uuid.uuid4().hex[:6]
    provider = ProviderProcess(str(kubeconfig), env_name, NAMESPACE=namespace, CLIENT_ID=f"{namespace}-0",
                               VKP_ALLOW_UNAUTHENTICATED_BASES="true")
    try:
        await provider.start(timeout_s=60)
    finally:
        provider.kill()


def test_flow_schema_is_the_file_for_the_chart_service_account(tools: dict[str, str]) -> None:
    """vkprovider's APF level and flow schemas are files/flowcontrol.yaml (the local control plane applies the same
    to its user), matched to the chart's ServiceAccount: everything at its own level, the vnodes' Leases at the
    kubelets' node-high."""
    fc = yaml.safe_load((CHART / "files" / "flowcontrol.yaml").read_text())
    docs = render(tools)
    level = one(docs, "PriorityLevelConfiguration")
    assert level["spec"] == fc["priorityLevel"]
    schemas = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "FlowSchema"}
    assert sorted(schemas) == ["vkp-vkprovider", "vkp-vkprovider-node-leases"]
    sa = one(docs, "ServiceAccount")["metadata"]
    subjects = [{"kind": "ServiceAccount", "serviceAccount": {"name": sa["name"], "namespace": sa["namespace"]}}]
    for schema, source, level_name in ((schemas["vkp-vkprovider"], fc["flowSchema"], level["metadata"]["name"]),
                                       (schemas["vkp-vkprovider-node-leases"], fc["leaseFlowSchema"], "node-high")):
        assert schema["priorityLevelConfiguration"]["name"] == level_name
        assert schema["matchingPrecedence"] == source["matchingPrecedence"]
        for rule, wanted in zip(schema["rules"], source["rules"], strict=True):
            assert rule["subjects"] == subjects
            assert {k: v for k, v in rule.items() if k != "subjects"} == wanted
    # the Leases' schema is matched first: the catch-all one would take them otherwise
    assert schemas["vkp-vkprovider-node-leases"]["matchingPrecedence"] < schemas["vkp-vkprovider"]["matchingPrecedence"]


