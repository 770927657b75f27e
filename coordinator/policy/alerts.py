"""Flap suppression: at most one open incident per machine and condition kind.

`observe` is a pure state machine fed one health check at a time; the caller keeps one
`ConditionState` per (machine, kind) and acts on the returned `Transition`:

    none   nothing to do (still counting, or still open)
    open   create the incident: the condition failed `open_after` checks in a row
    bump   the open incident saw another failing check: update its count / last_seen
    clear  the condition has been clear `close_after` checks in a row, but a technician
           touched the incident, so it stays open for them to close (state.cleared = True)
    close  the condition has been clear `close_after` checks in a row and nobody touched
           the incident: auto-close it (the state returned is None)

One-shot kinds (EVENT_KINDS, such as `unclean_shutdown`) have no "clear" check: the first signal
opens the incident, repeats bump it, and only a technician closes it (the caller drops the
state). A technician closing any incident likewise just drops the state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

CONDITION_KINDS = (
    "disk_full",
    "disk_failing",
    "product_not_running",
    "product_crash_loop",
    "integrity_mismatch",
    "agent_offline",
    "update_failed",
)
# One-shot: no check ever reports them clear. regulation_deadline: a covered machine still
# lacks a regulation update close to its effective date.
EVENT_KINDS = ("unclean_shutdown", "regulation_deadline")
KINDS = CONDITION_KINDS + EVENT_KINDS


class Transition(StrEnum):
    NONE = "none"
    OPEN = "open"
    BUMP = "bump"
    CLEAR = "clear"
    CLOSE = "close"


@dataclass(frozen=True)
class AlertRule:
    """How many checks in a row open and close one kind of condition."""

    open_after: int = 2
    close_after: int = 3
    one_shot: bool = False

    @classmethod
    def event(cls) -> AlertRule:
        """The rule of every one-shot kind: open on the first signal, never auto-close."""
        return cls(open_after=1, one_shot=True)

    def __post_init__(self) -> None:
        if self.open_after < 1 or self.close_after < 1:
            raise ValueError("open_after and close_after must be >= 1")
        if self.one_shot and self.open_after != 1:
            raise ValueError("a one-shot kind opens on its first signal: open_after must be 1")


@dataclass(frozen=True)
class ConditionState:
    """One machine's condition of one kind, from its first failing check."""

    first_seen: datetime
    last_seen: datetime  # last failing check
    count: int  # failing checks: in a row before opening, in total once open
    opened: bool = False
    oks: int = 0  # clear checks in a row while open
    touched: bool = False  # a technician worked on the incident: never auto-close
    cleared: bool = False  # clear long enough, but kept open because touched


def observe(
    state: ConditionState | None, failing: bool, now: datetime, rule: AlertRule
) -> tuple[ConditionState | None, Transition]:
    """Feed one check result; return the new state (None: nothing pending) and what happened."""
    if failing:
        if state is None:
            state = ConditionState(first_seen=now, last_seen=now, count=0)
        state = replace(state, count=state.count + 1, last_seen=now, oks=0, cleared=False)
        if state.opened:
            return state, Transition.BUMP
        if state.count >= rule.open_after:
            return replace(state, opened=True), Transition.OPEN
        return state, Transition.NONE
    if state is None or rule.one_shot:
        return state, Transition.NONE
    if not state.opened:
        return None, Transition.NONE  # the failing streak broke before it opened
    oks = state.oks + 1
    if oks < rule.close_after:
        return replace(state, oks=oks), Transition.NONE
    if not state.touched:
        return None, Transition.CLOSE
    if state.cleared:
        return replace(state, oks=oks), Transition.NONE
    return replace(state, oks=oks, cleared=True), Transition.CLEAR


def touch(state: ConditionState) -> ConditionState:
    """A technician worked on the incident: from now on it is never auto-closed."""
    return replace(state, touched=True)
