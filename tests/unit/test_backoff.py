"""The one backoff policy (core.backoff): bounds, caps, jitter."""

import pytest

from vkprovider.core import backoff
from vkprovider.core.backoff import Backoff


def test_exponential_then_capped_with_jitter_in_the_upper_half():
    policy = Backoff(initial_s=0.5, max_s=5.0)
    assert [policy.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(3, rand=lambda: 0.0) == 1.0 and policy.delay(3, rand=lambda: 1.0) == 2.0
    assert policy.ceiling(10_000) == 5.0


@pytest.mark.parametrize("name", ["API_CALL", "INFORMER", "RECONCILE", "MQTT_RECONNECT", "STATUS_WRITE"])
def test_waits_on_an_outside_cause_are_capped_at_seconds(name):
    """During a 48 s apiserver outage the informer's old backoff reached 26.7 s: blind long after recovery."""
    assert getattr(backoff, name).max_s <= 10.0


def test_biz_installs_back_off_like_crash_loop_backoff():
    assert backoff.BIZ_INSTALL.max_s == 300.0 and backoff.BIZ_INSTALL.initial_s == 2.0
