"""Rollout waves: planning, gating, orchestration, install windows (coordinator.policy.waves)."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careline.coordinator.policy.waves import (
    EXCUSED,
    Action,
    ActionKind,
    InstallWindow,
    LatePlacement,
    MachineOutcome,
    RolloutStatus,
    Target,
    WaveCounts,
    WaveRules,
    WaveStatus,
    WaveVerdict,
    days_until,
    deadline_at_risk,
    deadline_due,
    effective_state,
    evaluate_wave,
    install_window_open,
    next_action,
    parse_percents,
    place_late_joiner,
    plan_waves,
    wave_counts,
)

HCM = "Asia/Ho_Chi_Minh"  # UTC+7 all year, no DST


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --------------------------------------------------------------------------- rules


def test_rules_defaults() -> None:
    r = WaveRules()
    assert r.percents == (5, 25, 100)
    assert (r.success_share, r.max_error_share, r.max_errors) == (0.95, 0.10, 3)
    assert r.install_timeout == timedelta(hours=2)
    assert (r.window_override_days, r.deadline_days) == (3, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"percents": ()}, "at least one"),
        ({"percents": (5, 25, 90)}, "last wave percent must be 100"),
        ({"percents": (25, 5, 100)}, "strictly increase"),
        ({"percents": (5, 5, 100)}, "strictly increase"),
        ({"percents": (0, 100)}, "between 1 and 100"),
        ({"percents": (5, 150)}, "between 1 and 100"),
        ({"percents": (5.5, 100)}, "whole numbers"),
        ({"percents": (True, 100)}, "whole numbers"),
        ({"success_share": 0}, "success_share"),
        ({"success_share": 1.01}, "success_share"),
        ({"max_error_share": 0.0}, "max_error_share"),
        ({"max_error_share": -0.1}, "max_error_share"),
        ({"max_errors": 0}, "max_errors"),
        ({"install_timeout": timedelta(0)}, "install_timeout"),
        ({"window_override_days": -1}, "window_override_days"),
        ({"deadline_days": -1}, "deadline_days"),
    ],
)
def test_rules_reject(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WaveRules(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs"),
    [
        {"percents": (100,)},
        {"percents": [10, 100]},  # a list is accepted and stored as a tuple
        {"success_share": 1, "max_error_share": 1},
        {"max_errors": None},
        {"window_override_days": 0, "deadline_days": 0},
    ],
)
def test_rules_accept(kwargs: dict[str, object]) -> None:
    r = WaveRules(**kwargs)  # type: ignore[arg-type]
    assert isinstance(r.percents, tuple)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5,25,100", (5, 25, 100)), (" 10 , 100 ", (10, 100)), ("100", (100,))],
)
def test_parse_percents(text: str, expected: tuple[int, ...]) -> None:
    assert parse_percents(text) == expected


@pytest.mark.parametrize("text", ["", "5,,100", "5;25;100", "5,25", "a,100", "25,5,100"])
def test_parse_percents_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="wave percent"):
        parse_percents(text)


# --------------------------------------------------------------------------- planning


def targets_for(customers: list[int]) -> list[Target]:
    return [Target(f"m{i:04d}", c) for i, c in enumerate(customers)]


@pytest.mark.parametrize(
    ("n", "percents", "sizes"),
    [
        (0, (5, 25, 100), []),
        (1, (5, 25, 100), [1]),
        (2, (5, 25, 100), [1, 1]),
        (3, (5, 25, 100), [1, 1, 1]),
        (20, (5, 25, 100), [1, 4, 15]),
        (21, (5, 25, 100), [2, 4, 15]),  # ceil(1.05) = 2, ceil(5.25) = 6
        (100, (5, 25, 100), [5, 20, 75]),
        (1000, (5, 25, 100), [50, 200, 750]),
        (10, (100,), [10]),
        (4, (1, 2, 3, 100), [1, 1, 1, 1]),
        (10, (1, 2, 3, 100), [1, 1, 1, 7]),
        (3, (34, 35, 100), [1, 1, 1]),  # ceil(1.02) = 2 would leave the last wave empty
        (4, (34, 35, 100), [2, 1, 1]),
    ],
)
def test_plan_sizes(n: int, percents: tuple[int, ...], sizes: list[int]) -> None:
    waves = plan_waves(targets_for([i % 7 for i in range(n)]), percents)
    assert [len(w) for w in waves] == sizes


def test_plan_rejects_duplicate_machine() -> None:
    with pytest.raises(ValueError, match="more than once"):
        plan_waves([Target("a", 1), Target("a", 2)])


def test_plan_rejects_bad_percents() -> None:
    with pytest.raises(ValueError, match="100"):
        plan_waves(targets_for([1, 2]), (5, 50))


def test_plan_big_customer_is_spread_not_clumped() -> None:
    """Round-robin would put 99 of customer 0's machines at the very end."""
    customers = [0] * 100 + list(range(1, 101))
    waves = plan_waves(targets_for(customers))
    owner = {t.machine_id: t.customer_id for t in targets_for(customers)}
    per_wave = [sum(owner[m] == 0 for m in w) for w in waves]
    assert [len(w) for w in waves] == [10, 40, 150]
    assert per_wave == [5, 20, 75]


def test_plan_seed_rotates_canary() -> None:
    targets = targets_for(list(range(200)))
    canaries = {tuple(plan_waves(targets, seed=f"release-{i}")[0]) for i in range(5)}
    assert len(canaries) > 1
    assert plan_waves(targets, seed="r1") == plan_waves(targets, seed="r1")


customer_lists = st.one_of(
    st.lists(st.integers(0, 8), max_size=150),
    # one dominant customer among many small ones
    st.tuples(st.integers(0, 120), st.lists(st.integers(1, 60), max_size=80)).map(
        lambda t: [0] * t[0] + t[1]
    ),
)
percent_lists = st.sets(st.integers(1, 99), max_size=5).map(lambda s: (*sorted(s), 100))


@settings(max_examples=300, deadline=None)
@given(customers=customer_lists, percents=percent_lists, seed=st.text(max_size=5))
def test_plan_properties(customers: list[int], percents: tuple[int, ...], seed: str) -> None:
    targets = targets_for(customers)
    n = len(targets)
    waves = plan_waves(targets, percents, seed=seed)

    # partition: every machine in exactly one wave
    flat = [m for w in waves for m in w]
    assert sorted(flat) == sorted(t.machine_id for t in targets)
    assert len(flat) == len(set(flat))

    # at least one machine per wave; as many waves as possible (fewer only if n is small)
    assert all(waves)
    assert len(waves) == min(len(percents), n)

    # cumulative sizes: the ceil share, moved only as far as one machine per wave needs
    shares = [math.ceil(n * p / 100) for p in percents]
    end = 0
    for i, w in enumerate(waves):
        end += len(w)
        assert end >= min(shares[i], n - (len(percents) - 1 - i))
        assert end <= max(shares[j] + i - j for j in range(i + 1))
    assert end == n

    # customer spread: every prefix within 1 of the fair share, so any wave of w
    # machines holds at most ceil(w*k/n) + 1 of a customer's k machines
    owner = {t.machine_id: t.customer_id for t in targets}
    total = Counter(customers)
    seen: Counter[int] = Counter()
    for t, m in enumerate(flat, start=1):
        seen[owner[m]] += 1
        for c, k in total.items():
            assert abs(seen[c] * n - t * k) < n
    for w in waves:
        in_wave = Counter(owner[m] for m in w)
        for c, k in total.items():
            assert in_wave[c] <= math.ceil(len(w) * k / n) + 1
    if waves:  # the canary is a prefix: no +1
        in_canary = Counter(owner[m] for m in waves[0])
        for c, k in total.items():
            assert in_canary[c] <= math.ceil(len(waves[0]) * k / n)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), customers=customer_lists, percents=percent_lists)
def test_plan_independent_of_input_order(
    data: st.DataObject, customers: list[int], percents: tuple[int, ...]
) -> None:
    targets = targets_for(customers)
    shuffled = data.draw(st.permutations(targets))
    assert plan_waves(shuffled, percents, seed="r") == plan_waves(targets, percents, seed="r")


# --------------------------------------------------------------------------- outcomes

T0 = utc(2025, 1, 1, 8, 0)
TIMEOUT = timedelta(hours=2)


@pytest.mark.parametrize(
    ("state", "sent_at", "now", "expected"),
    [
        ("pending", None, T0, MachineOutcome.PENDING),
        ("sent", T0, T0 + timedelta(minutes=119), MachineOutcome.SENT),
        ("sent", T0, T0 + TIMEOUT, MachineOutcome.TIMED_OUT),
        ("sent", T0, T0 + timedelta(days=3), MachineOutcome.TIMED_OUT),
        ("sent", None, T0, MachineOutcome.SENT),  # caller forgot sent_at: no guess
        ("offline", None, T0 + timedelta(days=3), MachineOutcome.OFFLINE),  # never sent
        ("offline", T0, T0 + TIMEOUT, MachineOutcome.TIMED_OUT),  # went away mid-install
        ("offline", T0, T0 + timedelta(minutes=5), MachineOutcome.OFFLINE),
        ("succeeded", T0, T0 + timedelta(days=3), MachineOutcome.SUCCEEDED),
        ("failed", T0, T0 + timedelta(days=3), MachineOutcome.FAILED),
    ],
)
def test_effective_state(
    state: str, sent_at: datetime | None, now: datetime, expected: MachineOutcome
) -> None:
    assert effective_state(state, sent_at, now, TIMEOUT) is expected


def test_wave_counts() -> None:
    states = ["pending", "sent", "succeeded", "succeeded", "failed", "timed_out", "offline"]
    assert wave_counts(states) == WaveCounts(7, succeeded=2, failed=2, pending=2, offline=1)
    assert wave_counts([]) == WaveCounts(0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="not a valid MachineOutcome"):
        wave_counts(["lost"])


@pytest.mark.parametrize("args", [(5, 1, 1, 1, 1), (3, 4, -1, 0, 0), (-1, 0, 0, 0, -1)])
def test_wave_counts_must_add_up(args: tuple[int, int, int, int, int]) -> None:
    with pytest.raises(ValueError, match="wave counts"):
        WaveCounts(*args)


# --------------------------------------------------------------------------- gating

R = WaveRules()
LOOSE = WaveRules(success_share=0.8, max_error_share=0.10, max_errors=None)


def counts(ok: int = 0, failed: int = 0, pending: int = 0, offline: int = 0) -> WaveCounts:
    return WaveCounts(ok + failed + pending + offline, ok, failed, pending, offline)


@pytest.mark.parametrize(
    ("c", "rules", "status", "reason"),
    [
        (counts(), R, "passed", "empty wave"),
        (counts(pending=100), R, "running", "0 of 100 succeeded"),
        (counts(ok=95, pending=5), R, "passed", "95 of 100"),
        (counts(ok=94, pending=6), R, "running", "94 of 100"),
        (counts(ok=19, failed=1), R, "passed", "19 of 20"),  # 0.95 * 20 is exactly 19
        (counts(ok=1, failed=1, pending=3), R, "paused", "more than 10%"),  # 20 %
        (counts(failed=1, offline=4), R, "paused", "1 of 1 reachable"),
        (counts(ok=500, failed=3, pending=497), R, "paused", "limit is 3"),
        (
            counts(ok=500, failed=3, pending=497),
            WaveRules(max_errors=None),
            "running",
            "3 failed",
        ),
        # error share not exceeded, max_errors not hit, but 95 % is out of reach
        (counts(ok=10, failed=2, pending=18), R, "paused", "cannot reach 95%"),
        (counts(ok=28, failed=2), R, "paused", "cannot reach 95%"),  # settled below share
        # boundary of the error share: exactly 10 % does not pause, above does
        (counts(ok=20, failed=3, pending=7), LOOSE, "running", "3 failed"),
        (counts(ok=20, failed=4, pending=6), LOOSE, "paused", "more than 10%"),
        # pause wins over pass
        (counts(ok=89, failed=11), WaveRules(success_share=0.5), "paused", "more than 10%"),
        # offline machines are not evidence either way
        (counts(ok=5, offline=5), R, "passed", "5 of 5"),
        (counts(ok=4, pending=1, offline=5), R, "running", "5 offline"),
        (counts(offline=3), R, "running", "all 3 machines offline"),
    ],
)
def test_evaluate_wave(c: WaveCounts, rules: WaveRules, status: str, reason: str) -> None:
    v = evaluate_wave(c, rules)
    assert v.status == status
    assert reason in v.reason
    assert v.in_flight == c.pending


rules_st = st.builds(
    WaveRules,
    success_share=st.floats(0.01, 1.0),
    max_error_share=st.floats(0.01, 1.0),
    max_errors=st.none() | st.integers(1, 20),
)
counts_st = st.builds(
    counts,
    ok=st.integers(0, 60),
    failed=st.integers(0, 60),
    pending=st.integers(0, 60),
    offline=st.integers(0, 20),
)


@given(c=counts_st, rules=rules_st)
def test_adding_a_success_never_hurts(c: WaveCounts, rules: WaveRules) -> None:
    """pending -> succeeded: paused stays paused, passed stays passed, never newly paused."""
    if not c.pending:
        return
    before = evaluate_wave(c, rules).status
    after = evaluate_wave(counts(c.succeeded + 1, c.failed, c.pending - 1, c.offline), rules)
    allowed = {
        WaveStatus.PAUSED: {WaveStatus.PAUSED},
        WaveStatus.PASSED: {WaveStatus.PASSED},
        WaveStatus.RUNNING: {WaveStatus.RUNNING, WaveStatus.PASSED},
    }
    assert after.status in allowed[before]


@given(c=counts_st, rules=rules_st)
def test_adding_a_failure_never_helps(c: WaveCounts, rules: WaveRules) -> None:
    """pending -> failed: never newly passed, paused stays paused."""
    if not c.pending:
        return
    before = evaluate_wave(c, rules).status
    after = evaluate_wave(counts(c.succeeded, c.failed + 1, c.pending - 1, c.offline), rules)
    allowed = {
        WaveStatus.PAUSED: {WaveStatus.PAUSED},
        WaveStatus.PASSED: {WaveStatus.PASSED, WaveStatus.PAUSED},
        WaveStatus.RUNNING: {WaveStatus.RUNNING, WaveStatus.PAUSED},
    }
    assert after.status in allowed[before]


@given(c=counts_st, rules=rules_st)
def test_settled_wave_is_never_left_running(c: WaveCounts, rules: WaveRules) -> None:
    """Once nothing reachable is pending the wave passes or pauses: no silent stall."""
    settled = counts(c.succeeded, c.failed, 0, c.offline)
    if settled.reachable:
        assert evaluate_wave(settled, rules).status != WaveStatus.RUNNING


@given(c=counts_st, rules=rules_st)
def test_verdict_matches_thresholds(c: WaveCounts, rules: WaveRules) -> None:
    v = evaluate_wave(c, rules).status
    reach = c.reachable
    if v is WaveStatus.PASSED and reach:
        assert c.succeeded / reach >= rules.success_share - 1e-9
        assert c.failed / reach <= rules.max_error_share + 1e-9
    if c.failed and rules.max_errors is not None and c.failed >= rules.max_errors:
        assert v is WaveStatus.PAUSED
    if reach and c.failed / reach > rules.max_error_share + 1e-9:
        assert v is WaveStatus.PAUSED


# --------------------------------------------------------------------------- orchestration

PASSED = WaveVerdict(WaveStatus.PASSED, "ok")
PASSED_BUSY = WaveVerdict(WaveStatus.PASSED, "ok", in_flight=4)
RUNNING = WaveVerdict(WaveStatus.RUNNING, "busy", in_flight=10)
PAUSED = WaveVerdict(WaveStatus.PAUSED, "3 failed")


@pytest.mark.parametrize(
    ("status", "sent", "verdicts", "expected"),
    [
        ("cancelled", 1, [RUNNING, RUNNING], Action(ActionKind.NONE, "rollout cancelled")),
        ("completed", 2, [PASSED, PASSED], Action(ActionKind.NONE, "rollout completed")),
        ("paused", 1, [PAUSED, RUNNING], Action(ActionKind.WAIT, "rollout paused", None)),
        ("running", 0, [], Action(ActionKind.COMPLETE, "no machines")),
        ("running", 0, [RUNNING, RUNNING], Action(ActionKind.SEND_WAVE, "first", 0)),
        ("running", 1, [RUNNING, RUNNING], Action(ActionKind.WAIT, "wave 1: busy", 0)),
        ("running", 1, [PAUSED, RUNNING], Action(ActionKind.PAUSE, "wave 1: 3 failed", 0)),
        ("running", 1, [PASSED_BUSY, RUNNING], Action(ActionKind.SEND_WAVE, "passed", 1)),
        # an earlier, already passed wave that later hits a threshold pauses the rollout
        ("running", 2, [PAUSED, RUNNING, RUNNING], Action(ActionKind.PAUSE, "wave 1", 0)),
        ("running", 2, [PASSED, PAUSED], Action(ActionKind.PAUSE, "wave 2: 3 failed", 1)),
        ("running", 2, [PASSED, RUNNING], Action(ActionKind.WAIT, "wave 2: busy", 1)),
        ("running", 2, [PASSED, PASSED_BUSY], Action(ActionKind.WAIT, "last wave sent", 1)),
        ("running", 2, [RUNNING, PASSED], Action(ActionKind.WAIT, "wave 1: busy", 0)),
        ("running", 2, [PASSED, PASSED], Action(ActionKind.COMPLETE, "every wave passed")),
        (RolloutStatus.RUNNING, 1, [PASSED], Action(ActionKind.COMPLETE, "every wave")),
    ],
)
def test_next_action(status: str, sent: int, verdicts: list[WaveVerdict], expected: Action) -> None:
    got = next_action(status, sent, verdicts)
    assert (got.kind, got.wave) == (expected.kind, expected.wave)
    assert expected.reason in got.reason


@pytest.mark.parametrize(("status", "sent", "why"), [
    ("running", 3, "sent_waves must be between"), ("running", -1, "sent_waves must be between"),
    ("done", 0, "not a valid RolloutStatus")])
def test_next_action_rejects(status: str, sent: int, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        next_action(status, sent, [RUNNING, RUNNING])


@pytest.mark.parametrize(
    ("status", "sent", "verdicts", "expected"),
    [
        ("cancelled", 1, [RUNNING, RUNNING], LatePlacement(None, False, "cancelled")),
        ("completed", 2, [PASSED, PASSED], LatePlacement(None, True, "directly")),
        ("running", 0, [], LatePlacement(None, True, "directly")),
        ("running", 0, [RUNNING, RUNNING, RUNNING], LatePlacement(2, False, "final wave")),
        ("running", 1, [RUNNING, RUNNING, RUNNING], LatePlacement(0, True, "wave 1")),
        ("paused", 1, [PAUSED, RUNNING, RUNNING], LatePlacement(0, False, "wave 1")),
        ("running", 1, [PASSED, RUNNING, RUNNING], LatePlacement(1, False, "wave 2")),
        ("running", 3, [PASSED, PASSED, RUNNING], LatePlacement(2, True, "wave 3")),
        ("running", 3, [PASSED, PASSED, PASSED], LatePlacement(2, True, "last wave")),
        ("paused", 3, [PAUSED, PASSED, PASSED], LatePlacement(2, False, "last wave")),
    ],
)
def test_place_late_joiner(
    status: str, sent: int, verdicts: list[WaveVerdict], expected: LatePlacement
) -> None:
    got = place_late_joiner(status, sent, verdicts)
    assert (got.wave, got.send_now) == (expected.wave, expected.send_now)
    assert expected.reason in got.reason


# --------------------------------------------------------------------------- install windows

LUNCH = InstallWindow(time(12, 0), time(13, 30))
NIGHT = InstallWindow(time(18, 0), time(7, 0))
FAR = date(2025, 7, 1)  # effective date far from the test instants


def hcm_local(h: int, m: int = 0, day: int = 10) -> datetime:
    """An aware UTC instant that is h:m on 2025-03-<day> in Ho Chi Minh City (UTC+7)."""
    return datetime(2025, 3, day, h, m, tzinfo=UTC) - timedelta(hours=7)


@pytest.mark.parametrize(
    ("local", "window", "running", "is_open", "reason"),
    [
        ((9, 0), None, False, True, "no install window"),
        ((9, 0), None, True, False, "product is running"),
        ((12, 0), LUNCH, False, True, "inside"),
        ((13, 29), LUNCH, False, True, "inside"),
        ((13, 30), LUNCH, False, False, "outside"),
        ((11, 59), LUNCH, False, False, "local 11:59"),
        ((12, 30), LUNCH, True, False, "product is running"),
        ((18, 0), NIGHT, False, True, "inside"),
        ((23, 59), NIGHT, False, True, "inside"),
        ((0, 0), NIGHT, False, True, "inside"),
        ((6, 59), NIGHT, False, True, "inside"),
        ((7, 0), NIGHT, False, False, "outside"),
        ((12, 0), NIGHT, False, False, "outside"),
        ((17, 59), NIGHT, False, False, "outside"),
    ],
)
def test_install_window(
    local: tuple[int, int], window: InstallWindow | None, running: bool, is_open: bool, reason: str
) -> None:
    d = install_window_open(hcm_local(*local), window, HCM, running, FAR, 3)
    assert (d.open, d.forced) == (is_open, False)
    assert reason in d.reason


def test_window_forced_near_effective_date_by_local_date() -> None:
    eff = date(2025, 3, 13)
    # 2025-03-09 23:59 local is 4 days out: the window still holds
    d = install_window_open(hcm_local(23, 59, day=9), LUNCH, HCM, True, eff, 3)
    assert not d.open
    # 00:30 local on the 10th (still the 9th in UTC) is 3 days out: forced, even running
    now = hcm_local(0, 30, day=10)
    assert now.day == 9
    d = install_window_open(now, LUNCH, HCM, True, eff, 3)
    assert (d.open, d.forced) == (True, True)
    assert "forced" in d.reason
    assert "product running" in d.reason
    # after the effective date: still forced
    d = install_window_open(hcm_local(9, 0, day=20), NIGHT, HCM, False, eff, 3)
    assert (d.open, d.forced) == (True, True)
    # override 0: forced only on the day itself
    assert not install_window_open(hcm_local(9, 0, day=12), NIGHT, HCM, False, eff, 0).open
    assert install_window_open(hcm_local(9, 0, day=13), NIGHT, HCM, False, eff, 0).forced


def minute_of_day(t: time) -> int:
    return t.hour * 60 + t.minute


@given(
    now=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
    ),
    start=st.integers(0, 24 * 60 - 1),
    end=st.integers(0, 24 * 60 - 1),
)
def test_window_in_ho_chi_minh_is_utc_plus_7(now: datetime, start: int, end: int) -> None:
    if start == end:
        return
    window = InstallWindow(time(start // 60, start % 60), time(end // 60, end % 60))
    local = (now.hour * 60 + now.minute + 7 * 60) % (24 * 60)
    crosses_midnight = start > end
    expected = (local >= start or local < end) if crosses_midnight else start <= local < end
    d = install_window_open(now, window, HCM, False, date(2100, 1, 1), 3)
    assert d.open is expected


def test_window_uses_local_wall_clock_across_dst() -> None:
    """Berlin: 10:30 UTC is 12:30 in summer (inside lunch) but 11:30 in winter."""
    summer = install_window_open(utc(2025, 7, 1, 10, 30), LUNCH, "Europe/Berlin", False, FAR, 0)
    winter = install_window_open(
        utc(2025, 1, 15, 10, 30), LUNCH, "Europe/Berlin", False, date(2026, 1, 1), 0
    )
    assert summer.open
    assert not winter.open


@pytest.mark.parametrize(
    ("text", "window"),
    [("12:00-13:30", LUNCH), ("18:00 - 07:00", NIGHT)],
)
def test_window_parse(text: str, window: InstallWindow) -> None:
    assert InstallWindow.parse(text) == window


@pytest.mark.parametrize("text", ["12:00", "12-13-14", "25:00-01:00", "noon-13:00"])
def test_window_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="install window"):
        InstallWindow.parse(text)


def test_window_rejects_empty_and_aware_times() -> None:
    with pytest.raises(ValueError, match="equal"):
        InstallWindow(time(9), time(9))
    with pytest.raises(ValueError, match="without a time zone"):
        InstallWindow(time(9, tzinfo=UTC), time(10))


def test_window_rejects_naive_now_and_unknown_zone() -> None:
    with pytest.raises(ValueError, match="aware"):
        install_window_open(datetime(2025, 1, 1, 9), None, HCM, False, FAR, 3)
    with pytest.raises(ValueError, match="unknown time zone"):
        install_window_open(utc(2025, 1, 1, 9), None, "Mars/Olympus", False, FAR, 3)


# --------------------------------------------------------------------------- deadline


@pytest.mark.parametrize(
    ("now", "days", "due"),
    [
        (hcm_local(23, 59, day=10), 2, False),  # 3 days out
        (hcm_local(0, 0, day=11), 2, True),  # 2 days out (UTC still says the 10th)
        (hcm_local(9, 0, day=13), 2, True),  # the day itself
        (hcm_local(9, 0, day=20), 2, True),  # past and still lacking: overdue
        (hcm_local(9, 0, day=12), 0, False),
        (hcm_local(9, 0, day=13), 0, True),
    ],
)
def test_deadline_due(now: datetime, days: int, due: bool) -> None:
    assert deadline_due(date(2025, 3, 13), now, days) is due


@pytest.mark.parametrize(
    ("stored", "online", "delivering", "at_risk"),
    [
        ("pending", True, True, False),  # its wave goes out now: no second install beside it
        ("sent", True, False, False),  # on its way (a paused rollout still awaits results)
        ("sent", False, True, True),  # the job waits for a machine that is off
        ("pending", False, True, True),
        ("pending", True, False, True),  # held back: rollout paused or earlier waves open
        ("failed", True, True, True),
        ("timed_out", True, False, True),
        ("succeeded", False, False, False),
        ("not_covered", False, False, False),
        ("retired", True, True, False),
    ],
)
def test_deadline_at_risk(stored: str, online: bool, delivering: bool, at_risk: bool) -> None:
    assert deadline_at_risk(stored, online=online, delivering=delivering) is at_risk


@given(st.sampled_from(["pending", "sent", "succeeded", "failed", "timed_out",
                        "not_covered", "retired"]), st.booleans(), st.booleans())
def test_deadline_at_risk_only_for_machines_without_it(stored: str, online: bool,
                                                       delivering: bool) -> None:
    """Installed and excused machines never need a technician for the deadline; a
    machine that is off always does unless it has it."""
    at_risk = deadline_at_risk(stored, online=online, delivering=delivering)
    if stored in ("succeeded", *EXCUSED):
        assert not at_risk
    elif not online:
        assert at_risk


def test_days_until_uses_local_date() -> None:
    assert days_until(date(2025, 1, 1), utc(2024, 12, 31, 17, 0), HCM) == 0
    assert days_until(date(2025, 1, 1), utc(2024, 12, 31, 16, 59), HCM) == 1
    assert days_until(date(2025, 1, 1), utc(2025, 1, 3, 0, 0), HCM) == -2
