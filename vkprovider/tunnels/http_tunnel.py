"""The HTTP tunnel: bases heartbeat to us over HTTP, and we call their arklet over HTTP.

Two halves share this class because a base that heartbeats over HTTP is commanded over HTTP:
- a small aiohttp server (``POST /heartbeat``, ``POST /queryBaseline``) that treats every byte as hostile:
  size-limited, optionally token-authenticated, strictly validated by ``core.wire``, never crashing;
- an arklet client that copes with Netty arklet's quirks (no Content-Length, connection closed after the body,
  no answer at all to bad input), with a timeout on every call, a concurrency limit per base (not a global
  lock), and retries only for the idempotent queries.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import aiohttp
import orjson
from aiohttp import web
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from vkprovider.config import Settings
from vkprovider.core import wire
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BizInfo, BizSpec, CommandOutcome, CommandResult
from vkprovider.tunnels import metrics
from vkprovider.tunnels.base import BaseEvents, TunnelError
from vkprovider.tunnels.metrics import HEARTBEATS_TOTAL, TUNNEL_REQUEST_SECONDS

log = logging.getLogger(__name__)

TUNNEL_NAME: Final = "http"
_T = TypeVar("_T")

metrics.precreate(TUNNEL_NAME)

_QUERY_ATTEMPTS: Final = 3
_CONNECTOR_LIMIT: Final = 256


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


def _error(reason: str, status: int) -> web.Response:
    return web.Response(body=orjson.dumps({"error": reason}), status=status, content_type="application/json")


class HttpTunnel:
    """Tunnel over HTTP: heartbeat server plus arklet client. ``port`` is the bound port once started."""

    name = TUNNEL_NAME

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._events: BaseEvents | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._limiter = _BaseLimiter(settings.arklet_max_inflight_per_base)
        self._no_batch: set[str] = set()  # bases (ip:port) whose arklet predates batchInstallBiz
        token = settings.heartbeat_token
        self._expected_auth = f"Bearer {token}".encode() if token else None

    # --- lifecycle ---------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the heartbeat server listens on (useful when configured as 0)."""
        if self._port is None:
            raise RuntimeError("HttpTunnel is not started")
        return self._port

    async def start(self, events: BaseEvents) -> None:
        self._events = events
        app = web.Application(client_max_size=self._settings.http_max_body_bytes)
        app.router.add_post("/heartbeat", self._on_heartbeat)
        app.router.add_post("/queryBaseline", self._on_query_baseline)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._settings.http_tunnel_host, self._settings.http_tunnel_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("http tunnel listening on %s:%d", self._settings.http_tunnel_host, self._port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- server: what bases send -------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        if self._expected_auth is None:
            return True
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        return hmac.compare_digest(given, self._expected_auth)

    async def _read_body(self, request: web.Request) -> bytes | web.Response:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error("body too large", 413)

    async def _on_heartbeat(self, request: web.Request) -> web.Response:
        result = "error"
        try:
            if not self._authorized(request):
                result = "unauthorized"
                return _error("missing or wrong bearer token", 401)
            body = await self._read_body(request)
            if isinstance(body, web.Response):
                result = "too_large"
                return body
            try:
                heartbeat = wire.parse_heartbeat(body, tunnel=TUNNEL_NAME, env=self._settings.env)
            except wire.WireError as exc:
                result = "bad_json" if exc.kind == "json" else "invalid"
                return _error(exc.reason, 400)
            assert self._events is not None
            self._events.on_heartbeat(heartbeat)
            result = "accepted"
            return web.Response(text="SUCCESS")
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("heartbeat handling failed")
            return _error("internal error", 500)
        finally:
            HEARTBEATS_TOTAL.labels(TUNNEL_NAME, result).inc()

    async def _on_query_baseline(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error("missing or wrong bearer token", 401)
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            metadata = wire.parse_base_metadata(body, env=self._settings.env)
        except wire.WireError as exc:
            return _error(exc.reason, 400)
        assert self._events is not None
        try:
            specs = self._events.baseline(metadata)
        except Exception:
            log.exception("baseline for %s failed", metadata.identity)
            return _error("internal error", 500)
        if specs is None:
            return _error("this replica does not hold the base's vnode; ask again (another replica answers)", 503)
        return web.Response(body=wire.baseline_response(specs), content_type="application/json")

    # --- client: commands to arklet ----------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(force_close=True, limit=_CONNECTOR_LIMIT, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))
        return self._session

    async def _post_once(
        self, base: BaseHeartbeat, command: str, body: bytes, timeout_s: float
    ) -> dict[str, Any]:
        url = f"http://{_host(base.ip)}:{base.port}/{command}"
        where = f"{command} to {base.identity} ({base.ip}:{base.port})"
        try:
            async with self._client().post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                # Arklet sends no Content-Length and closes after the body: read to EOF.
                text = await resp.read()
                status = resp.status
        except TimeoutError:
            raise ArkletTimeout(f"{where}: no answer within {timeout_s:g}s") from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise _TransportError(f"{where}: {type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise TunnelError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            raise TunnelError(f"{where}: HTTP {status}: {text[:200].decode('utf-8', 'replace')}")
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
            TUNNEL_REQUEST_SECONDS.labels(TUNNEL_NAME, command, result).observe(time.perf_counter() - started)

    async def _attempts(
        self, base: BaseHeartbeat, command: str, body: bytes, timeout_s: float, idempotent: bool
    ) -> dict[str, Any]:
        attempts = _QUERY_ATTEMPTS if idempotent else 1
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=wait_exponential(multiplier=0.1, max=1.0),
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
        self, base: BaseHeartbeat, biz: BizSpec, *, replace_other_versions: bool = False
    ) -> CommandResult:
        body = wire.install_request(biz, replace_other_versions=replace_other_versions)
        envelope = await self._call(base, "installBiz", body, idempotent=False, judge=_command_ok)
        return wire.parse_command_result(envelope)

    async def uninstall_biz(self, base: BaseHeartbeat, name: str, version: str) -> CommandResult:
        envelope = await self._call(
            base, "uninstallBiz", wire.uninstall_request(name, version), idempotent=False, judge=_command_ok
        )
        return wire.parse_command_result(envelope)

    async def batch_install_biz(
        self, base: BaseHeartbeat, bizs: Sequence[BizSpec]
    ) -> dict[str, CommandResult]:
        if not bizs:
            return {}
        address = f"{base.ip}:{base.port}"
        if address not in self._no_batch:
            envelope = await self._call(
                base, "batchInstallBiz", wire.batch_install_request(bizs), idempotent=False, judge=_command_ok
            )
            if envelope.get("code") != "CMD_NOT_FOUND":
                return wire.parse_batch_install_result(envelope, [biz.url for biz in bizs])
            log.info("base %s has no batchInstallBiz (arklet < 2.1.7): installing one by one", base.identity)
            self._no_batch.add(address)
        results = await asyncio.gather(*(self.install_biz(base, biz) for biz in bizs), return_exceptions=True)
        answers: dict[str, CommandResult] = {}
        for biz, result in zip(bizs, results, strict=True):
            if isinstance(result, BaseException):
                answers[biz.url] = CommandResult(CommandOutcome.FAILED, f"base unreachable: {result}")
            else:
                answers[biz.url] = result
        return answers


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
