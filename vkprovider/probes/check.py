"""One probe check, run as kubelet's prober runs it: HTTP GET, TCP connect or gRPC health check against the pod IP.

Why it exists: ``core.probe`` says what a probe is and what its results mean; this module does the I/O of one
check and turns what happened into kubelet's result and output text (``core.probe.Outcome``), so Events read as a
kubelet's would ("Readiness probe failed: HTTP probe failed with statuscode: 500").

The rules it keeps (``pkg/probe/http``, ``tcp``, ``grpc``):

- HTTP: GET the URL with kubelet's headers (``User-Agent: kube-probe/<major>.<minor>`` and ``Accept: */*`` unless
  the probe sets them, an empty ``Accept`` removes it, a ``Host`` header sets the host), no keep-alive, no
  compression, no proxy, TLS not verified (HTTPS); a 2xx answer is success, a 3xx answer is success with a
  warning ("Probe terminated redirects"); redirects (301, 302, 303, 307, 308) are followed to the same host, at
  most 10 in a row, never to another host (that 3xx is the answer); anything else is a failure "HTTP probe failed
  with statuscode: N" (never the body: kubernetes issue 99425); at most 10 KiB of a body is read; the whole
  exchange (connect, redirects, body) must end within ``timeoutSeconds``; a connection that fails is a failure
  with Go's text (``Get "http://10.0.0.5:8080/health": dial tcp 10.0.0.5:8080: connect: connection refused``);
- TCP: success when a connection opens within the timeout (it is closed at once);
- gRPC: ``grpc.health.v1.Health/Check`` for the probe's service (grpcio and grpcio-health-checking, imported on
  the first gRPC check only: they are large and most bizs use HTTP); SERVING is success; anything else is a
  failure with kubelet's text.

``Prober`` holds one aiohttp session for every HTTP check (a connector without keep-alive: each check opens its
own connection, as kubelet's); ``close`` releases it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
from typing import Any, Final

import aiohttp
import yarl
from multidict import CIMultiDict

from vkprovider import __version__
from vkprovider.core.probe import (
    MAX_BODY_BYTES,
    MAX_REDIRECTS,
    CheckResult,
    Exec,
    Grpc,
    HttpGet,
    Outcome,
    ProbeHandler,
    TcpSocket,
    Unresolvable,
)

_MAJOR_MINOR: Final = ".".join(__version__.split(".")[:2])
PROBE_USER_AGENT: Final = f"kube-probe/{_MAJOR_MINOR}"
LIFECYCLE_USER_AGENT: Final = f"kube-lifecycle/{_MAJOR_MINOR}"
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_NO_AUTO_HEADERS: Final = ("Accept-Encoding", "Accept", "User-Agent")


class CheckError(Exception):
    """The request could not be made or answered; the text reads like Go's (kubelet's) error."""


class TlsError(CheckError):
    """The TLS handshake failed (an HTTPS request to a plain HTTP server, say)."""


def join_host_port(host: str, port: int) -> str:
    """Go's ``net.JoinHostPort``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _duration(seconds: float) -> str:
    """Go's ``%v`` of a time.Duration of whole seconds: ``1s``."""
    return f"{seconds:g}s"


def _dial_error(host: str, port: int, exc: BaseException) -> str:
    """Go's dial error: ``dial tcp 10.0.0.5:8080: connect: connection refused``."""
    os_error = getattr(exc, "os_error", exc)
    number = getattr(os_error, "errno", None)
    if isinstance(number, int) and number in errno.errorcode:
        why = os.strerror(number).lower()
    else:
        why = str(os_error) or type(os_error).__name__
    return f"dial tcp {join_host_port(host, port)}: connect: {why}"


class HttpAnswer:
    """What an HTTP GET came back with: the last answer's status, up to 10 KiB of its body, and whether it is a
    redirect that was not followed."""

    __slots__ = ("body", "status", "url")

    def __init__(self, status: int, body: bytes, url: str) -> None:
        self.status = status
        self.body = body
        self.url = url


class Prober:
    """Runs checks; one per call, any number at once (the caller bounds them)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(force_close=True, limit=0, ssl=False, ttl_dns_cache=None)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- one check

    async def check(self, handler: ProbeHandler, pod_ip: str, timeout_s: float) -> Outcome:
        """Run ``handler`` against ``pod_ip`` within ``timeout_s``: kubelet's result and output."""
        if isinstance(handler, HttpGet):
            try:
                answer = await self.http_get(handler, pod_ip, timeout_s, PROBE_USER_AGENT)
            except CheckError as exc:
                return Outcome(CheckResult.FAILURE, str(exc))
            body = answer.body.decode("utf-8", "replace")
            if 200 <= answer.status < 300:
                return Outcome(CheckResult.SUCCESS, body)
            if 300 <= answer.status < 400:
                return Outcome(CheckResult.WARNING, f"Probe terminated redirects, Response body: {body}")
            return Outcome(CheckResult.FAILURE, f"HTTP probe failed with statuscode: {answer.status}")
        if isinstance(handler, TcpSocket):
            return await self.tcp_connect(handler.host or pod_ip, handler.port, timeout_s)
        if isinstance(handler, Grpc):
            return await self.grpc_check(pod_ip, handler.port, handler.service, timeout_s)
        if isinstance(handler, Exec):
            return Outcome(CheckResult.FAILURE, "exec probes are not run on a Koupleless base")
        assert isinstance(handler, Unresolvable)
        return Outcome(CheckResult.FAILURE, handler.why)

    # --- HTTP

    @staticmethod
    def _headers(handler: HttpGet, user_agent: str) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in handler.headers:
            headers.add(name, value)
        if "User-Agent" not in headers:
            headers["User-Agent"] = user_agent
        if "Accept" not in headers:
            headers["Accept"] = "*/*"
        elif not headers.get("Accept"):
            headers.popall("Accept")
        return headers

    async def http_get(self, handler: HttpGet, pod_ip: str, timeout_s: float, user_agent: str) -> HttpAnswer:
        """GET the handler's URL as kubelet does (same-host redirects followed, body capped), within
        ``timeout_s``; raises ``CheckError`` with Go's text when there is no answer."""
        session = self._client()
        url = yarl.URL(handler.url(pod_ip))
        first_host = url.host
        headers = self._headers(handler, user_agent)
        stage = "while awaiting headers"
        try:
            async with asyncio.timeout(timeout_s):
                for hop in range(MAX_REDIRECTS + 1):
                    stage = "while awaiting headers"
                    async with session.get(url, headers=headers, allow_redirects=False,
                                           skip_auto_headers=_NO_AUTO_HEADERS) as resp:
                        stage = "or context cancellation while reading body"
                        body = await _read_capped(resp.content, MAX_BODY_BYTES)
                        status = resp.status
                        location = resp.headers.get("Location")
                    if status not in _REDIRECTS or not location:
                        return HttpAnswer(status, body, str(url))
                    target = url.join(yarl.URL(location))
                    if target.host != first_host or target.scheme not in ("http", "https"):
                        return HttpAnswer(status, body, str(url))  # kubelet: ErrUseLastResponse
                    if hop + 1 >= MAX_REDIRECTS:
                        raise CheckError(f'Get "{target}": stopped after {MAX_REDIRECTS} redirects')
                    url = target
        except TimeoutError:
            raise CheckError(f'Get "{url}": context deadline exceeded (Client.Timeout exceeded {stage})') from None
        except aiohttp.ClientSSLError as exc:
            raise TlsError(f'Get "{url}": tls: {_client_error(exc)}') from None
        except aiohttp.ClientConnectorError as exc:
            raise CheckError(f'Get "{url}": {_dial_error(exc.host, exc.port or 0, exc)}') from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise CheckError(f'Get "{url}": {_client_error(exc)}') from None
        raise CheckError(f'Get "{url}": stopped after {MAX_REDIRECTS} redirects')  # pragma: no cover

    # --- TCP

    async def tcp_connect(self, host: str, port: int, timeout_s: float) -> Outcome:
        """kubelet's ``DoTCPProbe``: success when a connection opens (and is closed at once)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
        except TimeoutError:
            return Outcome(CheckResult.FAILURE, f"dial tcp {join_host_port(host, port)}: i/o timeout")
        except OSError as exc:
            return Outcome(CheckResult.FAILURE, _dial_error(host, port, exc))
        transport.abort()
        return Outcome(CheckResult.SUCCESS, "")

    # --- gRPC

    async def grpc_check(self, host: str, port: int, service: str, timeout_s: float) -> Outcome:
        """kubelet's gRPC probe: ``grpc.health.v1.Health/Check`` of ``service``; SERVING is success."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        address = join_host_port(host, port)
        options = [("grpc.primary_user_agent", PROBE_USER_AGENT), ("grpc.enable_retries", 0)]
        try:
            async with grpc.aio.insecure_channel(address, options=options) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details = exc.details() or ""
            if code is grpc.StatusCode.UNIMPLEMENTED:
                text = ("error: this server does not implement the grpc health protocol (grpc.health.v1.Health): "
                        f"{details}")
            elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
                text = f"timeout: health rpc did not complete within {_duration(timeout_s)}"
            elif code is grpc.StatusCode.UNAVAILABLE:
                text = f'error: failed to connect service at "{address}": {details}'
            else:
                text = f"error: health rpc probe failed: rpc error: code = {_camel(code.name)} desc = {details}"
            return Outcome(CheckResult.FAILURE, text)
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            return Outcome(CheckResult.FAILURE, f'service unhealthy (responded with "{name}")')
        return Outcome(CheckResult.SUCCESS, "service healthy")


def _camel(name: str) -> str:
    """gRPC's Go code names: NOT_FOUND -> NotFound."""
    return "".join(part.capitalize() for part in name.split("_"))


def _client_error(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "EOF"
    text = str(exc) or type(exc).__name__
    return re.sub(r"\s+", " ", text)


async def _read_capped(stream: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes of a body (the rest is not read: kubelet's ReadAtMost truncation is not fatal)."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)
