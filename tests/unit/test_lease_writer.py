"""The Lease writer tells its own late writes from somebody else's.

A renewal whose answer never came (a timeout on a CPU-starved apiserver) may still land. The next renewal, sent on
the version before it, then meets a 409, and the Lease carries the stamp of that earlier write: that is this
replica's own write, not another controller's, so it is written again on the fresh version without the warning
that names the Go controller as a suspect (seen in the rollout bench at 36f029e, after a PATCH timed out in 1.5 s).
"""

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vkprovider.controllers.leases import LeaseWriter
from vkprovider.core import ownership as own
from vkprovider.kube.errors import ApiConnectionError, ApiError

NAME = "vnode.base-1.lw"


class _Apiserver:
    """One Lease as the apiserver keeps it; ``late`` makes the next patch land but answer nothing (a timeout)."""

    def __init__(self, holder: str) -> None:
        self.version = 10
        self.lease: dict[str, Any] = {"metadata": {"name": NAME, "resourceVersion": "10"},
                                      "spec": {"holderIdentity": holder, "leaseDurationSeconds": 40,
                                               "renewTime": "2026-12-07T00:00:00.000000Z"}}
        self.late = False
        self.patches = 0

    def touch(self, renew_time: str) -> None:
        self.version += 1
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        self.lease["spec"]["renewTime"] = renew_time

    async def get(self, path: str) -> Any:
        return self.lease

    async def create(self, path: str, obj: Any) -> Any:
        raise AssertionError("not used")

    async def delete(self, path: str, *, preconditions: Any = None) -> Any:
        raise AssertionError("not used")

    async def patch(self, path: str, body: Any, *, kind: Any = "strategic") -> Any:
        self.patches += 1
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        self.touch(body["spec"]["renewTime"])
        if self.late:
            self.late = False
            raise ApiConnectionError("Timeout", "PATCH timed out after 1.55s", sent=True)
        return self.lease


class _Wall:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 7, 19, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=10)
        return self.now


def _writer(api: _Apiserver) -> LeaseWriter:
    return LeaseWriter(api, "kube-node-lease", "me", 40, clock=lambda: 100.0, wall=_Wall())


async def test_a_renewal_that_timed_out_but_landed_is_known_as_ours(caplog: pytest.LogCaptureFixture) -> None:
    api = _Apiserver("me")
    writer = _writer(api)
    held = own.Held(90.0, "10")
    api.late = True
    with pytest.raises(ApiError):
        await writer.renew(NAME, held)  # landed as version 11, but its answer timed out
    with caplog.at_level(logging.WARNING):
        renewal = await writer.renew(NAME, held)  # sent on version 10: 409, the Lease shows our earlier stamp
    assert renewal.held is not None and renewal.held.resource_version == "12"  # written again on the fresh version
    assert api.lease["spec"]["renewTime"].startswith("2026-12-07T19:30:30")
    assert not [r for r in caplog.records if "someone else" in r.getMessage()], caplog.text


async def test_a_renewal_that_meets_somebody_elses_write_still_warns(caplog: pytest.LogCaptureFixture) -> None:
    api = _Apiserver("me")
    writer = _writer(api)
    api.touch("2026-12-07T19:29:55.000000Z")  # not a stamp this replica ever wrote
    with caplog.at_level(logging.WARNING):
        renewal = await writer.renew(NAME, own.Held(90.0, "10"))
    assert renewal.held is not None and renewal.conflict
    assert [r for r in caplog.records if "someone else" in r.getMessage()]


async def test_an_unanswered_stamp_is_forgotten_once_a_renewal_is_answered(caplog: pytest.LogCaptureFixture) -> None:
    """Only the stamps since the last answered write count as ours-but-unconfirmed: a later write of another
    controller that happens to repeat an old stamp is not taken for ours forever."""
    api = _Apiserver("me")
    writer = _writer(api)
    api.late = True
    with pytest.raises(ApiError):
        await writer.renew(NAME, own.Held(90.0, "10"))
    old = api.lease["spec"]["renewTime"]
    answered = await writer.renew(NAME, own.Held(90.0, "11"))
    assert answered.held is not None and not answered.conflict
    api.touch(old)  # somebody else writes the old stamp
    with caplog.at_level(logging.WARNING):
        await writer.renew(NAME, answered.held)
    assert [r for r in caplog.records if "someone else" in r.getMessage()]
