"""A small, fast Kubernetes REST client: raw JSON over keep-alive HTTP/1.1 connections (``http1.Pool``).

Why it exists: kubernetes-asyncio's generated models cost far too much CPU to build for thousands of pods and
nodes on a 2-core machine, and its watch gives up after one 410. We still use its *config loaders* (kubeconfig
files with client certificates, bearer tokens, exec plugins; in-cluster service-account config), then send every
request ourselves: orjson in and out, a bounded number of requests in flight, a timeout on every request,
tenacity retries only around a single call that is safe to repeat, and client-go compatible metrics
(``rest_client_requests_total{code,method}``, ``rest_client_request_duration_seconds{verb}``).

The parsing helpers (:func:`api_error_from_response`, :func:`parse_watch_line`, :class:`LineSplitter`,
:func:`should_retry`) are pure functions so they are unit-tested without a cluster.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import copy
import logging
import os
import ssl
import tempfile
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlencode

import orjson
import yaml
import yarl
from prometheus_client import Counter, Histogram
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from vkprovider import __version__, http1
from vkprovider.core.backoff import API_CALL

log = logging.getLogger(__name__)

PatchKind = Literal["strategic", "merge", "json", "apply"]

PATCH_CONTENT_TYPES: dict[str, str] = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    # JSON is YAML: the apiserver accepts a JSON body under the apply content type.
    "apply": "application/apply-patch+yaml",
}

DEFAULT_FIELD_MANAGER = "vkprovider"

#: Methods retried on any transient failure unless the caller says otherwise. PUT is not among them: replaying a
#: replace that did commit returns a misleading 409. DELETE is: a replay that finds the object gone is a 404,
#: which ``delete`` already treats as success.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})

MAX_ATTEMPTS = 5
_URL_CACHE_SIZE = 20_000  # write targets kept encoded (a Lease, Node and pod status each: thousands)
_PATH_SAFE = "/:@!$&'()*+,;=-._~"  # RFC 3986 pchar and "/": what a path keeps unencoded
MAX_RETRY_AFTER_S = 30.0
#: A watch is dead once silent for its timeoutSeconds plus this (see ``Kube.watch``).
WATCH_SILENCE_GRACE_S = 15.0

#: Where the kubelet mounts the service-account token (rotated in place) and the cluster CA in a pod.
IN_CLUSTER_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
_TOKEN_RECHECK_S = 1.0

REQUESTS = Counter(
    "rest_client_requests_total",
    "Number of HTTP requests, partitioned by status code ('<error>' when no response), method, and host.",
    ["code", "method", "host"],
)
REQUEST_DURATION = Histogram(
    "rest_client_request_duration_seconds",
    "Request latency in seconds, by verb and host (WATCH: time to the response headers).",
    ["verb", "host"],
    buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0),
)


# --------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A non-2xx answer from the API server (or, as :class:`ApiConnectionError`, no answer at all).

    ``reason`` is the Status ``reason`` (``NotFound``, ``AlreadyExists``, ``Conflict``, ``Expired`` ...) when the
    server sent a Status object, else the HTTP reason phrase. ``body`` is the parsed Status dict, or the raw text
    when the body was not JSON.
    """

    def __init__(self, status: int, reason: str, message: str, body: Any = None,
                 *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body
        self.retry_after_s = retry_after_s

    @property
    def is_not_found(self) -> bool:
        return self.status == 404

    @property
    def is_already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def is_conflict(self) -> bool:
        """An optimistic-concurrency conflict (stale resourceVersion / failed precondition), not AlreadyExists."""
        return self.status == 409 and self.reason != "AlreadyExists"

    @property
    def is_other_object(self) -> bool:
        """A write carrying ``metadata.uid`` met another object of the same name: the one it was meant for is gone
        (the apiserver refuses the uid change as a failed precondition, 409, or as an immutable field, 422)."""
        text = self.message.lower()
        return (self.status == 409 and "precondition" in text and "uid" in text) or (
            self.status == 422 and "metadata.uid" in text)

    @property
    def is_gone(self) -> bool:
        """The resourceVersion or continue token is too old: start again with a fresh LIST."""
        return self.status == 410 or self.reason in ("Expired", "Gone")

    @property
    def is_forbidden(self) -> bool:
        return self.status == 403

    @property
    def is_namespace_terminating(self) -> bool:
        """A create refused because its namespace is being deleted (403, cause ``NamespaceTerminating``)."""
        if self.status != 403 or not isinstance(self.body, Mapping):
            return False
        details = self.body.get("details")
        causes = details.get("causes") if isinstance(details, Mapping) else None
        return isinstance(causes, list) and any(
            isinstance(c, Mapping) and c.get("reason") == "NamespaceTerminating" for c in causes)

    @property
    def is_unauthorized(self) -> bool:
        return self.status == 401

    @property
    def is_too_many_requests(self) -> bool:
        return self.status == 429

    @property
    def is_server_error(self) -> bool:
        return self.status >= 500

    @property
    def is_retryable(self) -> bool:
        """Worth trying again later (by the caller's queue): transport failures, 429, 5xx, 410."""
        return self.status in (0, 429) or self.status >= 500 or self.is_gone


class ApiConnectionError(ApiError):
    """No HTTP answer: connection refused, reset, TLS failure or timeout. ``status`` is 0.

    ``sent`` is False only when the failure provably happened before the request left (the connection was never
    established), which makes even a non-idempotent request safe to retry.
    """

    def __init__(self, reason: str, message: str, *, sent: bool) -> None:
        super().__init__(0, reason, message, None)
        self.sent = sent


class WatchStalled(ApiConnectionError):
    """A watch delivered no byte for its ``timeoutSeconds`` + ``WATCH_SILENCE_GRACE_S``: the server would have
    ended it by then, so its connection is dead (see ``Kube.watch``). Its resourceVersion is still good."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form only, as the apiserver sends), capped."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def error_from_status(status_obj: Mapping[str, Any], *, http_status: int = 0, http_reason: str = "",
                      retry_after_s: float | None = None) -> ApiError:
    """Build an :class:`ApiError` from a ``kind: Status`` dict (an error body or a watch ERROR event object)."""
    code = status_obj.get("code")
    status = code if isinstance(code, int) and code > 0 else http_status
    reason = status_obj.get("reason") or http_reason or "Unknown"
    message = status_obj.get("message") or ""
    return ApiError(status, str(reason), str(message), dict(status_obj), retry_after_s=retry_after_s)


def api_error_from_response(status: int, http_reason: str | None, raw: bytes,
                            retry_after: str | None = None) -> ApiError:
    """Map a non-2xx HTTP response to an :class:`ApiError`, using its Status body when there is one."""
    retry_after_s = parse_retry_after(retry_after)
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("kind") == "Status":
        return error_from_status(parsed, http_status=status, http_reason=http_reason or "",
                                 retry_after_s=retry_after_s)
    text = raw.decode("utf-8", "replace")[:2048]
    return ApiError(status, http_reason or "Unknown", text, parsed if parsed is not None else text,
                    retry_after_s=retry_after_s)


def should_retry(exc: BaseException, *, idempotent: bool) -> bool:
    """Whether one call may be repeated after ``exc``.

    - 429: the server rejected the request before handling it (API priority and fairness) - always safe.
    - A connection that was never established: the request was not sent - always safe.
    - Other transport failures and 5xx: only when repeating the call cannot do harm (``idempotent``).
    """
    if isinstance(exc, ApiConnectionError):
        if exc.reason == "SSLError":
            return False  # a configuration problem; repeating it changes nothing
        return (not exc.sent) or idempotent
    if isinstance(exc, ApiError):
        if exc.status == 429:
            return True
        return idempotent and exc.status >= 500 and exc.status != 501
    return False


def retry_wait_s(exc: BaseException | None, failed_attempts: int) -> float:
    """Seconds to wait after ``failed_attempts`` failures: the server's Retry-After, else exponential backoff."""
    if isinstance(exc, ApiError) and exc.retry_after_s is not None:
        return exc.retry_after_s
    return API_CALL.delay(failed_attempts)  # the one backoff policy (core.backoff)


def _later_retry_wait(state: RetryCallState) -> float:
    """tenacity's wait for the attempts after the first (which ran outside tenacity, see `Kube.request`)."""
    exc = state.outcome.exception() if state.outcome is not None else None
    return retry_wait_s(exc, state.attempt_number + 1)


# ---------------------------------------------------------------------------------------- watch lines


class LineSplitter:
    """Reassemble newline-delimited JSON from arbitrary network chunks (no line-length limit)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        if b"\n" not in chunk:
            return []
        *lines, rest = bytes(self._buf).split(b"\n")
        self._buf = bytearray(rest)
        return [line for line in lines if line.strip()]

    def flush(self) -> bytes | None:
        """The trailing bytes when the stream ends without a final newline."""
        rest = bytes(self._buf).strip()
        self._buf = bytearray()
        return rest or None


def parse_watch_line(line: bytes) -> dict[str, Any] | None:
    """Parse one watch line into ``{"type": ..., "object": {...}}``; None when it is not a watch event."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    if not isinstance(event.get("type"), str) or not isinstance(event.get("object"), dict):
        return None
    return event


# ---------------------------------------------------------------------------------------- credentials


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


class Kube:
    """Raw-JSON access to one API server. Create with :meth:`connect`; close with :meth:`close`."""

    def __init__(self, host: str, pool: http1.Pool, credentials: _Credentials, *,
                 max_inflight: int = 64, timeout_s: float = 30.0, instance: str = "") -> None:
        self._host = host.rstrip("/")
        self._host_label = host.split("://", 1)[-1].rstrip("/")  # client-go's host label: host:port
        for verb in ("GET", "POST", "PUT", "PATCH", "DELETE", "WATCH"):
            REQUEST_DURATION.labels(verb, self._host_label)
            REQUESTS.labels("200", verb, self._host_label)
        self._pool = pool
        self._credentials = credentials
        self._sem = asyncio.Semaphore(max_inflight)
        self._targets: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._timeout_s = timeout_s
        # Which replica wrote what shows in the apiserver's audit log: the instance rides in the User-Agent.
        self._user_agent = f"vkprovider/{__version__}" + (f" ({instance})" if instance else "")
        self._origin = f"http://{pool.authority}" if pool.absolute_targets else ""
        self._fixed_for: str | None = None
        self._fixed = ""

    @classmethod
    async def connect(cls, kubeconfig: str | None, *, max_inflight: int = 64, timeout_s: float = 30.0,
                      instance: str = "") -> Kube:
        """Load a kubeconfig file (or the in-cluster service account when None) and open a connection pool."""
        conf = await _load_configuration(kubeconfig)
        if kubeconfig is None:
            credentials = _Credentials(None, token_file=IN_CLUSTER_TOKEN_FILE)
        else:
            credentials = _Credentials(await _auth_header(conf), kubeconfig=kubeconfig)
        host = str(conf.host)
        url = yarl.URL(host)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"the API server address {host!r} is not an http(s) URL")
        tls = _ssl_context(conf) if url.scheme == "https" else None
        # Requests are bounded by the semaphore; the pool leaves room for lanes (``lane``: the Lease keeper's 128)
        # and long-lived watches.
        pool = http1.Pool(url.host, url.port or (443 if tls else 80), tls=tls,
                          server_hostname=getattr(conf, "tls_server_name", None) or None,
                          proxy=proxy_from_url(getattr(conf, "proxy", None) or None), limit=max_inflight + 512,
                          connect_timeout_s=timeout_s)
        return cls(host, pool, credentials, max_inflight=max_inflight, timeout_s=timeout_s, instance=instance)

    @property
    def host(self) -> str:
        return self._host

    def lane(self, max_inflight: int) -> Kube:
        """The same server, connection pool and credentials with a request bound of its own: for requests that
        must not wait behind bulk writes in this process (a vnode's lease renewal behind a rollout's pod status
        PATCHes). Close the client the lane came from, not the lane."""
        lane = copy.copy(self)
        lane._sem = asyncio.Semaphore(max_inflight)
        return lane

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------ requests

    def _head(self, method: str, target: str, content_type: str | None, length: int | None) -> bytes:
        """A request head; the headers every request carries are joined once per credential."""
        auth = self._credentials.header()
        if auth != self._fixed_for or not self._fixed:
            fixed = [("Accept", "application/json"), ("User-Agent", self._user_agent)]
            if auth:
                fixed.append(("Authorization", auth))
            self._fixed = http1.request_head("GET", "/", self._pool.authority, fixed, None).decode("latin-1")
            self._fixed = self._fixed.split("\r\n", 1)[1].removesuffix("\r\n")  # "Host: ...\r\n...\r\n"
            self._fixed_for = auth
        extra = f"Content-Type: {content_type}\r\n" if content_type is not None else ""
        if length is not None:
            extra += f"Content-Length: {length}\r\n"
        return f"{method} {self._origin}{target} HTTP/1.1\r\n{self._fixed}{extra}\r\n".encode("latin-1")

    def _target(self, path: str, query: dict[str, str] | None, *, remember: bool) -> str:
        """The encoded request target. Writes remember theirs: a renewal every 10 s per Lease goes to the same
        one (bounded: forgotten when the memo grows past the limit)."""
        key = (path, tuple(query.items()) if query else ())
        target = self._targets.get(key) if remember else None
        if target is None:
            target = quote(path if path.startswith("/") else "/" + path, safe=_PATH_SAFE)
            if query:
                target += "?" + urlencode(query, quote_via=quote)
            if remember:
                if len(self._targets) >= _URL_CACHE_SIZE:
                    self._targets.clear()
                self._targets[key] = target
        return target

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      timeout_s: float | None = None, idempotent: bool | None = None) -> Any:
        """Send one request and return the parsed JSON answer (None for an empty body).

        Raises :class:`ApiError` for a non-2xx status and :class:`ApiConnectionError` when no answer came.
        Retries (at most ``MAX_ATTEMPTS`` in all, honouring ``Retry-After``) follow :func:`should_retry`;
        ``idempotent`` defaults to True for GET/HEAD/OPTIONS/DELETE.
        """
        method = method.upper()
        safe = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes | bytearray):
            data = bytes(body)
        else:
            data = orjson.dumps(body)
        query = _clean_params(params)
        timeout = timeout_s if timeout_s is not None else self._timeout_s
        refreshed = False
        ctype = content_type if data is not None else None
        while True:
            try:
                try:  # the first attempt needs no retry machinery (the hot path: one object fewer per call)
                    return await self._send_once(method, path, query, data, ctype, timeout)
                except ApiError as first:
                    if not should_retry(first, idempotent=safe):
                        raise
                    await asyncio.sleep(retry_wait_s(first, 1))
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(MAX_ATTEMPTS - 1),
                    wait=_later_retry_wait,
                    retry=retry_if_exception(lambda e: should_retry(e, idempotent=safe)),
                    reraise=True,
                ):
                    with attempt:
                        return await self._send_once(method, path, query, data, ctype, timeout)
            except ApiError as exc:
                # A 401 means the request was refused before it was processed: safe to repeat once with
                # fresh credentials (rotated service-account token, expired exec-plugin token).
                if exc.status == 401 and not refreshed and await self._credentials.refresh():
                    refreshed = True
                    continue
                raise
            raise AssertionError("unreachable")  # pragma: no cover - tenacity either returns or raises

    async def _send_once(self, method: str, path: str, query: dict[str, str] | None, data: bytes | None,
                         content_type: str | None, timeout_s: float) -> Any:
        target = self._target(path, query, remember=method != "GET")
        request = self._head(method, target, content_type, len(data) if data is not None else None)
        if data:
            request += data
        async with self._sem:
            started = time.perf_counter()
            code = "<error>"
            try:
                answer = await self._pool.request(request, timeout_s=timeout_s)
                code = str(answer.status)
            except http1.HttpError as exc:
                raise _connection_error(exc, f"{method} timed out after {timeout_s:g}s") from exc
            finally:
                REQUEST_DURATION.labels(method, self._host_label).observe(time.perf_counter() - started)
                REQUESTS.labels(code, method, self._host_label).inc()
        raw = answer.body
        if answer.status >= 300:
            raise api_error_from_response(answer.status, answer.reason, raw, answer.headers.get("retry-after"))
        if not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw.decode("utf-8", "replace")

    # ------------------------------------------------------------------------------------ conveniences

    async def get(self, path: str, *, params: Mapping[str, Any] | None = None,
                  timeout_s: float | None = None) -> Any:
        return await self.request("GET", path, params=params, timeout_s=timeout_s)

    async def create(self, path: str, obj: Mapping[str, Any], *, params: Mapping[str, Any] | None = None,
                     field_manager: str | None = DEFAULT_FIELD_MANAGER) -> Any:
        """POST ``obj`` to the collection at ``path``."""
        query = dict(params or {})
        if field_manager:
            query.setdefault("fieldManager", field_manager)
        return await self.request("POST", path, params=query, body=obj)

    async def replace(self, path: str, obj: Mapping[str, Any], *, params: Mapping[str, Any] | None = None,
                      field_manager: str | None = DEFAULT_FIELD_MANAGER) -> Any:
        """PUT ``obj`` at ``path`` (include metadata.resourceVersion for optimistic concurrency)."""
        query = dict(params or {})
        if field_manager:
            query.setdefault("fieldManager", field_manager)
        return await self.request("PUT", path, params=query, body=obj)

    async def patch(self, path: str, body: Any, *, kind: PatchKind = "strategic",
                    field_manager: str = DEFAULT_FIELD_MANAGER, force: bool | None = None,
                    params: Mapping[str, Any] | None = None) -> Any:
        """PATCH ``path``. ``kind`` picks strategic-merge, JSON merge, JSON patch (a list) or server-side apply.

        For ``apply``, ``force`` defaults to True (a controller owns its fields) and ``body`` is the full intent.
        """
        try:
            content_type = PATCH_CONTENT_TYPES[kind]
        except KeyError:
            raise ValueError(f"unknown patch kind {kind!r}") from None
        query = dict(params or {})
        query["fieldManager"] = field_manager
        if kind == "apply":
            query["force"] = "true" if force is None or force else "false"
        elif force is not None:
            raise ValueError("force only applies to server-side apply")
        return await self.request("PATCH", path, params=query, body=body, content_type=content_type)

    async def delete(self, path: str, *, grace_period_s: int | None = None,
                     preconditions: Mapping[str, str] | None = None,
                     propagation_policy: str | None = None) -> Any:
        """DELETE ``path``; returns the server's answer, or None when the object was already gone (404)."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_s is not None:
            options["gracePeriodSeconds"] = grace_period_s
        if preconditions:
            options["preconditions"] = dict(preconditions)
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        try:
            return await self.request("DELETE", path, body=options)
        except ApiError as exc:
            if exc.is_not_found:
                return None
            raise

    async def list_all(self, path: str, *, params: Mapping[str, Any] | None = None,
                       page_size: int = 500, max_restarts: int = 3) -> tuple[list[dict[str, Any]], str, str]:
        """LIST every item under ``path`` in pages of ``page_size`` (limit/continue).

        Returns ``(items, resourceVersion, kind)`` where kind is the item kind (``PodList`` -> ``Pod``). Items get
        ``kind``/``apiVersion`` filled in, which LIST answers leave out. A 410 on a continue token (the snapshot
        expired mid-way) restarts the LIST from the first page, up to ``max_restarts`` times.
        """
        restarts = 0
        while True:
            items: list[dict[str, Any]] = []
            token: str | None = None
            try:
                while True:
                    query = dict(params or {})
                    query["limit"] = str(page_size)
                    if token:
                        query["continue"] = token
                    page = await self.request("GET", path, params=query)
                    if not isinstance(page, dict):
                        raise ApiError(500, "InvalidList", f"LIST {path} did not return an object", page)
                    kind = str(page.get("kind") or "")
                    kind = kind[: -len("List")] if kind.endswith("List") else kind
                    api_version = page.get("apiVersion")
                    for item in page.get("items") or ():
                        if isinstance(item, dict):
                            if kind:
                                item.setdefault("kind", kind)
                            if api_version:
                                item.setdefault("apiVersion", api_version)
                            items.append(item)
                    meta = page.get("metadata") or {}
                    token = meta.get("continue") or None
                    if not token:
                        return items, str(meta.get("resourceVersion") or ""), kind
            except ApiError as exc:
                if token and exc.is_gone and restarts < max_restarts:
                    restarts += 1
                    log.info("LIST %s: continue token expired; restarting the LIST", path)
                    continue
                raise

    async def server_version(self) -> dict[str, Any]:
        """GET /version (``{"major": "1", "minor": "37", "gitVersion": ...}``)."""
        answer = await self.get("/version")
        return answer if isinstance(answer, dict) else {}

    # ------------------------------------------------------------------------------------ watch

    async def watch(self, path: str, *, params: Mapping[str, Any] | None = None
                    ) -> AsyncGenerator[dict[str, Any], None]:
        """Stream raw watch events (``{"type", "object"}`` dicts) as they arrive; ends when the server ends it.

        ``params`` usually carries ``resourceVersion``, ``labelSelector``/``fieldSelector`` and
        ``timeoutSeconds`` (default 300); ``allowWatchBookmarks`` is on. ERROR events are yielded as they come
        (the caller decides; a 410 means re-LIST). Raises :class:`ApiError` when the watch cannot start.
        Consume it inside ``contextlib.aclosing`` so an abandoned watch frees its connection at once.
        Watches do not count against ``max_inflight`` and are not retried: informers own that policy.

        Liveness: the server ends every watch after ``timeoutSeconds``, so a healthy watch is never silent longer
        than that (events, bookmarks, or the end itself are bytes). A watch that delivered no byte for
        ``timeoutSeconds + WATCH_SILENCE_GRACE_S`` is dead - a connection blackholed between here and the
        apiserver, which TCP keepalive cannot see when a proxy in the middle still acknowledges - and raises
        :class:`WatchStalled`.
        """
        query = _clean_params(params) or {}
        query["watch"] = "true"
        query.setdefault("allowWatchBookmarks", "true")
        server_timeout = int(query.setdefault("timeoutSeconds", "300"))
        request = self._head("GET", self._target(path, query, remember=False), None, None)
        started = time.perf_counter()
        code = "<error>"
        try:
            answer, streamed = await self._pool.stream(request, head_timeout_s=self._timeout_s)
            code = str(answer.status)
        except http1.HttpError as exc:
            raise _connection_error(exc, "watch did not start in time") from exc
        finally:
            REQUEST_DURATION.labels("WATCH", self._host_label).observe(time.perf_counter() - started)
            REQUESTS.labels(code, "WATCH", self._host_label).inc()
        try:
            chunks = streamed.chunks(silence_s=server_timeout + WATCH_SILENCE_GRACE_S)
            if answer.status >= 300:
                raw = b"".join([chunk async for chunk in chunks])
                if answer.status == 401:
                    await self._credentials.refresh()
                raise api_error_from_response(answer.status, answer.reason, raw, answer.headers.get("retry-after"))
            splitter = LineSplitter()
            async for chunk in chunks:
                for line in splitter.feed(chunk):
                    event = parse_watch_line(line)
                    if event is None:
                        log.warning("watch %s: skipping a line that is not a watch event (%d bytes)",
                                    resource_of(path), len(line))
                        continue
                    yield event
            tail = splitter.flush()
            if tail is not None:
                event = parse_watch_line(tail)
                if event is not None:
                    yield event
        except http1.HttpError as exc:
            if exc.kind == "timeout":
                raise WatchStalled("Timeout", f"watch {resource_of(path)}: no byte for "
                                   f"{server_timeout + WATCH_SILENCE_GRACE_S:g}s", sent=True) from exc
            raise _connection_error(exc, "watch stream stalled") from exc
        finally:
            streamed.close()


def _connection_error(exc: http1.HttpError, timed_out: str) -> ApiConnectionError:
    """No HTTP answer, as the ApiError callers know (``should_retry`` reads ``reason`` and ``sent``)."""
    if exc.kind == "tls":
        return ApiConnectionError("SSLError", str(exc), sent=False)
    if exc.kind == "connect":
        return ApiConnectionError("ConnectError", str(exc), sent=False)
    if exc.kind == "timeout":
        return ApiConnectionError("Timeout", timed_out, sent=exc.sent)
    return ApiConnectionError("ServerDisconnectedError" if exc.kind == "closed" else "ProtocolError", str(exc),
                              sent=exc.sent)


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


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    """Query parameters as strings (booleans the Kubernetes way), dropping None values."""
    if not params:
        return None
    out: dict[str, str] = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


def resource_of(path: str) -> str:
    """The resource name of a collection path (``/api/v1/namespaces/x/pods`` -> ``pods``): a safe label."""
    parts = [p for p in path.split("?", maxsplit=1)[0].split("/") if p]
    return parts[-1] if parts else "unknown"

