"""Staged rollout of regulation updates: planning, gating, install windows. Pure, no I/O.

A regulation release goes out in waves (default: 5 % canary, then up to 25 %, then the
rest). Each wave is gated by success and error thresholds before the next is sent. The
functions here only take data and return data (with reasons); the orchestrator in the
coordinator does the sending, storing and incident-opening.

How the pieces fit::

    plan_waves(targets, rules.percents, seed=release_id)   -> [[machine_id, ...], ...]
    effective_state(state, sent_at, now, rules.install_timeout)  per machine
    wave_counts(states)                                     -> WaveCounts
    evaluate_wave(counts, rules)                            -> WaveVerdict
    next_action(status, sent_waves, verdicts)               -> Action (send / wait / pause / ...)
    place_late_joiner(status, sent_waves, verdicts)         -> LatePlacement
    install_window_open(now_utc, window, tz, running, effective_on, rules.window_override_days)
    deadline_due(effective_on, now_utc, rules.deadline_days)

Who is in scope, and where each machine stands (issue 11: never miss a covered machine)::

    version_standing(watched, reported, release_version)   -> Standing (below / unknown / ...)
    open_reason(kind, stored_states)                        -> why it must stay open, or None
    watched(rollouts)                                       -> the rollouts each tick advances
    scope_state(stored, ...)                                -> ScopeState for `rollouts show`

Every invalid input raises ValueError with a message a user can act on.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from fractions import Fraction
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from careline.shared.errors import ConfigError
from careline.shared.package import parse_version

__all__ = [
    "ANY_TIME",
    "DEFAULT_TZ",
    "EXCUSED",
    "SETTLED",
    "Action",
    "ActionKind",
    "InstallWindow",
    "LatePlacement",
    "MachineOutcome",
    "RolloutScope",
    "RolloutStatus",
    "ScopeState",
    "Standing",
    "Target",
    "WaveCounts",
    "WaveRules",
    "WaveStatus",
    "WaveVerdict",
    "WindowDecision",
    "days_until",
    "deadline_at_risk",
    "deadline_due",
    "effective_state",
    "evaluate_wave",
    "install_window_open",
    "next_action",
    "open_reason",
    "parse_percents",
    "place_late_joiner",
    "plan_waves",
    "scope_state",
    "version_standing",
    "watched",
    "wave_counts",
]

#: Where regulation effective dates are defined (Vietnamese regulations, local dates).
DEFAULT_TZ = "Asia/Ho_Chi_Minh"


# --------------------------------------------------------------------------- rules


def _check_percents(percents: Sequence[int]) -> tuple[int, ...]:
    """Validate cumulative wave percentages; shared by WaveRules and plan_waves."""
    values = tuple(percents)
    if not values:
        raise ValueError("wave percents: give at least one value, e.g. 5,25,100")
    for p in values:
        if isinstance(p, bool) or not isinstance(p, int):
            raise ValueError(f"wave percents must be whole numbers, got {p!r}")
        if not 0 < p <= 100:
            raise ValueError(f"wave percents must be between 1 and 100, got {p}")
    for a, b in itertools.pairwise(values):
        if b <= a:
            raise ValueError(
                f"wave percents are cumulative and must strictly increase, got {a} then {b}"
            )
    if values[-1] != 100:
        raise ValueError(
            f"the last wave percent must be 100 so every machine is covered, got {values[-1]}"
        )
    return values


def parse_percents(text: str) -> tuple[int, ...]:
    """Parse "5,25,100" (spaces allowed) into validated cumulative percentages."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"wave percents must be comma-separated whole numbers like 5,25,100, got {text!r}"
        ) from None
    return _check_percents(values)


def _share_ok(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a fraction in (0, 1], e.g. 0.95, got {value!r}")


@dataclass(frozen=True)
class WaveRules:
    """Thresholds for one rollout; defaults suit a regulation update.

    - percents: cumulative share of targets sent by the end of each wave.
    - success_share: a wave passes once this share of its reachable machines succeeded.
    - max_error_share: a wave pauses the rollout once more than this share has failed.
    - max_errors: ... or once this many machines of one wave failed (None: no count limit).
      Default 3: in a large final wave 10 % is hundreds of broken payroll PCs; three
      failures are enough to make a human look.
    - install_timeout: a sent job with no result after this long counts as failed.
    - window_override_days: this close to the effective date (in days, local date) the
      install window and a running product no longer hold the update back.
    - deadline_days: a covered machine still lacking the update this many days before the
      effective date gets an incident. Default 2: one day after installs are forced
      (3 days out), still leaving two days for a technician.
    """

    percents: tuple[int, ...] = (5, 25, 100)
    success_share: float = 0.95
    max_error_share: float = 0.10
    max_errors: int | None = 3
    install_timeout: timedelta = timedelta(hours=2)
    window_override_days: int = 3
    deadline_days: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "percents", _check_percents(self.percents))
        _share_ok("success_share", self.success_share)
        _share_ok("max_error_share", self.max_error_share)
        if self.max_errors is not None and (
            isinstance(self.max_errors, bool)
            or not isinstance(self.max_errors, int)
            or self.max_errors < 1
        ):
            raise ValueError(
                f"max_errors must be a whole number >= 1 or None, got {self.max_errors!r}"
            )
        if not isinstance(self.install_timeout, timedelta) or self.install_timeout <= timedelta(0):
            raise ValueError(
                f"install_timeout must be a positive duration, got {self.install_timeout!r}"
            )
        for name in ("window_override_days", "deadline_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of days >= 0, got {value!r}")


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Target:
    """A machine that runs the product below the release version and is covered."""

    machine_id: str
    customer_id: int


def _rank(seed: str, key: str) -> bytes:
    """Stable pseudo-random order (not Python's per-process salted hash())."""
    return hashlib.sha256(f"{seed}\x00{key}".encode()).digest()


def _wave_bounds(n: int, percents: Sequence[int]) -> list[int]:
    """Cumulative end index of each non-empty wave.

    The ceil of the share, but at least one more than the previous wave and leaving one
    machine for each later wave (3 machines at 34,35,100 % make waves of 1, 1, 1).
    """
    ends: list[int] = []
    prev = 0
    waves = len(percents)
    for i, p in enumerate(percents):
        if prev >= n:
            break  # fewer machines than waves: later waves would be empty, drop them
        room = n - (waves - 1 - i)  # keep one machine for each later wave
        end = max(prev + 1, min(math.ceil(n * p / 100), room))
        ends.append(end)
        prev = end
    return ends


def _spread_order(targets: Sequence[Target], seed: str) -> list[str]:
    """Order machines so every prefix holds each customer's fair share, give or take < 1.

    Why not plain round-robin over customers: with one big customer, round-robin leaves
    its extra machines clumped at the end (almost all of one wave), and the canary sees
    only one of its machines. Here customer c with k of n machines has, after the first t
    machines, strictly between t*k/n - 1 and t*k/n + 1 of them (Tijdeman's bound). That
    makes any contiguous wave of w machines hold at most ceil(w*k/n) + 1 of c's machines,
    and the canary (a prefix) at most ceil(w*k/n).

    The j-th machine (1-based) of c must sit at a 1-based position in
    [floor((j-1)*n/k) + 1, ceil(j*n/k)]; unit jobs with release times and deadlines on
    one slot each are scheduled by earliest deadline first, which finds such an order
    whenever one exists (and one always does).
    """
    n = len(targets)
    by_customer: dict[int, list[str]] = {}
    for t in targets:
        by_customer.setdefault(t.customer_id, []).append(t.machine_id)
    customers = sorted(by_customer, key=lambda c: (_rank(seed, f"c{c}"), c))
    # machines within a customer: seeded too, so the same PC is not always first
    machines = {
        c: sorted(ids, key=lambda m: (_rank(seed, f"m{m}"), m)) for c, ids in by_customer.items()
    }
    # releases[t] = jobs that may start at position t: (deadline, customer rank, customer)
    releases: list[list[tuple[int, int, int]]] = [[] for _ in range(n + 2)]
    for rank, c in enumerate(customers):
        k = len(machines[c])
        for j in range(1, k + 1):
            release = (j - 1) * n // k + 1
            deadline = -((-j * n) // k)  # ceil(j*n/k)
            releases[release].append((deadline, rank, c))
    heap: list[tuple[int, int, int]] = []
    taken = dict.fromkeys(customers, 0)
    order: list[str] = []
    for pos in range(1, n + 1):
        for job in releases[pos]:
            heapq.heappush(heap, job)
        deadline, _, c = heapq.heappop(heap)
        if deadline < pos:  # cannot happen (see docstring); fail loudly if it ever does
            raise AssertionError(f"wave spread: customer {c} missed position {deadline}")
        order.append(machines[c][taken[c]])
        taken[c] += 1
    return order


def plan_waves(
    targets: Sequence[Target], percents: Sequence[int] = (5, 25, 100), *, seed: str = ""
) -> list[list[str]]:
    """Split targets into waves of machine ids, spreading each customer across waves.

    Deterministic: the result depends on the set of targets and the seed, not their order.
    Pass the release id as seed so the same customers are not the canary for every
    release. Wave i ends at ceil(n * percents[i] / 100) machines, adjusted so every wave
    holds at least one machine; with fewer machines than waves, the trailing waves are
    dropped (never empty).
    """
    pct = _check_percents(percents)
    seen: dict[str, int] = {}
    for t in targets:
        if t.machine_id in seen:
            raise ValueError(f"machine {t.machine_id!r} is listed more than once in the targets")
        seen[t.machine_id] = t.customer_id
    order = _spread_order(list(targets), seed)
    waves: list[list[str]] = []
    start = 0
    for end in _wave_bounds(len(order), pct):
        waves.append(order[start:end])
        start = end
    return waves


# --------------------------------------------------------------------------- outcomes


class MachineOutcome(StrEnum):
    """Where one machine of a wave stands."""

    PENDING = "pending"  # in the wave, not sent yet (e.g. waiting for its install window)
    SENT = "sent"  # job sent, no result yet
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"  # sent, no result within install_timeout: counts as failed
    OFFLINE = "offline"  # not connected and not sent: no evidence either way


def effective_state(
    state: MachineOutcome | str, sent_at: datetime | None, now: datetime, timeout: timedelta
) -> MachineOutcome:
    """Turn a job sent too long ago into TIMED_OUT, so no machine is "in progress" forever.

    Applies to SENT and to OFFLINE machines that had been sent (they went away mid-install).
    The clock starts when the job is sent; the coordinator only sends inside the install
    window, and an agent that defers (the product was started meanwhile) should report it
    so the caller resets the machine to PENDING.
    """
    state = MachineOutcome(state)
    if (
        state in (MachineOutcome.SENT, MachineOutcome.OFFLINE)
        and sent_at is not None
        and now - sent_at >= timeout
    ):
        return MachineOutcome.TIMED_OUT
    return state


@dataclass(frozen=True)
class WaveCounts:
    """Tally of one wave. targeted = succeeded + failed + pending + offline.

    failed includes timed out; pending means reachable and unsettled (not sent yet, or
    sent and within the timeout); offline means not connected and not counted as evidence.
    """

    targeted: int
    succeeded: int
    failed: int
    pending: int
    offline: int

    def __post_init__(self) -> None:
        for name in ("targeted", "succeeded", "failed", "pending", "offline"):
            if getattr(self, name) < 0:
                raise ValueError(f"wave counts: {name} must be >= 0, got {getattr(self, name)}")
        total = self.succeeded + self.failed + self.pending + self.offline
        if total != self.targeted:
            raise ValueError(
                f"wave counts: targeted={self.targeted} but succeeded+failed+pending+offline"
                f"={total}"
            )

    @property
    def reachable(self) -> int:
        """Machines that give or can give evidence: everything but offline."""
        return self.targeted - self.offline


def wave_counts(states: Iterable[MachineOutcome | str]) -> WaveCounts:
    """Count states already passed through effective_state (SENT counts as pending)."""
    succeeded = failed = pending = offline = 0
    for raw in states:
        s = MachineOutcome(raw)
        if s is MachineOutcome.SUCCEEDED:
            succeeded += 1
        elif s in (MachineOutcome.FAILED, MachineOutcome.TIMED_OUT):
            failed += 1
        elif s is MachineOutcome.OFFLINE:
            offline += 1
        else:
            pending += 1
    total = succeeded + failed + pending + offline
    return WaveCounts(total, succeeded, failed, pending, offline)


# --------------------------------------------------------------------------- gating


class WaveStatus(StrEnum):
    RUNNING = "running"
    PASSED = "passed"
    PAUSED = "paused"


@dataclass(frozen=True)
class WaveVerdict:
    """A wave's gate. in_flight (pending machines) lets next_action tell done from passed."""

    status: WaveStatus
    reason: str
    in_flight: int = 0


def _frac(x: float) -> Fraction:
    """Exact decimal value of a configured share: 0.95 * 20 must be 19, not 18.999..."""
    return Fraction(str(x))


def evaluate_wave(counts: WaveCounts, rules: WaveRules) -> WaveVerdict:
    """Gate one wave. Checked in this order, so a pause always wins:

    1. paused if failed > max_error_share of reachable machines, or failed >= max_errors
       (even while the wave is still running: a broken release stops early);
    2. paused if the share of successes can no longer be reached by the reachable
       machines (failed > (1 - success_share) * reachable) — waiting would never pass;
    3. passed if succeeded >= success_share * reachable (and at least one reachable);
    4. else running.

    Offline machines are left out of the denominator: offices close for a week at Tết,
    and a switched-off PC says nothing about the release. They still get the update when
    they return, and the deadline watch catches the ones that never do. A wave whose
    machines are all offline stays running (no evidence, no next wave).
    An empty wave (every machine excused) passes.

    After a pause, resuming only helps if the operator retried (back to pending) or
    excused (removed from the wave) the failed machines, or changed the rules.
    """
    reach = counts.reachable
    failed, ok, pending = counts.failed, counts.succeeded, counts.pending
    if counts.targeted == 0:
        return WaveVerdict(WaveStatus.PASSED, "empty wave", 0)
    if failed and failed > _frac(rules.max_error_share) * reach:
        return WaveVerdict(
            WaveStatus.PAUSED,
            f"{failed} of {reach} reachable machines failed, more than {rules.max_error_share:.0%}",
            pending,
        )
    if rules.max_errors is not None and failed >= rules.max_errors:
        return WaveVerdict(
            WaveStatus.PAUSED,
            f"{failed} machines failed, the limit is {rules.max_errors}",
            pending,
        )
    need = _frac(rules.success_share) * reach
    if failed and ok + pending < need:
        return WaveVerdict(
            WaveStatus.PAUSED,
            f"cannot reach {rules.success_share:.0%} success: {failed} of {reach} reachable "
            f"machines failed",
            pending,
        )
    if reach == 0:
        return WaveVerdict(WaveStatus.RUNNING, f"waiting: all {counts.offline} machines offline", 0)
    if ok >= need:
        return WaveVerdict(
            WaveStatus.PASSED,
            f"{ok} of {reach} reachable machines succeeded (need {rules.success_share:.0%})",
            pending,
        )
    return WaveVerdict(
        WaveStatus.RUNNING,
        f"{ok} of {reach} succeeded, {failed} failed, {pending} pending, {counts.offline} offline",
        pending,
    )


# --------------------------------------------------------------------------- orchestration


class RolloutStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


class ActionKind(StrEnum):
    SEND_WAVE = "send_wave"  # send wave `wave` now
    WAIT = "wait"  # nothing to do until outcomes or an operator change something
    PAUSE = "pause"  # set the rollout paused and open an incident with `reason`
    COMPLETE = "complete"  # mark the rollout completed
    NONE = "none"  # the rollout is over (completed or cancelled)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    reason: str
    wave: int | None = None


def _check_progress(sent_waves: int, verdicts: Sequence[WaveVerdict]) -> None:
    if not 0 <= sent_waves <= len(verdicts):
        raise ValueError(
            f"sent_waves must be between 0 and the number of waves ({len(verdicts)}), "
            f"got {sent_waves}"
        )


def next_action(
    status: RolloutStatus | str, sent_waves: int, verdicts: Sequence[WaveVerdict]
) -> Action:
    """What the orchestrator does next. verdicts: one per planned wave (unsent ones ignored).

    sent_waves is how many waves have been sent (the current wave is sent_waves - 1).
    Any sent wave that is paused pauses the rollout, even an earlier, already passed one.
    The next wave is sent once the current one passed. The rollout completes when every
    wave passed and none has machines in flight; offline machines do not hold it open.
    """
    status = RolloutStatus(status)
    _check_progress(sent_waves, verdicts)
    if status in (RolloutStatus.CANCELLED, RolloutStatus.COMPLETED):
        return Action(ActionKind.NONE, f"rollout {status}")
    if status is RolloutStatus.PAUSED:
        return Action(ActionKind.WAIT, "rollout paused: waiting for an operator to resume")
    if not verdicts:
        return Action(ActionKind.COMPLETE, "no machines to update")
    if sent_waves == 0:
        return Action(ActionKind.SEND_WAVE, "start with the first wave", 0)
    for i, v in enumerate(verdicts[:sent_waves]):
        if v.status is WaveStatus.PAUSED:
            return Action(ActionKind.PAUSE, f"wave {i + 1}: {v.reason}", i)
    current = sent_waves - 1
    v = verdicts[current]
    if v.status is not WaveStatus.PASSED:
        return Action(ActionKind.WAIT, f"wave {current + 1}: {v.reason}", current)
    if sent_waves < len(verdicts):
        return Action(ActionKind.SEND_WAVE, f"wave {current + 1} passed: {v.reason}", sent_waves)
    for i, w in enumerate(verdicts):
        if w.status is not WaveStatus.PASSED or w.in_flight:
            return Action(ActionKind.WAIT, f"last wave sent; wave {i + 1}: {w.reason}", i)
    return Action(ActionKind.COMPLETE, "every wave passed and nothing is in flight")


@dataclass(frozen=True)
class LatePlacement:
    """Where a machine that became a target while the rollout is open goes.

    wave None: not part of the rollout (cancelled, or completed: install directly if
    send_now). send_now: send its job now rather than with its wave.
    """

    wave: int | None
    send_now: bool
    reason: str


def place_late_joiner(
    status: RolloutStatus | str, sent_waves: int, verdicts: Sequence[WaveVerdict]
) -> LatePlacement:
    """Place a machine enrolled (or newly covered) while a rollout is open.

    - nothing sent yet: the final wave, so the canary stays as planned;
    - current wave not passed: the current wave, gated with it;
    - current wave passed, more waves to come: the next wave, sent with it;
    - current wave is the last and passed: the last wave, sent at once.
    A paused rollout places the machine the same way but does not send.
    """
    status = RolloutStatus(status)
    _check_progress(sent_waves, verdicts)
    if status is RolloutStatus.CANCELLED:
        return LatePlacement(None, False, "rollout cancelled: not targeted")
    if status is RolloutStatus.COMPLETED or not verdicts:
        return LatePlacement(
            None,
            status is not RolloutStatus.PAUSED,
            "rollout has no open wave: install the release directly",
        )
    running = status is RolloutStatus.RUNNING
    last = len(verdicts) - 1
    if sent_waves == 0:
        return LatePlacement(last, False, "nothing sent yet: joins the final wave")
    current = sent_waves - 1
    if verdicts[current].status is not WaveStatus.PASSED:
        return LatePlacement(current, running, f"joins wave {current + 1}, not passed yet")
    if current < last:
        return LatePlacement(current + 1, False, f"joins wave {current + 2}, sent next")
    return LatePlacement(last, running, "joins the last wave, which already passed")


# --------------------------------------------------------------------------- time


ANY_TIME = "any"  # rollouts.install_window when installs may run at any time


@dataclass(frozen=True)
class InstallWindow:
    """Customer-local hours [start, end) when installs may run; may cross midnight."""

    start: time
    end: time

    def __post_init__(self) -> None:
        for t in (self.start, self.end):
            if not isinstance(t, time) or t.tzinfo is not None:
                raise ValueError(
                    f"install window times are customer-local wall-clock times without a "
                    f"time zone, got {t!r}"
                )
        if self.start == self.end:
            raise ValueError(
                "install window start and end are equal; leave the window unset for any time"
            )

    @classmethod
    def parse(cls, text: str) -> InstallWindow:
        """Parse "12:00-13:30" or "18:00-07:00"."""
        try:
            a, b = (time.fromisoformat(p.strip()) for p in text.split("-"))
        except ValueError:
            raise ValueError(
                f"install window must look like 12:00-13:30 or 18:00-07:00, got {text!r}"
            ) from None
        return cls(a, b)

    @classmethod
    def setting(cls, text: str) -> InstallWindow | None:
        """A `rollouts.install_window` policy value: "any" (no window) or a window."""
        return None if text == ANY_TIME else cls.parse(text)

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # crosses midnight


@dataclass(frozen=True)
class WindowDecision:
    """open: send the job now. forced: sent despite window/product because the date is near
    (the agent still will not swap files under a running product; it asks and waits)."""

    open: bool
    reason: str
    forced: bool = False


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}, expected e.g. {DEFAULT_TZ}") from None


def _aware(now_utc: datetime) -> None:
    if now_utc.tzinfo is None or now_utc.utcoffset() is None:
        raise ValueError("now must be a time-zone-aware datetime (UTC)")


def days_until(effective_on: date, now_utc: datetime, tz: str = DEFAULT_TZ) -> int:
    """Whole local calendar days from now to the effective date (negative once past)."""
    _aware(now_utc)
    return (effective_on - now_utc.astimezone(_zone(tz)).date()).days


def install_window_open(
    now_utc: datetime,
    window: InstallWindow | None,
    tz: str,
    product_running: bool,
    effective_on: date,
    override_days: int,
) -> WindowDecision:
    """May the update be sent to this machine now?

    Within override_days of the effective date (by the customer's local date) it is
    always sent ("forced"). Otherwise a running product holds it back, and so does being
    outside the customer's window; with no window any time the product is closed is fine.
    """
    days = days_until(effective_on, now_utc, tz)
    if days <= override_days:
        extra = "; product running, agent installs once it is closed" if product_running else ""
        return WindowDecision(
            True,
            f"forced: effective on {effective_on.isoformat()}, {days} day(s) away "
            f"(override within {override_days}){extra}",
            True,
        )
    if product_running:
        return WindowDecision(False, "product is running")
    if window is None:
        return WindowDecision(True, "product is not running and no install window is set")
    local = now_utc.astimezone(_zone(tz))
    span = f"{window.start:%H:%M}-{window.end:%H:%M} {tz}"
    if window.contains(local.time().replace(tzinfo=None)):
        return WindowDecision(True, f"inside install window {span}")
    return WindowDecision(False, f"outside install window {span} (local {local:%H:%M})")


def deadline_due(
    effective_on: date, now_utc: datetime, deadline_days: int, tz: str = DEFAULT_TZ
) -> bool:
    """True once a covered machine still lacking the update should get an incident:
    from deadline_days before the effective date (local date in tz) onwards, and after."""
    return days_until(effective_on, now_utc, tz) <= deadline_days


def deadline_at_risk(stored: str, *, online: bool, delivering: bool) -> bool:
    """Once the deadline is due, does this machine need a technician for it?

    Not while the rollout is delivering it: online, with its install on its way (sent) or
    going out now (pending in a wave being sent by a running rollout). An incident then
    would push a second install of the same version beside the rollout's, or hand the
    technician a machine that is minutes from done. Yes when the install failed or timed
    out, the machine is offline, or it waits in a wave held back (rollout paused, earlier
    waves unfinished). stored: pending | sent | succeeded | failed | timed_out |
    not_covered | retired; `delivering`: its wave is being sent by a running rollout.
    """
    if stored == "succeeded" or stored in EXCUSED:
        return False
    if stored == "sent" or (stored == "pending" and delivering):
        return not online
    return True


# --------------------------------------------------------------------------- scope (issue 11)


class Standing(StrEnum):
    """A machine's installed version of the product against the release's."""

    BELOW = "below"  # runs an older version: a target
    UNKNOWN = "unknown"  # watches the product but reports no usable version: a target too
    CURRENT = "current"  # runs this version or a newer one
    NOT_WATCHED = "not_watched"  # does not run the product (or has not reported yet)


def version_standing(watched: bool, reported: str | None, release: str) -> Standing:
    """Where a machine stands. An unknown version (empty install dir, damaged manifest,
    unparsable text) is a target, not a skip: the agent installs only what the vendor
    signed and refuses a downgrade, so sending costs at most a refused job, while skipping
    can leave a covered machine without a regulation update."""
    if not watched:
        return Standing.NOT_WATCHED
    if not reported:
        return Standing.UNKNOWN
    try:
        older = parse_version(reported) < parse_version(release)
    except ConfigError:
        return Standing.UNKNOWN
    return Standing.BELOW if older else Standing.CURRENT


#: Stored machine states that say nothing more will happen for the machine in this rollout.
SETTLED = frozenset({"succeeded", "failed", "timed_out", "not_covered", "retired"})
#: Stored states of machines excused from the rollout, with a reason.
EXCUSED = frozenset({"not_covered", "retired"})


def open_reason(kind: str, stored_states: Iterable[str]) -> str | None:
    """Why a rollout whose waves all passed must stay open; None once it may complete.

    Every targeted machine must be settled: installed, or failed and handed to a
    technician (an update_failed incident), or excused (not covered, retired). A
    regulation rollout with no covered machine yet does not complete: machines become
    targets when they enroll, report their version or are renewed, and a completed
    rollout would tell the vendor everyone is done.
    """
    states = list(stored_states)
    unsettled = sum(1 for s in states if s not in SETTLED)
    if unsettled:
        return f"every wave passed; waiting for {unsettled} machine(s) still without it"
    if kind == "regulation" and all(s in EXCUSED for s in states):
        excused = f" ({len(states)} excused)" if states else ""
        return f"no covered machine needs it yet{excused}; watching for machines that do"
    return None


class ScopeState(StrEnum):
    """Where one machine in a rollout's scope stands, as `rollouts show` lists it."""

    PENDING = "pending"  # its wave is not sent yet, or it goes out with the next tick
    UNKNOWN_VERSION = "unknown_version"  # pending, and its version was never reported
    WAITING_FOR_WINDOW = "waiting_for_window"  # online, held by install window or product
    OFFLINE = "offline"  # its wave is out; it gets the job when it is back
    SENT = "sent"  # job sent, no result yet
    INSTALLED = "installed"
    FAILED = "failed"  # failed or timed out: an update_failed incident is open
    NOT_COVERED = "not_covered"  # listed for sales, never sent
    RETIRED = "retired"  # revoked: no longer a machine of the fleet
    OVERDUE = "overdue"  # covered, from the effective date on, still without it


def scope_state(
    stored: str, *, wave_sent: bool, online: bool, window_closed: bool,
    version_known: bool, overdue: bool,
) -> ScopeState:
    """One machine's state for display, from its stored rollout state and live facts.

    stored: pending | sent | succeeded | failed | timed_out | not_covered | retired.
    overdue: the effective date has come (caller computes it with days_until <= 0);
    it outranks every state of a covered machine that does not have the update yet.
    """
    if stored == "succeeded":
        return ScopeState.INSTALLED
    if stored == "not_covered":
        return ScopeState.NOT_COVERED
    if stored == "retired":
        return ScopeState.RETIRED
    if stored not in ("pending", "sent", "failed", "timed_out"):
        raise ValueError(f"unknown stored rollout machine state {stored!r}")
    if overdue:
        return ScopeState.OVERDUE
    if stored in ("failed", "timed_out"):
        return ScopeState.FAILED
    if not wave_sent:
        return ScopeState.PENDING if version_known else ScopeState.UNKNOWN_VERSION
    if not online:
        return ScopeState.OFFLINE
    if stored == "sent":
        return ScopeState.SENT
    if window_closed:
        return ScopeState.WAITING_FOR_WINDOW
    return ScopeState.PENDING if version_known else ScopeState.UNKNOWN_VERSION


class RolloutScope(Protocol):
    """What `watched` reads of a rollout (storage's Rollout is one)."""

    @property
    def id(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def product(self) -> str: ...
    @property
    def customer_id(self) -> int | None: ...


AnyRollout = TypeVar("AnyRollout", bound=RolloutScope)


def watched(rollouts: Iterable[AnyRollout]) -> list[AnyRollout]:
    """Rollouts the tick advances: the running and paused ones, and the newest regulation
    rollout of each product (and customer scope) even once completed, so a machine that
    joins or falls behind later reopens it. An older one is superseded: the newer version
    reaches every machine the older one would."""
    rollouts = list(rollouts)
    newest: dict[tuple[str, int | None], int] = {}
    for r in rollouts:
        if r.kind == "regulation" and r.status != "cancelled":
            key = (r.product, r.customer_id)
            newest[key] = max(newest.get(key, r.id), r.id)
    return [r for r in rollouts if r.status in ("running", "paused") or (
        r.status == "completed" and newest.get((r.product, r.customer_id)) == r.id)]
