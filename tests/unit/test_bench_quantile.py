"""bench.run.histogram_quantile: the quantile of what a cumulative Prometheus histogram counted between two reads
(the burst scenario reads vkprovider's pod start histogram before and after), as Prometheus interpolates it."""

from __future__ import annotations

import math

from bench.run import histogram_quantile

BEFORE = {0.5: 10.0, 1.0: 10.0, 2.0: 10.0, math.inf: 10.0}  # 10 observations before the window, all <= 0.5 s


def test_only_what_was_counted_between_the_reads() -> None:
    after = {0.5: 10.0, 1.0: 30.0, 2.0: 110.0, math.inf: 110.0}  # in the window: 20 in (0.5, 1], 80 in (1, 2]
    assert histogram_quantile(0.5, BEFORE, after) == 1.0 + (2.0 - 1.0) * (50 - 20) / 80  # rank 50: inside (1, 2]
    assert histogram_quantile(0.1, BEFORE, after) == 0.5 + 0.5 * 10 / 20  # rank 10 of the 20 in (0.5, 1]


def test_past_the_last_bound_it_is_that_bound_and_nothing_counted_is_nan() -> None:
    after = {0.5: 10.0, 1.0: 10.0, 2.0: 10.0, math.inf: 20.0}  # all 10 new ones above 2 s
    assert histogram_quantile(0.99, BEFORE, after) == 2.0
    assert math.isnan(histogram_quantile(0.5, BEFORE, dict(BEFORE)))
