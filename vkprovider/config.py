"""vkprovider's settings: one typed object read from the environment, checked before anything starts.

The Go ModuleController's variable names (``ENV``, ``CLIENT_ID``, ``MQTT_BROKER`` ...) keep working unchanged, so
existing manifests move over as they are; settings the Go controller did not have use the ``VKP_`` prefix.
Fields are grouped by concern (identity, HTTP tunnel, security, arklet, MQTT, vnodes, modules, releases,
operations). A wrong value ends the process before it does anything, with one line naming the variable, the
value and what is accepted (``load_settings`` raises ``ConfigError``; the CLI prints it and exits with 2).
Nothing is silently clamped.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vkprovider.core.module import NamespacePolicy, UrlPolicy, parse_namespace_policy
from vkprovider.core.resources import MAX_PODS_LIMIT, PressureThresholds, parse_max_pods_by_base
from vkprovider.core.staticbizs import BizPattern, parse_patterns

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
Port = int  # 0..65535 (0: any free port), checked by _ports
#: Go ModuleController variables vkprovider accepts but that change nothing (logged at start).
GO_ONLY_VARIABLES = ("IS_CLUSTER", "WORKLOAD_MAX_LEVEL", "REPORT_HOOKS", "TRACKER_CONFIG_PATH")


class ConfigError(Exception):
    """A setting is wrong; the message is one line for the operator."""


def _default_client_id() -> str:
    # Stable across restarts on the same host / pod name, unlike the Go controller's random UUID.
    return socket.gethostname() or "vkprovider"


def F(default: Any, *names: str, description: str = "", **kw: Any) -> Any:
    """A field read from the environment variable(s) ``names`` (the first is the documented one)."""
    return Field(default, validation_alias=AliasChoices(*names), description=description, **kw)


class Settings(BaseSettings):
    """Everything vkprovider can be told. Each field names its environment variable(s)."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", case_sensitive=True)

    # --- identity -------------------------------------------------------------------------------
    env: str = F("dev", "ENV", "env", description="Environment; vnodes are named vnode.{identity}.{env} and "
                 "only bases of this env are served. A DNS label (lowercase letters, digits, '-').")
    client_id: str = Field(default_factory=_default_client_id, validation_alias=AliasChoices("CLIENT_ID", "client_id"),
                           description="This replica's identity, the holder of the vnode Leases it owns. "
                           "Stable by default (the host name, i.e. the pod name) so a restart adopts its vnodes.")
    namespace: str = F("default", "NAMESPACE", "namespace", description="Namespace vkprovider runs in (its "
                       "replicas' membership Leases live here).")
    kubeconfig: str | None = F(None, "KUBECONFIG", "kubeconfig",
                               description="Kubeconfig path; the in-cluster service account when unset.")

    # --- HTTP tunnel ----------------------------------------------------------------------------
    http_tunnel_enabled: bool = F(True, "ENABLE_HTTP_TUNNEL", "http_tunnel_enabled",
                                  description="Serve heartbeats over HTTP and call arklet over HTTP.")
    http_tunnel_port: Port = F(7777, "HTTP_TUNNEL_LISTEN_PORT", "http_tunnel_port", description="Heartbeat port.")
    http_tunnel_host: str = F("0.0.0.0", "VKP_HTTP_TUNNEL_HOST", "http_tunnel_host",
                              description="Heartbeat server bind address.")
    http_max_body_bytes: int = F(64 * 1024, "VKP_HTTP_MAX_BODY_BYTES", "http_max_body_bytes", ge=1024,
                                 description="Largest heartbeat body accepted.")
    http_max_connections: int = F(4096, "VKP_HTTP_MAX_CONNECTIONS", "http_max_connections", ge=1,
                                  description="Concurrent connections per listener; more are closed at once.")
    http_header_timeout_s: float = F(10.0, "VKP_HTTP_HEADER_TIMEOUT", "http_header_timeout_s", gt=0,
                                     description="A request's head and body must arrive within this time.")
    http_idle_timeout_s: float = F(30.0, "VKP_HTTP_IDLE_TIMEOUT", "http_idle_timeout_s", gt=0,
                                   description="An idle keep-alive connection is closed after this time.")
    http_tls_cert: str | None = F(None, "VKP_HTTP_TLS_CERT", "http_tls_cert",
                                  description="Serve heartbeats over TLS with this certificate (PEM).")
    http_tls_key: str | None = F(None, "VKP_HTTP_TLS_KEY", "http_tls_key", description="Its private key.")
    http_client_ca: str | None = F(None, "VKP_HTTP_CLIENT_CA", "http_client_ca",
                                   description="Require client certificates signed by this CA (mutual TLS); "
                                   "the certificate's CN or a DNS SAN must equal the base identity.")

    # --- who may register a base, and what a base may make vkprovider call ------------------------
    heartbeat_token: str | None = F(None, "VKP_HEARTBEAT_TOKEN", "heartbeat_token",
                                    description="A token shared by all bases ('Authorization: Bearer <token>'). "
                                    "Weaker than per-base tokens: prefer VKP_HEARTBEAT_SECRET.")
    heartbeat_secret: str | None = F(None, "VKP_HEARTBEAT_SECRET", "heartbeat_secret",
                                     description="Secret from which each base's own token is derived "
                                     "(HMAC-SHA256 of its identity; `vkprovider token <identity>` prints it).")
    heartbeat_secret_file: str | None = F(None, "VKP_HEARTBEAT_SECRET_FILE", "heartbeat_secret_file",
                                          description="File holding VKP_HEARTBEAT_SECRET (a mounted Secret).")
    allow_unauthenticated_bases: bool = F(False, "VKP_ALLOW_UNAUTHENTICATED_BASES", "allow_unauthenticated_bases",
                                          description="Accept bases that send no credential (unchanged "
                                          "Koupleless bases). Logged as a warning at start.")
    base_networks: str = F("", "VKP_BASE_NETWORKS", "base_networks",
                           description="Comma list of CIDRs: a heartbeat's localIP may be any address in them. "
                           "Empty: localIP must be the address the heartbeat came from.")
    max_vnodes: int = F(10000, "VKP_MAX_VNODES", "max_vnodes", ge=1,
                        description="Most bases this replica registers; more are refused with 429.")
    new_bases_per_second: float = F(200.0, "VKP_NEW_BASES_PER_SECOND", "new_bases_per_second", gt=0,
                                    description="Rate of new base identities accepted (429 beyond it).")
    new_bases_burst: int = F(1000, "VKP_NEW_BASES_BURST", "new_bases_burst", ge=1,
                             description="Burst of new base identities accepted at once.")

    # --- arklet ---------------------------------------------------------------------------------
    arklet_max_inflight_per_base: int = F(8, "VKP_ARKLET_MAX_INFLIGHT_PER_BASE", "arklet_max_inflight_per_base",
                                          ge=1, description="Concurrent arklet calls to one base.")
    arklet_install_timeout_s: float = F(120.0, "VKP_ARKLET_INSTALL_TIMEOUT", "arklet_install_timeout_s", gt=0,
                                        description="installBiz / uninstallBiz timeout.")
    arklet_query_timeout_s: float = F(10.0, "VKP_ARKLET_QUERY_TIMEOUT", "arklet_query_timeout_s", gt=0,
                                      description="health / queryAllBiz timeout.")
    arklet_max_answer_bytes: int = F(4 * 1024 * 1024, "VKP_ARKLET_MAX_ANSWER_BYTES", "arklet_max_answer_bytes",
                                     ge=1024, description="Largest answer read from a base.")

    # --- MQTT tunnel ----------------------------------------------------------------------------
    mqtt_enabled: bool = F(False, "ENABLE_MQTT_TUNNEL", "mqtt_enabled", description="Use the MQTT tunnel.")
    mqtt_broker: str = F("127.0.0.1", "MQTT_BROKER", "mqtt_broker", description="Broker host.")
    mqtt_port: Port = F(1883, "MQTT_PORT", "mqtt_port", description="Broker port.")
    mqtt_username: str | None = F(None, "MQTT_USERNAME", "mqtt_username")
    mqtt_password: str | None = F(None, "MQTT_PASSWORD", "mqtt_password")
    mqtt_client_prefix: str = F("koupleless", "MQTT_CLIENT_PREFIX", "mqtt_client_prefix")
    mqtt_ca_path: str | None = F(None, "MQTT_CA_PATH", "mqtt_ca_path",
                                 description="CA file: connect with TLS, the broker certificate always verified.")
    mqtt_client_crt_path: str | None = F(None, "MQTT_CLIENT_CRT_PATH", "mqtt_client_crt_path")
    mqtt_client_key_path: str | None = F(None, "MQTT_CLIENT_KEY_PATH", "mqtt_client_key_path")
    mqtt_allow_insecure_password: bool = F(False, "VKP_MQTT_ALLOW_INSECURE_PASSWORD", "mqtt_allow_insecure_password",
                                           description="Send MQTT_PASSWORD over a connection without TLS.")
    mqtt_max_message_age_s: float = F(60.0, "VKP_MQTT_MAX_MESSAGE_AGE", "mqtt_max_message_age_s", ge=0,
                                      description="Messages older than this (by publishTimestamp) are dropped.")
    mqtt_max_payload_bytes: int = F(1024 * 1024, "VKP_MQTT_MAX_PAYLOAD_BYTES", "mqtt_max_payload_bytes", ge=1024)

    # --- virtual nodes --------------------------------------------------------------------------
    node_stack: str = F("java", "VKP_BASE_STACK", "node_stack",
                        description="Value of the base.koupleless.io/stack label when a base does not say.")
    node_max_pods: int = F(200, "VKP_NODE_MAX_PODS", "node_max_pods", ge=1, le=MAX_PODS_LIMIT,
                           description="Pod capacity of a vnode whose base says none (label "
                           "base.koupleless.io/max-pods) and that VKP_NODE_MAX_PODS_BY_BASE does not name.")
    node_max_pods_by_base: str = F("", "VKP_NODE_MAX_PODS_BY_BASE", "node_max_pods_by_base",
                                   description="Pod capacity by base name and version, for bases that cannot say "
                                   "it: 'name:version=N;name=N'. The base's own label wins; others get "
                                   "VKP_NODE_MAX_PODS.")
    metaspace_pressure_high: float = F(0.9, "VKP_METASPACE_PRESSURE_HIGH", "metaspace_pressure_high", gt=0, le=1,
                                       description="Metaspace use (used / max) above which a vnode's "
                                       "MemoryPressure is True (1: never).")
    metaspace_pressure_low: float = F(0.8, "VKP_METASPACE_PRESSURE_LOW", "metaspace_pressure_low", gt=0, lt=1,
                                      description="Metaspace use below which MemoryPressure is False again; in "
                                      "between it stays as it was.")
    node_env_taint: bool = F(False, "VKP_ENV_TAINT", "node_env_taint",
                             description="Also taint vnodes schedule.koupleless.io/node-env=<ENV>:NoExecute (the Go "
                             "controller's environment isolation; pods must then tolerate it).")
    node_architecture: str = F("", "VKP_NODE_ARCH", "node_architecture",
                               description="nodeInfo.architecture of vnodes (default: this machine's, as Go "
                               "names it: amd64, arm64 ...). A JVM base runs any.")
    node_lease_duration_s: int = F(20, "VKP_LEASE_DURATION", "node_lease_duration_s", ge=2,
                                   description="Vnode Lease duration: a replica takes over a vnode whose Lease it "
                                   "has seen unchanged this long. Keep it below the node-monitor-grace-period.")
    node_lease_renew_s: float = F(10.0, "VKP_LEASE_RENEW_INTERVAL", "node_lease_renew_s", gt=0,
                                  description="How often held Leases are renewed.")
    node_lease_renew_deadline_s: float = F(0.0, "VKP_LEASE_RENEW_DEADLINE", "node_lease_renew_deadline_s", ge=0,
                                           description="A replica that has not renewed for this long stops "
                                           "acting for the vnode (default: three quarters of the duration).")
    lease_handoffs_per_second: float = F(20.0, "VKP_LEASE_HANDOFFS_PER_SECOND", "lease_handoffs_per_second", gt=0,
                                         description="Vnodes handed to a better-placed replica per second.")
    node_status_refresh_s: float = F(1800.0, "VKP_NODE_STATUS_REFRESH", "node_status_refresh_s", gt=0,
                                     description="Node status is rewritten at least this often (the Lease is the "
                                     "heartbeat the node-lifecycle controller reads).")
    base_unreachable_after_s: float = F(25.0, "VKP_BASE_UNREACHABLE_AFTER", "base_unreachable_after_s", gt=0,
                                        description="Silence after which a vnode's Ready becomes Unknown.")
    base_dead_after_s: float = F(600.0, "VKP_BASE_DEAD_AFTER", "base_dead_after_s", gt=0,
                                 description="Silence after which a vnode and its Lease are deleted.")
    base_probe_after_s: float = F(15.0, "VKP_BASE_PROBE_AFTER", "base_probe_after_s", gt=0,
                                  description="Silence after which the owner asks the base (health) whether it is "
                                  "alive: its heartbeats may be reaching another replica.")
    base_health_interval_s: float = F(30.0, "VKP_BASE_HEALTH_INTERVAL", "base_health_interval_s", gt=0,
                                      description="health query period per base: cpu / memory of the vnode and "
                                      "its MemoryPressure (metaspace use) follow it. 30 s cost 0.5 % of a core at "
                                      "1,000 bases, 10 s 2.7 %. A silent base is asked at once, whatever this says "
                                      "(VKP_BASE_PROBE_AFTER).")
    base_metrics_max_age_s: float = F(20.0, "VKP_BASE_METRICS_MAX_AGE", "base_metrics_max_age_s", gt=0,
                                      description="A scrape of a vnode's /metrics/resource (kubectl top node) "
                                      "asks its base for health first when the last answer is older than this; "
                                      "bases nobody scrapes are asked only every VKP_BASE_HEALTH_INTERVAL.")
    base_bizs_interval_s: float = F(30.0, "VKP_BASE_QUERY_INTERVAL", "base_bizs_interval_s", gt=0,
                                    description="queryAllBiz period per base (changes the base does not push).")
    drain_timeout_s: float = F(300.0, "VKP_DRAIN_TIMEOUT", "drain_timeout_s", gt=0,
                               description="A vnode whose base is going is cordoned and its module pods evicted "
                               "(PodDisruptionBudgets hold) for at most this long.")
    base_pod_selector: str = F("", "VKP_BASE_POD_SELECTOR", "base_pod_selector",
                               description="Label selector of the bases' own pods in this cluster: a base whose pod "
                               "(matched by pod IP) starts terminating is drained at once. Empty: only a base's "
                               "DEACTIVATED heartbeat or health answer starts a drain.")

    # --- modules --------------------------------------------------------------------------------
    module_orphan_grace_s: float = F(30.0, "VKP_ORPHAN_GRACE", "module_orphan_grace_s", ge=0,
                                     description="A biz no pod owns is uninstalled after this long.")
    module_static_bizs: str = F("", "VKP_STATIC_BIZS", "module_static_bizs",
                                description="Bizs that ship inside the bases (static merge deployment), never "
                                "uninstalled as orphans: 'name' (every version) or 'name:version', comma list.")
    module_url_schemes: str = F("https,http", "VKP_BIZ_URL_SCHEMES", "module_url_schemes",
                                description="Allowed biz URL schemes (comma list; add file to allow local jars).")
    module_url_hosts: str = F("", "VKP_BIZ_URL_HOSTS", "module_url_hosts",
                              description="If non-empty, the only allowed biz URL hosts, for every scheme "
                              "(a file: URL's host is localhost).")
    module_namespace_policy: str = F("", "VKP_BIZ_NAMESPACE_POLICY", "module_namespace_policy",
                                     description="Which namespaces may install on bases of which cluster-name: "
                                     "'ns1=clusterA|clusterB;ns2=*;*=shared'. Empty: any.")
    workers: int = F(32, "VNODE_WORKER_NUM", "workers",
                     description="Workers of the module controller: bases whose pods are reconciled at once (the Go "
                     "controller's pod sync workers). The node controller (256) and the pod status queue (64) have "
                     "fixed workers.")
    biz_log_lines: int = F(500, "VKP_BIZ_LOG_LINES", "biz_log_lines", ge=10,
                           description="Lifecycle log lines kept per biz (kubectl logs).")

    # --- release strategies -----------------------------------------------------------------------
    replicas_sync_with_base: bool = F(False, "ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE", "replicas_sync_with_base",
                                      description="Keep peer Deployments' replicas equal to their Ready bases.")
    peer_scale_down_delay_s: float = F(60.0, "VKP_PEER_SCALE_DOWN_DELAY", "peer_scale_down_delay_s", ge=0,
                                       description="A peer Deployment is scaled down only after its base count "
                                       "has been lower for this long (a flapping base does not uninstall).")
    batched_releases: bool = F(True, "VKP_BATCHED_RELEASES", "batched_releases",
                               description="Run batched releases of Deployments that ask for them.")

    # --- operations -----------------------------------------------------------------------------
    metrics_host: str = F("0.0.0.0", "VKP_METRICS_HOST", "metrics_host", description="Metrics bind address.")
    metrics_port: Port = F(9090, "VKP_METRICS_PORT", "metrics_port", description="Prometheus /metrics port.")
    probe_host: str = F("0.0.0.0", "VKP_PROBE_HOST", "probe_host", description="Probe bind address.")
    probe_port: Port = F(8081, "VKP_PROBE_PORT", "probe_port", description="/healthz and /readyz port.")
    kubelet_enabled: bool = F(True, "KUBELET_PROXY_ENABLED", "kubelet_enabled",
                              description="Serve the vnodes' kubelet API (kubectl logs, kubectl top node) over TLS.")
    kubelet_port: Port = F(10250, "KUBELET_PROXY_PORT", "kubelet_port", description="Kubelet API port.")
    kubelet_host: str = F("0.0.0.0", "VKP_KUBELET_HOST", "kubelet_host", description="Kubelet API bind address.")
    kubelet_address: str | None = F(None, "VKP_KUBELET_ADDRESS", "kubelet_address",
                                    description="The IP the apiserver reaches this replica's kubelet API at "
                                    "(the pod IP). Default: the first non-loopback IPv4, else 127.0.0.1.")
    kubelet_tls_cert: str | None = F(None, "VKP_KUBELET_TLS_CERT", "kubelet_tls_cert",
                                     description="Kubelet API serving certificate (default: self-signed at start).")
    kubelet_tls_key: str | None = F(None, "VKP_KUBELET_TLS_KEY", "kubelet_tls_key")
    wall_clock_offset_s: float = F(0.0, "VKP_WALL_CLOCK_OFFSET", "wall_clock_offset_s",
                                   description="Shift this replica's wall clock (renewTime, Event times) by this "
                                   "many seconds. For tests: ownership never compares another host's clock.")
    kube_max_inflight: int = F(64, "VKP_KUBE_MAX_INFLIGHT", "kube_max_inflight", ge=1,
                               description="Concurrent Kubernetes API requests.")
    log_format: Literal["text", "json"] = F("text", "VKP_LOG_FORMAT", "log_format",
                                            description="text, or json: one object per line.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = F("INFO", "VKP_LOG_LEVEL", "log_level")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("env")
    @classmethod
    def _env_is_a_dns_label(cls, value: str) -> str:
        if len(value) > 40 or not _DNS_LABEL.match(value):
            raise ValueError("must be a DNS label of at most 40 characters (lowercase letters, digits, '-'), "
                             "as vnode names are vnode.<identity>.<ENV>")
        return value

    @field_validator("http_tunnel_port", "mqtt_port", "metrics_port", "probe_port", "kubelet_port")
    @classmethod
    def _ports(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("must be a port number 1..65535 (0: any free port)")
        return value

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if not value.strip() or len(value) > 128:
            raise ValueError("must be 1..128 characters")
        return value

    @field_validator("module_url_schemes")
    @classmethod
    def _schemes(cls, value: str) -> str:
        schemes = [s.strip().lower() for s in value.split(",") if s.strip()]
        if not schemes:
            raise ValueError("must name at least one scheme (https,http[,file])")
        bad = [s for s in schemes if s not in ("http", "https", "file")]
        if bad:
            raise ValueError(f"unknown scheme(s) {', '.join(bad)} (accepted: https, http, file)")
        return value

    @field_validator("module_namespace_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        parse_namespace_policy(value)
        return value

    @field_validator("module_static_bizs")
    @classmethod
    def _static_bizs(cls, value: str) -> str:
        parse_patterns(value)
        return value

    @field_validator("node_max_pods_by_base")
    @classmethod
    def _max_pods_by_base(cls, value: str) -> str:
        parse_max_pods_by_base(value)
        return value

    @field_validator("base_pod_selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"[A-Za-z0-9_./-]+\s*(=|==|!=)\s*[A-Za-z0-9_.-]*"
                                      r"(\s*,\s*[A-Za-z0-9_./-]+\s*(=|==|!=)\s*[A-Za-z0-9_.-]*)*", value):
            raise ValueError("must be a label selector of key=value (or key!=value) terms, comma separated")
        return value

    @field_validator("base_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in (p.strip() for p in value.split(",")):
            if part:
                try:
                    ipaddress.ip_network(part, strict=False)
                except ValueError:
                    raise ValueError(f"{part!r} is not a CIDR (e.g. 10.0.0.0/8)") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.node_lease_renew_deadline_s:
            self.node_lease_renew_deadline_s = self.node_lease_duration_s * 0.75
        if not self.node_lease_renew_s < self.node_lease_renew_deadline_s < self.node_lease_duration_s:
            raise ValueError("VKP_LEASE_RENEW_INTERVAL < VKP_LEASE_RENEW_DEADLINE < VKP_LEASE_DURATION must hold "
                             f"(got {self.node_lease_renew_s:g} / {self.node_lease_renew_deadline_s:g} / "
                             f"{self.node_lease_duration_s})")
        if not self.http_tunnel_enabled and not self.mqtt_enabled:
            raise ValueError("no tunnel enabled: set ENABLE_HTTP_TUNNEL=true and/or ENABLE_MQTT_TUNNEL=true")
        if bool(self.http_tls_cert) != bool(self.http_tls_key):
            raise ValueError("VKP_HTTP_TLS_CERT and VKP_HTTP_TLS_KEY go together")
        if self.http_client_ca and not self.http_tls_cert:
            raise ValueError("VKP_HTTP_CLIENT_CA needs VKP_HTTP_TLS_CERT and VKP_HTTP_TLS_KEY")
        if bool(self.kubelet_tls_cert) != bool(self.kubelet_tls_key):
            raise ValueError("VKP_KUBELET_TLS_CERT and VKP_KUBELET_TLS_KEY go together")
        if (self.mqtt_enabled and self.mqtt_password and not self.mqtt_ca_path
                and not self.mqtt_allow_insecure_password):
            raise ValueError("MQTT_PASSWORD would be sent without TLS: set MQTT_CA_PATH, or "
                             "VKP_MQTT_ALLOW_INSECURE_PASSWORD=true to accept that")
        if self.base_unreachable_after_s >= self.base_dead_after_s:
            raise ValueError("VKP_BASE_UNREACHABLE_AFTER must be below VKP_BASE_DEAD_AFTER")
        if not self.metaspace_pressure_low < self.metaspace_pressure_high:
            raise ValueError("VKP_METASPACE_PRESSURE_LOW < VKP_METASPACE_PRESSURE_HIGH must hold (got "
                             f"{self.metaspace_pressure_low:g} / {self.metaspace_pressure_high:g})")
        return self

    # --- derived ----------------------------------------------------------------------------------

    @property
    def url_schemes(self) -> frozenset[str]:
        return frozenset(s.strip().lower() for s in self.module_url_schemes.split(",") if s.strip())

    @property
    def url_hosts(self) -> frozenset[str]:
        return frozenset(s.strip().lower() for s in self.module_url_hosts.split(",") if s.strip())

    @property
    def url_policy(self) -> UrlPolicy:
        return UrlPolicy(self.url_schemes, self.url_hosts)

    @property
    def namespace_policy(self) -> NamespacePolicy:
        return parse_namespace_policy(self.module_namespace_policy)

    @property
    def max_pods_by_base(self) -> dict[tuple[str, str | None], int]:
        return parse_max_pods_by_base(self.node_max_pods_by_base)

    @property
    def metaspace_pressure(self) -> PressureThresholds:
        return PressureThresholds(high=self.metaspace_pressure_high, low=self.metaspace_pressure_low)

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in self.base_networks.split(",")
                     if p.strip())

    def secret(self) -> bytes | None:
        """The per-base token secret (from VKP_HEARTBEAT_SECRET or its file), None when not configured."""
        if self.heartbeat_secret:
            return self.heartbeat_secret.encode()
        if self.heartbeat_secret_file:
            with open(self.heartbeat_secret_file, "rb") as fh:
                value = fh.read().strip()
            return value or None
        return None


@dataclass(frozen=True, slots=True)
class ModuleSettings:
    """What the module controller is told (the group of settings it uses, and nothing else)."""

    env: str
    workers: int
    url_policy: UrlPolicy
    namespace_policy: NamespacePolicy
    unreachable_after_s: float
    read_interval_s: float
    orphan_grace_s: float
    static_bizs: tuple[BizPattern, ...]
    baseline_wait_s: float
    biz_log_lines: int


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """What the node controller is told."""

    env: str
    max_vnodes: int
    base_unreachable_after_s: float
    base_dead_after_s: float
    base_probe_after_s: float
    base_health_interval_s: float
    node_status_refresh_s: float
    metaspace_pressure: PressureThresholds


def node_settings(s: Settings) -> NodeSettings:
    return NodeSettings(env=s.env, max_vnodes=s.max_vnodes, base_unreachable_after_s=s.base_unreachable_after_s,
                        base_dead_after_s=s.base_dead_after_s, base_probe_after_s=s.base_probe_after_s,
                        base_health_interval_s=s.base_health_interval_s, node_status_refresh_s=s.node_status_refresh_s,
                        metaspace_pressure=s.metaspace_pressure)


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """What heartbeat admission is told."""

    env: str
    max_vnodes: int
    new_bases_per_second: float
    new_bases_burst: int
    unreachable_after_s: float


def admission_settings(s: Settings) -> AdmissionSettings:
    return AdmissionSettings(env=s.env, max_vnodes=s.max_vnodes, new_bases_per_second=s.new_bases_per_second,
                             new_bases_burst=s.new_bases_burst, unreachable_after_s=s.base_unreachable_after_s)


def module_settings(s: Settings) -> ModuleSettings:
    return ModuleSettings(env=s.env, workers=s.workers, url_policy=s.url_policy, namespace_policy=s.namespace_policy,
                          unreachable_after_s=s.base_unreachable_after_s, read_interval_s=s.base_bizs_interval_s,
                          orphan_grace_s=s.module_orphan_grace_s,
                          static_bizs=parse_patterns(s.module_static_bizs), baseline_wait_s=s.arklet_install_timeout_s,
                          biz_log_lines=s.biz_log_lines)


class _FromMapping(Settings):
    """Settings read from a given mapping only (tests, ``load_settings(environ)``), not from os.environ."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, *_: Any, **__: Any) -> tuple[Any, ...]:
        return (init_settings,)


def env_name_of(field: str) -> str:
    """The documented environment variable of a field."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        return str(first)
    return field.upper()


def _one_line(exc: ValidationError, environ: Mapping[str, str]) -> str:
    first = exc.errors(include_url=False)[0]
    loc = first.get("loc") or ()
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:
        return f"invalid settings: {message}"
    field = str(loc[0])
    if field in Settings.model_fields:
        info = Settings.model_fields[field]
        alias = info.validation_alias
        names = [str(n) for n in alias.choices] if isinstance(alias, AliasChoices) else [field]
        name = next((n for n in names if n in environ), names[0])
    else:
        name = field
    value = environ.get(name, first.get("input"))
    kind = first.get("type", "")
    if kind.startswith("bool"):
        message = "not a boolean (accepted: true, false, 1, 0, yes, no)"
    elif kind in ("int_parsing", "int_from_float"):
        message = "not an integer"
    elif kind == "float_parsing":
        message = "not a number"
    elif kind == "literal_error":
        message = f"not one of the accepted values ({message.removeprefix('Input should be ')})"
    return f"invalid {name}={str(value)[:80]!r}: {message}"


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read and check the settings; raises ConfigError with one line for the operator."""
    import os

    source = dict(os.environ if environ is None else environ)
    try:
        if environ is None:
            return Settings(**overrides)
        fields: dict[str, Any] = {}
        for field, info in Settings.model_fields.items():
            alias = info.validation_alias
            for name in (alias.choices if isinstance(alias, AliasChoices) else [field]):
                if str(name) in source and str(name).isupper():
                    fields[str(name)] = source[str(name)]
                    break
        return _FromMapping(**fields, **overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read a settings file: {exc}") from None
