"""vkprovider's settings: one typed object read from the environment.

The Go ModuleController's variable names (``ENV``, ``CLIENT_ID``, ``MQTT_BROKER`` ...) keep working unchanged, so
existing manifests move over as they are; settings the Go controller did not have use the ``VKP_`` prefix.
Fields are grouped by concern through their name prefix (``http_``, ``mqtt_``, ``node_``, ``module_``).
"""

from __future__ import annotations

import socket

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _default_client_id() -> str:
    # Stable across restarts on the same host / pod name, unlike the Go controller's random UUID.
    return socket.gethostname() or "vkprovider"


class Settings(BaseSettings):
    """Everything vkprovider can be told. Each field names its environment variable(s)."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", case_sensitive=True)

    # --- identity -------------------------------------------------------------------------------
    env: str = Field("dev", validation_alias=_alias("ENV", "env"), description="Environment; vnodes are "
                     "named vnode.{identity}.{env} and only bases of this env are served.")
    client_id: str = Field(default_factory=_default_client_id, validation_alias=_alias("CLIENT_ID", "client_id"),
                           description="This replica's identity, the holder of the vnode leases it owns. "
                           "Stable by default (the host name) so a restart adopts its vnodes.")
    namespace: str = Field("default", validation_alias=_alias("NAMESPACE", "namespace"),
                           description="Namespace vkprovider runs in.")
    kubeconfig: str | None = Field(None, validation_alias=_alias("KUBECONFIG", "kubeconfig"),
                                   description="Kubeconfig path; in-cluster config when unset.")

    # --- HTTP tunnel ----------------------------------------------------------------------------
    http_tunnel_enabled: bool = Field(True, validation_alias=_alias("ENABLE_HTTP_TUNNEL", "http_tunnel_enabled"),
                                      description="Serve heartbeats over HTTP and call arklet over HTTP.")
    http_tunnel_port: int = Field(7777, validation_alias=_alias("HTTP_TUNNEL_LISTEN_PORT", "http_tunnel_port"),
                                  description="Heartbeat port.")
    http_tunnel_host: str = Field("0.0.0.0", validation_alias=_alias("VKP_HTTP_TUNNEL_HOST", "http_tunnel_host"),
                                  description="Heartbeat bind address.")
    http_heartbeat_token: str | None = Field(None, validation_alias=_alias("VKP_HEARTBEAT_TOKEN",
                                             "http_heartbeat_token"),
                                             description="If set, heartbeats must carry "
                                             "'Authorization: Bearer <token>'.")
    http_max_body_bytes: int = Field(64 * 1024, validation_alias=_alias("VKP_HTTP_MAX_BODY_BYTES",
                                     "http_max_body_bytes"), description="Largest heartbeat body accepted.")
    arklet_max_inflight_per_base: int = Field(8, validation_alias=_alias("VKP_ARKLET_MAX_INFLIGHT_PER_BASE",
                                              "arklet_max_inflight_per_base"),
                                              description="Concurrent arklet calls to one base.")
    arklet_install_timeout_s: float = Field(120.0, validation_alias=_alias("VKP_ARKLET_INSTALL_TIMEOUT",
                                            "arklet_install_timeout_s"), description="installBiz timeout.")
    arklet_query_timeout_s: float = Field(10.0, validation_alias=_alias("VKP_ARKLET_QUERY_TIMEOUT",
                                          "arklet_query_timeout_s"), description="health/queryAllBiz timeout.")

    # --- MQTT tunnel ----------------------------------------------------------------------------
    mqtt_enabled: bool = Field(False, validation_alias=_alias("ENABLE_MQTT_TUNNEL", "mqtt_enabled"))
    mqtt_broker: str = Field("127.0.0.1", validation_alias=_alias("MQTT_BROKER", "mqtt_broker"))
    mqtt_port: int = Field(1883, validation_alias=_alias("MQTT_PORT", "mqtt_port"))
    mqtt_username: str | None = Field(None, validation_alias=_alias("MQTT_USERNAME", "mqtt_username"))
    mqtt_password: str | None = Field(None, validation_alias=_alias("MQTT_PASSWORD", "mqtt_password"))
    mqtt_client_prefix: str = Field("koupleless", validation_alias=_alias("MQTT_CLIENT_PREFIX",
                                                                          "mqtt_client_prefix"))
    mqtt_ca_path: str | None = Field(None, validation_alias=_alias("MQTT_CA_PATH", "mqtt_ca_path"))
    mqtt_client_crt_path: str | None = Field(None, validation_alias=_alias("MQTT_CLIENT_CRT_PATH",
                                                                           "mqtt_client_crt_path"))
    mqtt_client_key_path: str | None = Field(None, validation_alias=_alias("MQTT_CLIENT_KEY_PATH",
                                                                           "mqtt_client_key_path"))
    mqtt_max_message_age_s: float = Field(60.0, validation_alias=_alias("VKP_MQTT_MAX_MESSAGE_AGE",
                                          "mqtt_max_message_age_s"),
                                          description="Messages older than this (by publishTimestamp) are dropped.")
    mqtt_max_payload_bytes: int = Field(1024 * 1024, validation_alias=_alias("VKP_MQTT_MAX_PAYLOAD_BYTES",
                                        "mqtt_max_payload_bytes"))

    # --- virtual nodes --------------------------------------------------------------------------
    node_stack: str = Field("java", validation_alias=_alias("VKP_BASE_STACK", "node_stack"),
                            description="Value of the base.koupleless.io/stack label when a base does not say.")
    node_max_pods: int = Field(200, validation_alias=_alias("VKP_NODE_MAX_PODS", "node_max_pods"))
    node_lease_duration_s: int = Field(40, validation_alias=_alias("VKP_LEASE_DURATION", "node_lease_duration_s"))
    node_lease_renew_s: float = Field(10.0, validation_alias=_alias("VKP_LEASE_RENEW_INTERVAL",
                                                                    "node_lease_renew_s"))
    node_status_refresh_s: float = Field(300.0, validation_alias=_alias("VKP_NODE_STATUS_REFRESH",
                                         "node_status_refresh_s"),
                                         description="Node status is rewritten at least this often.")
    base_unreachable_after_s: float = Field(25.0, validation_alias=_alias("VKP_BASE_UNREACHABLE_AFTER",
                                            "base_unreachable_after_s"),
                                            description="Silence after which a vnode's Ready becomes Unknown.")
    base_dead_after_s: float = Field(600.0, validation_alias=_alias("VKP_BASE_DEAD_AFTER", "base_dead_after_s"),
                                     description="Silence after which a vnode and its lease are deleted.")
    base_health_interval_s: float = Field(60.0, validation_alias=_alias("VKP_BASE_HEALTH_INTERVAL",
                                          "base_health_interval_s"))
    base_bizs_interval_s: float = Field(30.0, validation_alias=_alias("VKP_BASE_QUERY_INTERVAL",
                                        "base_bizs_interval_s"),
                                        description="queryAllBiz period per base (drift detection).")

    # --- modules --------------------------------------------------------------------------------
    module_orphan_grace_s: float = Field(30.0, validation_alias=_alias("VKP_ORPHAN_GRACE", "module_orphan_grace_s"),
                                         description="A biz no pod owns is uninstalled after this long.")
    module_url_schemes: str = Field("http,https,file", validation_alias=_alias("VKP_BIZ_URL_SCHEMES",
                                    "module_url_schemes"), description="Allowed biz URL schemes (comma list).")
    module_url_hosts: str = Field("", validation_alias=_alias("VKP_BIZ_URL_HOSTS", "module_url_hosts"),
                                  description="If non-empty, allowed biz URL hosts (comma list).")
    workers: int = Field(8, validation_alias=_alias("VNODE_WORKER_NUM", "workers"))
    replicas_sync_with_base: bool = Field(False, validation_alias=_alias("ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE",
                                                                         "replicas_sync_with_base"))

    # --- operations -----------------------------------------------------------------------------
    metrics_port: int = Field(9090, validation_alias=_alias("VKP_METRICS_PORT", "metrics_port"))
    probe_port: int = Field(8081, validation_alias=_alias("VKP_PROBE_PORT", "probe_port"))
    kubelet_proxy_enabled: bool = Field(False, validation_alias=_alias("KUBELET_PROXY_ENABLED",
                                                                       "kubelet_proxy_enabled"))
    kubelet_proxy_port: int = Field(10250, validation_alias=_alias("KUBELET_PROXY_PORT", "kubelet_proxy_port"))
    kube_max_inflight: int = Field(64, validation_alias=_alias("VKP_KUBE_MAX_INFLIGHT", "kube_max_inflight"),
                                   description="Concurrent Kubernetes API requests.")
    log_format: str = Field("text", validation_alias=_alias("VKP_LOG_FORMAT", "log_format"))
    log_level: str = Field("INFO", validation_alias=_alias("VKP_LOG_LEVEL", "log_level"))

    @field_validator("env")
    @classmethod
    def _env_is_label_safe(cls, value: str) -> str:
        if not value or len(value) > 63 or not all(c.isalnum() or c in "-_." for c in value):
            raise ValueError("ENV must be a valid label value")
        return value

    @property
    def url_schemes(self) -> frozenset[str]:
        return frozenset(s.strip().lower() for s in self.module_url_schemes.split(",") if s.strip())

    @property
    def url_hosts(self) -> frozenset[str]:
        return frozenset(s.strip().lower() for s in self.module_url_hosts.split(",") if s.strip())
