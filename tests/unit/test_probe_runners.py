"""vkprovider.probes against real local servers: HTTP (aiohttp, plain and TLS), TCP listeners and a gRPC health
server from grpcio-health-checking; the preStop hook runner; the ProbeManager's schedule with a fake clock (on_change
only on changes, restarts after failureThreshold, bounded concurrency, dropped results)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from tests.helpers import wait_for
from tests.mqtt_broker import make_ca, make_server_cert
from vkprovider.core.probe import (
    CheckResult,
    ContainerProbes,
    Exec,
    Grpc,
    HttpGet,
    Outcome,
    ProbeHandler,
    ProbeKind,
    ProbeSpec,
    Sleep,
    TcpSocket,
    Unresolvable,
    container_probes,
)
from vkprovider.probes import ContainerInput, ProbeManager, Prober, run_pre_stop
from vkprovider.probes.check import LIFECYCLE_USER_AGENT, PROBE_USER_AGENT


def _answer(make: Any) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        answer = make()
        if isinstance(answer, web.HTTPException) and answer.status >= 300:
            raise answer
        return answer  # type: ignore[no-any-return]

    return handler


class Web:
    """An aiohttp server with the answers the tests need; ``status`` and ``delay`` steer /toggle."""

    def __init__(self) -> None:
        self.port = 0
        self.status = 200
        self.delay = 0.0
        self.seen: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_get("/ok", self._ok)
        app.router.add_get("/toggle", self._toggle)
        app.router.add_get("/fail", _answer(lambda: web.Response(status=503, text="down for maintenance")))
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/big", _answer(lambda: web.Response(body=b"x" * 1_000_000)))
        app.router.add_get("/same-host", _answer(lambda: web.HTTPFound(f"http://127.0.0.1:{self.port}/ok")))
        app.router.add_get("/relative", _answer(lambda: web.HTTPTemporaryRedirect("/ok")))
        other = _answer(lambda: web.HTTPFound(f"http://127.0.0.2:{self.port}/ok", text="moved"))
        app.router.add_get("/other-host", other)
        app.router.add_get("/loop", _answer(lambda: web.HTTPFound("/loop")))
        app.router.add_get("/not-modified", _answer(lambda: web.Response(status=304)))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def _ok(self, request: web.Request) -> web.Response:
        self.seen.append({"path": request.path, "headers": dict(request.headers)})
        return web.Response(text="fine")

    async def _toggle(self, request: web.Request) -> web.Response:
        self.seen.append({"path": request.path, "headers": dict(request.headers)})
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text=str(self.status))

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Web]:
    w = Web()
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


@pytest_asyncio.fixture
async def prober() -> AsyncIterator[Prober]:
    p = Prober()
    try:
        yield p
    finally:
        await p.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- HTTP ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "result", "output"),
    [
        ("/ok", CheckResult.SUCCESS, "fine"),
        ("/fail", CheckResult.FAILURE, "HTTP probe failed with statuscode: 503"),  # never the body
        ("/same-host", CheckResult.SUCCESS, "fine"),  # a redirect to the same host is followed
        ("/relative", CheckResult.SUCCESS, "fine"),
        ("/other-host", CheckResult.WARNING, "Probe terminated redirects, Response body: moved"),
        ("/not-modified", CheckResult.WARNING, "Probe terminated redirects, Response body: "),
        ("/big", CheckResult.SUCCESS, "x" * 10240),  # 10 KiB of the body, no more
    ],
)
async def test_http_answers(server, prober, path, result, output):
    outcome = await prober.check(HttpGet(server.port, path), "127.0.0.1", 1.0)
    assert outcome == Outcome(result, output)


async def test_http_redirects_stop_after_ten(server, prober):
    outcome = await prober.check(HttpGet(server.port, "/loop"), "127.0.0.1", 2.0)
    assert outcome == Outcome(CheckResult.FAILURE,
                              f'Get "http://127.0.0.1:{server.port}/loop": stopped after 10 redirects')


async def test_http_timeout_is_the_probes(server, prober):
    started = time.monotonic()
    outcome = await prober.check(HttpGet(server.port, "/slow"), "127.0.0.1", 1.0)
    took = time.monotonic() - started
    assert outcome == Outcome(CheckResult.FAILURE, f'Get "http://127.0.0.1:{server.port}/slow": context deadline '
                                                   "exceeded (Client.Timeout exceeded while awaiting headers)")
    assert 0.9 < took < 3.0


async def test_http_connection_refused_reads_like_go(prober):
    port = _free_port()
    outcome = await prober.check(HttpGet(port, "/h"), "127.0.0.1", 1.0)
    assert outcome == Outcome(CheckResult.FAILURE, f'Get "http://127.0.0.1:{port}/h": dial tcp 127.0.0.1:{port}: '
                                                   "connect: connection refused")


async def test_http_headers_are_kubelets(server, prober):
    await prober.check(HttpGet(server.port, "/ok"), "127.0.0.1", 1.0)
    headers = server.seen[-1]["headers"]
    assert headers["User-Agent"] == PROBE_USER_AGENT and PROBE_USER_AGENT.startswith("kube-probe/")
    assert headers["Accept"] == "*/*"
    assert "Accept-Encoding" not in headers  # no compression, as kubelet's transport
    assert headers["Host"] == f"127.0.0.1:{server.port}"
    await prober.check(HttpGet(server.port, "/ok", headers=(("Host", "biz1.example"), ("X-Probe", "1"),
                                                            ("Accept", ""), ("User-Agent", "mine"))),
                       "127.0.0.1", 1.0)
    headers = server.seen[-1]["headers"]
    assert (headers["Host"], headers["X-Probe"], headers["User-Agent"]) == ("biz1.example", "1", "mine")
    assert "Accept" not in headers  # an empty Accept removes it


async def _raw_server(answer: bytes, *, close: bool = True) -> tuple[asyncio.Server, int]:
    """A server that reads a request head and writes ``answer`` as it is (then closes, unless told not to)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            if close:
                writer.close()
            else:
                await asyncio.sleep(10)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


@pytest.mark.parametrize(
    ("answer", "result", "output"),
    [
        # no length: the body ends at EOF (arklet's way)
        (b"HTTP/1.1 200 OK\r\n\r\nUP", CheckResult.SUCCESS, "UP"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nUP\r\n0\r\n\r\n", CheckResult.SUCCESS, "UP"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", CheckResult.SUCCESS, ""),
        (b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown", CheckResult.FAILURE,
         "HTTP probe failed with statuscode: 503"),
        (b"", CheckResult.FAILURE, "EOF"),  # closed without a word
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", CheckResult.FAILURE, "malformed HTTP response"),
    ],
)
async def test_http_framing(prober, answer, result, output):
    server, port = await _raw_server(answer)
    try:
        outcome = await prober.check(HttpGet(port, "/h"), "127.0.0.1", 2.0)
        assert outcome.result is result
        assert output in outcome.output
    finally:
        server.close()


async def test_http_a_body_that_never_ends_is_cut_at_the_cap(prober):
    """10 KiB of the body are enough: the check does not wait for the rest (nor for the connection to close)."""
    server, port = await _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n" + b"y" * 20000,
                                     close=False)
    try:
        started = time.monotonic()
        outcome = await prober.check(HttpGet(port, "/h"), "127.0.0.1", 5.0)
        assert outcome == Outcome(CheckResult.SUCCESS, "y" * 10240)
        assert time.monotonic() - started < 2.0
    finally:
        server.close()


async def test_http_a_body_that_is_slow_times_out_while_reading_it(prober):
    server, port = await _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", close=False)
    try:
        outcome = await prober.check(HttpGet(port, "/h"), "127.0.0.1", 1.0)
        assert outcome == Outcome(CheckResult.FAILURE, f'Get "http://127.0.0.1:{port}/h": context deadline '
                                                       "exceeded (Client.Timeout or context cancellation while "
                                                       "reading body)")
    finally:
        server.close()


async def test_https_is_not_verified(tmp_path: Path, prober):
    ca_path, ca_key, ca_cert = make_ca(tmp_path, "probe-ca")
    cert, key = make_server_cert(tmp_path, ca_key, ca_cert)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tls = Web()
    await tls.start(context)
    try:
        outcome = await prober.check(HttpGet(tls.port, "/ok", scheme="HTTPS"), "127.0.0.1", 2.0)
        assert outcome == Outcome(CheckResult.SUCCESS, "fine")
    finally:
        await tls.stop()


async def test_an_unresolvable_or_exec_handler_never_does_io(prober):
    assert (await prober.check(Unresolvable("port 'x' not found"), "127.0.0.1", 1.0)).result is CheckResult.FAILURE
    assert (await prober.check(Exec(("true",)), "127.0.0.1", 1.0)).result is CheckResult.FAILURE


# --- TCP -------------------------------------------------------------------------------------------------------


async def test_tcp_connect(prober):
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        assert await prober.check(TcpSocket(port), "127.0.0.1", 1.0) == Outcome(CheckResult.SUCCESS, "")
        assert await prober.check(TcpSocket(port, host="127.0.0.1"), "10.255.255.1", 1.0) == Outcome(
            CheckResult.SUCCESS, "")  # the probe's host wins over the pod IP
    finally:
        server.close()
    closed = _free_port()
    assert await prober.check(TcpSocket(closed), "127.0.0.1", 1.0) == Outcome(
        CheckResult.FAILURE, f"dial tcp 127.0.0.1:{closed}: connect: connection refused")


async def test_tcp_timeout(prober):
    """A listener whose accept queue is full drops new SYNs: the connect hangs until the probe's timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.2)
        started = time.monotonic()
        outcome = await prober.check(TcpSocket(port), "127.0.0.1", 1.0)
        assert outcome == Outcome(CheckResult.FAILURE, f"dial tcp 127.0.0.1:{port}: i/o timeout")
        assert 0.9 < time.monotonic() - started < 3.0
    finally:
        for s in fillers:
            s.close()
        listener.close()


# --- gRPC ------------------------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def grpc_health() -> AsyncIterator[tuple[int, Any]]:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("biz1", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("biz2", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        yield port, servicer
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    ("service", "result", "output"),
    [
        ("", CheckResult.SUCCESS, "service healthy"),
        ("biz1", CheckResult.SUCCESS, "service healthy"),
        ("biz2", CheckResult.FAILURE, 'service unhealthy (responded with "NOT_SERVING")'),
        ("nobody", CheckResult.FAILURE, "error: health rpc probe failed: rpc error: code = NotFound desc = "),
    ],
)
async def test_grpc_health(grpc_health, prober, service, result, output):
    port, _ = grpc_health
    outcome = await prober.check(Grpc(port, service), "127.0.0.1", 2.0)
    assert outcome.result is result
    assert outcome.output.startswith(output)


async def test_grpc_without_the_health_service_and_refused(prober):
    import grpc

    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        outcome = await prober.check(Grpc(port), "127.0.0.1", 2.0)
        assert outcome.result is CheckResult.FAILURE
        assert outcome.output.startswith("error: this server does not implement the grpc health protocol "
                                         "(grpc.health.v1.Health)")
    finally:
        await server.stop(None)
    closed = _free_port()
    outcome = await prober.check(Grpc(closed), "127.0.0.1", 2.0)
    assert outcome.result is CheckResult.FAILURE
    assert outcome.output.startswith(f'error: failed to connect service at "127.0.0.1:{closed}"')


async def test_grpc_timeout(prober):
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    class Slow(health.aio.HealthServicer):  # type: ignore[misc]
        async def Check(self, request: Any, context: Any) -> Any:
            await asyncio.sleep(5)
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Slow(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        started = time.monotonic()
        outcome = await prober.check(Grpc(port), "127.0.0.1", 1.0)
        assert outcome == Outcome(CheckResult.FAILURE, "timeout: health rpc did not complete within 1s")
        assert time.monotonic() - started < 3.0
    finally:
        await server.stop(None)


# --- preStop ---------------------------------------------------------------------------------------------------


async def test_pre_stop_http_any_answer_is_done(server):
    server.status = 500
    result = await run_pre_stop(HttpGet(server.port, "/toggle"), "127.0.0.1", time.monotonic() + 5)
    assert result.ok and result.event is None and result.message == "status 500"
    assert server.seen[-1]["headers"]["User-Agent"] == LIFECYCLE_USER_AGENT


async def test_pre_stop_http_failure_is_reported_not_fatal():
    port = _free_port()
    result = await run_pre_stop(HttpGet(port, "/biz1/shutdown"), "127.0.0.1", time.monotonic() + 5,
                                container="biz1", pod="p_ns(u1)")
    assert not result.ok
    assert result.event == ("FailedPreStopHook",
                            'HTTP lifecycle hook (/biz1/shutdown) for Container "biz1" in Pod "p_ns(u1)" failed - '
                            f'error: Get "http://127.0.0.1:{port}/biz1/shutdown": dial tcp 127.0.0.1:{port}: '
                            "connect: connection refused")


async def test_pre_stop_http_is_bounded_by_the_deadline(server):
    started = time.monotonic()
    result = await run_pre_stop(HttpGet(server.port, "/slow"), "127.0.0.1", started + 1.0)
    assert not result.ok and "context deadline exceeded" in result.message
    assert time.monotonic() - started < 2.5
    late = await run_pre_stop(HttpGet(server.port, "/ok"), "127.0.0.1", time.monotonic() - 1)
    assert not late.ok and "the grace period is over" in late.message


async def test_pre_stop_https_to_plain_http_falls_back(server):
    result = await run_pre_stop(HttpGet(server.port, "/ok", scheme="HTTPS"), "127.0.0.1", time.monotonic() + 5)
    assert result.ok
    assert result.event is not None and result.event[0] == "LifecycleHTTPFallback"
    assert server.seen[-1]["path"] == "/ok"


async def test_pre_stop_sleep_and_exec():
    started = time.monotonic()
    done = await run_pre_stop(Sleep(1), "127.0.0.1", started + 5)
    assert done.ok and 0.9 < done.took_s < 2.0
    cut = await run_pre_stop(Sleep(30), "127.0.0.1", time.monotonic() + 0.5, container="biz1", pod="p_ns(u1)")
    assert not cut.ok and cut.took_s < 1.5
    assert cut.event == ("FailedPreStopHook", 'Sleep lifecycle hook (30) for Container "biz1" in Pod "p_ns(u1)" '
                                              "failed - error: container terminated before sleep hook finished")
    skipped = await run_pre_stop(Exec(("sh", "-c", "sleep 5")), "127.0.0.1", time.monotonic() + 5, container="biz1")
    assert not skipped.ok and skipped.event is not None and "exec hooks are not run" in skipped.event[1]
    assert (await run_pre_stop(None, "127.0.0.1", time.monotonic() + 5)).ok


# --- the manager -------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _probes(port: int, path: str = "/toggle", **kinds: dict[str, Any]) -> ContainerProbes:
    specs = {kind: ProbeSpec(ProbeKind(kind), HttpGet(port, path), **numbers) for kind, numbers in kinds.items()}
    return ContainerProbes("biz1", specs.get("startup"), specs.get("readiness"), specs.get("liveness"))


class Recorder:
    def __init__(self) -> None:
        self.changes: list[str] = []
        self.events: list[tuple[str, str, str, str]] = []

    def on_change(self, pod_key: str) -> None:
        self.changes.append(pod_key)

    def on_event(self, pod_key: str, uid: str, container: str, event: Any) -> None:
        self.events.append((pod_key, container, event.reason, event.message))


async def test_manager_readiness_and_on_change_only_on_changes(server):
    clock, rec = Clock(), Recorder()
    manager = ProbeManager(on_change=rec.on_change, on_event=rec.on_event, clock=clock)
    probes = _probes(server.port, readiness={"initial_delay_s": 5, "period_s": 10, "failure_threshold": 2})
    try:
        assert manager.sync("ns/p", "u1", "127.0.0.1", {"biz1": ContainerInput(probes, activated_at=clock.now)})
        assert manager.state("ns/p")["biz1"].ready is False
        await manager.settle()
        assert server.seen == []  # no check before initialDelaySeconds
        clock.now += 5
        await manager.settle()
        assert len(server.seen) == 1 and manager.state("ns/p")["biz1"].ready
        assert rec.changes == ["ns/p"]
        for _ in range(3):  # successes that change nothing
            clock.now += 10
            await manager.settle()
        assert len(server.seen) == 4 and rec.changes == ["ns/p"]
        server.status = 500
        clock.now += 10
        await manager.settle()
        assert manager.state("ns/p")["biz1"].ready and rec.changes == ["ns/p"]  # below the threshold
        clock.now += 10
        await manager.settle()
        state = manager.state("ns/p")["biz1"]
        assert not state.ready and state.message == "Readiness probe failed: HTTP probe failed with statuscode: 500"
        assert rec.changes == ["ns/p", "ns/p"]
        assert [e[2] for e in rec.events] == ["Unhealthy", "Unhealthy"]
        # the same sync again changes nothing
        assert not manager.sync("ns/p", "u1", "127.0.0.1", {"biz1": ContainerInput(probes, activated_at=1000.0)})
    finally:
        await manager.close()


async def test_manager_liveness_restart_after_failure_threshold(server):
    clock, rec = Clock(), Recorder()
    manager = ProbeManager(on_change=rec.on_change, on_event=rec.on_event, clock=clock)
    probes = _probes(server.port, liveness={"period_s": 10, "failure_threshold": 3,
                                            "termination_grace_period_s": 4})
    try:
        manager.sync("ns/p", "u1", "127.0.0.1", {"biz1": ContainerInput(probes, activated_at=clock.now)})
        server.status = 500
        for i in range(3):
            await manager.settle()
            assert (manager.state("ns/p")["biz1"].restart is None) is (i < 2)
            clock.now += 10
        state = manager.state("ns/p")["biz1"]
        assert state.restart == "Container biz1 failed liveness probe, will be restarted" and state.grace_s == 4
        assert rec.changes == ["ns/p"]
        assert [e[2] for e in rec.events] == ["Unhealthy", "Unhealthy", "Unhealthy", "Killing"]
        checks = len(server.seen)
        for _ in range(3):  # on hold: no more checks until the biz runs again
            clock.now += 10
            await manager.settle()
        assert len(server.seen) == checks
        server.status = 200
        assert manager.sync("ns/p", "u1", "127.0.0.1", {"biz1": ContainerInput(probes, activated_at=clock.now)})
        assert manager.state("ns/p")["biz1"].restart is None
        await manager.settle()
        assert len(server.seen) == checks + 1
    finally:
        await manager.close()


async def test_manager_startup_then_readiness(server):
    clock, rec = Clock(), Recorder()
    manager = ProbeManager(on_change=rec.on_change, clock=clock)
    probes = _probes(server.port, startup={"period_s": 2, "failure_threshold": 10}, readiness={"period_s": 10})
    try:
        server.status = 503
        manager.sync("ns/p", "u1", "127.0.0.1", {"biz1": ContainerInput(probes, activated_at=clock.now)})
        await manager.settle()
        assert manager.state("ns/p")["biz1"].started is False and len(server.seen) == 1
        server.status = 200
        clock.now += 2
        await manager.settle()  # startup succeeds, and readiness runs at once
        state = manager.state("ns/p")["biz1"]
        assert (state.started, state.ready) == (True, True) and len(server.seen) == 3
        assert rec.changes == ["ns/p", "ns/p"]  # started, then ready
    finally:
        await manager.close()


async def test_manager_exec_and_unresolvable_probes_are_reported_once():
    rec = Recorder()
    manager = ProbeManager(on_change=rec.on_change, on_event=rec.on_event, clock=Clock())
    probes = container_probes({"name": "biz1", "readinessProbe": {"exec": {"command": ["true"]}},
                               "livenessProbe": {"httpGet": {"port": "nope"}}})
    try:
        for _ in range(3):
            manager.sync("ns/p", "u1", "127.0.0.1", {"biz1": ContainerInput(probes, activated_at=1000.0)})
        assert [e[2] for e in rec.events] == ["UnsupportedProbe", "UnsupportedProbe"]
        assert manager.state("ns/p")["biz1"].ready  # exec readiness: ACTIVATED decides
        manager.sync("ns/p", "u2", "127.0.0.1", {"biz1": ContainerInput(probes, activated_at=1000.0)})
        assert len(rec.events) == 4  # a new pod with the same name: reported again
    finally:
        await manager.close()


async def test_manager_bounds_concurrency_and_drops_forgotten_pods():
    clock, rec = Clock(), Recorder()
    running, most = 0, 0
    gate = asyncio.Event()

    async def check(handler: ProbeHandler, pod_ip: str, timeout_s: float) -> Outcome:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1
        return Outcome(CheckResult.SUCCESS, "")

    manager = ProbeManager(on_change=rec.on_change, check=check, clock=clock, max_concurrent=8)
    probes = _probes(80, readiness={})
    try:
        for i in range(100):
            manager.sync(f"ns/p{i}", f"u{i}", "127.0.0.1", {"biz1": ContainerInput(probes, activated_at=clock.now)})
        settling = asyncio.create_task(manager.settle())
        await wait_for(lambda: running == 8, timeout=10, interval=0.01, what="8 checks in flight")
        await asyncio.sleep(0.1)  # room for a ninth, which must not come
        assert running == 8
        manager.forget("ns/p0")  # its check is in flight: the result must not count
        gate.set()
        await settling
        assert most == 8
        assert manager.state("ns/p0") == {}
        assert sum(manager.state(f"ns/p{i}")["biz1"].ready for i in range(1, 100)) == 99
        assert sorted(rec.changes) == sorted(f"ns/p{i}" for i in range(1, 100))
    finally:
        await manager.close()


async def test_manager_a_result_for_an_older_container_does_not_count():
    clock, rec = Clock(), Recorder()
    gate = asyncio.Event()

    started = asyncio.Event()

    async def check(handler: ProbeHandler, pod_ip: str, timeout_s: float) -> Outcome:
        started.set()
        await gate.wait()
        return Outcome(CheckResult.SUCCESS, "")

    manager = ProbeManager(on_change=rec.on_change, check=check, clock=clock)
    probes = _probes(80, readiness={"initial_delay_s": 5})
    try:
        manager.sync("ns/p", "u1", "127.0.0.1", {"biz1": ContainerInput(probes, activated_at=clock.now - 5)})
        settling = asyncio.create_task(manager.settle())
        await asyncio.wait_for(started.wait(), 10)
        manager.sync("ns/p", "u1", "127.0.0.1", {"biz1": ContainerInput(probes, activated_at=clock.now)})
        gate.set()
        await settling
        assert not manager.state("ns/p")["biz1"].ready and rec.changes == []
        assert manager.checks_run == 0
    finally:
        await manager.close()


async def test_manager_real_timer_runs_checks_on_time(server):
    rec = Recorder()
    manager = ProbeManager(on_change=rec.on_change)
    probes = _probes(server.port, readiness={"period_s": 1})
    try:
        manager.sync("ns/p", "u1", "127.0.0.1", {"biz1": ContainerInput(probes, activated_at=time.monotonic())})
        await wait_for(lambda: len(server.seen) >= 3, timeout=10, interval=0.05, what="three checks, 1 s apart")
        assert rec.changes == ["ns/p"]
        assert manager.state("ns/p")["biz1"].ready
    finally:
        await manager.close()
