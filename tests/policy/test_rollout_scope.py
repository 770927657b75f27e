"""Who is in a rollout's scope and where each machine stands (issue 11): version standing,
when a rollout may complete, and the state `rollouts show` gives each machine."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.version import Version

from careline.coordinator.policy.waves import (
    EXCUSED,
    SETTLED,
    ScopeState,
    Standing,
    open_reason,
    scope_state,
    version_standing,
    watched,
)

STORED = ("pending", "sent", "succeeded", "failed", "timed_out", "not_covered", "retired")


# --------------------------------------------------------------------------- standing
@pytest.mark.parametrize(("watched", "reported", "release", "expected"), [
    (False, None, "1.1.0", Standing.NOT_WATCHED),
    (False, "1.0.0", "1.1.0", Standing.NOT_WATCHED),  # a stale report of an unwatched product
    (True, None, "1.1.0", Standing.UNKNOWN),  # empty install dir: targeted, not skipped
    (True, "", "1.1.0", Standing.UNKNOWN),
    (True, "garbage", "1.1.0", Standing.UNKNOWN),  # unparsable: the installer decides
    (True, "1.0.0", "1.1.0", Standing.BELOW),
    (True, "1.0.9", "1.1", Standing.BELOW),
    (True, "1.1.0", "1.1.0", Standing.CURRENT),
    (True, "1.1", "1.1.0", Standing.CURRENT),  # 1.1 == 1.1.0, as packaging (and the installer) compare
    (True, "1.10.0", "1.9.0", Standing.CURRENT),  # numeric, not text, order
    (True, "2.0", "1.9.9", Standing.CURRENT),
])
def test_version_standing(watched: bool, reported: str | None, release: str,
                          expected: Standing) -> None:
    assert version_standing(watched, reported, release) is expected


versions = st.lists(st.integers(0, 30), min_size=1, max_size=4).map(
    lambda parts: ".".join(map(str, parts)))


@given(versions, versions)
def test_standing_is_the_version_order(reported: str, release: str) -> None:
    older = Version(reported) < Version(release)  # as packaging orders them: 0 == 0.0
    standing = version_standing(True, reported, release)
    assert standing is (Standing.BELOW if older else Standing.CURRENT)


# --------------------------------------------------------------------------- completion
def test_open_reason_waits_for_every_unsettled_machine() -> None:
    assert open_reason("regulation", ["succeeded", "pending", "sent"]) == (
        "every wave passed; waiting for 2 machine(s) still without it")
    assert open_reason("bugfix", ["pending"]) is not None


def test_an_empty_regulation_rollout_never_completes() -> None:
    assert "watching" in (open_reason("regulation", []) or "")
    assert "2 excused" in (open_reason("regulation", ["not_covered", "retired"]) or "")
    assert open_reason("bugfix", []) is None  # a technician's rollout may end empty
    assert open_reason("feature", ["not_covered"]) is None


@pytest.mark.parametrize("kind", ["regulation", "bugfix", "feature"])
@pytest.mark.parametrize("size", [0, 1, 2, 3])
def test_open_reason_exhaustively(kind: str, size: int) -> None:
    for states in itertools.product(STORED, repeat=size):
        reason = open_reason(kind, states)
        may_complete = all(s in SETTLED for s in states) and not (
            kind == "regulation" and all(s in EXCUSED for s in states))
        assert (reason is None) is may_complete, (kind, states, reason)


@given(st.lists(st.sampled_from(STORED), max_size=12))
def test_completed_means_no_covered_machine_still_lacks_it(states: list[str]) -> None:
    if open_reason("regulation", states) is None:
        assert any(s in ("succeeded", "failed", "timed_out") for s in states)
        assert not any(s in ("pending", "sent") for s in states)


# --------------------------------------------------------------------------- display
def _all_facts() -> list[dict[str, bool]]:
    names = ("wave_sent", "online", "window_closed", "version_known", "overdue")
    return [dict(zip(names, values, strict=True))
            for values in itertools.product((False, True), repeat=len(names))]


@pytest.mark.parametrize("stored", STORED)
def test_scope_state_is_total_and_final_states_ignore_live_facts(stored: str) -> None:
    seen = {scope_state(stored, **facts) for facts in _all_facts()}
    final = {"succeeded": ScopeState.INSTALLED, "not_covered": ScopeState.NOT_COVERED,
             "retired": ScopeState.RETIRED}
    if stored in final:
        assert seen == {final[stored]}
    else:
        assert ScopeState.OVERDUE in seen
        assert ScopeState.INSTALLED not in seen
        assert ScopeState.NOT_COVERED not in seen


@pytest.mark.parametrize("facts", _all_facts())
@pytest.mark.parametrize("stored", ["pending", "sent", "failed", "timed_out"])
def test_overdue_outranks_every_state_without_the_update(stored: str,
                                                         facts: dict[str, bool]) -> None:
    state = scope_state(stored, **facts)
    assert (state is ScopeState.OVERDUE) is facts["overdue"]


@pytest.mark.parametrize(("stored", "facts", "expected"), [
    ("pending", {"wave_sent": False}, ScopeState.PENDING),
    ("pending", {"wave_sent": False, "version_known": False}, ScopeState.UNKNOWN_VERSION),
    ("pending", {"online": False}, ScopeState.OFFLINE),
    ("pending", {"window_closed": True}, ScopeState.WAITING_FOR_WINDOW),
    ("pending", {}, ScopeState.PENDING),  # goes out with the next tick
    ("pending", {"version_known": False}, ScopeState.UNKNOWN_VERSION),
    ("sent", {}, ScopeState.SENT),
    ("sent", {"window_closed": True}, ScopeState.SENT),
    ("sent", {"online": False}, ScopeState.OFFLINE),  # went away mid-install
    ("failed", {"online": False}, ScopeState.FAILED),
    ("timed_out", {}, ScopeState.FAILED),
    ("timed_out", {"overdue": True}, ScopeState.OVERDUE),
])
def test_scope_state(stored: str, facts: dict[str, bool], expected: ScopeState) -> None:
    base = {"wave_sent": True, "online": True, "window_closed": False, "version_known": True,
            "overdue": False}
    assert scope_state(stored, **{**base, **facts}) is expected


def test_scope_state_rejects_unknown_stored_state() -> None:
    with pytest.raises(ValueError, match="unknown stored rollout machine state"):
        scope_state("exploded", wave_sent=True, online=True, window_closed=False,
                    version_known=True, overdue=False)


# --------------------------------------------------------------------------- watching
@dataclass(frozen=True)
class _Rollout:
    id: int
    status: str
    kind: str
    product: str
    customer_id: int | None


def _rollout(id_: int, status: str, kind: str = "regulation", product: str = "acct",
             customer: int | None = None) -> _Rollout:
    return _Rollout(id_, status, kind, product, customer)


def test_watched_keeps_open_rollouts_and_the_newest_completed_regulation() -> None:
    rollouts = [
        _rollout(1, "completed"),  # superseded by 4
        _rollout(2, "running", "bugfix"),
        _rollout(3, "completed", "bugfix"),  # a technician's rollout ends for good
        _rollout(4, "completed"),  # newest regulation of acct: still watching
        _rollout(5, "cancelled"),  # cancelled: neither watched nor superseding
        _rollout(6, "completed", product="luong"),
        _rollout(7, "paused", product="luong", customer=3),
        _rollout(8, "completed", product="luong", customer=3),  # newest for that scope
        _rollout(9, "completed", product="luong", customer=4),
    ]
    assert [r.id for r in watched(rollouts)] == [2, 4, 6, 7, 8, 9]


@given(st.lists(st.tuples(st.sampled_from(["running", "paused", "completed", "cancelled"]),
                          st.sampled_from(["regulation", "bugfix"]),
                          st.sampled_from(["a", "b"])), max_size=10))
def test_watched_properties(specs: list[tuple[str, str, str]]) -> None:
    rollouts = [_rollout(i, status, kind, product)
                for i, (status, kind, product) in enumerate(specs, 1)]
    chosen = watched(rollouts)
    assert {r.id for r in rollouts if r.status in ("running", "paused")} <= {r.id for r in chosen}
    assert all(r.status != "cancelled" for r in chosen)
    for product in ("a", "b"):  # at most one completed rollout watched per product
        assert sum(1 for r in chosen if r.status == "completed" and r.product == product) <= 1
