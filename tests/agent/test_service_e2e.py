"""`careline-agent enroll --service` end to end against a real coordinator: the join string
from CARELINE_JOIN, the unit written, "started" by a stand-in systemctl that runs its
ExecStart= (no systemd as PID 1 here), the agent online, stopped and removed through
`careline-agent service`; and the documented exit codes of an unattended enrollment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from careline.agent.entry import EXIT_ERROR, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE
from tests.conftest import PYTHON, CoordinatorProcess, free_port, wait_until

FAKE_SYSTEMCTL = Path(__file__).with_name("fake_systemctl.py")


def agent(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "careline.agent", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_enroll_as_a_service_then_stop_and_uninstall(sqlite_coordinator: CoordinatorProcess,
                                                     tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    env = {"CARELINE_JOIN": sqlite_coordinator.join_string(uses=1),
           "CARELINE_AGENT_UNIT_DIR": str(units),
           "CARELINE_AGENT_SYSTEMCTL": f"{sys.executable} {FAKE_SYSTEMCTL}"}
    state = tmp_path / "agent state"
    out = agent("enroll", "--service", "--state", str(state), env=env)
    assert out.returncode == 0, out.stderr
    assert "installed and started" in out.stdout
    unit = units / "careline-agent.service"
    assert f'--state "{state}"' in unit.read_text()
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr

    def online() -> Any:
        return [a for a in sqlite_coordinator.agents().values() if a["status"] == "online"]

    try:
        assert wait_until(online, timeout=30)
        status = json.loads(agent("service", "status", "--json", env=env).stdout)
        assert status == {"service": "careline-agent", "installed": "yes", "state": "active",
                          "detail": "running", "enabled": "enabled"}
        assert agent("service", "stop", env=env).returncode == 0
        assert wait_until(lambda: not online(), timeout=30)
        assert agent("service", "start", env=env).returncode == 0
        assert wait_until(online, timeout=30)
    finally:
        removed = agent("service", "uninstall", env=env)
    assert removed.returncode == 0, removed.stderr
    assert not unit.exists()
    assert wait_until(lambda: not online(), timeout=30)
    assert json.loads(agent("service", "status", "--json", env=env).stdout)["installed"] == "no"
    calls = (units / "calls.log").read_text().splitlines()
    assert calls[:3] == ["daemon-reload", "enable careline-agent.service",
                         "start careline-agent.service"]


def test_unattended_enroll_exit_codes(sqlite_coordinator: CoordinatorProcess, tmp_path: Path) -> None:
    join = sqlite_coordinator.join_string(uses=1)
    assert agent("enroll", "--state", str(tmp_path / "a"), env={"CARELINE_JOIN": join}).returncode == 0
    spent = agent("enroll", "--state", str(tmp_path / "b"), env={"CARELINE_JOIN": join})
    assert spent.returncode == EXIT_REFUSED, spent.stderr
    assert spent.stderr.startswith("Error: ")
    assert "Traceback" not in spent.stderr
    nowhere = join.replace(f":{sqlite_coordinator.port}/", f":{free_port()}/")
    unreachable = agent("enroll", nowhere, "--state", str(tmp_path / "c"), env={})
    assert unreachable.returncode == EXIT_UNREACHABLE, unreachable.stderr
    missing = agent("enroll", "--state", str(tmp_path / "d"), env={"CARELINE_JOIN": ""})
    assert missing.returncode == EXIT_ERROR
    assert "no join string" in missing.stderr
    typo = agent("enroll", join, "--sevice", env={})
    assert typo.returncode == EXIT_USAGE
