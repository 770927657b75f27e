from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careline.coordinator.policy.alerts import AlertRule, ConditionState, Transition, observe, touch

T0 = datetime(2026, 1, 12, 2, 0, tzinfo=UTC)
NONE, OPEN, BUMP, CLEAR, CLOSE = (
    Transition.NONE,
    Transition.OPEN,
    Transition.BUMP,
    Transition.CLEAR,
    Transition.CLOSE,
)


def run(signals, rule, touch_after_open=False):
    """Feed a string of checks ('F' failing, '.' clear); return the transitions and last state."""
    state, out = None, []
    for i, signal in enumerate(signals):
        state, transition = observe(state, signal == "F", T0 + timedelta(minutes=i), rule)
        if transition is OPEN and touch_after_open:
            assert state is not None
            state = touch(state)
        out.append(transition)
    return out, state


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        ("F", [NONE]),
        ("FF", [NONE, OPEN]),
        ("F.F", [NONE, NONE, NONE]),  # streak broken before it opened
        ("FFF", [NONE, OPEN, BUMP]),
        ("FF..", [NONE, OPEN, NONE, NONE]),
        ("FF...", [NONE, OPEN, NONE, NONE, CLOSE]),
        # a failure resets the clear streak
        ("FF..F...", [NONE, OPEN, NONE, NONE, BUMP, NONE, NONE, CLOSE]),
        ("FF...F", [NONE, OPEN, NONE, NONE, CLOSE, NONE]),  # after a close, counting starts over
        ("FF...FF", [NONE, OPEN, NONE, NONE, CLOSE, NONE, OPEN]),
        ("...", [NONE, NONE, NONE]),
    ],
)
def test_open_after_2_close_after_3(signals, expected):
    assert run(signals, AlertRule(open_after=2, close_after=3))[0] == expected


def test_counts_and_times():
    _, state = run("FFF", AlertRule())
    assert state.count == 3
    assert state.first_seen == T0
    assert state.last_seen == T0 + timedelta(minutes=2)
    assert state.opened


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        ("FF...", [NONE, OPEN, NONE, NONE, CLEAR]),
        (
            "FF.....",
            [NONE, OPEN, NONE, NONE, CLEAR, NONE, NONE],
        ),  # cleared once, stays open for the technician
        ("FF...F", [NONE, OPEN, NONE, NONE, CLEAR, BUMP]),  # fails again: a bump, no longer cleared
    ],
)
def test_touched_incident_is_never_auto_closed(signals, expected):
    out, state = run(signals, AlertRule(), touch_after_open=True)
    assert out == expected
    assert state.opened
    assert state.touched
    assert state.cleared == (signals[-1] == ".")


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        ("F", [OPEN]),
        ("F..........", [OPEN] + [NONE] * 10),  # no clear check for an event
        ("F..F", [OPEN, NONE, NONE, BUMP]),
        (".", [NONE]),
    ],
)
def test_one_shot_events(signals, expected):
    out, _ = run(signals, AlertRule.event())
    assert out == expected


@pytest.mark.parametrize(
    "kwargs",
    [{"open_after": 0}, {"close_after": 0}, {"one_shot": True, "open_after": 2}],
)
def test_invalid_rules(kwargs):
    with pytest.raises(ValueError, match="open_after"):
        AlertRule(**kwargs)


rules = st.builds(
    AlertRule,
    open_after=st.integers(1, 5),
    close_after=st.integers(1, 5),
)
one_shot_rules = st.just(AlertRule.event())
# (failing, technician touches the incident afterwards)
checks = st.lists(st.tuples(st.booleans(), st.booleans()), max_size=60)


@given(rules | one_shot_rules, checks)
def test_property_never_two_opens_without_a_close(rule, sequence):
    state: ConditionState | None = None
    is_open = False
    for i, (failing, technician) in enumerate(sequence):
        state, transition = observe(state, failing, T0 + timedelta(minutes=i), rule)
        if transition is OPEN:
            assert not is_open
            is_open = True
        elif transition is CLOSE:
            assert is_open
            assert state is None
            is_open = False
        elif transition in (BUMP, CLEAR):
            assert is_open
        assert (state is not None and state.opened) == is_open
        if is_open and technician:
            assert state is not None
            state = touch(state)


@given(st.integers(2, 5), st.integers(2, 5), st.booleans(), st.integers(0, 40))
def test_property_alternating_signals_never_open(open_after, close_after, start_failing, length):
    signals = "".join("F."[(i + (not start_failing)) % 2] for i in range(length))
    out, _ = run(signals, AlertRule(open_after=open_after, close_after=close_after))
    assert OPEN not in out


@given(rules, st.integers(1, 10))
def test_property_opens_exactly_after_n_consecutive_failures(rule, extra):
    out, _ = run("F" * (rule.open_after + extra), rule)
    assert out.index(OPEN) == rule.open_after - 1
    assert out[rule.open_after :] == [BUMP] * extra
