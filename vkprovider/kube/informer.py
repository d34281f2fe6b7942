"""A watch-backed cache of one resource type: LIST, then WATCH, and LIST again whenever the watch loses its place.

Why it exists: controllers must read cluster state from memory (thousands of pods on 2 cores) and be told which
keys changed. kubernetes-asyncio's ``Watch`` retries a 410 once and raises; this loop instead treats "410 Gone" as
the normal signal to re-LIST, diffs the fresh LIST against the cache so deletes missed during a watch gap are still
delivered, advances on BOOKMARK events so a re-WATCH rarely needs a LIST, backs off with jitter on other errors and
never dies on a bad event. ``on_change(key, old, new)`` is a cheap synchronous callback (controllers enqueue keys).

Liveness (issue 27): a watch that silently died (its connection blackholed, no reset) must not leave the cache
stale for long - Lease renewals unseen make their holders look expired. Each watch asks the server to end it after
``WATCH_TIMEOUT_S`` (30 s; with bookmarks allowed), so a healthy one is never silent for longer; one that delivered
no byte - event, bookmark or its end - for ``WATCH_TIMEOUT_S + kube.client.WATCH_SILENCE_GRACE_S`` (45 s) is
declared dead (``WatchStalled``) and watched again at once from the cache's resourceVersion, without a LIST. Dead
peers without a proxy in between are found sooner still by TCP keepalive on the API connections (``http1.Pool``).

``UnionCache`` reads several informers of one resource as one cache; an object two of them hold (a pod with both
module labels) is read as the newer of its two copies (see its docstring).

The cache diff (:func:`diff_snapshots`), key function and object trimming are pure and unit-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import Counter, Gauge

from vkprovider.core.backoff import INFORMER
from vkprovider.kube.client import ApiError, Kube, WatchStalled, error_from_status, resource_of

log = logging.getLogger(__name__)

Obj = dict[str, Any]
OnChange = Callable[[str, Obj | None, Obj | None], None]
KeyFunc = Callable[[Obj], str]

INFORMER_EVENTS = Counter(
    "vkprovider_informer_events_total",
    "Events applied by informers: ADDED/MODIFIED/DELETED/BOOKMARK from watches, ERROR, INVALID (skipped).",
    ["resource", "type"],
)
INFORMER_OBJECTS = Gauge(
    "vkprovider_informer_objects",
    "Objects an informer holds in memory, by resource (what vkprovider caches grows with what it serves).",
    ["resource"],
)
INFORMER_RELISTS = Counter(
    "vkprovider_informer_relists_total",
    "LISTs after the first one (410 Gone, errors), by resource.",
    ["resource"],
)

_EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR", "INVALID")
#: Each watch is ended by the server after this many seconds (see the module docstring).
WATCH_TIMEOUT_S = 30


def default_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` for namespaced objects, ``name`` for cluster-scoped ones."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name") or ""
    return f"{ns}/{name}" if ns else str(name)


def trim(obj: Obj) -> Obj:
    """Drop what no controller reads but costs memory for every cached object (``managedFields``)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


def resource_version(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return str(meta.get("resourceVersion") or "")


def diff_snapshots(old: Mapping[str, Obj], new: Mapping[str, Obj]) -> list[tuple[str, Obj | None, Obj | None]]:
    """The changes that turn cache ``old`` into ``new`` as ``(key, old, new)``: adds, updates, deletes.

    An object counts as updated only when its resourceVersion changed (or is missing), so a re-LIST that finds
    nothing new delivers nothing. Deletes come last, in key order, after adds/updates in ``new``'s order.
    """
    changes: list[tuple[str, Obj | None, Obj | None]] = []
    for key, obj in new.items():
        prev = old.get(key)
        if prev is None:
            changes.append((key, None, obj))
        else:
            rv = resource_version(obj)
            if not rv or rv != resource_version(prev):
                changes.append((key, prev, obj))
    changes.extend((key, old[key], None) for key in sorted(old.keys() - new.keys()))
    return changes


def _not_older(rv: str, than: str) -> bool:
    """Whether resourceVersion ``rv`` is at least ``than`` (integers, as etcd revisions; otherwise only equal)."""
    if rv.isdigit() and than.isdigit():
        return int(rv) >= int(than)
    return rv == than


def backoff_delay(failures: int, *, rand: Callable[[], float] = random.random) -> float:
    """The informer's wait after ``failures`` consecutive failures: the one backoff policy (core.backoff),
    capped at a few seconds so the cache is current again soon after the apiserver is back."""
    return INFORMER.delay(failures, rand)


class _Gone(Exception):
    """The watch's resourceVersion is too old: LIST again."""


class Informer:
    """Cache of the objects under ``list_path`` (e.g. ``/api/v1/pods``), kept current by LIST + WATCH.

    Start :meth:`run` as a task; wait for :attr:`synced`; read with :meth:`get` / :meth:`items`. The objects
    handed out are the cached dicts themselves: treat them as read-only.
    """

    def __init__(self, kube: Kube, list_path: str, *, label_selector: str | None = None,
                 field_selector: str | None = None, key: KeyFunc = default_key,
                 on_change: OnChange | None = None, page_size: int = 500, watch_timeout_s: int = WATCH_TIMEOUT_S,
                 resource: str | None = None, keep: Callable[[Obj], bool] | None = None,
                 trim_object: Callable[[Obj], Obj] | None = None) -> None:
        self._kube = kube
        self._path = list_path
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._key = key
        self._subscribers: list[OnChange] = [on_change] if on_change is not None else []
        self._page_size = page_size
        self._watch_timeout_s = watch_timeout_s
        self.resource = resource or resource_of(list_path)
        self._keep = keep
        self._trim = trim_object or trim
        self._cache: dict[str, Obj] = {}
        self._rv = ""
        self.synced = asyncio.Event()
        self._lists = 0
        # Test/diagnostic hooks: pause the watch (a gap) and resume from a chosen resourceVersion.
        self._watch_allowed = asyncio.Event()
        self._watch_allowed.set()
        self._watch_task: asyncio.Task[None] | None = None
        self._interrupted = False
        self._resume_rv: str | None = None
        self._force_relist = False
        self._events = {t: INFORMER_EVENTS.labels(self.resource, t) for t in _EVENT_TYPES}
        self._relists = INFORMER_RELISTS.labels(self.resource)
        self._objects = INFORMER_OBJECTS.labels(self.resource)

    # -------------------------------------------------------------------------------- reading

    def get(self, key: str) -> Obj | None:
        return self._cache.get(key)

    def items(self) -> Iterable[Obj]:
        """A snapshot of the cached objects (safe to iterate while the cache changes)."""
        return list(self._cache.values())

    def keys(self) -> list[str]:
        return list(self._cache.keys())

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return key in self._cache

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._cache))

    @property
    def list_count(self) -> int:
        """How many LISTs this informer has made (the first plus every re-LIST)."""
        return self._lists

    @property
    def resource_version(self) -> str:
        """The resourceVersion the cache is current to (from the last LIST, event or bookmark)."""
        return self._rv

    # -------------------------------------------------------------------------------- the loop

    async def run(self) -> None:
        """LIST -> WATCH -> (re-WATCH | re-LIST) forever. Cancel the task to stop."""
        failures = 0
        listed_at = 0.0
        while True:
            try:
                await self._list()
                listed_at = time.monotonic()
                while True:
                    await self._watch_allowed.wait()
                    if self._force_relist:
                        self._force_relist = False
                        raise _Gone("re-LIST requested")
                    rv = self._resume_rv if self._resume_rv is not None else self._rv
                    self._resume_rv = None
                    started = time.monotonic()
                    got_events = await self._watch_guarded(rv)
                    if not got_events and time.monotonic() - started < 1.0 and self._watch_allowed.is_set():
                        # A watch that ends at once with nothing in it: do not spin on the server.
                        failures += 1
                        await asyncio.sleep(backoff_delay(failures))
                    else:
                        failures = 0
            except asyncio.CancelledError:
                raise
            except _Gone as gone:
                log.info("informer %s: resourceVersion expired (%s); re-listing", self.resource, gone)
                if time.monotonic() - listed_at < 1.0:
                    # Gone again right after a LIST: something is off; do not hammer the server.
                    failures += 1
                    await asyncio.sleep(backoff_delay(failures))
            except ApiError as exc:
                failures += 1
                delay = backoff_delay(failures)
                log.warning("informer %s: %s; re-listing in %.1fs", self.resource, exc, delay)
                await asyncio.sleep(delay)
            except Exception:
                failures += 1
                delay = backoff_delay(failures)
                log.exception("informer %s: unexpected error; re-listing in %.1fs", self.resource, delay)
                await asyncio.sleep(delay)

    def _selectors(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self._label_selector:
            params["labelSelector"] = self._label_selector
        if self._field_selector:
            params["fieldSelector"] = self._field_selector
        return params

    async def _list(self) -> None:
        if self._lists:
            self._relists.inc()
        self._lists += 1
        def take(item: Obj) -> Obj | None:  # each page kept and trimmed as it arrives: never a whole LIST untrimmed
            if self._keep is not None and not self._keep(item):
                return None
            try:
                return self._trim(item)
            except Exception:
                self._events["INVALID"].inc()
                log.warning("informer %s: cannot trim a listed object; skipped", self.resource, exc_info=True)
                return None

        items, rv, _kind = await self._kube.list_all(self._path, params=self._selectors(),
                                                     page_size=self._page_size, each=take)
        fresh: dict[str, Obj] = {}
        for kept in items:
            try:
                fresh[self._key(kept)] = kept
            except Exception:
                self._events["INVALID"].inc()
                log.warning("informer %s: cannot key a listed object; skipped", self.resource, exc_info=True)
        old = self._cache
        self._cache = fresh
        self._objects.set(len(fresh))
        self._rv = rv
        self._resume_rv = None  # a LIST sets the position; a pending resume point is obsolete
        for key, prev, new in diff_snapshots(old, fresh):
            self._notify(key, prev, new)
        self.synced.set()
        log.debug("informer %s: listed %d objects at resourceVersion %s", self.resource, len(fresh), rv)

    async def _watch_guarded(self, rv: str) -> bool:
        """Run one watch in a child task so :meth:`paused` can cut it; True when it carried any event."""
        self._interrupted = False
        seen: list[bool] = [False]
        task = asyncio.create_task(self._watch(rv, seen), name=f"informer-watch-{self.resource}")
        self._watch_task = task
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._interrupted and not (current is not None and current.cancelling()):
                return True  # cut by paused(): not a failure
            task.cancel()
            raise
        finally:
            self._watch_task = None
        return seen[0]

    async def _watch(self, rv: str, seen: list[bool]) -> None:
        params = self._selectors()
        params["timeoutSeconds"] = str(self._watch_timeout_s)
        params["allowWatchBookmarks"] = "true"
        if rv:
            params["resourceVersion"] = rv
        try:
            async with contextlib.aclosing(self._kube.watch(self._path, params=params)) as events:
                async for event in events:
                    seen[0] = True
                    self._apply(event)
        except WatchStalled as stalled:
            # dead, not wrong: where it stopped is still good (module docstring)
            log.warning("informer %s: %s; watching again from resourceVersion %s", self.resource, stalled.message,
                        self._rv)
        except ApiError as exc:
            if exc.is_gone:  # the server may answer a too-old resourceVersion with an HTTP 410
                raise _Gone(exc.message) from exc
            raise

    def _apply(self, event: Mapping[str, Any]) -> None:
        """Apply one watch event to the cache. Raises _Gone / ApiError for ERROR events; never for bad data."""
        etype = event.get("type")
        obj = event.get("object")
        if etype == "ERROR":
            self._events["ERROR"].inc()
            status = obj if isinstance(obj, Mapping) else {}
            err = error_from_status(status)
            if err.is_gone:
                raise _Gone(err.message)
            raise err
        if not isinstance(obj, dict) or etype not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            self._events["INVALID"].inc()
            log.warning("informer %s: skipping a malformed watch event of type %r", self.resource, etype)
            return
        rv = resource_version(obj)
        if etype == "BOOKMARK":
            self._events["BOOKMARK"].inc()
            if rv:
                self._rv = rv
            return
        if self._keep is not None and not self._keep(obj):
            etype = "DELETED"  # not (or no longer) of interest: as if it were gone
        try:
            obj = self._trim(obj)
            key = self._key(obj)
        except Exception:
            self._events["INVALID"].inc()
            log.warning("informer %s: cannot key a watched object; skipped", self.resource, exc_info=True)
            return
        self._events[etype if etype in self._events else "INVALID"].inc()
        if rv:
            self._rv = rv
        prev = self._cache.get(key)
        if etype == "DELETED":
            if prev is not None:
                del self._cache[key]
                self._objects.set(len(self._cache))
                self._notify(key, prev, None)
            return
        self._cache[key] = obj
        if prev is None:
            self._objects.set(len(self._cache))
        self._notify(key, prev, obj)

    def subscribe(self, on_change: OnChange) -> None:
        """Call ``on_change(key, old, new)`` for every change from now on (after the subscribers before it)."""
        self._subscribers.append(on_change)

    def retrim(self, keys: Iterable[str]) -> None:
        """Trim the cached objects of ``keys`` again (``trim_object`` may now keep less of them), telling the
        subscribers of each object that changed."""
        for key in keys:
            prev = self._cache.get(key)
            if prev is None:
                continue
            try:
                kept = self._trim(prev)
            except Exception:
                log.warning("informer %s: cannot trim %s again; kept as it was", self.resource, key, exc_info=True)
                continue
            if kept is not prev and kept != prev:
                self._cache[key] = kept
                self._notify(key, prev, kept)

    def refresh(self, objects: Iterable[Obj]) -> int:
        """Replace cached objects with copies read from the API (``trim_object`` may now keep more of them).

        Only objects the cache holds are replaced, and only by a copy at least as new (resourceVersions compared as
        integers, as the apiserver orders them): one deleted or changed after it was read is the watch's to tell.
        An object the cache does not hold is left to the watch too (a read may be older than a delete the watch
        already delivered). Returns how many were replaced."""
        replaced = 0
        for obj in objects:
            try:
                kept = self._trim(obj)
                key = self._key(kept)
            except Exception:
                log.warning("informer %s: cannot key a read object; skipped", self.resource, exc_info=True)
                continue
            prev = self._cache.get(key)
            if prev is None or not _not_older(resource_version(kept), resource_version(prev)):
                continue
            self._cache[key] = kept
            replaced += 1
            self._notify(key, prev, kept)
        return replaced

    def _notify(self, key: str, old: Obj | None, new: Obj | None) -> None:
        for on_change in self._subscribers:
            try:
                on_change(key, old, new)
            except Exception:
                log.exception("informer %s: a subscriber failed on %s", self.resource, key)

    # -------------------------------------------------------------------------------- hooks

    @contextlib.asynccontextmanager
    async def paused(self, *, resume_from: str | None = None, relist: bool = False) -> AsyncIterator[None]:
        """Stop watching for the body of the ``async with``; then watch again from ``resume_from`` if given.

        A test hook for watch gaps: changes made inside the block are only seen through the resumed watch, or,
        when ``resume_from`` is a too-old resourceVersion, through the re-LIST its 410 forces. ``relist=True``
        behaves as if the resumed watch had answered 410 Gone (for servers that still hold the old history).
        """
        self._watch_allowed.clear()
        task = self._watch_task
        if task is not None and not task.done():
            self._interrupted = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait({task})
        try:
            yield
        finally:
            if resume_from is not None:
                self._resume_rv = resume_from
            self._force_relist = relist
            self._watch_allowed.set()


class UnionCache:
    """Several informers of one resource read as one cache (e.g. module pods selected by either of two labels).

    ``on_change`` sees one consistent stream: an object that leaves one informer but is still in another is a
    change, not a delete.

    An object in two informers (a pod carrying both module labels) has two copies, and the informers' watches
    advance independently, so one copy may be older. ``get`` returns the newer: by resourceVersion compared as
    integers when both are integers (as the apiserver orders them, etcd revisions), else the copy of the informer
    that stored the object last; ``on_change`` is handed that same copy.
    """

    def __init__(self, on_change: OnChange | None = None) -> None:
        self._informers: list[Informer] = []
        self._subscribers: list[OnChange] = [on_change] if on_change is not None else []
        self._last: dict[str, int] = {}  # key -> the informer that stored it last (for versions not integers)

    def add(self, informer: Informer) -> None:
        self._informers.append(informer)

    def subscribe(self, on_change: OnChange) -> None:
        """Call ``on_change(key, old, new)`` for every change of the union from now on."""
        self._subscribers.append(on_change)

    @property
    def informers(self) -> list[Informer]:
        return list(self._informers)

    def get(self, key: str) -> Obj | None:
        found: Obj | None = None
        found_at = -1
        for index, informer in enumerate(self._informers):
            obj = informer.get(key)
            if obj is None:
                continue
            if found is None or self._newer(key, (index, obj), (found_at, found)):
                found, found_at = obj, index
        return found

    def _newer(self, key: str, a: tuple[int, Obj], b: tuple[int, Obj]) -> bool:
        """Whether copy ``a`` of ``key`` is newer than copy ``b`` (see the class docstring)."""
        rv_a, rv_b = resource_version(a[1]), resource_version(b[1])
        if rv_a == rv_b:
            return False
        if rv_a.isdigit() and rv_b.isdigit():
            return int(rv_a) > int(rv_b)
        return self._last.get(key) == a[0]

    def __len__(self) -> int:
        return len({k for i in self._informers for k in i})

    def __contains__(self, key: object) -> bool:
        return any(key in i for i in self._informers)

    def retrim(self, keys: Iterable[str]) -> None:
        """``Informer.retrim`` on every member informer."""
        keys = list(keys)
        for informer in self._informers:
            informer.retrim(keys)

    def refresh(self, objects: Iterable[Obj]) -> int:
        """``Informer.refresh`` on every member informer (each replaces only the objects it holds)."""
        objects = list(objects)
        return sum(informer.refresh(objects) for informer in self._informers)

    def notify(self, key: str, old: Obj | None, new: Obj | None) -> None:
        """The on_change hook to give each member informer."""
        if new is not None:
            for index, informer in enumerate(self._informers):
                if informer.get(key) is new:
                    self._last[key] = index
                    break
            new = self.get(key)
        else:
            new = self.get(key)
            if new is old:
                new = None
            if new is None:
                self._last.pop(key, None)
        for on_change in self._subscribers:
            try:
                on_change(key, old, new)
            except Exception:
                log.exception("pods: a subscriber failed on %s", key)
