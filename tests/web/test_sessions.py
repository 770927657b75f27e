"""coordinator.web.sessions: session lifetime, CSRF, redirects and pages (pure, no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from careline.coordinator.web import sessions as s
from careline.coordinator.web.app import form_params, status_of, summary
from careline.shared.errors import AuthError, ConfigError, Conflict, NotFound, PermissionDenied


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_while_used_and_ends_when_idle_or_old() -> None:
    clock = Clock()
    store = s.Sessions(clock, idle=60, lifetime=300)
    session = store.open("lan", "h1", "vi", "Asia/Ho_Chi_Minh")
    for _ in range(4):  # used every 50 s: stays, until its lifetime is over
        clock.now += 50
        assert store.get(session.id) is session
    clock.now += 101
    assert store.get(session.id) is None
    idle = store.open("lan", "h1", "vi", "UTC")
    clock.now += 61
    assert store.get(idle.id) is None and len(store) == 0


def test_unknown_ids_and_closing() -> None:
    store = s.Sessions(Clock())
    a = store.open("lan", "h1", "en", "UTC")
    b = store.open("lan", "h1", "en", "UTC")
    c = store.open("mai", "h2", "en", "UTC")
    assert store.get(None) is None and store.get("") is None and store.get("nope") is None
    assert a.id != b.id and a.csrf != b.csrf
    assert store.close_for("h1") == 2  # the token was revoked: all its sessions end
    assert store.get(a.id) is None and store.get(b.id) is None and store.get(c.id) is c
    store.close(c.id)
    assert store.get(c.id) is None


def test_the_store_never_grows_past_its_bound(monkeypatch) -> None:
    monkeypatch.setattr(s, "MAX_SESSIONS", 3)
    clock = Clock()
    store = s.Sessions(clock)
    opened = []
    for i in range(5):
        clock.now += 1
        opened.append(store.open(f"t{i}", f"h{i}", "vi", "UTC"))
    assert len(store) == 3
    assert [store.get(x.id) is not None for x in opened] == [False, False, True, True, True]


def test_csrf_must_match_exactly() -> None:
    session = s.Sessions(Clock()).open("lan", "h", "vi", "UTC")
    assert session.check_csrf(session.csrf)
    assert not session.check_csrf(None)
    assert not session.check_csrf("")
    assert not session.check_csrf(session.csrf[:-1])
    assert not session.check_csrf(session.csrf + "x")


def test_flash_messages_show_once() -> None:
    session = s.Sessions(Clock()).open("lan", "h", "vi", "UTC")
    session.flash.append(("ok", "done"))
    assert session.pop_flash() == [("ok", "done")]
    assert session.pop_flash() == []


@given(st.text())
def test_redirects_stay_on_this_site(target: str) -> None:
    chosen = s.safe_next(target, "/fleet")
    assert chosen == "/fleet" or chosen == target
    assert chosen.startswith("/") and not chosen.startswith("//") and "\\" not in chosen


def test_known_open_redirects_are_refused() -> None:
    for bad in ("https://evil.example", "//evil.example", "/\\evil.example", "", None, "javascript:x"):
        assert s.safe_next(bad, "/fleet") == "/fleet"
    assert s.safe_next("/incidents?open=1", "/fleet") == "/incidents?open=1"


@given(st.integers(0, 10_000), st.integers(-5, 500), st.integers(1, 100))
def test_pages_cover_every_row_once(total: int, page: int, size: int) -> None:
    page_no, offset, last = s.page_of(total, page, size)
    assert 1 <= page_no <= last and offset == (page_no - 1) * size
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
