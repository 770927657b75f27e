"""The agent updates itself through the signed channel, end to end: a release of the product
`careline-agent` pushed to an agent running as a service (the stand-in systemctl restarts it
like systemd's Restart=on-failure). The agent's program here is a `careline-agent` launcher
file; the one-file build is the same case with a bigger file.

- it stages, hands over by a restart, the new program connects and reports `installed`;
- a new program that crashes on start is replaced by the previous one by the watchdog
  (started from the previous program) and `rolled_back` is reported;
- kill -9 right after the switch: the service restarts, the new program takes over."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, CoordinatorProcess, run, wait_until
from tests.e2e.test_updates import job_done, machine, publish

FAKE_SYSTEMCTL = Path(__file__).with_name("fake_systemctl.py")
LAUNCHER = f"#!{PYTHON}\nimport sys\nfrom careline.agent.entry import main\nsys.exit(main())\n"


def new_program(tmp: Path, name: str, text: str) -> Path:
    src = tmp / f"src-{name}"
    src.mkdir()
    (src / "careline-agent").write_text(text)
    (src / "careline-agent").chmod(0o755)
    return src


def release(coord: CoordinatorProcess, keys: Path, tmp: Path, src: Path, version: str) -> None:
    out = tmp / f"careline-agent-{version}.careline"
    run([PYTHON, "-m", "careline.coordinator.cli", "release", "build", str(src), "--product",
         "careline-agent", "--version", version, "--kind", "bugfix", "--out", str(out)])
    publish(coord, keys, out)


class ServiceAgent:
    """An agent enrolled with --service from its launcher file, supervised by the stand-in."""

    def __init__(self, coord: CoordinatorProcess, tmp: Path, **env: str) -> None:
        self.coord, self.units, self.state = coord, tmp / "units", tmp / "agent"
        self.units.mkdir()
        self.program = tmp / "opt" / "careline-agent"
        self.program.parent.mkdir()
        self.program.write_text(LAUNCHER)
        self.program.chmod(0o755)
        self.env = {**os.environ, "CARELINE_JOIN": coord.join_string(uses=1),
                    "CARELINE_AGENT_UNIT_DIR": str(self.units),
                    "CARELINE_AGENT_SYSTEMCTL": f"{sys.executable} {FAKE_SYSTEMCTL}",
                    "FAKE_SYSTEMD_RESTART_SEC": "0.3", **env}
        out = run([str(self.program), "enroll", "--service", "--state", str(self.state)], env=self.env)
        self.agent_id = out.stdout.split("Enrolled as ", 1)[1].split(" ", 1)[0]
        assert f"ExecStart={self.program} run" in (self.units / "careline-agent.service").read_text()
        assert wait_until(self.online, timeout=30)

    def online(self) -> bool:
        return bool(self.coord.agents()[self.agent_id]["status"] == "online")

    def push(self, version: str) -> int:
        job = self.coord.cli("push", "update", "--machine", self.agent_id, "--version", version,
                             "--product", "careline-agent")
        return int(job["id"])

    def result(self, job_id: int, timeout: float = 90) -> dict[str, Any]:
        return machine(job_done(self.coord, job_id, timeout=timeout), self.agent_id)

    def journal(self) -> dict[str, Any]:
        return dict(json.loads((self.state / "updates" / "self-update.json").read_text()))

    def close(self) -> None:
        run([str(self.program), "service", "uninstall"], env=self.env, check=False)


@pytest.fixture
def release_keys(sqlite_coordinator: CoordinatorProcess, tmp_path: Path) -> Path:
    keys = tmp_path / "release-keys"
    sqlite_coordinator.cli("release", "keys", "init", "--keys", str(keys))
    return keys


def test_agent_updates_itself_and_reconnects_as_the_new_program(
        sqlite_coordinator: CoordinatorProcess, release_keys: Path, tmp_path: Path) -> None:
    marker = tmp_path / "new-program-ran"
    v2 = LAUNCHER.replace("import sys\n", f"import sys, pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    release(sqlite_coordinator, release_keys, tmp_path, new_program(tmp_path, "v2", v2), "0.2.0")
    agent = ServiceAgent(sqlite_coordinator, tmp_path, CARELINE_AGENT_SELF_UPDATE_GRACE="60")
    try:
        result = agent.result(agent.push("0.2.0"))
        assert (result["status"], result.get("version")) == ("installed", "0.2.0"), result
        assert marker.exists()
        assert agent.program.read_text() == v2
        assert agent.journal()["state"] == "confirmed"
        assert not agent.program.with_name("careline-agent.previous").exists()
        assert wait_until(agent.online, timeout=30)
    finally:
        agent.close()


def test_new_program_that_crashes_is_rolled_back_by_the_watchdog(
        sqlite_coordinator: CoordinatorProcess, release_keys: Path, tmp_path: Path) -> None:
    release(sqlite_coordinator, release_keys, tmp_path,
            new_program(tmp_path, "broken", "#!/bin/sh\necho broken >&2\nexit 1\n"), "0.3.0")
    agent = ServiceAgent(sqlite_coordinator, tmp_path, CARELINE_AGENT_SELF_UPDATE_GRACE="6")
    try:
        result = agent.result(agent.push("0.3.0"))
        assert result["status"] == "rolled_back", result
        assert "did not connect within 6s" in json.dumps(result)
        assert agent.program.read_text() == LAUNCHER
        assert agent.journal()["state"] == "rolled_back"
        assert wait_until(agent.online, timeout=30)
        exits = (agent.units / "calls.log").read_text()
        assert "main process exited with 75" in exits
        assert "main process exited with 1" in exits
    finally:
        agent.close()


def test_kill_9_during_the_hand_over_leaves_a_working_agent(
        sqlite_coordinator: CoordinatorProcess, release_keys: Path, tmp_path: Path) -> None:
    v2 = LAUNCHER + "# 0.2.0\n"
    release(sqlite_coordinator, release_keys, tmp_path, new_program(tmp_path, "v2", v2), "0.2.0")
    agent = ServiceAgent(sqlite_coordinator, tmp_path, CARELINE_AGENT_SELF_UPDATE_GRACE="60",
                         CARELINE_AGENT_TEST_PAUSE="self_switched")
    try:
        job = agent.push("0.2.0")
        assert wait_until(lambda: (agent.state / "paused-at-self_switched").exists(), timeout=60)
        old = int((agent.units / "careline-agent.service.main").read_text())
        os.kill(old, signal.SIGKILL)
        result = agent.result(job)
        assert (result["status"], result.get("version")) == ("installed", "0.2.0"), result
        assert agent.program.read_text() == v2
        assert wait_until(agent.online, timeout=30)
    finally:
        agent.close()


def test_rollout_of_the_agent_itself(sqlite_coordinator: CoordinatorProcess, release_keys: Path,
                                     tmp_path: Path) -> None:
    """The agent reports itself as the product careline-agent, so its releases roll out in
    waves like any product's (to machines whose warranty or maintenance covers bug fixes)."""
    v2 = LAUNCHER + "# 0.2.0\n"
    release(sqlite_coordinator, release_keys, tmp_path, new_program(tmp_path, "v2", v2), "0.2.0")
    with sqlite_coordinator.client() as client:
        client.call("customers.add", name="Acme")
        client.call("contracts.add", customer="Acme", signed=dt.date.today().isoformat())
    agent = ServiceAgent(sqlite_coordinator, tmp_path, CARELINE_AGENT_SELF_UPDATE_GRACE="60")
    try:
        assert wait_until(lambda: "careline-agent" in (
            sqlite_coordinator.agents()[agent.agent_id].get("products") or {}), timeout=30)
        rollout = sqlite_coordinator.cli("rollouts", "start", "--release", "careline-agent 0.2.0")

        def finished() -> dict[str, Any] | None:
            shown = sqlite_coordinator.cli("rollouts", "show", str(rollout["id"]))
            return shown if shown["status"] not in ("running", "pending") else None

        shown = wait_until(finished, timeout=120, interval=1)
        assert shown["status"] == "completed", shown
        assert [(m["machine"], m["state"]) for m in shown["machines"]] == [
            (agent.agent_id, "installed")], shown
        assert agent.program.read_text() == v2
    finally:
        agent.close()
