"""Where the API is and who vkprovider is to it: kubeconfig files (client certificates, bearer tokens and token
files, basic auth, an HTTP proxy) and the in-cluster service account, read without kubernetes-asyncio's client
package where a file says everything (``static_kubeconfig``); its config loaders otherwise (exec plugins).

A service-account token file is read again when it changes (the kubelet rotates it), and certificates given as
data are written to private temporary files that are removed at exit. PyYAML is imported only to read a kubeconfig
file: in a cluster (the service account) it is never loaded, and a process keeps what it imported (issue 31).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import logging
import os
import ssl
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import yarl

from vkprovider import http1

log = logging.getLogger(__name__)

IN_CLUSTER_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
_TOKEN_RECHECK_S = 1.0


class _Credentials:
    """The Authorization header, kept fresh.

    In-cluster service-account tokens are rotated by the kubelet: the token file is re-read whenever its mtime or
    size changes (checked at most once a second). Kubeconfig credentials are reloaded (tokenFile, exec plugins)
    when the server answers 401.
    """

    def __init__(self, header: str | None, *, token_file: str | None = None,
                 kubeconfig: str | None = None) -> None:
        self._header = header
        self._token_file = token_file
        self._kubeconfig = kubeconfig
        self._stamp: tuple[int, int] | None = None
        self._checked_at = 0.0
        if token_file is not None:
            self._reload_token_file(force=True)

    def _reload_token_file(self, *, force: bool) -> None:
        assert self._token_file is not None
        try:
            st = os.stat(self._token_file)
        except OSError as exc:
            log.warning("cannot stat service-account token %s: %s", self._token_file, exc)
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if not force and stamp == self._stamp:
            return
        try:
            with open(self._token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            log.warning("cannot read service-account token %s: %s", self._token_file, exc)
            return
        if token:
            if self._stamp is not None:
                log.info("service-account token changed; using the new one")
            self._header = f"Bearer {token}"
            self._stamp = stamp

    def header(self) -> str | None:
        if self._token_file is not None:
            now = time.monotonic()
            if now - self._checked_at >= _TOKEN_RECHECK_S:
                self._checked_at = now
                self._reload_token_file(force=False)
        return self._header

    async def refresh(self) -> bool:
        """Reload after a 401; True when the header changed (so one retry makes sense)."""
        before = self._header
        if self._token_file is not None:
            self._reload_token_file(force=True)
        elif self._kubeconfig is not None:
            try:
                conf = await _load_configuration(self._kubeconfig)
            except Exception as exc:  # the old credentials stay in use
                log.warning("reloading kubeconfig credentials failed: %s", exc)
                return False
            self._header = await _auth_header(conf)
        return self._header != before


@dataclass(frozen=True, slots=True)
class _Direct:
    """An API server and static credentials, found without kubernetes-asyncio (importing its client package costs
    memory for good: docs/performance.md, "Measured reasons in the code"): what ``_ssl_context``, ``_auth_header``
    and ``connect`` read of a configuration."""

    host: str
    ssl_ca_cert: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_ssl: bool = True
    tls_server_name: str | None = None
    proxy: str | None = None
    header: str | None = None


def _in_cluster() -> _Direct:
    """In-cluster configuration, the way client-go's ``rest.InClusterConfig`` finds it: the service host and port
    from the environment, the CA next to the token (which ``_Credentials`` reads and watches for rotation)."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST", ""), os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ValueError("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not running in a pod?)")
    if not os.path.isfile(IN_CLUSTER_TOKEN_FILE) or not os.path.isfile(IN_CLUSTER_CA_FILE):
        raise ValueError(f"no service-account token and CA in {os.path.dirname(IN_CLUSTER_TOKEN_FILE)} "
                         "(automountServiceAccountToken off?)")
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return _Direct(host=f"https://{host}:{port}", ssl_ca_cert=IN_CLUSTER_CA_FILE)


_STATIC_USER_KEYS = frozenset({"token", "tokenFile", "client-certificate", "client-certificate-data", "client-key",
                               "client-key-data", "username", "password"})
_STATIC_CLUSTER_KEYS = frozenset({"server", "certificate-authority", "certificate-authority-data",
                                  "insecure-skip-tls-verify", "tls-server-name", "proxy-url", "extensions"})


def static_kubeconfig(path: str) -> _Direct | None:
    """A kubeconfig whose current context has a server and static credentials (embedded or file certificates, a
    token or token file, basic auth), read here; None for anything else (exec plugins, auth providers,
    impersonation, several files in KUBECONFIG), which kubernetes-asyncio's loader handles."""
    if os.pathsep in path:
        return None
    import yaml  # here, not at the top: in a cluster no kubeconfig file is read (docs/performance.md, issue 31)

    with open(os.path.expanduser(path), encoding="utf-8") as fh:
        doc = yaml.safe_load(fh) or {}

    def named(kind: str, name: object) -> dict[str, Any] | None:
        for item in doc.get(kind) or []:
            if isinstance(item, dict) and item.get("name") == name:
                inner = item.get(kind[:-1])
                return inner if isinstance(inner, dict) else None
        return None

    context = named("contexts", doc.get("current-context"))
    if context is None:
        return None
    cluster, user = named("clusters", context.get("cluster")), named("users", context.get("user")) or {}
    if cluster is None or not cluster.get("server") or set(cluster) - _STATIC_CLUSTER_KEYS \
            or set(user) - _STATIC_USER_KEYS:
        return None
    base = os.path.dirname(os.path.abspath(os.path.expanduser(path)))

    def file_of(field: str, entry: dict[str, Any]) -> str | None:
        if entry.get(f"{field}-data"):
            return _private_file(base64.b64decode(entry[f"{field}-data"]))
        if entry.get(field):
            return os.path.join(base, os.path.expanduser(str(entry[field])))
        return None

    header = None
    if user.get("token"):
        header = f"Bearer {str(user['token']).strip()}"
    elif user.get("tokenFile"):
        with open(os.path.join(base, str(user["tokenFile"])), encoding="utf-8") as fh:
            header = f"Bearer {fh.read().strip()}"
    elif user.get("username") or user.get("password"):
        header = _basic(str(user.get("username") or ""), str(user.get("password") or ""))
    return _Direct(host=str(cluster["server"]).rstrip("/"), ssl_ca_cert=file_of("certificate-authority", cluster),
                   cert_file=file_of("client-certificate", user), key_file=file_of("client-key", user),
                   verify_ssl=not cluster.get("insecure-skip-tls-verify"),
                   tls_server_name=cluster.get("tls-server-name") or None, proxy=cluster.get("proxy-url") or None,
                   header=header)


_PRIVATE_FILES: list[str] = []


def _private_file(content: bytes) -> str:
    """Embedded certificate data as a file only this user can read (ssl wants paths), removed at exit."""
    fd, path = tempfile.mkstemp(prefix="vkprovider-kubeconfig-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    if not _PRIVATE_FILES:
        atexit.register(_remove_private_files)
    _PRIVATE_FILES.append(path)
    return path


def _remove_private_files() -> None:
    for path in _PRIVATE_FILES:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def _load_configuration(kubeconfig: str | None) -> Any:
    if kubeconfig is None:
        return _in_cluster()
    direct = static_kubeconfig(kubeconfig)
    if direct is not None:
        return direct
    from kubernetes_asyncio import client as k8s_client  # kubeconfig files only: contexts, exec plugins, ...
    from kubernetes_asyncio import config as k8s_config

    conf = k8s_client.Configuration()
    await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=conf, persist_config=False)
    return conf


async def _auth_header(conf: Any) -> str | None:
    if isinstance(conf, _Direct):
        return conf.header
    if "BearerToken" in conf.api_key:
        value = await conf.get_api_key_with_prefix("BearerToken")
        # Tokens read from files (tokenFile) keep their trailing newline: never put that in a header.
        header = str(value).strip() if value else ""
        return header or None
    if conf.username or conf.password:
        return _basic(conf.username or "", conf.password or "")
    return None


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _ssl_context(conf: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=conf.ssl_ca_cert)
    if conf.cert_file:
        ctx.load_cert_chain(conf.cert_file, keyfile=conf.key_file)
    if not conf.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------------------------- client


def proxy_from_url(url: str | None) -> http1.Proxy | None:
    """A kubeconfig ``proxy-url``: HTTP proxies only (HTTPS API servers are reached through CONNECT)."""
    if not url:
        return None
    parsed = yarl.URL(url)
    if parsed.scheme != "http" or not parsed.host:
        raise ValueError(f"proxy-url {url!r}: only http:// proxies are supported")
    authorization = None
    if parsed.user is not None:
        pair = f"{parsed.user}:{parsed.password or ''}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode()
    return http1.Proxy(parsed.host, parsed.port or 80, authorization)
