"""coordinator.web.sessions: session lifetime, CSRF, redirects and pages (pure, no I/O)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from careline.coordinator.web import sessions as s
from careline.coordinator.web.app import form_params, status_of, summary
from careline.shared.errors import AuthError, ConfigError, Conflict, NotFound, PermissionDenied

NOW = dt.datetime(2026, 11, 30, 8, tzinfo=dt.UTC)


def test_a_session_lives_while_used_and_ends_when_idle_or_old() -> None:
    cookie, session = s.Session.new("h1", "vi", "Asia/Ho_Chi_Minh", NOW)
    assert session.id_hash == s.id_hash(cookie)
    assert cookie not in session.row().values()
    now = NOW
    for _ in range(3):  # used every 7 h: stays, until its 24 h lifetime is over
        now += dt.timedelta(hours=7)
        assert session.live(now)
        session.last_seen = now
    assert not session.live(now + dt.timedelta(hours=4))  # 25 h old
    _, idle = s.Session.new("h1", "vi", "UTC", NOW)
    assert idle.live(NOW + s.IDLE)
    assert not idle.live(NOW + s.IDLE + dt.timedelta(seconds=1))


def test_last_seen_is_written_at_most_once_a_minute() -> None:
    _, session = s.Session.new("h1", "vi", "UTC", NOW)
    assert not session.needs_touch(NOW + dt.timedelta(seconds=59))
    assert session.needs_touch(NOW + s.TOUCH_EVERY)


def test_sessions_are_unguessable_and_round_trip_through_storage() -> None:
    (c1, a), (c2, b) = s.Session.new("h", "en", "UTC", NOW), s.Session.new("h", "en", "UTC", NOW)
    assert len({c1, c2, a.csrf, b.csrf}) == 4
    assert min(len(c1), len(a.csrf)) >= 43
    a.flash.append(["ok", "done"])
    assert s.Session.from_row(a.row()) == a


def test_csrf_must_match_exactly() -> None:
    _, session = s.Session.new("h", "vi", "UTC", NOW)
    assert session.check_csrf(session.csrf)
    assert not session.check_csrf(None)
    assert not session.check_csrf("")
    assert not session.check_csrf(session.csrf[:-1])
    assert not session.check_csrf(session.csrf + "x")


@given(st.text())
def test_redirects_stay_on_this_site(target: str) -> None:
    chosen = s.safe_next(target, "/fleet")
    assert chosen == "/fleet" or chosen == target
    assert chosen.startswith("/")
    assert not chosen.startswith("//")
    assert "\\" not in chosen


def test_known_open_redirects_are_refused() -> None:
    for bad in ("https://evil.example", "//evil.example", "/\\evil.example", "", None, "javascript:x"):
        assert s.safe_next(bad, "/fleet") == "/fleet"
    assert s.safe_next("/incidents?open=1", "/fleet") == "/incidents?open=1"


@given(st.integers(0, 10_000), st.integers(-5, 500), st.integers(1, 100))
def test_pages_cover_every_row_once(total: int, page: int, size: int) -> None:
    page_no, offset, last = s.page_of(total, page, size)
    assert 1 <= page_no <= last
    assert offset == (page_no - 1) * size
    assert last == max(1, (total + size - 1) // size)
    assert offset < total or total == 0


def test_form_fields_become_method_parameters() -> None:
    assert form_params({"csrf": "x", "next": "/", "id": "3", "note": " ", "version": "1.0"}) == {
        "id": "3", "version": "1.0"}


def test_errors_map_to_http_statuses() -> None:
    assert [status_of(e("x")) for e in (AuthError, PermissionDenied, NotFound, ConfigError, Conflict)] == [
        401, 403, 404, 400, 409]


def test_action_summaries() -> None:
    assert summary("agents.ping", [{"machine": "a" * 40, "status": "ok"}]) == "aaaaaaaaaaaa: ok"
    assert summary("visits.assign", {"id": 4, "status": "assigned"}) == "status assigned"
    assert summary("push.update", {"id": 9, "kind": "update"}) == "id 9"
