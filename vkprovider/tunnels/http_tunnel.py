"""The HTTP tunnel: bases heartbeat to us over HTTP, and we call their arklet over HTTP.

Two halves share this class because a base that heartbeats over HTTP is commanded over HTTP:
- a small server (``POST /heartbeat``, ``POST /queryBaseline``; the lean ``http1`` server, the heartbeat being
  the most frequent request vkprovider receives) that treats every byte as hostile: size- and time-limited,
  token-authenticated, strictly validated by ``core.wire``, never crashing;
- an arklet client that copes with Netty arklet's quirks (no Content-Length, connection closed after the body,
  no answer at all to bad input), with a timeout on every call, a concurrency limit per base (not a global
  lock), and retries only for the idempotent queries.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from vkprovider import http1, serving
from vkprovider.config import Settings
from vkprovider.core import wire
from vkprovider.core.backoff import ARKLET_QUERY
from vkprovider.core.credentials import TOKEN_PREFIX, token_matches
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BizInfo, BizKey, BizSpec, CommandResult
from vkprovider.core.sanitize import clean
from vkprovider.serving import Served
from vkprovider.tunnels import metrics
from vkprovider.tunnels.base import BaseEvents, TunnelError
from vkprovider.tunnels.batch import BatchSupport, install_one_by_one

log = logging.getLogger(__name__)

TUNNEL_NAME: Final = "http"
_T = TypeVar("_T")

METRICS = metrics.TunnelMetrics.create(TUNNEL_NAME)

_QUERY_ATTEMPTS: Final = 3
_ARKLET_HEADERS: Final = (("Content-Type", "application/json"), ("Connection", "close"))


class ArkletTimeout(TunnelError):
    """Arklet did not answer in time (it sends nothing at all to input it cannot parse)."""


class _TransportError(Exception):
    """Internal: a transport failure worth retrying for idempotent calls (connection refused/reset)."""


class _BaseLimiter:
    """A semaphore per arklet endpoint, dropped when idle so the map does not grow with dead bases."""

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._slots: dict[str, tuple[asyncio.Semaphore, int]] = {}

    async def run(self, key: str, call: Callable[[], Awaitable[_T]]) -> _T:
        semaphore, users = self._slots.get(key) or (asyncio.Semaphore(self._limit), 0)
        self._slots[key] = (semaphore, users + 1)
        try:
            async with semaphore:
                return await call()
        finally:
            semaphore, users = self._slots[key]
            if users <= 1:
                del self._slots[key]
            else:
                self._slots[key] = (semaphore, users - 1)

    def __len__(self) -> int:
        return len(self._slots)


def _error(reason: str, status: int) -> http1.Response:
    return http1.Response(status, orjson.dumps({"error": reason}), "application/json")


_SUCCESS: Final = http1.Response(200, b"SUCCESS")


@dataclass(frozen=True, slots=True)
class _Credential:
    """What a heartbeat proved about who sent it."""

    identity: str | None  # the identity the credential names (per-base token, client certificate), if any
    shared: bool = False  # the shared VKP_HEARTBEAT_TOKEN (speaks for every base)


class HttpTunnel:
    """Tunnel over HTTP: heartbeat server plus arklet client. ``port`` is the bound port once started.

    Who may speak for a base: a per-base token (HMAC of the identity with VKP_HEARTBEAT_SECRET), a client
    certificate naming the identity (VKP_HTTP_CLIENT_CA), or the shared VKP_HEARTBEAT_TOKEN; with none of them
    only when VKP_ALLOW_UNAUTHENTICATED_BASES says so. Where vkprovider will call a base: only at the address
    the heartbeat came from, unless VKP_BASE_NETWORKS lists the networks bases may name in ``localIP``.
    """

    name = TUNNEL_NAME

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._events: BaseEvents | None = None
        self._served: Served | None = None
        self._stopping = False
        self._raised: Served | None = None  # the closed listener whose close ``run`` raised
        self._limiter = _BaseLimiter(settings.arklet_max_inflight_per_base)
        # bases (ip:port) whose arklet predates batchInstallBiz: one CMD_NOT_FOUND proves it
        self._batch = BatchSupport(strikes=1, lacks="batchInstallBiz (arklet < 2.1.7)")
        token = settings.heartbeat_token
        self._shared_token = token.encode() if token else None
        self._secret = settings.secret()
        self._networks = settings.networks
        self._max_answer = settings.arklet_max_answer_bytes
        self._parsed: dict[bytes, BaseHeartbeat] = {}  # exact (credential, peer, body) -> heartbeat: no re-parse
        self._routes: dict[str, Callable[[http1.Request], http1.Response]] = {
            "/heartbeat": self._on_heartbeat, "/queryBaseline": self._on_query_baseline}

    # --- lifecycle ---------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the heartbeat server listens on (useful when configured as 0)."""
        if self._served is None:
            raise RuntimeError("HttpTunnel is not started")
        return self._served.port

    @property
    def authenticates(self) -> bool:
        return bool(self._secret or self._shared_token or self._settings.http_client_ca)

    async def start(self, events: BaseEvents) -> None:
        self._events = events
        self._stopping = False
        await self._serve()

    async def _serve(self) -> Served:
        s = self._settings
        self._served = served = await serving.serve_small(
            self._handle, on_refused=self._refused_early, name="heartbeat", host=s.http_tunnel_host,
            port=s.http_tunnel_port,
            setting="HTTP_TUNNEL_LISTEN_PORT", max_connections=s.http_max_connections,
            max_body=s.http_max_body_bytes, header_timeout_s=s.http_header_timeout_s,
            ssl_context=self._server_tls())
        log.info("http tunnel listening on %s:%d (tls=%s, credentials=%s)", s.http_tunnel_host, self.port,
                 self._settings.http_tls_cert is not None, self._auth_mode())
        return served

    def _auth_mode(self) -> str:
        accepted = (("per-base token", self._secret), ("client certificate", self._settings.http_client_ca),
                    ("shared token", self._shared_token))
        modes = [mode for mode, configured in accepted if configured]
        if self._settings.allow_unauthenticated_bases:
            modes.append("none (VKP_ALLOW_UNAUTHENTICATED_BASES)")
        return ", ".join(modes) or "required, none configured: every heartbeat is refused"

    def _server_tls(self) -> ssl.SSLContext | None:
        s = self._settings
        if not s.http_tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(s.http_tls_cert, s.http_tls_key)
        if s.http_client_ca:
            context.load_verify_locations(s.http_client_ca)
            context.verify_mode = ssl.CERT_OPTIONAL  # a base without a certificate may still use a token
        return context

    async def run(self) -> None:
        """The root task of the heartbeat listener: until its listener is closed (``stop``, or a closed server:
        then ``TunnelError``; the supervisor keeps ``run``: called again, it listens again). The server's
        connections are served by the event loop, not by this task."""
        served = self._served
        if served is None:
            raise TunnelError("the http tunnel is not started")
        if served is self._raised and not self._stopping:  # its close was raised already: listen again
            await served.stop()
            served = await self._serve()
        await served.wait_closed()
        self._raised = served
        if not self._stopping:
            raise TunnelError(f"the heartbeat listener closed (port {served.port})")

    async def stop(self) -> None:
        self._stopping = True
        if self._served is not None:
            await self._served.stop()
            self._served = None

    # --- server: what bases send -------------------------------------------------------------------------

    def _handle(self, request: http1.Request) -> http1.Response:
        """Route one whole request of a base (the handlers are synchronous: the body is already read)."""
        route = self._routes.get(request.path)
        if route is None:
            return _error("not found", 404)
        if request.method != "POST":
            return _error("method not allowed (POST)", 405)
        return route(request)

    def _refused_early(self, path: str, status: int) -> None:
        """A request refused before it was whole (body too large or too slow, malformed): counted like the
        handler's own refusals."""
        if path == "/heartbeat":
            METRICS.heartbeats[{413: "too_large", 408: "timeout"}.get(status, "invalid")].inc()

    def _credential(self, request: http1.Request) -> _Credential | http1.Response:
        """The credential a request carries, or the 401 to answer."""
        if "authorization" in request.repeated:
            return _error("more than one Authorization header", 400)
        presented = request.headers.get("authorization", "")
        if presented:
            scheme, _, token = presented.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return _error("Authorization must be 'Bearer <token>'", 401)
            if self._shared_token is not None and hmac.compare_digest(token.encode(), self._shared_token):
                return _Credential(None, shared=True)
            if token.startswith(TOKEN_PREFIX):
                if self._secret is None:
                    return _Credential(None)  # no secret to check it against: as if none were sent
                return _Credential(token)  # checked against the identity once the body is read
            return _error("unknown bearer token", 401)
        peer = request.peercert
        if peer:
            names = [v for k, v in (x[0] for x in peer.get("subject", ())) if k == "commonName"]
            names += [v for k, v in peer.get("subjectAltName", ()) if k == "DNS"]
            return _Credential("cert:" + "\x00".join(names))
        return _Credential(None)

    def _check_identity(self, credential: _Credential, identity: str) -> str | None:
        """None when ``credential`` may speak for ``identity``, else why not."""
        if credential.shared:
            return None
        proof = credential.identity
        if proof is None:
            if self._settings.allow_unauthenticated_bases:
                return None
            return "no credential (send 'Authorization: Bearer <token>' from `vkprovider token <identity>`)"
        if proof.startswith("cert:"):
            if identity in proof[5:].split("\x00"):
                return None
            return f"the client certificate does not name identity {identity!r}"
        if self._secret is not None and token_matches(self._secret, identity, proof):
            return None
        return f"the token is not the one of identity {identity!r}"

    def _address_refusal(self, peer: str | None, local_ip: str) -> str | None:
        """vkprovider calls a base only where its heartbeat came from (no request forgery through localIP)."""
        try:
            address = ipaddress.ip_address(local_ip)
        except ValueError:
            return "localIP is not an IP address"
        if any(address in network for network in self._networks):
            return None
        if peer is not None:
            try:
                if ipaddress.ip_address(peer) == address:
                    return None
            except ValueError:
                pass
        return (f"localIP {local_ip} is not the address the heartbeat came from ({peer}); list the bases' "
                "networks in VKP_BASE_NETWORKS to allow it")

    def _on_heartbeat(self, request: http1.Request) -> http1.Response:
        result = "error"
        try:
            credential = self._credential(request)
            if isinstance(credential, http1.Response):
                result = "unauthorized"
                return credential
            body = request.body
            cache_key = f"{credential.identity}\x00{credential.shared}\x00{request.remote}\x00".encode() + body
            heartbeat = self._parsed.get(cache_key)
            if heartbeat is None:
                try:
                    heartbeat = wire.parse_heartbeat(body, tunnel=TUNNEL_NAME, env=self._settings.env)
                except wire.WireError as exc:
                    result = "bad_json" if exc.kind == "json" else "invalid"
                    return _error(exc.reason, 400)
                refusal = self._check_identity(credential, heartbeat.identity)
                if refusal is not None:
                    result = "unauthorized" if credential.identity is None else "forbidden"
                    return _error(refusal, 401 if credential.identity is None else 403)
                refusal = self._address_refusal(request.remote, heartbeat.ip)
                if refusal is not None:
                    result = "forbidden_address"
                    return _error(refusal, 403)
                if len(self._parsed) > 2 * self._settings.max_vnodes:
                    self._parsed.clear()
                self._parsed[cache_key] = heartbeat
            assert self._events is not None
            authenticated = credential.identity is not None or credential.shared
            refused = self._events.on_heartbeat(heartbeat, authenticated=authenticated)
            if refused is not None:
                result = refused.result
                return _error(refused.reason, refused.status)
            result = "accepted"
            return _SUCCESS
        except Exception:
            log.exception("heartbeat handling failed")
            return _error("internal error", 500)
        finally:
            METRICS.heartbeats[result].inc()

    def _on_query_baseline(self, request: http1.Request) -> http1.Response:
        credential = self._credential(request)
        if isinstance(credential, http1.Response):
            return credential
        try:
            metadata = wire.parse_base_metadata(request.body, env=self._settings.env)
        except wire.WireError as exc:
            return _error(exc.reason, 400)
        refusal = self._check_identity(credential, metadata.identity)
        if refusal is not None:
            return _error(refusal, 401 if credential.identity is None else 403)
        assert self._events is not None
        if credential.identity is None and not credential.shared:
            # No credential: the baseline of an identity goes only to that base's own address.
            known = self._events.address_of(metadata.identity)
            if known is None or known != request.remote:
                return _error("the baseline of an identity is only given to that base (no credential: ask from "
                              "the address it heartbeats from)", 403)
        try:
            specs = self._events.baseline(metadata)
        except Exception:
            log.exception("baseline for %s failed", metadata.identity)
            return _error("internal error", 500)
        if specs is None:
            return _error("this replica does not hold the base's vnode; ask again (another replica answers)", 503)
        return http1.Response(200, wire.baseline_response(specs), "application/json")

    # --- client: commands to arklet ----------------------------------------------------------------------

    async def _post_once(
        self, base: BaseHeartbeat, command: str, body: bytes, timeout_s: float
    ) -> dict[str, Any]:
        host = _host(base.ip)
        where = f"{command} to {base.identity} ({base.ip}:{base.port})"
        head = http1.request_head("POST", f"/{command}", f"{host}:{base.port}", _ARKLET_HEADERS, len(body))
        try:
            # Arklet sends no Content-Length and closes after the body: the answer is read to EOF, but never
            # more than VKP_ARKLET_MAX_ANSWER_BYTES (a base is not trusted with vkprovider's memory).
            answer = await http1.exchange(base.ip, base.port, head + body, timeout_s=timeout_s,
                                          limit=self._max_answer)
        except http1.HttpError as exc:
            if exc.kind == "timeout":
                raise ArkletTimeout(f"{where}: no answer within {timeout_s:g}s") from None
            if exc.kind == "too_large":
                raise TunnelError(f"{where}: answer larger than {self._max_answer} bytes") from None
            if exc.kind in ("connect", "closed"):
                raise _TransportError(f"{where}: {exc}") from exc
            raise TunnelError(f"{where}: {exc}") from exc
        text = answer.body
        if answer.status != 200:
            raise TunnelError(f"{where}: HTTP {answer.status}: {clean(text[:200].decode('utf-8', 'replace'), 200)}")
        try:
            return wire.decode_envelope(text)
        except wire.WireError as exc:
            raise TunnelError(f"{where}: unreadable answer: {exc.reason}") from None

    async def _call(
        self,
        base: BaseHeartbeat,
        command: str,
        body: bytes,
        *,
        idempotent: bool,
        judge: Callable[[dict[str, Any]], bool],
    ) -> dict[str, Any]:
        """POST one command under the base's concurrency limit; time and count it."""
        timeout_s = (
            self._settings.arklet_query_timeout_s if idempotent else self._settings.arklet_install_timeout_s
        )
        started = time.perf_counter()
        result = "transport_error"
        try:
            envelope = await self._limiter.run(
                f"{base.ip}:{base.port}", lambda: self._attempts(base, command, body, timeout_s, idempotent)
            )
            result = "success" if judge(envelope) else "failed"
            return envelope
        except ArkletTimeout:
            result = "timeout"
            raise
        finally:
            METRICS.requests[command, result].observe(time.perf_counter() - started)

    async def _attempts(
        self, base: BaseHeartbeat, command: str, body: bytes, timeout_s: float, idempotent: bool
    ) -> dict[str, Any]:
        try:
            try:  # the first attempt needs no retry machinery (every 30 s biz poll is one)
                return await self._post_once(base, command, body, timeout_s)
            except _TransportError:
                if not idempotent:
                    raise
                await asyncio.sleep(ARKLET_QUERY.delay(1))
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(_QUERY_ATTEMPTS - 1),
                wait=lambda state: ARKLET_QUERY.delay(state.attempt_number + 1),
                retry=retry_if_exception_type(_TransportError),
                reraise=True,
            ):
                with attempt:
                    return await self._post_once(base, command, body, timeout_s)
        except _TransportError as exc:
            raise TunnelError(str(exc)) from exc.__cause__
        raise AssertionError("unreachable")  # pragma: no cover

    def release(self, base: BaseHeartbeat) -> None:
        """Nothing to undo over HTTP: every call is its own connection."""

    async def health(self, base: BaseHeartbeat) -> BaseHealth:
        envelope = await self._call(base, "health", b"{}", idempotent=True, judge=_succeeded)
        _require_success(envelope, "health", base)
        try:
            return wire.parse_health(envelope.get("data"))
        except wire.WireError as exc:
            raise TunnelError(f"health from {base.identity}: {exc.reason}") from None

    async def query_all_biz(self, base: BaseHeartbeat) -> list[BizInfo]:
        envelope = await self._call(base, "queryAllBiz", b"{}", idempotent=True, judge=_succeeded)
        _require_success(envelope, "queryAllBiz", base)
        try:
            return wire.parse_biz_list(envelope.get("data"))
        except wire.WireError as exc:
            raise TunnelError(f"queryAllBiz from {base.identity}: {exc.reason}") from None

    async def install_biz(
        self, base: BaseHeartbeat, biz: BizSpec, *, replace_other_versions: bool = False,
        biz_model_version: str = "",
    ) -> CommandResult:
        body = wire.install_request(biz, replace_other_versions=replace_other_versions,
                                    biz_model_version=biz_model_version)
        envelope = await self._call(base, "installBiz", body, idempotent=False, judge=_command_ok)
        return wire.parse_command_result(envelope)

    async def uninstall_biz(self, base: BaseHeartbeat, name: str, version: str, *,
                            biz_model_version: str = "") -> CommandResult:
        body = wire.uninstall_request(name, version, biz_model_version=biz_model_version)
        envelope = await self._call(base, "uninstallBiz", body, idempotent=False, judge=_command_ok)
        return wire.parse_command_result(envelope)

    async def batch_install_biz(
        self, base: BaseHeartbeat, bizs: Sequence[BizSpec], *, biz_model_versions: Mapping[BizKey, str] | None = None
    ) -> dict[str, CommandResult]:
        if not bizs:
            return {}
        versions = biz_model_versions or {}
        address = f"{base.ip}:{base.port}"
        if self._batch.supported(address):
            body = wire.batch_install_request(bizs, biz_model_versions=versions)
            envelope = await self._call(base, "batchInstallBiz", body, idempotent=False, judge=_command_ok)
            if envelope.get("code") != "CMD_NOT_FOUND":
                self._batch.batch_answer(address)
                return wire.parse_batch_install_result(envelope, [biz.url for biz in bizs])
            self._batch.no_batch_answer(address, base.identity)
        return await install_one_by_one(
            lambda biz: self.install_biz(base, biz, biz_model_version=versions.get(biz.key, "")), bizs)

def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _succeeded(envelope: Mapping[str, Any]) -> bool:
    return envelope.get("code") == "SUCCESS"


def _command_ok(envelope: Mapping[str, Any]) -> bool:
    return wire.parse_command_result(envelope).ok


def _require_success(envelope: Mapping[str, Any], command: str, base: BaseHeartbeat) -> None:
    if not _succeeded(envelope):
        message = envelope.get("message") or envelope.get("code")
        raise TunnelError(f"{command} on {base.identity} failed: {str(message)[:200]}")
