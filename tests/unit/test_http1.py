"""vkprovider.http1, the lean HTTP/1.1 of the hot paths, against real sockets on loopback: the client (keep-alive
pool, EOF-delimited answers, caps, timeouts, streams, CONNECT proxies) and the server (limits, timeouts, counts).

Every scenario runs on both event loops vkprovider may run on: asyncio's and uvloop's (uvloop's transports are
not asyncio's classes, which once broke the first version of this module under uvloop only).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.helpers import wait_for
from tests.mqtt_broker import make_ca, make_server_cert
from vkprovider import http1

Runner = Callable[[Coroutine[Any, Any, None]], None]
RUNNERS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Runner:
    return RUNNERS[request.param]  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ a scripted server


class Scripted:
    """A raw TCP server that answers each connection with ``script(reader, writer)`` and counts connections."""

    def __init__(self, script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.script = script
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> Scripted:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.script(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def get(path: str = "/x", host: str = "h") -> bytes:
    return http1.request_head("GET", path, host, [("Accept", "application/json")], None)


def post(body: bytes, path: str = "/heartbeat", extra: list[tuple[str, str]] | None = None) -> bytes:
    return http1.request_head("POST", path, "h", extra or [], len(body)) + body


# ------------------------------------------------------------------------------------------------- client


def test_a_pool_keeps_one_connection_for_requests_in_turn(run: Runner) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            body = request.split(b" ", 2)[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Twice: a\r\nX-Twice: b\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()

    async def scenario() -> None:
        async with Scripted(script) as server:
            pool = http1.Pool("127.0.0.1", server.port)
            answers = [await pool.request(get(f"/n{i}"), timeout_s=5) for i in range(3)]
            assert [(a.status, a.reason, a.body) for a in answers] == [(200, "OK", b"/n0"), (200, "OK", b"/n1"),
                                                                        (200, "OK", b"/n2")]
            assert answers[0].headers["x-twice"] == "a, b"
            assert server.connections == 1 and len(pool) == 1
            await pool.close()

    run(scenario())


def test_a_pool_closes_the_connections_a_burst_opened_once_they_idle_past_idle_s(run: Runner) -> None:
    """A burst of requests at once opens one connection each; once the burst is over they must not stay open for
    good while requests in turn keep reusing the newest one (each idle TLS connection to the apiserver holds tens of
    KB: after a 1,000-base start, hundreds of them were most of a replica's memory)."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.05)  # slow enough that a burst needs a connection per request
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def scenario() -> None:
        async with Scripted(script) as server:
            pool = http1.Pool("127.0.0.1", server.port, idle_s=0.3)
            await asyncio.gather(*(pool.request(get(), timeout_s=5) for _ in range(8)))
            assert len(pool) == 8
            loop = asyncio.get_running_loop()
            until = loop.time() + 1.0
            while loop.time() < until:  # requests in turn, past the idle time of the burst's connections
                await pool.request(get(), timeout_s=5)
            assert len(pool) == 1
            await pool.close()

    run(scenario())


def live(kind: type) -> int:
    """Instances of ``kind`` still alive (gc.get_objects sees them with the collector off too)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def test_a_closed_client_connection_is_freed_without_the_cycle_collector(run: Runner) -> None:
    """A connection, its parser and its transport refer to each other while it is open; once closed, reference
    counting alone must free them. vkprovider runs the cycle collector rarely (``cli.tune_gc``): before, every arklet
    call's and every dropped API connection's objects waited for it, thousands at once at 600 bases."""
    async def arklet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n{}")
        await writer.drain()

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    async def scenario() -> None:
        connection = http1.client._ClientConnection
        async with Scripted(arklet) as one_shot, Scripted(keep_alive) as pooled:
            before = live(connection)
            for _ in range(5):
                await http1.exchange("127.0.0.1", one_shot.port, post(b"{}"), timeout_s=5, limit=100)
            pool = http1.Pool("127.0.0.1", pooled.port)
            await asyncio.gather(*(pool.request(get(), timeout_s=5) for _ in range(3)))
            await pool.close()
            await wait_for(lambda: live(connection) == before, timeout=5)

    gc.disable()
    try:
        run(scenario())
    finally:
        gc.enable()


def test_an_answer_without_a_length_ends_at_eof_and_its_size_is_capped(run: Runner) -> None:
    async def arklet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        size = int(request.split(b"\r\n\r\n", 1)[1] or b"10")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b"x" * size)
        await writer.drain()  # and close: Netty arklet's way

    async def scenario() -> None:
        async with Scripted(arklet) as server:
            answer = await http1.exchange("127.0.0.1", server.port, post(b"30"), timeout_s=5, limit=100)
            assert (answer.status, answer.body) == (200, b"x" * 30)
            with pytest.raises(http1.HttpError) as too_large:
                await http1.exchange("127.0.0.1", server.port, post(b"5000"), timeout_s=5, limit=100)
            assert too_large.value.kind == "too_large"

    run(scenario())


def test_broken_slow_and_absent_servers_are_told_apart(run: Runner) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def scenario() -> None:
        async with Scripted(cut) as a, Scripted(garbage) as b, Scripted(silent) as c:
            errors = {}
            for name, port, timeout in (("cut", a.port, 5.0), ("garbage", b.port, 5.0), ("silent", c.port, 0.3)):
                with pytest.raises(http1.HttpError) as caught:
                    await http1.Pool("127.0.0.1", port).request(get(), timeout_s=timeout)
                errors[name] = (caught.value.kind, caught.value.sent)
            closed_port = a.port
        with pytest.raises(http1.HttpError) as refused:
            await http1.Pool("127.0.0.1", closed_port).request(get(), timeout_s=5)
        errors["refused"] = (refused.value.kind, refused.value.sent)
        assert errors == {"cut": ("closed", True), "garbage": ("malformed", True), "silent": ("timeout", True),
                          "refused": ("connect", False)}  # only a refused connection provably sent nothing

    run(scenario())


def test_a_streamed_answer_comes_in_chunks_and_gives_its_connection_back(run: Runner) -> None:
    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            if b"/short" in request:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for line in (b'{"n":1}\n', b'{"n":2}\n'):
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                await writer.drain()
                await asyncio.sleep(0.05)
            if b"/stall" in request:
                await asyncio.sleep(5)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def scenario() -> None:
        async with Scripted(watch) as server:
            pool = http1.Pool("127.0.0.1", server.port)
            head, streamed = await pool.stream(get("/watch"), head_timeout_s=5)
            assert head.status == 200
            assert b"".join([c async for c in streamed.chunks(silence_s=5)]) == b'{"n":1}\n{"n":2}\n'
            streamed.close()
            assert (await pool.request(get("/short"), timeout_s=5)).body == b"ok"
            assert server.connections == 1  # the watch's connection was given back and used again
            head, streamed = await pool.stream(get("/stall"), head_timeout_s=5)
            seen = []
            with pytest.raises(http1.HttpError) as stalled:
                async for chunk in streamed.chunks(silence_s=0.5):
                    seen.append(chunk)
            streamed.close()
            assert stalled.value.kind == "timeout" and b"".join(seen) == b'{"n":1}\n{"n":2}\n'
            await pool.close()

    run(scenario())


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN: the connection was cut, it did not end."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def test_an_answer_without_a_length_cut_by_a_reset_is_an_error_not_a_whole_answer(run: Runner) -> None:
    head_read = asyncio.Event()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"half\":")
        await writer.drain()
        if b"/stream" in request:
            await head_read.wait()  # the client has the head: what comes next is the body's end
        _reset(writer)  # on loopback the bytes written reach the client before the reset

    async def eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"whole\":1}")
        await writer.drain()  # and a FIN: the end of an answer without a length

    async def scenario() -> None:
        async with Scripted(cut) as server, Scripted(eof) as fine:
            pool = http1.Pool("127.0.0.1", server.port)
            head, streamed = await pool.stream(get("/stream"), head_timeout_s=5)
            assert head.status == 200
            head_read.set()
            seen = []
            with pytest.raises(http1.HttpError) as reset:
                async for chunk in streamed.chunks(silence_s=5):
                    seen.append(chunk)
            streamed.close()
            assert reset.value.kind == "closed" and reset.value.sent
            assert b"".join(seen) in (b"", b'{"half":')
            with pytest.raises(http1.HttpError) as cut_exchange:
                await http1.exchange("127.0.0.1", server.port, post(b"{}", "/x"), timeout_s=5, limit=100)
            assert cut_exchange.value.kind == "closed"
            answer = await http1.exchange("127.0.0.1", fine.port, post(b"{}"), timeout_s=5, limit=100)
            assert (answer.status, answer.body) == (200, b'{"whole":1}')
            await pool.close()

    run(scenario())


def test_informational_answers_before_the_final_one_are_skipped(run: Runner) -> None:
    async def continues(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if b"/two" in request:
                writer.write(b"HTTP/1.1 102 Processing\r\nX-Progress: 1\r\n\r\n")
            await writer.drain()
            if b"/nolength" in request:
                writer.write(b"HTTP/1.1 200 OK\r\nX-Final: yes\r\n\r\ndone")
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok")
            await writer.drain()

    async def scenario() -> None:
        async with Scripted(continues) as server:
            pool = http1.Pool("127.0.0.1", server.port)
            for path in ("/one", "/two", "/again"):
                answer = await pool.request(post(b"{}", path), timeout_s=5)
                assert (answer.status, answer.reason, answer.body) == (201, "Created", b"ok")
                assert answer.headers.get("x-final") == "yes" and "x-progress" not in answer.headers
            assert server.connections == 1  # the connection stays usable after an informational answer
            answer = await http1.exchange("127.0.0.1", server.port, post(b"{}", "/nolength"), timeout_s=5, limit=100)
            assert (answer.status, answer.body, answer.headers.get("x-final")) == (200, b"done", "yes")
            await pool.close()

    run(scenario())


def test_pool_connections_probe_a_silent_peer_with_tcp_keepalive(run: Runner) -> None:
    """A connection to the API server whose peer vanished without a reset (a node gone, a NAT entry dropped) must
    not wait for the kernel's two-hour default: keepalive probes after a short idle time find it dead."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async def scenario() -> None:
        async with Scripted(echo) as server:
            pool = http1.Pool("127.0.0.1", server.port)
            await pool.request(get(), timeout_s=5)
            (conn,) = pool._open
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            options = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))
            assert options[0] == 1
            assert options[1:] == (http1.KEEPALIVE_IDLE_S, http1.KEEPALIVE_INTERVAL_S, http1.KEEPALIVE_PROBES)
            assert options[1] + options[2] * options[3] <= 30  # a dead peer is found within half a minute
            await pool.close()

    run(scenario())


def test_a_full_pool_makes_requests_wait_for_a_connection(run: Runner) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async def scenario() -> None:
        async with Scripted(slow) as server:
            pool = http1.Pool("127.0.0.1", server.port, limit=2)
            answers = await asyncio.gather(*(pool.request(get(), timeout_s=5) for _ in range(6)))
            assert [a.status for a in answers] == [200] * 6
            assert server.connections == 2
            await pool.close()

    run(scenario())


def test_an_https_origin_is_reached_through_a_connect_proxy(run: Runner, tmp_path: Path) -> None:
    ca_path, ca_key, ca_cert = make_ca(tmp_path, "test-ca")
    cert, key = make_server_cert(tmp_path, ca_key, ca_cert)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(ca_path))
    asked: list[bytes] = []

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(request.split(b" ")[1]),
                                                                          request.split(b" ")[1]))
        await writer.drain()

    async def scenario() -> None:
        tls_server = await asyncio.start_server(origin, "127.0.0.1", 0, ssl=server_tls)
        origin_port = tls_server.sockets[0].getsockname()[1]

        async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            asked.append(head)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", origin_port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async with Scripted(proxy) as proxy_server:
            pool = http1.Pool("127.0.0.1", origin_port, tls=client_tls, server_hostname="localhost",
                              proxy=http1.Proxy("127.0.0.1", proxy_server.port, "Basic dTpw"))
            answer = await pool.request(get("/through", host=pool.authority), timeout_s=5)
            assert (answer.status, answer.body) == (200, b"/through")
            await pool.close()
        tls_server.close()
        assert asked[0].startswith(f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\n".encode())
        assert b"Proxy-Authorization: Basic dTpw\r\n" in asked[0]

    run(scenario())


def test_a_header_value_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        http1.request_head("GET", "/", "h", [("Authorization", "Bearer x\r\nX-Evil: 1")], None)


# ------------------------------------------------------------------------------------------------- server


class Guard:
    def __init__(self, cap: int = 100) -> None:
        self.cap = cap
        self.open = 0
        self.refusals = 0
        self.incomplete = 0

    def admit(self) -> bool:
        if self.open >= self.cap:
            return False
        self.open += 1
        return True

    def refused(self) -> None:
        self.refusals += 1

    def closed(self, *, incomplete: bool) -> None:
        self.open -= 1
        self.incomplete += incomplete


class Served:
    def __init__(self, *, max_body: int = 64, timeout_s: float = 5.0, cap: int = 100,
                 fail: bool = False, answer: bytes = b"SUCCESS", max_queued: int = 64,
                 small_send_buffer: bool = False) -> None:
        self.guard = Guard(cap)
        self.requests: list[http1.Request] = []
        self.refused: list[tuple[str, int]] = []
        self.limits = http1.ServerLimits(max_body=max_body, request_timeout_s=timeout_s, idle_timeout_s=timeout_s,
                                         max_queued_answers=max_queued)
        self.fail = fail
        self.answer = answer
        self.small_send_buffer = small_send_buffer  # the kernel takes little: answers wait in the transport
        self.server: asyncio.base_events.Server | None = None
        self.transports: list[asyncio.Transport] = []
        self.peak_buffered = 0  # the most bytes any connection's transport held unsent when a request was handled

    def handle(self, request: http1.Request) -> http1.Response:
        self.requests.append(request)
        self.peak_buffered = max([self.peak_buffered, *(t.get_write_buffer_size() for t in self.transports)])
        if self.fail:
            raise RuntimeError("boom")
        return http1.Response(200, self.answer)

    def connection(self) -> http1.ServerConnection:
        served = self

        class Recorded(http1.ServerConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                served.transports.append(transport)  # type: ignore[arg-type]
                if served.small_send_buffer:
                    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
                super().connection_made(transport)

        return Recorded(self.handle, self.limits, self.guard, lambda path, status: self.refused.append((path, status)))

    async def __aenter__(self) -> Served:
        self.server = await asyncio.get_running_loop().create_server(self.connection, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def connect(self, *, small_window: bool = False) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A client connection; ``small_window``: a 4 KB receive buffer (no autotuning), so answers the client
        does not read pile up on the server's side instead of in the client's kernel."""
        assert self.server is not None
        address = ("127.0.0.1", self.server.sockets[0].getsockname()[1])
        if not small_window:
            return await asyncio.open_connection(*address)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
        return await asyncio.open_connection(sock=sock)


async def answers(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(count):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        out.append((int(head.split(b" ")[1]), await reader.readexactly(length)))
    return out


def test_requests_on_one_connection_are_answered_in_order(run: Runner) -> None:
    async def scenario() -> None:
        async with Served() as served:
            reader, writer = await served.connect()
            writer.write(post(b'{"a":1}', "/heartbeat?x=1", [("Authorization", "Bearer t"),
                                                            ("Authorization", "Bearer u")]))
            writer.write(post(b"{}") + post(b"[]"))  # pipelined
            assert await answers(reader, 3) == [(200, b"SUCCESS")] * 3
            first = served.requests[0]
            assert (first.method, first.path, first.query, first.body) == ("POST", "/heartbeat", "x=1", b'{"a":1}')
            assert first.remote == "127.0.0.1" and first.repeated == frozenset({"authorization"})
            assert [r.body for r in served.requests[1:]] == [b"{}", b"[]"]
            writer.close()
            await asyncio.sleep(0.05)
            assert served.guard.open == 0 and served.guard.incomplete == 0

    run(scenario())


def test_a_closed_server_connection_is_freed_without_the_cycle_collector(run: Runner) -> None:
    """The heartbeat listener's connections too (see the client's test): a base opens one per heartbeat."""
    async def scenario() -> None:
        async with Served() as served:
            before = live(http1.ServerConnection)
            for _ in range(5):
                reader, writer = await served.connect()
                writer.write(post(b"{}"))
                assert await answers(reader, 1) == [(200, b"SUCCESS")]
                writer.close()
            await wait_for(lambda: served.guard.open == 0, timeout=5)
            served.transports.clear()
            await wait_for(lambda: live(http1.ServerConnection) == before, timeout=5)

    gc.disable()
    try:
        run(scenario())
    finally:
        gc.enable()


def test_too_large_too_slow_and_malformed_requests_are_refused_and_closed(run: Runner) -> None:
    async def scenario() -> None:
        async with Served(max_body=64, timeout_s=0.3) as served:
            outcomes = {}
            r, w = await served.connect()  # a declared length over the cap: refused before the body
            w.write(http1.request_head("POST", "/heartbeat", "h", [], 10_000))
            outcomes["declared"] = (await answers(r, 1))[0][0], await r.read()
            r, w = await served.connect()  # a chunked body that grows over the cap
            w.write(b"POST /heartbeat HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
            w.write(b"40\r\n" + b"x" * 64 + b"\r\n40\r\n" + b"x" * 64 + b"\r\n")
            outcomes["chunked"] = (await answers(r, 1))[0][0], await r.read()
            r, w = await served.connect()  # a declared body that never comes
            w.write(http1.request_head("POST", "/heartbeat", "h", [], 10) + b"{")
            outcomes["slow body"] = (await answers(r, 1))[0][0], await r.read()
            r, w = await served.connect()
            w.write(b"NOT HTTP AT ALL\r\n\r\n")
            outcomes["malformed"] = (await answers(r, 1))[0][0], await r.read()
            r, w = await served.connect()  # a head that never ends: closed without an answer, counted
            w.write(b"POST /heartbeat HTTP/1.1\r\nHost: h\r\nContent-Le")
            outcomes["slow head"] = await r.read()
            r, w = await served.connect()  # a connection that sends nothing
            outcomes["silent"] = await r.read()
            await asyncio.sleep(0.05)
            assert outcomes == {"declared": (413, b""), "chunked": (413, b""), "slow body": (408, b""),
                                "malformed": (400, b""), "slow head": b"", "silent": b""}
            assert served.requests == []
            assert served.refused == [("/heartbeat", 413), ("/heartbeat", 413), ("/heartbeat", 408), ("", 400)]
            assert served.guard.open == 0 and served.guard.incomplete == 3  # malformed, slow head, silent

    run(scenario())


def test_idle_keep_alive_connections_are_closed_and_the_cap_holds(run: Runner) -> None:
    async def scenario() -> None:
        async with Served(timeout_s=0.3, cap=2) as served:
            r1, w1 = await served.connect()
            w1.write(post(b"{}"))
            assert await answers(r1, 1) == [(200, b"SUCCESS")]
            r2, w2 = await served.connect()
            r3, w3 = await served.connect()  # over the cap: aborted at once
            assert await r3.read() == b""
            assert await r1.read() == b"" and await r2.read() == b""  # idle: closed after the timeout
            await asyncio.sleep(0.05)
            assert served.guard.refusals == 1 and served.guard.open == 0
            assert served.guard.incomplete == 1  # the second connection never sent anything

    run(scenario())


def test_a_failing_handler_answers_500_and_expect_continue_is_honoured(run: Runner) -> None:
    async def scenario() -> None:
        async with Served(fail=True) as served:
            reader, writer = await served.connect()
            writer.write(http1.request_head("POST", "/heartbeat", "h", [("Expect", "100-continue")], 2))
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"{}")
            status, body = (await answers(reader, 1))[0]
            assert (status, body) == (500, b'{"error":"internal error"}')
            writer.close()

    run(scenario())


def test_a_client_that_pipelines_and_never_reads_cannot_make_the_server_buffer_without_bound(run: Runner) -> None:
    """Every answer waits in the server's transport until the client reads it; a client that sends thousands of
    pipelined requests (404s need no credential) and reads nothing must meet back-pressure, not a growing buffer."""
    answer = b"x" * 4096
    count = 5000  # 20 MB of answers, far more than the kernel's socket buffers take

    async def scenario() -> None:
        async with Served(answer=answer) as served:
            reader, writer = await served.connect(small_window=True)
            writer.write(get("/nothing-here") * count)  # buffered on our side; never a read of an answer

            def settled() -> bool:  # everything handled, or the server stopped reading or closed the connection
                transport = served.transports[0] if served.transports else None
                return len(served.requests) == count or (transport is not None and (
                    transport.is_closing() or not transport.is_reading()))

            await wait_for(settled, 30, interval=0.01, what="the server to handle everything or push back")
            buffered = max(served.peak_buffered, served.transports[0].get_write_buffer_size())
            assert buffered <= 1 << 20, f"{buffered} bytes of answers buffered for a client that never reads"
            assert len(served.requests) < count
            writer.transport.abort()

    run(scenario())


def test_a_connection_whose_client_does_not_read_is_dropped_after_the_idle_timeout(run: Runner) -> None:
    """Closing would wait for the client to take the answers; a client that never does must not keep the
    connection (and its buffer, and a place under the listener's cap) forever."""

    async def scenario() -> None:
        async with Served(answer=b"z" * 4096, timeout_s=0.5, max_queued=10**9) as served:
            reader, writer = await served.connect(small_window=True)
            writer.write(get("/x") * 2000)  # 8 MB of answers, never read
            await wait_for(lambda: served.guard.open == 0 and served.requests, 15, interval=0.05,
                           what="the connection of a client that does not read to be dropped")
            writer.transport.abort()

    run(scenario())


def test_a_pipelining_client_that_reads_its_answers_gets_every_one(run: Runner) -> None:
    """Back-pressure, not refusal: a client that pipelines a few dozen requests and reads the answers slower
    than they are written gets them all, on one connection."""
    answer = b"y" * 4096
    count = 60  # 240 KB of answers: past the high-water mark, within the queue cap

    async def scenario() -> None:
        async with Served(answer=answer, small_send_buffer=True) as served:
            reader, writer = await served.connect(small_window=True)
            for batch in range(5):
                writer.write(b"".join(get(f"/n{batch}-{i}") for i in range(count)))
                got = await answers(reader, count)
                assert got == [(200, answer)] * count
            assert [r.path for r in served.requests] == [f"/n{b}-{i}" for b in range(5) for i in range(count)]
            assert served.peak_buffered > http1.WRITE_HIGH_WATER  # the answers did wait for the reader
            writer.close()
            await wait_for(lambda: served.guard.open == 0, 5, interval=0.01, what="the connection closed")

    run(scenario())
