"""The kubelet API of the vnodes this replica holds, shaped like virtual-kubelet's node/api, served over TLS.

The apiserver calls a node's kubelet at the node's address and ``daemonEndpoints`` port for ``kubectl logs``,
``exec``, ``attach`` and ``port-forward``. A vnode's address is the replica that holds it (``VKP_KUBELET_ADDRESS``,
the pod IP; the address moves with a hand-over), so whichever replica the apiserver reaches serves the vnodes it
holds and answers 404 for others. Routes exist only for what a Koupleless module can do:

- ``GET /containerLogs/{namespace}/{pod}/{container}``: the biz's lifecycle log (``controllers.bizlog``) with
  ``tailLines``, ``limitBytes``, ``sinceSeconds``, ``sinceTime``, ``timestamps`` and ``follow``;
- ``GET /metrics/resource/{node}`` and ``GET /stats/summary/{node}``: the vnode's CPU and memory from its base's
  health answers (``core.stats``), for ``kubectl top node``;
- exec, attach, run and port-forward: a clear "not supported for Koupleless modules" error.

Usage is routed by the path, not the port: one replica serves many vnodes on one address and port, and neither a
kubelet's ``/metrics/resource`` nor its ``/stats/summary`` names the node, so each vnode's Node carries
``metrics.k8s.io/resource-metrics-path: /metrics/resource/<vnode>``, the path metrics-server (0.7 and later)
scrapes instead (``core.node``); the bare kubelet paths answer 404 saying so. The vnode named in the path is
authorized, and served only by the replica that holds it. A scrape asks the base for health first when the last
answer is older than ``VKP_BASE_METRICS_MAX_AGE`` and waits for it at most ``READ_WAIT_S`` (a read under way is
shared); a vnode whose base is not Ready, or that has no answer, is 503 (metrics-server then leaves it out, as a
kubelet that does not answer).

Authentication as the kubelet does it: a client certificate verified against the cluster's client CA (the
``client-ca-file`` of ConfigMap kube-system/extension-apiserver-authentication, re-read every 10 minutes), or a
bearer token through a TokenReview; neither is 401. That CA is the only trust for client certificates, as a kubelet's
``--client-ca-file``: the TLS context is a bare ``ssl.SSLContext`` (no default verify paths or system store, no
``SSLKEYLOGFILE``), so a certificate of any other CA the machine trusts fails the handshake. Authorization through a
SubjectAccessReview on ``nodes/<vnode>`` with the kubelet's subresource mapping (``log`` for /logs, ``stats`` for
/stats, ``metrics`` for /metrics, else ``proxy``) and the verb of the HTTP method; denied is 403. Both answers are
cached briefly.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from vkprovider import serving
from vkprovider.config import ConfigError, Settings
from vkprovider.core.logview import format_line, parse_query, render
from vkprovider.core.stats import METRICS_CONTENT_TYPE, Reading, refresh_due, resource_metrics, stats_summary
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kubelet import selfsigned

log = logging.getLogger(__name__)

CA_REFRESH_S = 600.0
AUTHN_TTL_S = 60.0
AUTHZ_TTL_S = 300.0  # an allowed SubjectAccessReview, as the kubelet caches it (5 min): metrics-server asks per vnode
DENY_TTL_S = 5.0
READ_WAIT_S = 3.0  # a scrape waits this long for a fresh health answer (metrics-server gives a kubelet 10 s)
WHICH_VNODE = ("{path} names no node, and this kubelet API serves many vnodes: ask {path}/<vnode>, the path each "
               "vnode's Node names in its annotation metrics.k8s.io/resource-metrics-path (metrics-server 0.7 and "
               "later scrapes it)")
NOT_SUPPORTED = ("{what} is not supported for Koupleless modules: a module is a biz inside its base's JVM, "
                 "with no process or container of its own to {verb}")


class LogLine(Protocol):
    at: float
    text: str


class ModuleSource(Protocol):
    """What the kubelet API needs from the controllers."""

    def pod(self, key: str) -> Mapping[str, Any] | None: ...

    def serves(self, node: str) -> bool: ...

    def lines(self, node: str, name: str, version: str) -> list[Any]: ...

    def follow(self, node: str, name: str, version: str) -> AsyncIterator[Any]: ...

    def readings(self, node: str) -> tuple[Reading | None, Reading | None]:
        """The latest health answer of the vnode's base and the one before it."""
        ...

    def base_ready(self, node: str) -> bool: ...

    async def read_health(self, node: str, timeout_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class User:
    name: str
    groups: tuple[str, ...]


async def self_signed(address: str, directory: Path) -> tuple[Path, Path]:
    """A serving certificate for ``address`` (files in ``directory``): when none is configured. Made in a child
    process (``kubelet.selfsigned``: cryptography stays out of this one)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-P", selfsigned.__file__, address, str(directory),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await child.communicate()
    if child.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or [f"exit code {child.returncode}"])[-1]
        raise ConfigError(f"cannot make the kubelet API's self-signed certificate ({last}): set VKP_KUBELET_TLS_CERT "
                          "and VKP_KUBELET_TLS_KEY, or KUBELET_PROXY_ENABLED=false")
    return directory / selfsigned.CERT_FILE, directory / selfsigned.KEY_FILE


class KubeletApi:
    def __init__(self, settings: Settings, kube: Kube, source: ModuleSource, address: str) -> None:
        self._settings = settings
        self._kube = kube
        self._source = source
        self._address = address
        self._served: serving.Served | None = None
        self._context: ssl.SSLContext | None = None
        self._client_ca: str = ""
        self._tokens: dict[str, tuple[float, User | None]] = {}
        self._decisions: dict[tuple[str, tuple[str, ...], str, str, str], tuple[float, bool]] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def port(self) -> int:
        assert self._served is not None
        return self._served.port

    async def start(self) -> None:
        s = self._settings
        if s.kubelet_tls_cert and s.kubelet_tls_key:
            cert, key = Path(s.kubelet_tls_cert), Path(s.kubelet_tls_key)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="vkprovider-kubelet-")
            cert, key = await self_signed(self._address, Path(self._tmp.name))
        # Bare, not ssl.create_default_context (module docstring): trusted are only the CAs _load_client_ca adds.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert), str(key))
        context.verify_mode = ssl.CERT_OPTIONAL  # a caller without a certificate may bring a bearer token
        self._context = context
        await self._load_client_ca()
        app = serving.application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._container_logs)
        app.router.add_get("/metrics/resource/{node}", self._resource_metrics)
        app.router.add_get("/stats/summary/{node}", self._stats_summary)
        app.router.add_get("/metrics/resource", self._which_vnode)
        app.router.add_get("/stats/summary", self._which_vnode)
        for verb in ("exec", "attach", "run", "portForward"):
            app.router.add_route("*", f"/{verb}/{{tail:.*}}", self._not_supported)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._served = await serving.serve(app, name="kubelet", host=s.kubelet_host, port=s.kubelet_port,
                                           setting="KUBELET_PROXY_PORT", max_connections=1024,
                                           header_timeout_s=s.http_header_timeout_s, ssl_context=context)
        log.info("kubelet API on %s:%d (vnode address %s)", s.kubelet_host, self.port, self._address)

    async def run(self) -> None:
        """Refresh the cluster's client CA until cancelled (a root task; the listener runs on its own)."""
        await self._refresh_forever()

    async def stop(self) -> None:
        if self._served is not None:
            await self._served.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    # --- authentication and authorization -----------------------------------------------------------------

    async def _load_client_ca(self) -> None:
        try:
            cm = await self._kube.get("/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication")
        except ApiError as exc:
            log.warning("cannot read the cluster's client CA (kube-system/extension-apiserver-authentication): "
                        "%s; only bearer tokens are accepted", exc)
            return
        pem = str(((cm or {}).get("data") or {}).get("client-ca-file") or "")
        if pem and pem != self._client_ca and self._context is not None:
            self._context.load_verify_locations(cadata=pem)
            self._client_ca = pem

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(CA_REFRESH_S)
            await self._load_client_ca()

    async def _authenticate(self, request: web.Request) -> User | None:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return await self._token_user(header[7:].strip())
        peer = request.transport.get_extra_info("peercert") if request.transport is not None else None
        if peer:  # verified against the client CA by the TLS handshake
            subject = [pair for rdn in peer.get("subject", ()) for pair in rdn]
            cn = next((v for k, v in subject if k == "commonName"), "")
            groups = tuple(v for k, v in subject if k == "organizationName")
            return User(cn, groups) if cn else None
        return None

    async def _token_user(self, token: str) -> User | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._tokens.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        try:
            answer = await self._kube.create("/apis/authentication.k8s.io/v1/tokenreviews", review, field_manager=None)
        except ApiError as exc:
            log.warning("TokenReview failed: %s", exc)
            return None
        status = (answer or {}).get("status") or {}
        user = None
        if status.get("authenticated"):
            info = status.get("user") or {}
            user = User(str(info.get("username") or ""), tuple(str(g) for g in info.get("groups") or ()))
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[digest] = (now + (AUTHN_TTL_S if user else DENY_TTL_S), user)
        return user

    async def _authorized(self, user: User, node: str, subresource: str, verb: str) -> bool:
        key = (user.name, user.groups, node, subresource, verb)
        now = time.monotonic()
        cached = self._decisions.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": user.name, "groups": list(user.groups),
                           "resourceAttributes": {"verb": verb, "resource": "nodes", "subresource": subresource,
                                                  "name": node}}}
        try:
            answer = await self._kube.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", review,
                                             field_manager=None)
            allowed = bool(((answer or {}).get("status") or {}).get("allowed"))
        except ApiError as exc:
            log.warning("SubjectAccessReview failed: %s", exc)
            return False
        if len(self._decisions) > 10_000:
            self._decisions.clear()
        self._decisions[key] = (now + (AUTHZ_TTL_S if allowed else DENY_TTL_S), allowed)
        return allowed

    async def _check(self, request: web.Request, node: str, subresource: str = "proxy") -> web.Response | None:
        user = await self._authenticate(request)
        if user is None:
            return web.Response(status=401, text="Unauthorized")
        verb = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(request.method, "get")
        if not await self._authorized(user, node, subresource, verb):
            return web.Response(status=403, text=f"Forbidden (user={user.name}, verb={verb}, resource=nodes, "
                                                 f"subresource={subresource}, name={node})")
        return None

    # --- routes ---------------------------------------------------------------------------------------------

    async def _container_logs(self, request: web.Request) -> web.StreamResponse:
        namespace, name, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        pod = self._source.pod(f"{namespace}/{name}")
        node = str(((pod or {}).get("spec") or {}).get("nodeName") or "")
        denied = await self._check(request, node or "unknown")
        if denied is not None:
            return denied
        if pod is None or not self._source.serves(node):
            return web.Response(status=404, text=f"pod {namespace}/{name} is not on a vnode this replica serves")
        spec = next((c for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") == container), None)
        if spec is None:
            return web.Response(status=404, text=f"container {container} is not in pod {namespace}/{name}")
        version = next((str(e.get("value")) for e in spec.get("env") or [] if e.get("name") == "BIZ_VERSION"), "")
        query = parse_query(request.query, time.time())
        if isinstance(query, str):
            return web.Response(status=400, text=query)
        body = render(((line.at, line.text) for line in self._source.lines(node, container, version)), query)
        if not query.follow:
            return web.Response(body=body, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(body)
        sent = len(body)
        async for line in self._source.follow(node, container, version):
            if query.since is not None and line.at < query.since:
                continue
            chunk = format_line(line.at, line.text, query.timestamps)
            if query.limit_bytes is not None:
                chunk = chunk[: max(0, query.limit_bytes - sent)]
                if not chunk:
                    break
            await response.write(chunk)
            sent += len(chunk)
            if self._source.pod(f"{namespace}/{name}") is None:
                break
        return response

    async def _usage(self, request: web.Request, subresource: str) -> web.Response | tuple[Reading, Reading | None]:
        """The readings to serve for the vnode of the path, or the answer that refuses it."""
        node = request.match_info["node"]
        denied = await self._check(request, node, subresource)
        if denied is not None:
            return denied
        if not self._source.serves(node):
            return web.Response(status=404, text=f"vnode {node} is not served by this replica")
        if not self._source.base_ready(node):
            return web.Response(status=503, text=f"the base of vnode {node} is not Ready: no figures")
        latest, earlier = self._source.readings(node)
        if refresh_due(latest, time.time(), self._settings.base_metrics_max_age_s):
            await self._source.read_health(node, READ_WAIT_S)
            latest, earlier = self._source.readings(node)
        if latest is None:
            return web.Response(status=503, text=f"the base of vnode {node} has not answered health yet")
        return latest, earlier

    async def _resource_metrics(self, request: web.Request) -> web.Response:
        usage = await self._usage(request, "metrics")
        if isinstance(usage, web.Response):
            return usage
        return web.Response(body=resource_metrics(usage[0]).encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _stats_summary(self, request: web.Request) -> web.Response:
        usage = await self._usage(request, "stats")
        if isinstance(usage, web.Response):
            return usage
        return web.json_response(stats_summary(request.match_info["node"], *usage))

    async def _which_vnode(self, request: web.Request) -> web.Response:
        denied = await self._check(request, "unknown", "stats" if request.path.startswith("/stats") else "metrics")
        if denied is not None:
            return denied
        return web.Response(status=404, text=WHICH_VNODE.format(path=request.path))

    async def _not_supported(self, request: web.Request) -> web.Response:
        parts = request.path.strip("/").split("/")
        what = {"exec": "exec", "attach": "attach", "run": "run", "portForward": "port-forward"}.get(parts[0], parts[0])
        node = ""
        if len(parts) >= 3:
            pod = self._source.pod(f"{parts[1]}/{parts[2]}")
            node = str(((pod or {}).get("spec") or {}).get("nodeName") or "")
        denied = await self._check(request, node or "unknown")
        if denied is not None:
            return denied
        verb = {"exec": "run a command in", "attach": "attach to", "run": "run a command in",
                "port-forward": "forward ports of"}.get(what, what)
        return web.Response(status=400, text=NOT_SUPPORTED.format(what=what, verb=verb))

    async def _not_found(self, request: web.Request) -> web.Response:
        denied = await self._check(request, "unknown")
        if denied is not None:
            return denied
        return web.Response(status=404, text=f"{request.path}: not served for Koupleless modules")
