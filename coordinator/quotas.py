"""Quotas: how much one agent, or one address before it authenticates, may cost us.

Pure code with the clock passed in, tested directly (tests/test_quotas.py); the server
(coordinator/server.py) asks and acts. Two kinds of limit:

- `AgentQuota`: an authenticated agent may still be hostile (a virus-infected PC), so its
  messages and event bytes are metered by token buckets, and an event above
  `protocol.MAX_EVENT_BYTES` is refused. Over a limit, the server closes the connection with
  CloseCode.SLOW_DOWN and a retry-after; the quota is kept per agent id, so reconnecting
  does not refill it.
- `Gate`: connections not yet authenticated, per channel, per peer address and in all.
  One source flooding the port fills only its own per-address allowance, so a real agent
  from elsewhere still gets in.
- `Overload`: whether the process is too busy to start another TLS handshake at all,
  judged by how late its event loop runs (the server refuses at the ClientHello, before
  the handshake's key exchange and signature are computed).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from careline.shared import protocol as p


@dataclass
class TokenBucket:
    """`capacity` tokens at most, refilled at `rate` a second."""

    capacity: float
    rate: float
    tokens: float = -1.0  # full at first use
    at: float = 0.0

    def take(self, amount: float, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.at = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True

    def wait_for(self, amount: float) -> int:
        """Whole seconds until `amount` tokens are there again (at least 1)."""
        missing = max(0.0, min(amount, self.capacity) - self.tokens)
        return max(1, math.ceil(missing / self.rate))


# Per agent. A healthy agent sends a heartbeat every interval and a handful of events a day,
# but a PC back after weeks offline delivers its whole outbox at once (thousands of small
# events, issue 13): the event burst admits such a backlog in one go, and the steady rate
# then bounds what a hostile agent can make us store (10 a second, refilling the burst in
# ~8 minutes; the byte bucket bounds their size). Messages other than events cost only memory
# that the next one replaces, so their limit is loose (bench/fleet.py's throughput blast stays
# under it).
MESSAGE_BURST, MESSAGE_RATE = 6000, 200.0  # any message, per second
EVENT_BURST, EVENT_RATE = 5000, 10.0  # events, per second
EVENT_BYTES_BURST, EVENT_BYTES_RATE = 4 << 20, 128 << 10  # encoded event bytes, per second


@dataclass
class AgentQuota:
    messages: TokenBucket = field(default_factory=lambda: TokenBucket(MESSAGE_BURST, MESSAGE_RATE))
    events: TokenBucket = field(default_factory=lambda: TokenBucket(EVENT_BURST, EVENT_RATE))
    event_bytes: TokenBucket = field(
        default_factory=lambda: TokenBucket(EVENT_BYTES_BURST, EVENT_BYTES_RATE))
    refused: int = 0  # messages refused over a limit (logged; `agents show` says how many)
    unknown_kinds: int = 0  # events of a kind we do not know: acknowledged, not stored

    def admit(self, kind: str, size: int, now: float) -> str | None:
        """None if this message (of `kind`: "event" or another, `size` bytes encoded) is
        within quota; else the close reason, which tells the agent when to come back."""
        if kind == "event" and size > p.MAX_EVENT_BYTES:
            self.refused += 1
            return f"event of {size} bytes exceeds the {p.MAX_EVENT_BYTES}-byte limit"
        if not self.messages.take(1, now):
            self.refused += 1
            return p.slow_down_reason("too many messages", self.messages.wait_for(MESSAGE_BURST / 2))
        if kind == "event" and not self.events.take(1, now):
            self.refused += 1
            return p.slow_down_reason("too many events", self.events.wait_for(EVENT_BURST / 2))
        if kind == "event" and not self.event_bytes.take(size, now):
            self.refused += 1
            return p.slow_down_reason("too many event bytes",
                                      self.event_bytes.wait_for(EVENT_BYTES_BURST / 2))
        return None


# ----------------------------------------------------------------------------- unauthenticated
@dataclass(frozen=True)
class Caps:
    per_address: int
    total: int


# Connections between the upgrade and authentication, per channel. An office behind one NAT
# address reconnecting after a restart passes in turns (the rest get 503 and Retry-After);
# one flooding address cannot take more than its share. (A survivor taking back a dead
# process's 10,000 agents turns about a sixth of them away at 500; at 1,000 it turned more
# away, each waiting longer behind the others, and took 80 s instead of 67 s for 95 %.)
DEFAULT_CAPS: dict[str, Caps] = {
    p.AGENT_PATH: Caps(per_address=64, total=500),
    p.ENROLL_PATH: Caps(per_address=8, total=64),
    p.ADMIN_PATH: Caps(per_address=16, total=128),
}


def caps_for(per_address: int = 0) -> dict[str, Caps]:
    """The default caps, or every channel's per-address cap set to `per_address` (if > 0),
    never above that channel's total."""
    if per_address <= 0:
        return dict(DEFAULT_CAPS)
    return {channel: Caps(min(per_address, caps.total), caps.total)
            for channel, caps in DEFAULT_CAPS.items()}


@dataclass
class Gate:
    caps: dict[str, Caps] = field(default_factory=lambda: dict(DEFAULT_CAPS))
    _by_address: Counter[tuple[str, str]] = field(default_factory=Counter)
    _by_channel: Counter[str] = field(default_factory=Counter)

    def check(self, channel: str, address: str) -> str | None:
        """None if one more unauthenticated connection may start; else which cap is full."""
        caps = self.caps[channel]
        if self._by_address[(channel, address)] >= caps.per_address:
            return "address"
        if self._by_channel[channel] >= caps.total:
            return "total"
        return None

    def enter(self, channel: str, address: str) -> None:
        self._by_address[(channel, address)] += 1
        self._by_channel[channel] += 1

    def leave(self, channel: str, address: str) -> None:
        key = (channel, address)
        self._by_address[key] -= 1
        if self._by_address[key] <= 0:
            del self._by_address[key]
        self._by_channel[channel] -= 1

    def pending(self, channel: str, address: str | None = None) -> int:
        if address is None:
            return self._by_channel[channel]
        return self._by_address[(channel, address)]


# ----------------------------------------------------------------------------- overload
# The event loop this late (seconds) starts the shedding of new TLS handshakes; back under
# RESUME_LAG it stops. A healthy coordinator runs its timers within milliseconds; a survivor
# taking back a dead process's 10,000 agents falls seconds behind, and then the oldest
# connections in its accept queue have been given up by their agents (20 s connect timeout)
# by the time it computes their handshake: work for no one, while the fresh ones wait.
SHED_LAG = 0.5
RESUME_LAG = 0.1


@dataclass
class Overload:
    """Sheds new TLS handshakes while the event loop runs late, with hysteresis.

    Refusing at the ClientHello costs a few microseconds, so the accept queue drains
    instead of ageing, and the handshakes the process does take are ones whose agents
    still wait for them; a refused agent retries after its backoff, as after any failed
    connect. Only real lateness sheds: a stranger cannot trigger it without loading the
    process as much as its handshakes would anyway."""

    shed_lag: float = SHED_LAG
    resume_lag: float = RESUME_LAG
    shedding: bool = False
    refused: int = 0  # handshakes refused since the shedding started

    def measure(self, lag: float) -> bool:
        """Take one measure of the loop's lateness; True if shedding started or stopped."""
        if self.shedding and lag < self.resume_lag:
            self.shedding = False
            return True
        if not self.shedding and lag > self.shed_lag:
            self.shedding, self.refused = True, 0
            return True
        return False

    def admit(self) -> bool:
        """May a new TLS handshake start now? Counts the ones refused."""
        if self.shedding:
            self.refused += 1
        return not self.shedding
