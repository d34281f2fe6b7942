"""Bizs that ship inside the base: patterns, the recorded annotation, and when a start is recorded."""

import pytest

from vkprovider.core.model import BizInfo, BizKey, BizState, BizStateRecord
from vkprovider.core.staticbizs import (
    STARTUP_WINDOW_S,
    BizPattern,
    Recorded,
    StaticBizs,
    Verdict,
    base_start_ms,
    decode,
    judge,
    parse_patterns,
    to_record,
)


@pytest.mark.parametrize(("text", "patterns"), [
    ("", ()),
    ("a", (BizPattern("a"),)),
    ("a, b:1.0", (BizPattern("a"), BizPattern("b", "1.0"))),
    (" a:1 ,, a:1 ", (BizPattern("a", "1"),)),  # blanks skipped, duplicates once
    (["a", "b:2"], (BizPattern("a"), BizPattern("b", "2"))),  # the heartbeat's list
])
def test_patterns_parse(text, patterns):
    assert parse_patterns(text) == patterns


@pytest.mark.parametrize("text", [":1.0", "a:", "a b", ["a", 3], ["a,b"], ["x"] * 257, "a:" + "1" * 300])
def test_bad_patterns_are_a_clear_error(text):
    with pytest.raises(ValueError, match="static biz"):
        parse_patterns(text)


@pytest.mark.parametrize(("pattern", "name", "version", "covers"), [
    (BizPattern("a"), "a", "1", True),
    (BizPattern("a", "1"), "a", "1", True),
    (BizPattern("a", "1"), "a", "2", False),
    (BizPattern("a"), "b", "1", False),
])
def test_pattern_covers(pattern, name, version, covers):
    assert pattern.covers(name, version) is covers
    assert StaticBizs(patterns=(pattern,)).covers(name, version) is covers


def test_recorded_round_trips():
    rec = Recorded(1_700_000_000_000, frozenset({BizKey("b", "2"), BizKey("a", "1")}))
    assert rec.encode() == '{"startedAt":1700000000000,"bizs":["a:1","b:2"]}'
    assert decode(rec.encode()) == rec
    assert StaticBizs(recorded=rec.bizs).covers("a", "1") and not StaticBizs(recorded=rec.bizs).covers("a", "2")


@pytest.mark.parametrize("text", [None, 3, "", "{", "[]", '{"bizs":[]}', '{"startedAt":"1","bizs":[]}',
                                  '{"startedAt":true,"bizs":[]}', '{"startedAt":1,"bizs":"a:1"}',
                                  '{"startedAt":1,"bizs":["a"]}', '{"startedAt":1,"bizs":[1]}'])
def test_a_bad_annotation_is_absent(text):
    assert decode(text) is None


@pytest.mark.parametrize(("at", "uptime", "start"), [(1000.0, 10.0, 990_000), (1000.0, None, None),
                                                     (1000.0, -1.0, None), (1000.5, 0.25, 1_000_250)])
def test_base_start(at, uptime, start):
    assert base_start_ms(at, uptime) == start


REC = Recorded(1_000_000, frozenset())


@pytest.mark.parametrize(("recorded", "start", "health_at", "read_at", "verdict"), [
    (REC, 1_000_000, None, 5.0, Verdict.ASK_HEALTH),  # no reading yet
    (REC, 1_004_000, 3.0, 1.0, Verdict.SETTLED),  # the same run (within SAME_START_S)
    (REC, None, 3.0, 1.0, Verdict.SETTLED),  # no uptime: restarts cannot be told, the record stands
    (None, None, 3.0, 1.0, Verdict.SETTLED),
    (REC, 1_006_000, 3.0, 1.0, Verdict.READ),  # a new start, the latest read is older than the reading
    (REC, 1_006_000, 3.0, 3.0, Verdict.READ),
    (None, 1_000_000, 3.0, None, Verdict.READ),  # never recorded, never read
    (REC, 1_006_000, 3.0, 4.0, Verdict.RECORD),  # a read sent after the reading
    (None, 1_000_000, 3.0, 4.0, Verdict.RECORD),
])
def test_judge(recorded, start, health_at, read_at, verdict):
    assert judge(recorded, start, health_at, read_at) is verdict


def _biz(name, *times):
    return BizInfo(name, "1", BizState.ACTIVATED, tuple(BizStateRecord(t, BizState.ACTIVATED) for t in times))


def test_to_record_keeps_unowned_bizs_of_the_startup_window():
    start = 1_000_000
    window_end = start + int(STARTUP_WINDOW_S * 1000)
    bizs = {b.key: b for b in (_biz("early", start + 20_000), _biz("edge", window_end), _biz("none"),
                               _biz("late", window_end + 1), _biz("late-then", window_end + 5, start + 1),
                               _biz("owned", start))}
    unowned = [k for k in bizs if k.name != "owned"] + [BizKey("gone", "1")]
    rec = to_record(start, bizs, unowned)
    assert rec.started_at_ms == start
    assert {k.name for k in rec.bizs} == {"early", "edge", "none", "late-then"}  # earliest record counts


@pytest.mark.parametrize(("settled_at", "first_seen", "settled"), [(None, 1.0, False), (1.0, 1.0, False),
                                                                    (0.5, 1.0, False), (1.5, 1.0, True)])
def test_settled_for_an_orphan_needs_a_newer_reading(settled_at, first_seen, settled):
    assert StaticBizs(settled_at=settled_at).settled_for(first_seen) is settled
