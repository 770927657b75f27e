"""The agent's reconnect policy: full-jitter backoff, Retry-After, and fatal refusals."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from careline.agent.runner import (
    BACKOFF_CAP,
    BACKOFF_FIRST_WINDOW,
    MAX_FIRST_WINDOW,
    backoff_delay,
    reconnect_delay,
)
from careline.coordinator.server import (
    DRAIN_RATE,
    RECONNECT_WINDOW_MAX,
    RECONNECT_WINDOW_MIN,
    agents_at_stake,
)
from careline.coordinator.server import reconnect_window as fleet_reconnect_window
from careline.shared import protocol as p
from careline.shared.errors import AuthError


@given(attempt=st.integers(min_value=1, max_value=10_000), seed=st.integers())
def test_backoff_stays_in_its_doubling_window(attempt: int, seed: int) -> None:
    delay = backoff_delay(attempt, random.Random(seed))
    window = min(BACKOFF_CAP, BACKOFF_FIRST_WINDOW * 2 ** min(attempt - 1, 16))
    assert 0 <= delay <= window


def test_first_retries_of_a_fleet_spread_over_the_first_window() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(1, rng) for _ in range(10_000)]
    assert max(delays) <= BACKOFF_FIRST_WINDOW
    # Spread, not bunched: each tenth of the window gets a fair share of the fleet.
    tenths = [sum(1 for d in delays if i <= d * 10 / BACKOFF_FIRST_WINDOW < i + 1)
              for i in range(10)]
    assert min(tenths) > 800


def closed(code: int, reason: str) -> ConnectionClosed:
    return ConnectionClosed(Close(code, reason), None)


def busy(retry_after: str) -> InvalidStatus:
    return InvalidStatus(Response(503, "Service Unavailable", Headers({"Retry-After": retry_after})))


def test_retry_after_is_honoured_with_jitter() -> None:
    rng = random.Random(1)
    delays = [reconnect_delay(busy("20"), 1, rng) for _ in range(1000)]
    assert all(20 <= d <= 40 for d in delays)
    assert max(delays) - min(delays) > 10
    assert 0 <= reconnect_delay(busy("soon"), 1, rng) <= BACKOFF_FIRST_WINDOW  # not a number


def test_an_over_quota_close_is_waited_out_with_jitter() -> None:
    rng = random.Random(2)
    reason = p.slow_down_reason("too many events", 45)
    delays = [reconnect_delay(closed(p.CloseCode.SLOW_DOWN, reason), 1, rng) for _ in range(500)]
    assert all(45 <= d <= 90 for d in delays)
    assert max(delays) - min(delays) > 20
    # Without a retry-after (an older coordinator's reason): the usual backoff.
    assert 0 <= reconnect_delay(closed(p.CloseCode.SLOW_DOWN, "slow down"), 1, rng) <= (
        BACKOFF_FIRST_WINDOW)


@pytest.mark.parametrize("code", sorted(p.CloseCode.FATAL))
def test_refused_identity_is_fatal(code: int) -> None:
    with pytest.raises(AuthError, match="refused this agent: nope"):
        reconnect_delay(closed(code, "nope"), 1, random.Random())


def test_other_closes_and_errors_back_off() -> None:
    rng = random.Random(3)
    for error in (closed(p.CloseCode.REPLACED, "replaced"), closed(1006, ""), OSError("down"),
                  None):
        assert 0 <= reconnect_delay(error, 3, rng) <= 4 * BACKOFF_FIRST_WINDOW


def test_a_refused_connection_retries_within_the_first_window() -> None:
    """A restarting coordinator refuses connections: cheap for it, so a small fleet keeps
    retrying within its first window instead of backing off past the restart."""
    rng = random.Random(5)
    small_fleet = fleet_reconnect_window(50)
    delays = [reconnect_delay(ConnectionRefusedError(111, "refused"), attempt, rng, small_fleet)
              for attempt in range(1, 20) for _ in range(50)]
    assert max(delays) <= small_fleet == 1.0
    # Any other failure (TLS, timeouts, a 1006 close) still doubles the window.
    assert max(reconnect_delay(OSError("unreachable"), 4, rng, small_fleet)
               for _ in range(200)) > 4 * small_fleet


@given(first_window=st.floats(min_value=0, max_value=1e6), attempt=st.integers(1, 50),
       seed=st.integers())
def test_a_welcomes_window_widens_the_first_retry_within_bounds(
    first_window: float, attempt: int, seed: int
) -> None:
    delay = backoff_delay(attempt, random.Random(seed), first_window)
    window = min(max(first_window, 1.0), MAX_FIRST_WINDOW)
    assert 0 <= delay <= max(BACKOFF_CAP, window)
    if attempt == 1:
        assert delay <= window


def test_a_big_fleet_spreads_its_first_reconnects_over_the_window_it_was_given() -> None:
    rng = random.Random(11)
    window = fleet_reconnect_window(10_000)
    delays = [reconnect_delay(closed(1006, ""), 1, rng, window) for _ in range(10_000)]
    assert max(delays) <= window
    # Arrivals per second stay near the pace the coordinator authenticates at.
    busiest = max(sum(1 for d in delays if s <= d < s + 1) for s in range(int(window)))
    assert busiest < 1.5 * DRAIN_RATE


@pytest.mark.parametrize(("fleet", "window"), [
    (0, RECONNECT_WINDOW_MIN), (50, RECONNECT_WINDOW_MIN), (500, 500 / DRAIN_RATE),
    (2_000, 2_000 / DRAIN_RATE), (10_000, 10_000 / DRAIN_RATE), (1_000_000, RECONNECT_WINDOW_MAX),
])
def test_the_coordinator_sizes_the_window_to_its_fleet(fleet: int, window: float) -> None:
    assert fleet_reconnect_window(fleet) == window


@pytest.mark.parametrize(("connected", "known", "at_stake"), [
    (10_000, 20_000, 10_000),  # one of two processes behind HAProxy: its share
    (20_000, 20_000, 20_000),  # one process holding the whole fleet
    (10, 20_000, 10_000),  # just restarted: the first agents back still get a fleet-sized window
    (50, 50, 50),
])
def test_the_window_is_sized_by_what_one_kill_can_cut(connected: int, known: int,
                                                       at_stake: int) -> None:
    assert agents_at_stake(connected, known) == at_stake
    # Two processes of 10,000 each: a kill sends 10,000 to the survivor over 50 s, not
    # the whole fleet's 100 s (issue 19: 95 % back within 60 s).
    assert fleet_reconnect_window(agents_at_stake(10_000, 20_000)) == 50.0
