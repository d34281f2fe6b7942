"""The ConfigMaps and Secrets module containers refer to, read for ``core.containerconfig.resolve``.

A module's ``env``/``envFrom`` may name ConfigMaps and Secrets. ``RefStore`` reads them with a GET per object,
keeps what it read for ``ttl_s`` (a Deployment of 100 pods naming one ConfigMap costs one GET per ``ttl_s``, not
100), and tells the controller when an object a waiting container needs appears or changes:

- ``lookups(refs, ...)`` returns a ``containerconfig.Lookups``: each object's data (Secrets base64-decoded), or a
  ``RefError`` (``not_found`` for a 404, the apiserver's message for a 403, ``transient`` for anything else);
- ``wait_for(waiter, refs)``: ``waiter`` (a pod key) cannot be configured until one of ``refs`` appears or changes
  (a ``CreateContainerConfigError``). Every ``recheck_s`` the store GETs each waited object again; when one
  appeared, vanished or got a new resourceVersion, ``on_change`` is called with the waiters that wanted it, and
  they are forgotten (one notice per wait: a waiter still stuck calls ``wait_for`` again). ``forget(waiter)`` when
  the pod goes away.

Why a GET and not a watch: the kubelet watches each referenced object (a single-object watch, which its node
authorizer allows on exactly the objects its pods name). An RBAC ClusterRole cannot say "only the referenced
ones": a watch needs ``list``+``watch`` on every Secret of the cluster. ``get`` lets vkprovider read a Secret it
can name, but not enumerate or stream them (docs/security.md). The cost is bounded: a GET per waited object per
``recheck_s`` only while something waits (measured on the local control plane in
tests/integration/test_refs.py), and one per object per ``ttl_s`` for installs.

A running biz is never restarted because an object it read changed: the kubelet does not restart a running
container for a changed ConfigMap or Secret either. The values count at install time: a later install of the
biz (a new pod, a reinstall after a base restart) reads them again (at most ``ttl_s`` old).

Secret data stays in memory at most ``ttl_s`` (purged as it expires) and is never logged: log lines name objects
only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from vkprovider.core.containerconfig import SECRET, Lookups, Ref, RefError, config_map_data, secret_data
from vkprovider.kube.client import ApiConnectionError, ApiError, Kube

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 10.0
DEFAULT_RECHECK_S = 5.0
_READS_AT_ONCE = 16


@dataclass(slots=True)
class _Entry:
    expires: float
    version: str | None  # resourceVersion; None when not found (or unreadable)
    value: Mapping[str, str] | RefError


def _path(ref: Ref) -> str:
    if ref.kind == SECRET:
        return f"/api/v1/namespaces/{ref.namespace}/secrets/{ref.name}"
    return f"/api/v1/namespaces/{ref.namespace}/configmaps/{ref.name}"


class RefStore:
    """ConfigMaps and Secrets by reference, cached for ``ttl_s``; waited ones re-read every ``recheck_s``."""

    def __init__(self, kube: Kube, *, ttl_s: float = DEFAULT_TTL_S, recheck_s: float = DEFAULT_RECHECK_S,
                 on_change: Callable[[frozenset[str]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._ttl_s = ttl_s
        self._recheck_s = recheck_s
        self._on_change = on_change
        self._clock = clock
        self._cache: dict[Ref, _Entry] = {}
        self._reading: dict[Ref, asyncio.Future[_Entry]] = {}
        self._waiters: dict[Ref, set[str]] = {}  # ref -> the waiters that need it
        self._wants: dict[str, frozenset[Ref]] = {}  # waiter -> its refs
        self._seen: dict[Ref, str | None] = {}  # a waited ref's resourceVersion when the wait began
        self._limit = asyncio.Semaphore(_READS_AT_ONCE)
        self._task: asyncio.Task[None] | None = None
        self.gets = 0
        """GETs sent (tests and the cost figures use it)."""

    # --- reads ---------------------------------------------------------------------------------------------

    async def read(self, ref: Ref) -> Mapping[str, str] | RefError:
        """The object's data (a Secret's decoded), or why not; at most ``ttl_s`` old."""
        return (await self._entry(ref)).value

    async def lookups(self, refs: Iterable[Ref], *, host_ips: tuple[str, ...] = (), pod_ips: tuple[str, ...] = (),
                      allocatable: Mapping[str, str] | None = None) -> Lookups:
        """What ``containerconfig.resolve`` needs for a container naming ``refs`` (``pod_references``)."""
        wanted = sorted(set(refs))
        values = await asyncio.gather(*(self.read(ref) for ref in wanted))
        return Lookups(dict(zip(wanted, values, strict=True)), host_ips=host_ips, pod_ips=pod_ips,
                       allocatable=dict(allocatable or {}))

    async def _entry(self, ref: Ref, *, fresh: bool = False) -> _Entry:
        now = self._clock()
        cached = self._cache.get(ref)
        if cached is not None and not fresh and cached.expires > now:
            return cached
        pending = self._reading.get(ref)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._reading[ref] = pending
            try:
                entry = await self._get(ref)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved: the callers that joined get it through await below
                raise
            finally:
                self._reading.pop(ref, None)
            pending.set_result(entry)
            self._remember(ref, entry)
            return entry
        return await asyncio.shield(pending)

    async def _get(self, ref: Ref) -> _Entry:
        async with self._limit:
            self.gets += 1
            try:
                obj = await self._kube.get(_path(ref))
            except ApiError as exc:
                return self._failed(ref, exc)
        if not isinstance(obj, Mapping):
            return _Entry(self._clock(), None, RefError(f"cannot read {ref}: the answer is not an object",
                                                       transient=True))
        metadata = obj.get("metadata")
        version = str(metadata.get("resourceVersion") or "") if isinstance(metadata, Mapping) else ""
        data = secret_data(obj) if ref.kind == SECRET else config_map_data(obj)
        return _Entry(self._clock() + self._ttl_s, version, data)

    def _failed(self, ref: Ref, exc: ApiError) -> _Entry:
        expires = self._clock() + self._ttl_s
        if exc.is_not_found:
            # the kubelet's message: its object managers name the resource in the singular
            return _Entry(expires, None, RefError(f'{ref.kind.lower()} "{ref.name}" not found', not_found=True))
        if exc.is_forbidden:
            return _Entry(expires, None, RefError(exc.message or f"{ref} is forbidden"))
        transient = isinstance(exc, ApiConnectionError) or exc.is_retryable
        log.info("reading %s failed: %s", ref, exc)
        return _Entry(self._clock(), None, RefError(f"cannot read {ref}: {exc}", transient=transient))

    def _remember(self, ref: Ref, entry: _Entry) -> None:
        self._cache[ref] = entry
        now = self._clock()
        if len(self._cache) > 64 and len(self._cache) % 64 == 0:
            self._purge(now)

    def _purge(self, now: float) -> None:
        for ref in [r for r, e in self._cache.items() if e.expires <= now]:
            del self._cache[ref]

    # --- waits ---------------------------------------------------------------------------------------------

    def wait_for(self, waiter: str, refs: Iterable[Ref]) -> None:
        """``waiter`` needs one of ``refs`` to appear or change; ``on_change`` says so once (module docstring)."""
        self.forget(waiter)
        wanted = frozenset(refs)
        if not wanted:
            return
        self._wants[waiter] = wanted
        for ref in wanted:
            if ref not in self._waiters:
                cached = self._cache.get(ref)
                self._seen[ref] = cached.version if cached is not None else None
            self._waiters.setdefault(ref, set()).add(waiter)

    def forget(self, waiter: str) -> None:
        for ref in self._wants.pop(waiter, ()):
            waiting = self._waiters.get(ref)
            if waiting is None:
                continue
            waiting.discard(waiter)
            if not waiting:
                del self._waiters[ref]
                self._seen.pop(ref, None)

    @property
    def waited(self) -> frozenset[Ref]:
        """The objects some waiter needs (re-read every ``recheck_s``)."""
        return frozenset(self._waiters)

    async def recheck(self) -> frozenset[str]:
        """Read every waited object again; notify and forget the waiters of those that appeared or changed."""
        refs = sorted(self._waiters)
        entries = await asyncio.gather(*(self._entry(ref, fresh=True) for ref in refs), return_exceptions=True)
        woken: set[str] = set()
        for ref, entry in zip(refs, entries, strict=True):
            if isinstance(entry, BaseException) or ref not in self._waiters:
                continue
            if isinstance(entry.value, RefError) and not entry.value.not_found:
                continue  # unreadable now (an API failure, a refusal): nothing learnt about the object
            if entry.version != self._seen.get(ref):
                log.debug("%s %s: waking its waiters", ref, "appeared or changed" if entry.version else "vanished")
                woken |= self._waiters[ref]
        for waiter in woken:
            self.forget(waiter)
        if woken and self._on_change is not None:
            self._on_change(frozenset(woken))
        self._purge(self._clock())
        return frozenset(woken)

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._recheck_s)
            if self._waiters:
                try:
                    await self.recheck()
                except Exception:
                    log.exception("re-reading waited ConfigMaps and Secrets failed")

    async def run(self) -> None:
        """Re-read waited objects every ``recheck_s`` until cancelled (a root task)."""
        await self._run()

    def on_change(self, callback: Callable[[frozenset[str]], None]) -> None:
        """Who is told which waiters' objects appeared or changed (set once the controller exists)."""
        self._on_change = callback

    def start(self) -> None:
        """Re-read waited objects every ``recheck_s`` until ``stop``."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="refs-recheck")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._cache.clear()
