"""The due-time clock stops while an incident waits on the customer."""

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from careline.coordinator.policy.calendar import BusinessCalendar
from careline.coordinator.policy.config import load_policy
from careline.coordinator.policy.decide import IncidentFacts, MachineState, Pause, decide, paused_due
from careline.coordinator.policy.entitlement import NOTHING, Entitlement

VN = BusinessCalendar()
HCM = ZoneInfo("Asia/Ho_Chi_Minh")
POLICY = load_policy()


def vn(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=HCM).astimezone(UTC)


def test_a_finished_pause_moves_the_due_time_by_its_business_time():
    due = vn(2026, 3, 3, 17, 30)  # Tuesday's close
    pause = Pause(vn(2026, 3, 3, 10, 0), vn(2026, 3, 3, 16, 0), "customer", "nobody on site")
    moved, said = paused_due(due, (pause,), VN)
    reasons = [str(r) for r in said]
    assert moved == vn(2026, 3, 4, 14, 0)  # 6 business hours later: Wed 08:00 + 6 h
    assert "6h00m of business time added" in reasons[0]
    assert "nobody on site" in reasons[0]


def test_night_inside_a_pause_does_not_count_and_late_pauses_do_not_move_it():
    due = vn(2026, 3, 3, 17, 30)
    overnight = Pause(vn(2026, 3, 3, 17, 0), vn(2026, 3, 4, 9, 0), "customer")
    moved, _ = paused_due(due, (overnight,), VN)
    assert moved == vn(2026, 3, 4, 9, 30)  # 0.5 h + 1 h of business time
    late = Pause(vn(2026, 3, 5, 9, 0), vn(2026, 3, 5, 12, 0), "customer")
    assert paused_due(due, (late,), VN)[0] == due


def test_open_pause_holds_the_clock_and_says_so():
    due = vn(2026, 3, 3, 17, 30)
    moved, said = paused_due(due, (Pause(vn(2026, 3, 3, 10, 0), None, "customer"),), VN)
    reasons = [str(r) for r in said]
    assert moved == due
    assert "Clock paused since 2026-03-03 10:00, waiting on customer" in reasons[0]


def test_decide_reports_pauses_after_the_due_reason():
    facts = IncidentFacts("disk", "high", vn(2026, 3, 3, 9, 0))  # same-day on-site reinstall
    entitlement = Entitlement(vn(2026, 3, 3, 9, 0).date(), "not_covered", NOTHING)
    machine = MachineState(online=False)
    plain = decide(facts, entitlement, machine, fix_available=False, policy=POLICY,
                   calendar=VN)
    paused = decide(facts, entitlement, machine, fix_available=False, policy=POLICY,
                    calendar=VN, paused=(Pause(vn(2026, 3, 3, 10), vn(2026, 3, 3, 12),
                                               "customer"),))
    assert plain.due_at == vn(2026, 3, 3, 17, 30)
    assert paused.due_at == vn(2026, 3, 4, 10, 0)  # 2 business hours past Tuesday 17:30
    assert paused.reasons[:4] == plain.reasons
    assert len(paused.reasons) == 5
    assert paused.reasons[4].startswith("Paused 2026-03-03 10:00 to 2026-03-03 12:00")
    assert time(10, 0) == paused.due_at.astimezone(HCM).time()
