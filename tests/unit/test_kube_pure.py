"""Unit tests for the kube facade without a cluster: pure helpers, the informer loop over a fake client, and the
REST client's retry policy against an in-process aiohttp server."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.helpers import wait_for
from vkprovider.controllers.leases import lease_client
from vkprovider.core import ownership as own
from vkprovider.kube import client as client_module
from vkprovider.kube.client import (
    ApiConnectionError,
    ApiError,
    Kube,
    WatchStalled,
    api_error_from_response,
    parse_retry_after,
    resource_of,
    should_retry,
)
from vkprovider.kube.events import object_reference, timestamp, truncate_message
from vkprovider.kube.informer import (
    Informer,
    UnionCache,
    backoff_delay,
    default_key,
    diff_snapshots,
    resource_version,
    trim,
)
from vkprovider.kube.watchlines import LineSplitter, parse_watch_line

# ------------------------------------------------------------------------------------------- pure helpers


def obj(name: str, rv: str, ns: str | None = "ns", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta, **extra}


def status(code: int, reason: str, message: str = "m") -> bytes:
    return orjson.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                         "reason": reason, "message": message})


def test_api_error_mapping() -> None:
    e = api_error_from_response(404, "Not Found", status(404, "NotFound", "pods \"x\" not found"))
    assert (e.status, e.reason, e.message) == (404, "NotFound", 'pods "x" not found')
    assert e.is_not_found and not e.is_conflict and not e.is_gone
    assert isinstance(e.body, dict) and e.body["code"] == 404

    e = api_error_from_response(409, "Conflict", status(409, "AlreadyExists"))
    assert e.is_already_exists and not e.is_conflict
    e = api_error_from_response(409, "Conflict", status(409, "Conflict"))
    assert e.is_conflict and not e.is_already_exists
    e = api_error_from_response(410, "Gone", status(410, "Expired"))
    assert e.is_gone and e.is_retryable
    e = api_error_from_response(403, "Forbidden", status(403, "Forbidden"))
    assert e.is_forbidden and not e.is_retryable

    e = api_error_from_response(502, "Bad Gateway", b"<html>oops</html>")
    assert (e.status, e.reason, e.message, e.body) == (502, "Bad Gateway", "<html>oops</html>", "<html>oops</html>")
    e = api_error_from_response(429, "Too Many Requests", status(429, "TooManyRequests"), "3")
    assert e.retry_after_s == 3.0 and e.is_too_many_requests


def test_retry_after_parsing() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("1000") == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after("-1") is None


def test_should_retry_policy() -> None:
    e503 = ApiError(503, "ServiceUnavailable", "")
    e429 = ApiError(429, "TooManyRequests", "")
    e409 = ApiError(409, "Conflict", "")
    not_sent = ApiConnectionError("ConnectError", "refused", sent=False)
    maybe_sent = ApiConnectionError("ServerDisconnectedError", "", sent=True)
    assert should_retry(e503, idempotent=True)
    assert not should_retry(e503, idempotent=False)
    assert should_retry(e429, idempotent=False)
    assert not should_retry(e409, idempotent=True)
    assert should_retry(not_sent, idempotent=False)
    assert not should_retry(maybe_sent, idempotent=False)
    assert should_retry(maybe_sent, idempotent=True)
    assert not should_retry(ApiConnectionError("SSLError", "bad cert", sent=False), idempotent=True)
    assert not should_retry(ValueError(), idempotent=True)


def test_line_splitter_reassembles_chunks() -> None:
    s = LineSplitter()
    assert s.feed(b'{"a"') == []
    assert s.feed(b':1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert s.feed(b"\n\n") == [b'{"c"']
    assert s.feed(b'{"d":4}') == []
    assert s.flush() == b'{"d":4}'
    assert s.flush() is None


def test_parse_watch_line() -> None:
    ev = parse_watch_line(b'{"type":"ADDED","object":{"metadata":{"name":"a"}}}')
    assert ev == {"type": "ADDED", "object": {"metadata": {"name": "a"}}}
    assert parse_watch_line(b"not json") is None
    assert parse_watch_line(b"[1,2]") is None
    assert parse_watch_line(b'{"type":"ADDED"}') is None
    assert parse_watch_line(b'{"type":1,"object":{}}') is None


def test_resource_of() -> None:
    assert resource_of("/api/v1/pods") == "pods"
    assert resource_of("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases?x=1") == "leases"
    assert resource_of("/") == "unknown"


def test_key_and_trim() -> None:
    assert default_key(obj("a", "1")) == "ns/a"
    assert default_key(obj("n1", "1", ns=None)) == "n1"
    o = obj("a", "1")
    o["metadata"]["managedFields"] = [{"manager": "x"}]
    assert "managedFields" not in trim(o)["metadata"]


def test_diff_snapshots_adds_updates_deletes() -> None:
    old = {"ns/a": obj("a", "1"), "ns/b": obj("b", "2"), "ns/c": obj("c", "3")}
    new = {"ns/a": obj("a", "1"), "ns/b": obj("b", "5"), "ns/d": obj("d", "6")}
    changes = diff_snapshots(old, new)
    assert [(k, o is not None, n is not None) for k, o, n in changes] == [
        ("ns/b", True, True),
        ("ns/d", False, True),
        ("ns/c", True, False),
    ]
    assert diff_snapshots(new, new) == []
    assert diff_snapshots({}, {}) == []


def test_backoff_delay_bounds() -> None:
    assert backoff_delay(1, rand=lambda: 1.0) == 0.5
    assert backoff_delay(3, rand=lambda: 1.0) == 2.0
    assert backoff_delay(100, rand=lambda: 1.0) == 5.0  # capped: the cache is current soon after an outage
    assert backoff_delay(100, rand=lambda: 0.0) == 2.5


def test_event_helpers() -> None:
    pod = {"kind": "Pod", "apiVersion": "v1",
           "metadata": {"name": "p", "namespace": "n", "uid": "u1", "resourceVersion": "7"}}
    assert object_reference(pod) == {"kind": "Pod", "apiVersion": "v1", "namespace": "n", "name": "p",
                                     "uid": "u1", "resourceVersion": "7"}
    node = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": "vnode", "uid": "u2"}}
    assert "namespace" not in object_reference(node)
    assert len(truncate_message("x" * 5000)) == 1024
    assert truncate_message("short") == "short"
    assert timestamp(0) == "1970-01-01T00:00:00Z"


# ------------------------------------------------------------------------------- informer over a fake Kube


class FakeKube:
    """Scripted LIST/WATCH answers: each watch call pops a script (a list of events or an exception)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 10
        self.lists = 0
        self.watch_rvs: list[str] = []
        self.scripts: list[list[dict[str, Any] | BaseException] | BaseException] = []
        self.list_errors: list[BaseException] = []

    async def list_all(self, path: str, *, params: Mapping[str, Any] | None = None, page_size: int = 500,
                       each: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
                       ) -> tuple[list[dict[str, Any]], str, str]:
        self.lists += 1
        if self.list_errors:
            raise self.list_errors.pop(0)
        items = [orjson.loads(orjson.dumps(o)) for o in self.objects.values()]
        mapped = items if each is None else [m for m in map(each, items) if m is not None]
        return mapped, str(self.rv), "ConfigMap"

    async def watch(self, path: str, *, params: Mapping[str, Any] | None = None
                    ) -> AsyncGenerator[dict[str, Any], None]:
        self.watch_rvs.append(str((params or {}).get("resourceVersion")))
        script = self.scripts.pop(0) if self.scripts else None
        if script is None:
            await asyncio.sleep(3600)  # an idle watch
            return
        if isinstance(script, BaseException):
            raise script
        for ev in script:
            if isinstance(ev, BaseException):
                raise ev  # the stream broke after what came before
            yield ev


async def wait_until(pred: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(inf: Informer) -> AsyncGenerator[asyncio.Task[None], None]:
    task = asyncio.create_task(inf.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_informer_list_watch_bookmark_and_relist_on_410() -> None:
    fake = FakeKube()
    fake.objects = {"a": obj("a", "1"), "b": obj("b", "2")}
    changes: list[tuple[str, str | None, str | None]] = []

    def on_change(key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        changes.append((key, old["metadata"]["resourceVersion"] if old else None,
                        new["metadata"]["resourceVersion"] if new else None))

    fake.scripts = [
        [
            {"type": "ADDED", "object": obj("c", "11")},
            {"type": "MODIFIED", "object": obj("a", "12")},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
            {"type": "GARBAGE", "object": {}},
            {"type": "DELETED", "object": obj("b", "16")},
        ],
        # the watch ended normally; the next one starts at 16 and hits a 410
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}],
    ]
    inf = Informer(fake, "/api/v1/configmaps", on_change=on_change)  # type: ignore[arg-type]
    async with running(inf):
        await asyncio.wait_for(inf.synced.wait(), 5)
        await wait_until(lambda: fake.lists == 2)
        # after the 410 the informer re-lists; meanwhile (the gap) c was deleted and d created
        await wait_until(lambda: len(fake.watch_rvs) >= 3)
    assert fake.watch_rvs[:2] == ["10", "16"]
    assert changes[:2] == [("ns/a", None, "1"), ("ns/b", None, "2")]
    assert changes[2:5] == [("ns/c", None, "11"), ("ns/a", "1", "12"), ("ns/b", "2", None)]
    # the re-LIST (fake still has a@1, b@2) restores b, drops c and reverts a
    assert set(changes[5:]) == {("ns/a", "12", "1"), ("ns/b", None, "2"), ("ns/c", "11", None)}
    assert sorted(inf.keys()) == ["ns/a", "ns/b"]


async def test_informer_survives_errors_and_bad_callbacks() -> None:
    fake = FakeKube()
    fake.objects = {"a": obj("a", "1")}
    fake.list_errors = [ApiError(500, "InternalError", "boom")]
    fake.scripts = [ApiConnectionError("ServerDisconnectedError", "", sent=True),
                    [{"type": "ADDED", "object": obj("z", "20")}]]

    def on_change(key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        raise RuntimeError("callback bug")

    inf = Informer(fake, "/api/v1/configmaps", on_change=on_change)  # type: ignore[arg-type]
    inf_task_failures: list[BaseException] = []
    async with running(inf) as task:
        await asyncio.wait_for(inf.synced.wait(), 10)
        await wait_until(lambda: inf.get("ns/z") is not None, 10)
        if task.done():
            inf_task_failures.append(task.exception() or RuntimeError("ended"))
    assert not inf_task_failures
    assert fake.lists >= 3  # the failed LIST, the first good one, and the one after the watch error


async def test_informer_paused_resumes_from_given_rv() -> None:
    fake = FakeKube()
    inf = Informer(fake, "/api/v1/configmaps")  # type: ignore[arg-type]
    async with running(inf):
        await asyncio.wait_for(inf.synced.wait(), 5)
        await wait_until(lambda: len(fake.watch_rvs) == 1)
        async with inf.paused(resume_from="1"):
            await asyncio.sleep(0.05)
            assert len(fake.watch_rvs) == 1
        await wait_until(lambda: len(fake.watch_rvs) == 2)
    assert fake.watch_rvs == ["10", "1"]


# ------------------------------------------------------------------- REST client against a local server


class FakeApi:
    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.auth: list[str | None] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = f"{request.method} {request.path}"
        n = self.hits[key] = self.hits.get(key, 0) + 1
        self.auth.append(request.headers.get("Authorization"))
        if request.path == "/flaky":  # two 503s, then OK
            if n <= 2:
                return web.Response(status=503, body=status(503, "ServiceUnavailable"),
                                    content_type="application/json")
            return web.json_response({"ok": n, "query": dict(request.query)})
        if request.path == "/throttled":  # one 429 with Retry-After
            if n == 1:
                return web.Response(status=429, body=status(429, "TooManyRequests"),
                                    headers={"Retry-After": "1"}, content_type="application/json")
            return web.json_response({"ok": n})
        if request.path == "/broken":
            return web.Response(status=500, body=status(500, "InternalError"), content_type="application/json")
        if request.path == "/gone":
            return web.Response(status=404, body=status(404, "NotFound"), content_type="application/json")
        if request.path == "/auth":  # only the rotated token is accepted
            if request.headers.get("Authorization") != "Bearer new-token":
                return web.Response(status=401, body=status(401, "Unauthorized"), content_type="application/json")
            return web.json_response({"ok": True})
        if request.path == "/silent-watch":  # one event, then nothing: a connection that went dead
            resp = web.StreamResponse()
            resp.content_type = "application/json"
            await resp.prepare(request)
            await resp.write(orjson.dumps({"type": "ADDED", "object": {"metadata": {"name": "a"}}}) + b"\n")
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.05)  # silent until the client gives up
            return resp
        if request.path == "/watch":
            resp = web.StreamResponse()
            resp.content_type = "application/json"
            await resp.prepare(request)
            big = "x" * 300_000
            lines = [
                orjson.dumps({"type": "ADDED", "object": {"metadata": {"name": "a", "big": big}}}),
                b"garbage",
                orjson.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}),
            ]
            payload = b"\n".join(lines) + b"\n"
            for i in range(0, len(payload), 7000):
                await resp.write(payload[i:i + 7000])
            await resp.write_eof()
            return resp
        return web.json_response({"method": request.method, "query": dict(request.query),
                                  "ctype": request.content_type,
                                  "body": (await request.read()).decode() or None})


@pytest.fixture
async def fake_api(tmp_path: Path) -> AsyncGenerator[tuple[Kube, FakeApi], None]:
    api = FakeApi()
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(f"""
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t0ken}}}}, {{name: f, user: {{tokenFile: "{tmp_path / 'token'}"}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}, {{name: y, context: {{cluster: c, user: f}}}}]
current-context: x
""")
    kube = await Kube.connect(str(cfg), timeout_s=5)
    try:
        yield kube, api
    finally:
        await kube.close()
        await runner.cleanup()


async def test_client_reloads_kubeconfig_credentials_after_401(fake_api: tuple[Kube, FakeApi],
                                                                tmp_path: Path) -> None:
    _, api = fake_api
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(cfg.read_text().replace("current-context: x", "current-context: y"))
    token = tmp_path / "token"
    token.write_text("old-token\n")
    kube = await Kube.connect(str(cfg), timeout_s=5)
    try:
        with pytest.raises(ApiError) as info:
            await kube.get("/auth")
        assert info.value.is_unauthorized
        token.write_text("new-token\n")  # rotated: the next 401 reloads the kubeconfig's tokenFile
        assert await kube.get("/auth") == {"ok": True}
        assert api.auth[-2:] == ["Bearer old-token", "Bearer new-token"]
    finally:
        await kube.close()


def test_in_cluster_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    from vkprovider.kube.client import _Credentials

    token = tmp_path / "token"
    token.write_text("one\n")
    creds = _Credentials(None, token_file=str(token))
    assert creds.header() == "Bearer one"
    token.write_text("two-rotated\n")
    assert creds.header() == "Bearer one"  # checked at most once a second
    creds._checked_at -= 5
    assert creds.header() == "Bearer two-rotated"
    token.unlink()
    creds._checked_at -= 5
    assert creds.header() == "Bearer two-rotated"  # a missing file keeps the last good token


async def test_client_retries_get_on_503_and_sends_token(fake_api: tuple[Kube, FakeApi]) -> None:
    kube, api = fake_api
    answer = await kube.get("/flaky", params={"labelSelector": "a=b", "watch": False, "skip": None})
    assert answer["ok"] == 3
    assert answer["query"] == {"labelSelector": "a=b", "watch": "false"}
    assert api.auth[-1] == "Bearer t0ken"


async def test_client_honours_retry_after_on_429_even_for_post(fake_api: tuple[Kube, FakeApi]) -> None:
    kube, _ = fake_api
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    answer = await kube.request("POST", "/throttled", body={"x": 1})
    assert answer == {"ok": 2}
    assert loop.time() - t0 >= 0.9


async def test_client_does_not_retry_a_failed_post(fake_api: tuple[Kube, FakeApi]) -> None:
    kube, api = fake_api
    with pytest.raises(ApiError) as info:
        await kube.create("/broken", {"a": 1})
    assert info.value.status == 500 and info.value.reason == "InternalError"
    assert api.hits["POST /broken"] == 1


async def test_client_delete_404_is_none_and_patch_content_types(fake_api: tuple[Kube, FakeApi]) -> None:
    kube, _ = fake_api
    assert await kube.delete("/gone") is None
    for kind, ctype in [("strategic", "application/strategic-merge-patch+json"),
                        ("merge", "application/merge-patch+json"),
                        ("json", "application/json-patch+json"),
                        ("apply", "application/apply-patch+yaml")]:
        answer = await kube.patch("/echo", {"a": 1} if kind != "json" else [{"op": "add"}], kind=kind)  # type: ignore[arg-type]
        assert answer["ctype"] == ctype
        assert answer["query"]["fieldManager"] == "vkprovider"
        assert ("force" in answer["query"]) == (kind == "apply")
    with pytest.raises(ValueError):
        await kube.patch("/echo", {}, kind="bogus")  # type: ignore[arg-type]


async def test_client_connection_refused_is_api_connection_error(tmp_path: Path) -> None:
    cfg = tmp_path / "kubeconfig"
    cfg.write_text("""
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    kube = await Kube.connect(str(cfg), timeout_s=2)
    try:
        with pytest.raises(ApiConnectionError) as info:
            await kube.create("/x", {})
        assert info.value.status == 0 and not info.value.sent
    finally:
        await kube.close()


async def test_watch_streams_large_lines_and_skips_garbage(fake_api: tuple[Kube, FakeApi]) -> None:
    kube, _ = fake_api
    events = []
    async with contextlib.aclosing(kube.watch("/watch", params={"timeoutSeconds": 5})) as stream:
        async for ev in stream:
            events.append(ev)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert len(events[0]["object"]["metadata"]["big"]) == 300_000


async def test_a_watch_silent_past_its_timeout_is_declared_stalled(fake_api: tuple[Kube, FakeApi],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The server ends a watch after timeoutSeconds; one that sent no byte for longer is dead (a blackholed
    connection), whatever TCP says: the watch raises WatchStalled after timeoutSeconds + the grace."""
    monkeypatch.setattr(client_module, "WATCH_SILENCE_GRACE_S", 0.5)
    kube, _ = fake_api
    events = []
    started = time.monotonic()
    with pytest.raises(WatchStalled):
        async with asyncio.timeout(10):
            async with contextlib.aclosing(kube.watch("/silent-watch", params={"timeoutSeconds": 1})) as stream:
                async for ev in stream:
                    events.append(ev)
    assert [e["type"] for e in events] == ["ADDED"]
    assert 1.4 <= time.monotonic() - started < 5


async def test_an_informer_watches_again_from_its_version_after_a_stalled_watch() -> None:
    fake = FakeKube()
    fake.objects = {"a": obj("a", "1")}
    fake.scripts = [[{"type": "ADDED", "object": obj("c", "11")},
                     WatchStalled("Timeout", "no byte for 45s", sent=True)]]  # then an idle watch
    inf = Informer(fake, "/api/v1/configmaps")  # type: ignore[arg-type]
    async with running(inf):
        await wait_until(lambda: len(fake.watch_rvs) == 2)
    assert fake.watch_rvs == ["10", "11"]  # from where the dead watch left off ...
    assert fake.lists == 1  # ... without a LIST
    assert sorted(inf.keys()) == ["ns/a", "ns/c"]


def _kubeconfig(tmp: Path, cluster: dict[str, Any], user: dict[str, Any]) -> str:
    import yaml

    path = tmp / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "contexts": [{"name": "other", "context": {"cluster": "x", "user": "x"}},
                     {"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": cluster}], "users": [{"name": "u", "user": user}]}))
    return str(path)


async def test_a_static_kubeconfig_is_read_without_the_client_library(tmp_path: Path) -> None:
    """Embedded or file certificates, a token or token file: read here (the library's client package would cost
    33 MB of memory for good); relative files are relative to the kubeconfig, as kubectl reads them."""
    import base64

    from vkprovider.kube.client import _auth_header, _load_configuration, static_kubeconfig

    path = _kubeconfig(tmp_path, {"server": "https://10.0.0.1:6443/",
                                  "certificate-authority-data": base64.b64encode(b"CA PEM").decode()},
                       {"client-certificate-data": base64.b64encode(b"CERT PEM").decode(),
                        "client-key": "keys/user.key"})
    conf = static_kubeconfig(path)
    assert conf is not None and conf.host == "https://10.0.0.1:6443" and conf.verify_ssl and conf.header is None
    assert Path(conf.ssl_ca_cert or "").read_bytes() == b"CA PEM"
    assert Path(conf.cert_file or "").read_bytes() == b"CERT PEM"
    assert (Path(conf.cert_file or "").stat().st_mode & 0o077) == 0  # only this user reads key material
    assert conf.key_file == str(tmp_path / "keys" / "user.key")
    (tmp_path / "token").write_text("s3cret\n")
    path = _kubeconfig(tmp_path, {"server": "https://h", "insecure-skip-tls-verify": True,
                                  "tls-server-name": "kubernetes"}, {"tokenFile": "token"})
    conf = static_kubeconfig(path)
    assert conf is not None and not conf.verify_ssl and conf.tls_server_name == "kubernetes"
    assert await _auth_header(await _load_configuration(path)) == "Bearer s3cret"


async def test_a_kubeconfig_with_an_exec_plugin_goes_to_the_library(tmp_path: Path) -> None:
    from vkprovider.kube.client import _auth_header, _load_configuration, static_kubeconfig

    credential = '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"t0"}}'
    path = _kubeconfig(tmp_path, {"server": "https://h:6443", "insecure-skip-tls-verify": True},
                       {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "sh",
                                 "args": ["-c", f"echo '{credential}'"], "interactiveMode": "Never"}})
    assert static_kubeconfig(path) is None
    conf = await _load_configuration(path)
    assert conf.host == "https://h:6443" and await _auth_header(conf) == "Bearer t0"


def test_a_kubeconfig_proxy_url_is_an_http_proxy_with_optional_basic_credentials() -> None:
    from vkprovider.kube.client import proxy_from_url

    assert proxy_from_url(None) is None
    plain = proxy_from_url("http://proxy.example:3128")
    assert plain is not None and (plain.host, plain.port, plain.authorization) == ("proxy.example", 3128, None)
    with_user = proxy_from_url("http://u:p@10.0.0.1")
    assert with_user is not None and (with_user.port, with_user.authorization) == (80, "Basic dTpw")
    for unsupported in ("socks5://proxy:1080", "https://proxy:443"):
        with pytest.raises(ValueError, match="only http:// proxies"):
            proxy_from_url(unsupported)


def test_a_union_cache_returns_the_newer_of_two_copies_of_an_object() -> None:
    """A module pod carrying both module labels is cached by two informers: the union reads the newer copy (by
    resourceVersion as integers; for other versions, the copy of the informer that saw the object last)."""
    seen: list[tuple[str | None, str | None]] = []
    union = UnionCache(lambda key, old, new: seen.append((resource_version(old) if old else None,
                                                          resource_version(new) if new else None)))
    first = Informer(FakeKube(), "/api/v1/pods", on_change=union.notify)  # type: ignore[arg-type]
    second = Informer(FakeKube(), "/api/v1/pods", on_change=union.notify)  # type: ignore[arg-type]
    union.add(first)
    union.add(second)
    first._apply({"type": "ADDED", "object": obj("p", "100")})
    second._apply({"type": "ADDED", "object": obj("p", "100")})
    second._apply({"type": "MODIFIED", "object": obj("p", "105")})  # the first informer has not seen it yet
    assert resource_version(union.get("ns/p") or {}) == "105"
    first._apply({"type": "MODIFIED", "object": obj("p", "101")})  # a lagging informer's older event
    assert resource_version(union.get("ns/p") or {}) == "105"
    assert seen[-1] == ("100", "105")  # what on_change hands on is the newer copy too
    first._apply({"type": "MODIFIED", "object": obj("p", "1000")})  # integers compare as numbers, not text
    assert resource_version(union.get("ns/p") or {}) == "1000"
    second._apply({"type": "DELETED", "object": obj("p", "1001")})
    assert resource_version(union.get("ns/p") or {}) == "1000"
    # versions that are not integers: the copy the informers saw last wins
    first._apply({"type": "MODIFIED", "object": obj("q", "b")})
    second._apply({"type": "MODIFIED", "object": obj("q", "a")})
    assert resource_version(union.get("ns/q") or {}) == "a"
    first._apply({"type": "MODIFIED", "object": obj("q", "c")})
    assert resource_version(union.get("ns/q") or {}) == "c"
    first._apply({"type": "DELETED", "object": obj("q", "d")})
    assert resource_version(union.get("ns/q") or {}) == "a"
    second._apply({"type": "DELETED", "object": obj("q", "e")})
    assert union.get("ns/q") is None and "ns/q" not in union


# ------------------------------------------------------------------ Lease writes on stalled connections (issue 27)


class _Blackhole:
    """A raw HTTP/1.1 API stand-in whose established connections can be made to stop answering (a stateful hop
    that lost its flows, a half-dead apiserver): ``freeze()`` blackholes every connection open now; new ones answer
    (``everything`` blackholes them too). Counts which connection each PATCH was answered on."""

    def __init__(self) -> None:
        self.connections = 0
        self.frozen_upto = 0
        self.everything = False
        self.answered: list[tuple[str, int]] = []
        self.release = asyncio.Event()
        self.server: asyncio.base_events.Server | None = None
        self.slow_s = 0.0  # every answer comes this late (a CPU-starved apiserver)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        me = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                if me <= self.frozen_upto or self.everything:
                    await self.release.wait()  # no answer, no close
                    return
                await asyncio.sleep(self.slow_s)
                self.answered.append((head.split(b" ", 1)[0].decode(), me))
                body = b'{"metadata":{"resourceVersion":"7"}}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def freeze(self) -> None:
        self.frozen_upto = self.connections


@pytest.fixture
async def blackhole(tmp_path: Path) -> AsyncGenerator[tuple[Kube, _Blackhole], None]:
    api = _Blackhole()
    api.server = await asyncio.start_server(api.handle, "127.0.0.1", 0)
    port = api.server.sockets[0].getsockname()[1]
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(f"""
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    kube = await Kube.connect(str(cfg), timeout_s=30)
    try:
        yield kube, api
    finally:
        api.release.set()
        await kube.close()
        api.server.close()


@pytest.mark.parametrize("hedged", [False, True])
async def test_a_lease_write_on_a_dead_pooled_connection_is_sent_again_on_a_fresh_one_in_time(
        blackhole: tuple[Kube, _Blackhole], hedged: bool) -> None:
    """Before, a Lease PATCH on a pooled connection that had stopped answering waited the generic 30 s and was not
    sent again (a PATCH is not idempotent to the client): past the renew deadline, so the vnode was fenced. A Lease
    lane bounds each attempt and the whole write, and sends a write that got no answer once more on a new
    connection - not on another pooled one, which may be as dead."""
    kube, api = blackhole
    await asyncio.gather(kube.get("/warm"), kube.get("/warm"))  # two pooled connections
    assert api.connections == 2
    api.freeze()
    lane = kube.lane(4, timeout_s=0.3, total_s=0.9, repeatable=True, hedged=hedged)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await lane.patch("/apis/coordination.k8s.io/v1/namespaces/n/leases/l",
                              {"metadata": {"resourceVersion": "6"}, "spec": {"renewTime": "t"}}, kind="merge")
    took = loop.time() - started
    assert answer == {"metadata": {"resourceVersion": "7"}}
    assert api.answered[-1] == ("PATCH", 3)  # on a new connection: the other pooled one was dead too
    assert 0.3 <= took < 0.9
    # Nothing answers at all: the write gives up within its budget, not after 30 s.
    api.everything = True
    started = loop.time()
    with pytest.raises(ApiConnectionError):
        await lane.patch("/apis/coordination.k8s.io/v1/namespaces/n/leases/l", {"spec": {}}, kind="merge")
    assert loop.time() - started < 0.9 + 0.2


async def test_a_lease_write_a_slow_apiserver_answers_within_its_budget_is_not_given_up_on(
        blackhole: tuple[Kube, _Blackhole]) -> None:
    """A starved apiserver answers a Lease PATCH late, after one attempt's time but within the write's budget.
    Given up at the attempt's time and sent again, the write went to the back of the apiserver's line and missed
    the budget: renewals the apiserver would have answered in 3.3-5 s of their 5 s were lost and their vnodes
    fenced (the rollout bench: 55 and 91 Leases lost in two runs at renew p99 4.9 s). The first copy keeps
    waiting for the whole budget; the second goes beside it on a new connection, and the first answer wins."""
    kube, api = blackhole
    timing = own.Timing(lease_duration_s=3, renew_interval_s=1, renew_deadline_s=1.9)  # 0.6 s an attempt, 0.9 s
    lane = lease_client(kube, timing, 4)
    api.slow_s = 0.75  # past an attempt's time; sent again then, the copy would be answered at 1.35 s
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await lane.patch("/apis/coordination.k8s.io/v1/namespaces/n/leases/l",
                              {"metadata": {"resourceVersion": "6"}, "spec": {"renewTime": "t"}}, kind="merge")
    assert answer == {"metadata": {"resourceVersion": "7"}}
    assert api.answered[0] == ("PATCH", 1)  # the first copy's answer, on the first connection
    assert loop.time() - started < 0.9


async def test_a_hedged_write_sent_and_never_answered_says_so_when_its_second_copy_found_no_slot(
        blackhole: tuple[Kube, _Blackhole]) -> None:
    """A Lease renewal's first copy holds the lane's one slot, sent and unanswered; its second copy waits for that
    slot until the budget ends. Both end at the deadline, and the error used to be whichever was looked at last: a
    "never sent" there made the renewal forget its stamp, so the 409 its landed copy causes next read as a Lease
    taken by another writer. A copy that was sent decides: the write may have landed."""
    kube, api = blackhole
    api.everything = True  # nothing answers
    lane = kube.lane(1, timeout_s=0.3, total_s=0.9, repeatable=True, hedged=True)
    path = "/apis/coordination.k8s.io/v1/namespaces/n/leases/l"
    for _ in range(3):
        with pytest.raises(ApiConnectionError) as unanswered:
            await lane.patch(path, {"spec": {}}, kind="merge")
        assert unanswered.value.sent


async def test_a_lease_write_waiting_for_a_request_slot_gives_up_within_its_budget(
        blackhole: tuple[Kube, _Blackhole]) -> None:
    """Every slot of a Lease lane held by writes stuck in an apiserver stall: a renewal waiting for a slot used to
    wait as long as they did and be sent after its deadline. The wait counts against its budget now, and a write
    that never got a slot says so (never sent: safe to send again). The write stuck in the stall has a longer
    budget than the renewal's: a stuck write with the same budget lets the slot go at its own deadline, a moment
    before the renewal's, and a copy sent in that moment is rightly reported as sent (a CI run met that)."""
    kube, api = blackhole
    api.everything = True  # nothing answers
    stuck_lane = kube.lane(1, timeout_s=0.3, total_s=2.0, repeatable=True, hedged=True)
    lane = copy.copy(stuck_lane)  # the same slot, a renewal's budget
    lane._total_s = 0.9
    path = "/apis/coordination.k8s.io/v1/namespaces/n/leases/l"
    loop = asyncio.get_running_loop()
    stuck = asyncio.ensure_future(stuck_lane.patch(path, {"spec": {}}, kind="merge"))
    await wait_for(stuck_lane._sem.locked, timeout=5, interval=0.01, what="the stuck write holding the slot")
    started = loop.time()
    with pytest.raises(ApiConnectionError) as waited:
        await lane.patch(path, {"spec": {}}, kind="merge")
    assert loop.time() - started < 0.9 + 0.2 and not waited.value.sent
    assert not stuck.done()  # it held the slot all along
    with pytest.raises(ApiConnectionError) as gave_up:
        await stuck
    assert gave_up.value.sent  # sent, never answered: whether it applied is unknown


async def test_an_informer_list_trims_each_page_before_it_reads_the_next() -> None:
    """A LIST of a large ENV is never held whole and untrimmed: the informer keeps (or drops) and trims each page's
    objects as the page arrives, so the peak is one page of full objects, not the whole ENV's (issue 31: the
    resident size a replica keeps after its first LIST follows what it caches, not what the apiserver sent)."""
    asked: list[dict[str, str]] = []

    class _Paged(Kube):
        def __init__(self) -> None:
            pass

        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            asked.append(dict(kwargs["params"]))
            page = len(asked)
            items = [{"metadata": {"name": f"p{page}-{i}", "namespace": "ns", "resourceVersion": "5"},
                      "spec": {"big": "x" * 100}} for i in range(3)]
            more = {"continue": f"tok{page}"} if page < 3 else {}
            return {"kind": "PodList", "apiVersion": "v1", "items": items,
                    "metadata": {"resourceVersion": "30", **more}}

    trimmed_at: dict[str, int] = {}

    def trim_object(o: dict[str, Any]) -> dict[str, Any]:
        trimmed_at[o["metadata"]["name"]] = len(asked)
        return {"metadata": o["metadata"]}

    inf = Informer(_Paged(), "/api/v1/pods", page_size=3, trim_object=trim_object,
                   keep=lambda o: not o["metadata"]["name"].endswith("-1"))
    await inf._list()
    assert trimmed_at == {f"p{p}-{i}": p for p in (1, 2, 3) for i in (0, 2)}  # page p trimmed before p+1 was asked
    assert sorted(inf.keys()) == sorted(f"ns/p{p}-{i}" for p in (1, 2, 3) for i in (0, 2))
    assert all("spec" not in o for o in inf.items())
    assert inf.synced.is_set()
