"""coordinator.quotas: token buckets, per-agent quotas and the unauthenticated gate (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careline.coordinator import quotas as q
from careline.shared import protocol as p


def test_bucket_starts_full_refills_at_its_rate_and_never_overfills() -> None:
    bucket = q.TokenBucket(capacity=10, rate=2)
    assert all(bucket.take(1, 100.0) for _ in range(10))
    assert not bucket.take(1, 100.0)
    assert bucket.wait_for(4) == 2
    assert bucket.take(1, 100.5)
    assert not bucket.take(1, 100.5)
    assert bucket.take(10, 1000.0)
    assert not bucket.take(1, 1000.0)
    assert not bucket.take(11, 5000.0)  # more than it can ever hold
    assert bucket.take(1, 4999.0)  # a clock stepping back refills nothing


@given(steps=st.lists(st.tuples(st.floats(0, 5), st.floats(0, 20)), max_size=60))
def test_bucket_admits_at_most_capacity_plus_rate_times_elapsed(steps: list[tuple[float, float]]) -> None:
    bucket = q.TokenBucket(capacity=20, rate=3)
    now, taken = 0.0, 0.0
    for dt, amount in steps:
        now += dt
        if bucket.take(amount, now):
            taken += amount
    assert taken <= 20 + 3 * now + 1e-6


def test_agent_quota_refuses_big_events_floods_and_says_when_to_return() -> None:
    quota = q.AgentQuota()
    assert quota.admit("event", p.MAX_EVENT_BYTES, 0.0) is None
    reason = quota.admit("event", p.MAX_EVENT_BYTES + 1, 0.0)
    assert reason is not None
    assert "exceeds" in reason
    refused = next(r for r in (quota.admit("event", 100, 0.0) for _ in range(q.EVENT_BURST + 1))
                   if r is not None)
    assert "too many events" in refused
    assert p.retry_after_of(refused) is not None
    assert quota.refused == 2
    assert quota.admit("other", 100, 0.0) is None  # heartbeats are metered separately
    later = 0.0 + p.retry_after_of(refused)  # type: ignore[operator]
    assert quota.admit("event", 100, later) is None


def test_agent_quota_meters_event_bytes() -> None:
    quota = q.AgentQuota()
    size = p.MAX_EVENT_BYTES
    admitted = sum(quota.admit("event", size, 0.0) is None for _ in range(200))
    assert admitted == q.EVENT_BYTES_BURST // size
    reason = quota.admit("event", size, 0.0)
    assert reason is not None
    assert "event bytes" in reason


def test_agent_quota_meters_any_message_flood() -> None:
    quota = q.AgentQuota()
    admitted = sum(quota.admit("other", 50, 0.0) is None for _ in range(q.MESSAGE_BURST + 5))
    assert admitted == q.MESSAGE_BURST
    # A healthy agent's pace is always within quota.
    quota = q.AgentQuota()
    assert all(quota.admit("other", 2000, t * 1.0) is None for t in range(10_000))


def test_gate_caps_per_address_then_in_total_and_frees_on_leave() -> None:
    gate = q.Gate(caps={p.AGENT_PATH: q.Caps(per_address=3, total=5),
                        p.ENROLL_PATH: q.Caps(per_address=1, total=1)})
    for _ in range(3):
        assert gate.check(p.AGENT_PATH, "10.0.0.1") is None
        gate.enter(p.AGENT_PATH, "10.0.0.1")
    assert gate.check(p.AGENT_PATH, "10.0.0.1") == "address"
    assert gate.check(p.AGENT_PATH, "10.0.0.2") is None  # another source still gets in
    gate.enter(p.AGENT_PATH, "10.0.0.2")
    gate.enter(p.AGENT_PATH, "10.0.0.3")
    assert gate.check(p.AGENT_PATH, "10.0.0.4") == "total"
    assert gate.check(p.ENROLL_PATH, "10.0.0.4") is None  # channels are counted apart
    gate.leave(p.AGENT_PATH, "10.0.0.1")
    assert gate.check(p.AGENT_PATH, "10.0.0.1") is None
    assert gate.pending(p.AGENT_PATH) == 4
    assert gate.pending(p.AGENT_PATH, "10.0.0.1") == 2


@given(ops=st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c"])), max_size=80))
def test_gate_counts_never_exceed_caps_nor_go_negative(ops: list[tuple[bool, str]]) -> None:
    gate = q.Gate(caps={p.ADMIN_PATH: q.Caps(per_address=2, total=4)})
    held: list[str] = []
    for enter, address in ops:
        if enter and gate.check(p.ADMIN_PATH, address) is None:
            gate.enter(p.ADMIN_PATH, address)
            held.append(address)
        elif not enter and address in held:
            held.remove(address)
            gate.leave(p.ADMIN_PATH, address)
        assert gate.pending(p.ADMIN_PATH) == len(held) <= 4
        assert all(0 <= gate.pending(p.ADMIN_PATH, a) <= 2 for a in "abc")


@pytest.mark.parametrize("channel", [p.AGENT_PATH, p.ENROLL_PATH, p.ADMIN_PATH])
def test_every_channel_has_caps(channel: str) -> None:
    caps = q.DEFAULT_CAPS[channel]
    assert 0 < caps.per_address < caps.total
    assert q.caps_for(0) == q.DEFAULT_CAPS
    assert q.caps_for(10)[channel] == q.Caps(min(10, caps.total), caps.total)
    assert q.caps_for(10**6)[channel] == q.Caps(caps.total, caps.total)  # never above total


# ----------------------------------------------------------------------------- overload
def test_overload_sheds_from_the_high_mark_until_under_the_low_one() -> None:
    load = q.Overload(shed_lag=0.5, resume_lag=0.1)
    assert load.admit()
    assert not load.measure(0.4)
    assert load.measure(0.6)
    assert load.shedding
    assert not load.admit()
    assert not load.admit()
    assert not load.measure(0.3)
    assert load.shedding
    assert load.refused == 2
    assert load.measure(0.05)
    assert not load.shedding
    assert load.admit()
    assert load.refused == 2
    assert load.measure(0.9)
    assert load.refused == 0


@given(lags=st.lists(st.floats(min_value=0, max_value=5), max_size=60))
def test_overload_follows_the_lag_with_hysteresis(lags: list[float]) -> None:
    load = q.Overload(shed_lag=0.5, resume_lag=0.1)
    for lag in lags:
        before = load.shedding
        changed = load.measure(lag)
        assert changed == (load.shedding != before)
        if lag > 0.5:
            assert load.shedding
        elif lag < 0.1:
            assert not load.shedding
        else:
            assert load.shedding == before  # in between nothing changes
        assert load.admit() != load.shedding
