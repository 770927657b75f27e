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

from agent.runner import BACKOFF_CAP, BACKOFF_FIRST_WINDOW, backoff_delay, reconnect_delay
from shared import protocol as p
from shared.errors import AuthError


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
    assert all(20 <= d <= 40 for d in delays) and max(delays) - min(delays) > 10
    assert 0 <= reconnect_delay(busy("soon"), 1, rng) <= BACKOFF_FIRST_WINDOW  # not a number


@pytest.mark.parametrize("code", sorted(p.CloseCode.FATAL))
def test_refused_identity_is_fatal(code: int) -> None:
    with pytest.raises(AuthError, match="refused this agent: nope"):
        reconnect_delay(closed(code, "nope"), 1, random.Random())


def test_other_closes_and_errors_back_off() -> None:
    rng = random.Random(3)
    for error in (closed(p.CloseCode.REPLACED, "replaced"), closed(1006, ""), OSError("down"),
                  None):
        assert 0 <= reconnect_delay(error, 3, rng) <= 4 * BACKOFF_FIRST_WINDOW
