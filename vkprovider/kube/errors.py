"""Kubernetes API errors, and the one retry rule for a single API call.

``ApiError`` carries the apiserver's Status (its reason, message and causes) with predicates a caller asks
(``is_conflict``, ``is_other_object`` ...); ``should_retry``/``retry_wait_s`` decide whether a single call is sent
again (transport failures, 429 with Retry-After, 5xx; only what is safe to repeat) and how long to wait
(``core.backoff.API_CALL``). Pure: unit-tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from tenacity import RetryCallState
from tenacity.stop import stop_base

from vkprovider.core.backoff import API_CALL

MAX_RETRY_AFTER_S = 30.0


class ApiError(Exception):
    """A non-2xx answer from the API server (or, as :class:`ApiConnectionError`, no answer at all).

    ``reason`` is the Status ``reason`` (``NotFound``, ``AlreadyExists``, ``Conflict``, ``Expired`` ...) when the
    server sent a Status object, else the HTTP reason phrase. ``body`` is the parsed Status dict, or the raw text
    when the body was not JSON.
    """

    def __init__(self, status: int, reason: str, message: str, body: Any = None,
                 *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body
        self.retry_after_s = retry_after_s

    @property
    def is_not_found(self) -> bool:
        return self.status == 404

    @property
    def is_already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def is_conflict(self) -> bool:
        """An optimistic-concurrency conflict (stale resourceVersion / failed precondition), not AlreadyExists."""
        return self.status == 409 and self.reason != "AlreadyExists"

    @property
    def is_other_object(self) -> bool:
        """A write carrying ``metadata.uid`` met another object of the same name: the one it was meant for is gone
        (the apiserver refuses the uid change as a failed precondition, 409, or as an immutable field, 422)."""
        text = self.message.lower()
        return (self.status == 409 and "precondition" in text and "uid" in text) or (
            self.status == 422 and "metadata.uid" in text)

    @property
    def is_gone(self) -> bool:
        """The resourceVersion or continue token is too old: start again with a fresh LIST."""
        return self.status == 410 or self.reason in ("Expired", "Gone")

    @property
    def is_forbidden(self) -> bool:
        return self.status == 403

    @property
    def is_namespace_terminating(self) -> bool:
        """A create refused because its namespace is being deleted (403, cause ``NamespaceTerminating``)."""
        if self.status != 403 or not isinstance(self.body, Mapping):
            return False
        details = self.body.get("details")
        causes = details.get("causes") if isinstance(details, Mapping) else None
        return isinstance(causes, list) and any(
            isinstance(c, Mapping) and c.get("reason") == "NamespaceTerminating" for c in causes)

    @property
    def is_disruption_budget(self) -> bool:
        """An eviction refused by a PodDisruptionBudget (429 with the cause ``DisruptionBudget``): the caller asks
        again later, as ``kubectl drain`` does; not a rejection by API priority and fairness."""
        if self.status != 429 or not isinstance(self.body, Mapping):
            return False
        details = self.body.get("details")
        causes = details.get("causes") if isinstance(details, Mapping) else None
        return isinstance(causes, list) and any(
            isinstance(c, Mapping) and c.get("reason") == "DisruptionBudget" for c in causes)

    @property
    def is_unauthorized(self) -> bool:
        return self.status == 401

    @property
    def is_too_many_requests(self) -> bool:
        return self.status == 429

    @property
    def is_server_error(self) -> bool:
        return self.status >= 500

    @property
    def is_retryable(self) -> bool:
        """Worth trying again later (by the caller's queue): transport failures, 429, 5xx, 410."""
        return self.status in (0, 429) or self.status >= 500 or self.is_gone


class ApiConnectionError(ApiError):
    """No HTTP answer: connection refused, reset, TLS failure or timeout. ``status`` is 0.

    ``sent`` is False only when the failure provably happened before the request left (the connection was never
    established), which makes even a non-idempotent request safe to retry.
    """

    def __init__(self, reason: str, message: str, *, sent: bool) -> None:
        super().__init__(0, reason, message, None)
        self.sent = sent


class WatchStalled(ApiConnectionError):
    """A watch delivered no byte for its ``timeoutSeconds`` + ``WATCH_SILENCE_GRACE_S``: the server would have
    ended it by then, so its connection is dead (see ``Kube.watch``). Its resourceVersion is still good."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form only, as the apiserver sends), capped."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def error_from_status(status_obj: Mapping[str, Any], *, http_status: int = 0, http_reason: str = "",
                      retry_after_s: float | None = None) -> ApiError:
    """Build an :class:`ApiError` from a ``kind: Status`` dict (an error body or a watch ERROR event object)."""
    code = status_obj.get("code")
    status = code if isinstance(code, int) and code > 0 else http_status
    reason = status_obj.get("reason") or http_reason or "Unknown"
    message = status_obj.get("message") or ""
    return ApiError(status, str(reason), str(message), dict(status_obj), retry_after_s=retry_after_s)


def api_error_from_response(status: int, http_reason: str | None, raw: bytes,
                            retry_after: str | None = None) -> ApiError:
    """Map a non-2xx HTTP response to an :class:`ApiError`, using its Status body when there is one."""
    retry_after_s = parse_retry_after(retry_after)
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("kind") == "Status":
        return error_from_status(parsed, http_status=status, http_reason=http_reason or "",
                                 retry_after_s=retry_after_s)
    text = raw.decode("utf-8", "replace")[:2048]
    return ApiError(status, http_reason or "Unknown", text, parsed if parsed is not None else text,
                    retry_after_s=retry_after_s)


def should_retry(exc: BaseException, *, idempotent: bool) -> bool:
    """Whether one call may be repeated after ``exc``.

    - 429: the server rejected the request before handling it (API priority and fairness) - always safe; but not an
      eviction a PodDisruptionBudget refused (the caller decides when to ask again).
    - A connection that was never established: the request was not sent - always safe.
    - Other transport failures and 5xx: only when repeating the call cannot do harm (``idempotent``).
    """
    if isinstance(exc, ApiConnectionError):
        if exc.reason == "SSLError":
            return False  # a configuration problem; repeating it changes nothing
        return (not exc.sent) or idempotent
    if isinstance(exc, ApiError):
        if exc.status == 429:
            return not exc.is_disruption_budget
        return idempotent and exc.status >= 500 and exc.status != 501
    return False


def retry_wait_s(exc: BaseException | None, failed_attempts: int) -> float:
    """Seconds to wait after ``failed_attempts`` failures: the server's Retry-After, else exponential backoff."""
    if isinstance(exc, ApiError) and exc.retry_after_s is not None:
        return exc.retry_after_s
    return API_CALL.delay(failed_attempts)  # the one backoff policy (core.backoff)


class _Before(stop_base):
    """tenacity: stop when the wait before the next attempt would pass the request's time (``past(wait_s)``)."""

    def __init__(self, past: Callable[[float], bool]) -> None:
        self._past = past

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._past(retry_state.upcoming_sleep)


def _later_retry_wait(state: RetryCallState) -> float:
    """tenacity's wait for the attempts after the first (which ran outside tenacity, see `Kube.request`)."""
    exc = state.outcome.exception() if state.outcome is not None else None
    return retry_wait_s(exc, state.attempt_number + 1)


# ---------------------------------------------------------------------------------------- watch lines
