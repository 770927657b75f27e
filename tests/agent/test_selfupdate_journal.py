"""agent.selfupdate with real files: the hand-over's steps and journal, confirmation by the
new program, the watchdog's rollback at the deadline, recovery of an interrupted hand-over,
and packages that are not a usable agent."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from careline.agent import selfupdate
from careline.agent.outbox import Outbox
from careline.agent.state import StateDir
from careline.shared.errors import VerificationError
from careline.shared.trust import VerifiedPackage
from tests.updates.conftest import instruction_for, make_package


class Interrupted(Exception):
    """Stands for a kill -9 at a step (the hook raises instead of dying)."""


@pytest.fixture
def env(tmp_path: Path) -> tuple[StateDir, Path]:
    state = StateDir(tmp_path / "state")
    (state.path / "updates").mkdir(parents=True)
    program = tmp_path / "opt" / "careline-agent"
    program.parent.mkdir()
    program.write_text("old program\n")
    program.chmod(0o755)
    return state, program


def verified(tmp: Path, files: dict[str, str], version: str = "0.2.0",
             product: str = "careline-agent") -> VerifiedPackage:
    package = make_package(tmp, version, files=files, product=product)
    return VerifiedPackage(package, instruction_for(package, version, product=product, job_id="j1"))


def hand_over(state: StateDir, program: Path, package: VerifiedPackage, **kw: object) -> list[list[str]]:
    spawned: list[list[str]] = []

    def spawn(argv: list[str]) -> int:
        spawned.append(argv)
        return 4242

    selfupdate.hand_over(state, package, program, from_version="0.1.0", spawn=spawn, **kw)  # type: ignore[arg-type]
    return spawned


def test_hand_over_then_the_new_program_confirms(env: tuple[StateDir, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    state, program = env
    steps: list[str] = []
    spawned = hand_over(state, program, verified(tmp_path, {"careline-agent": "new program\n"}),
                        grace=30, hook=steps.append)
    previous = program.with_name("careline-agent.previous")
    assert program.read_text() == "new program\n"
    assert previous.read_text() == "old program\n"
    assert program.stat().st_mode & 0o111
    assert spawned == [[str(previous), "watchdog", "--state", str(state.path)]]
    assert steps == ["self_staged", "self_switched"]
    journal = selfupdate.read_journal(state)
    assert journal is not None
    assert journal["state"] == "switched"
    assert journal["watchdog_pid"] == 4242
    assert 25 < journal["deadline"] - time.time() <= 30

    monkeypatch.setattr(sys, "argv", ["/elsewhere/careline-agent"])
    assert selfupdate.confirm(state) is None  # not the switched program: nothing to confirm
    monkeypatch.setattr(sys, "argv", [str(program), "run"])
    assert selfupdate.confirm(state) == {"job": "j1", "outcome": "installed",
                                         "product": "careline-agent", "version": "0.2.0",
                                         "reason": None}
    assert not previous.exists()
    journal = selfupdate.read_journal(state)
    assert journal is not None
    assert journal["state"] == "confirmed"
    assert selfupdate.confirm(state) is None
    assert selfupdate.watch(state, poll=0.01) is None  # the watchdog sees it and leaves


def test_watchdog_restores_the_previous_program_at_the_deadline(
        env: tuple[StateDir, Path], tmp_path: Path) -> None:
    state, program = env
    hand_over(state, program, verified(tmp_path, {"careline-agent": "crashes\n"}), grace=0.2)
    restarts: list[bool] = []
    data = selfupdate.watch(state, poll=0.01, restart=lambda: restarts.append(True))
    assert data is not None
    assert data["outcome"] == "rolled_back"
    assert data["version"] == "0.1.0"
    assert "did not connect within 0.2s" in data["reason"]
    assert program.read_text() == "old program\n"
    assert restarts == [True]
    assert not program.with_name("careline-agent.previous").exists()
    assert selfupdate.read_journal(state)["state"] == "rolled_back"  # type: ignore[index]
    outbox = Outbox(state.outbox_file)
    try:
        events = list(outbox.pending(after=0))
    finally:
        outbox.close()
    assert [(e.kind, e.data["outcome"]) for e in events] == [("update_result", "rolled_back")]
    done = list((state.path / "updates" / "done").glob("*.json"))
    assert [json.loads(d.read_text())["outcome"] for d in done] == ["rolled_back"]


@pytest.mark.parametrize("step", ["self_staged"])
def test_interrupted_before_the_switch_is_undone_at_start(
        env: tuple[StateDir, Path], tmp_path: Path, step: str) -> None:
    state, program = env

    def die(at: str) -> None:
        if at == step:
            raise Interrupted(at)

    with pytest.raises(Interrupted):
        hand_over(state, program, verified(tmp_path, {"careline-agent": "new\n"}), hook=die)
    assert program.read_text() == "old program\n"  # the old program still runs the service
    result = selfupdate.recover(state)
    assert result is not None
    assert result["outcome"] == "rolled_back"
    assert "interrupted before the switch" in result["reason"]
    assert not program.with_name("careline-agent.new").exists()
    assert selfupdate.recover(state) is None
    assert selfupdate.watch(state, poll=0.01) is None  # its watchdog leaves too


@pytest.mark.parametrize(("files", "product", "problem"), [
    ({"other-file": "x"}, "careline-agent", "no careline-agent"),
    ({"careline-agent": "x"}, "acct", "package holds acct"),
])
def test_packages_that_are_not_this_agent_are_refused(
        env: tuple[StateDir, Path], tmp_path: Path, files: dict[str, str], product: str,
        problem: str) -> None:
    state, program = env
    package = verified(tmp_path, files, product=product)
    with pytest.raises(VerificationError, match=problem):
        hand_over(state, program, package)
    assert program.read_text() == "old program\n"
    assert selfupdate.read_journal(state) is None
    assert sorted(p.name for p in program.parent.iterdir()) == ["careline-agent"]
