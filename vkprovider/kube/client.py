"""A small, fast Kubernetes REST client: raw JSON over keep-alive HTTP/1.1 connections (``http1.Pool``).

Why it exists: kubernetes-asyncio's generated models cost far too much CPU to build for thousands of pods and
nodes on a 2-core machine, and its watch gives up after one 410. We still use its *config loaders* (kubeconfig
files with client certificates, bearer tokens, exec plugins; in-cluster service-account config), then send every
request ourselves: orjson in and out, a bounded number of requests in flight, a timeout on every request,
tenacity retries only around a single call that is safe to repeat, and client-go compatible metrics
(``rest_client_requests_total{code,method}``, ``rest_client_request_duration_seconds{verb}``).

A request sent again after its connection died or stalled goes on a new connection, never on another pooled one
(which may be as dead). A lane (``Kube.lane``) may bound its requests tighter than the client: a timeout per
attempt and a time for all attempts together (its wait for a request slot included), mark its writes safe to
repeat, and hedge them (a second copy beside a first unanswered for an attempt's time); the Lease writers' lanes do
(``core.ownership.lease_write_budget``: a renewal is useless after its renew deadline).

Errors and the retry rule live in ``kube.errors``, where the API is and the credentials in ``kube.kubeconfig``;
both are re-exported here; a watch stream's framing in ``kube.watchlines``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Literal
from urllib.parse import quote, urlencode

import orjson
import yarl
from prometheus_client import Counter, Histogram
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from vkprovider import __version__, http1
from vkprovider.kube import kubeconfig as kubeconfig_files
from vkprovider.kube.errors import (
    ApiConnectionError,
    ApiError,
    WatchStalled,
    _Before,
    _later_retry_wait,
    api_error_from_response,
    error_from_status,
    parse_retry_after,
    retry_wait_s,
    should_retry,
)
from vkprovider.kube.kubeconfig import (
    IN_CLUSTER_CA_FILE,
    IN_CLUSTER_TOKEN_FILE,
    _auth_header,
    _Credentials,
    _load_configuration,
    _ssl_context,
    proxy_from_url,
    static_kubeconfig,
)
from vkprovider.kube.watchlines import LineSplitter, parse_watch_line

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


# ---------------------------------------------------------------------------------------- credentials


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
        self._total_s: float | None = None  # all attempts of one request together (None: only MAX_ATTEMPTS)
        self._repeatable = False  # every request of this client is safe to send again (see ``lane``)
        self._hedged = False  # a request unanswered after an attempt's time gets a second copy beside it (``lane``)
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
            credentials = _Credentials(None, token_file=kubeconfig_files.IN_CLUSTER_TOKEN_FILE)
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

    def lane(self, max_inflight: int, *, timeout_s: float | None = None, total_s: float | None = None,
             repeatable: bool = False, hedged: bool = False) -> Kube:
        """The same server, connection pool and credentials with a request bound of its own: for requests that
        must not wait behind bulk writes in this process (a vnode's lease renewal behind a rollout's pod status
        PATCHes). ``timeout_s`` bounds each attempt, ``total_s`` all attempts of a request with the waits between
        them; ``repeatable`` says every write of the lane may be sent twice (a resourceVersion precondition makes
        a second copy a 409). ``hedged`` (with ``total_s`` and ``repeatable``): a request unanswered after
        ``timeout_s`` keeps waiting for its answer while a second copy goes on a new connection, and the first
        answer wins (``_send_hedged``). Close the client the lane came from, not the lane."""
        lane = copy.copy(self)
        lane._sem = asyncio.Semaphore(max_inflight)
        if timeout_s is not None:
            lane._timeout_s = timeout_s
        if total_s is not None:
            lane._total_s = total_s
        lane._repeatable = repeatable or self._repeatable
        lane._hedged = hedged and lane._repeatable and lane._total_s is not None
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
        safe = self._repeatable or (method in IDEMPOTENT_METHODS if idempotent is None else idempotent)
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes | bytearray):
            data = bytes(body)
        else:
            data = orjson.dumps(body)
        query = _clean_params(params)
        timeout = timeout_s if timeout_s is not None else self._timeout_s
        until = time.monotonic() + self._total_s if self._total_s is not None else None

        def attempt_s() -> float:  # each attempt within what is left of the request's time
            return timeout if until is None else max(min(timeout, until - time.monotonic()), 0.001)

        def past(wait_s: float) -> bool:
            return until is not None and time.monotonic() + wait_s >= until

        refreshed = False
        fresh = False  # the last attempt's connection died or stalled: the next one opens a new connection
        ctype = content_type if data is not None else None
        while True:
            try:
                if self._hedged and until is not None:
                    try:
                        return await self._send_hedged(method, path, query, data, ctype, until)
                    except ApiError as answered:  # a 429 or a 5xx: again after its wait, within the budget
                        if (isinstance(answered, ApiConnectionError) or not should_retry(answered, idempotent=safe)
                                or past(wait := retry_wait_s(answered, 1))):
                            raise
                    await asyncio.sleep(wait)
                    continue
                try:  # the first attempt needs no retry machinery (the hot path: one object fewer per call)
                    return await self._send_once(method, path, query, data, ctype, attempt_s())
                except ApiError as first:
                    if not should_retry(first, idempotent=safe) or past(wait := retry_wait_s(first, 1)):
                        raise
                    fresh = isinstance(first, ApiConnectionError)
                    await asyncio.sleep(wait)
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(MAX_ATTEMPTS - 1) | _Before(past),
                    wait=_later_retry_wait,
                    retry=retry_if_exception(lambda e: should_retry(e, idempotent=safe)),
                    reraise=True,
                ):
                    with attempt:
                        try:
                            return await self._send_once(method, path, query, data, ctype, attempt_s(), fresh)
                        except ApiConnectionError:
                            fresh = True
                            raise
            except ApiError as exc:
                # A 401 means the request was refused before it was processed: safe to repeat once with
                # fresh credentials (rotated service-account token, expired exec-plugin token).
                if exc.status == 401 and not refreshed and await self._credentials.refresh():
                    refreshed = True
                    continue
                raise
            raise AssertionError("unreachable")  # pragma: no cover - tenacity either returns or raises

    async def _send_hedged(self, method: str, path: str, query: dict[str, str] | None, data: bytes | None,
                           content_type: str | None, until: float) -> Any:
        """One copy that waits until ``until``; a second on a new connection when the first has had an attempt's
        time without an answer or its connection failed. The first success wins; else the error that says most of
        what happened: an HTTP answer (a 409 says a copy landed), then a copy that was sent and never answered (it
        may have landed), then one never sent (no slot, no connection); among equals the first to end.

        Why not give up on the first: a starved apiserver answers late, and a copy sent again waits at the back of
        its line (the rollout bench lost Leases whose first copy would have been answered within the budget). Why
        a second copy at all: a pooled connection may be dead (a middlebox that lost its flows, issue 27)."""
        def left() -> float:
            return max(until - time.monotonic(), 0.001)

        def send(fresh: bool) -> asyncio.Task[Any]:
            return asyncio.ensure_future(self._send_once(method, path, query, data, content_type, left(), fresh))

        copies = [send(False)]
        try:
            await asyncio.wait(copies, timeout=min(self._timeout_s, left()))
            first = copies[0]
            if first.done() and not isinstance(first.exception(), ApiConnectionError):
                return first.result()  # answered (an HTTP error is the caller's: a 409 is resolved there)
            copies.append(send(True))
            pending = {c for c in copies if not c.done()}
            failure: BaseException | None = first.exception() if first.done() else None
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for copy_ in done:
                    exc = copy_.exception()
                    if exc is None:
                        return copy_.result()
                    if failure is None or _tells(exc) > _tells(failure):
                        failure = exc
            assert failure is not None
            raise failure
        finally:
            for copy_ in copies:
                copy_.cancel()
            await asyncio.gather(*copies, return_exceptions=True)

    async def _slot(self, method: str, timeout_s: float) -> float:
        """Take a request slot (release ``_sem`` after); what is left of ``timeout_s`` once it is taken. In a lane
        with a time budget (``total_s``: the Lease writes) the wait counts against it: a renewal that waited out its
        deadline for a slot, behind writes stuck in an apiserver stall, would be sent when it could no longer help."""
        if self._total_s is None:
            await self._sem.acquire()
            return timeout_s
        asked = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                await self._sem.acquire()
        except TimeoutError:
            raise ApiConnectionError("Timeout", f"{method}: no request slot free within {timeout_s:.3g}s",
                                     sent=False) from None
        return max(timeout_s - (time.monotonic() - asked), 0.001)

    async def _send_once(self, method: str, path: str, query: dict[str, str] | None, data: bytes | None,
                         content_type: str | None, timeout_s: float, fresh: bool = False) -> Any:
        target = self._target(path, query, remember=method != "GET")
        request = self._head(method, target, content_type, len(data) if data is not None else None)
        if data:
            request += data
        timeout_s = await self._slot(method, timeout_s)
        try:
            started = time.perf_counter()
            code = "<error>"
            try:
                answer = await self._pool.request(request, timeout_s=timeout_s, fresh=fresh)
                code = str(answer.status)
            except http1.HttpError as exc:
                raise _connection_error(exc, f"{method} timed out after {timeout_s:.3g}s") from exc
            finally:
                REQUEST_DURATION.labels(method, self._host_label).observe(time.perf_counter() - started)
                REQUESTS.labels(code, method, self._host_label).inc()
        finally:
            self._sem.release()
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
                       page_size: int = 500, max_restarts: int = 3,
                       each: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
                       ) -> tuple[list[dict[str, Any]], str, str]:
        """LIST every item under ``path`` in pages of ``page_size`` (limit/continue).

        Returns ``(items, resourceVersion, kind)`` where kind is the item kind (``PodList`` -> ``Pod``). Items get
        ``kind``/``apiVersion`` filled in, which LIST answers leave out. A 410 on a continue token (the snapshot
        expired mid-way) restarts the LIST from the first page, up to ``max_restarts`` times. ``each`` maps every
        item as its page arrives (``None`` drops it), so a caller that keeps a part of each object never holds the
        whole LIST untrimmed: the peak is one page.
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
                        query["continue"] = token  # the token carries the first page's resourceVersion
                        query.pop("resourceVersion", None)
                        query.pop("resourceVersionMatch", None)
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
                            mapped = item if each is None else each(item)
                            if mapped is not None:
                                items.append(mapped)
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


def _tells(failure: BaseException) -> int:
    """How much a failed copy of a hedged write says of the write: an HTTP answer, then sent and unanswered (it
    may have landed), then never sent."""
    if not isinstance(failure, ApiConnectionError):
        return 2
    return 1 if failure.sent else 0


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


__all__ = ["IN_CLUSTER_CA_FILE", "IN_CLUSTER_TOKEN_FILE", "ApiConnectionError", "ApiError", "Kube", "LineSplitter",
           "PatchKind", "WatchStalled", "api_error_from_response", "error_from_status", "parse_retry_after",
           "parse_watch_line", "proxy_from_url", "resource_of", "retry_wait_s", "should_retry", "static_kubeconfig"]
