"""The self-contained agent (scripts/build-agent.sh) end to end: `--version`, enrolled with
`--service` (its unit runs the binary itself, started by the stand-in systemctl), online,
reporting, and installing a signed product update. Runs only against a built binary:
`CARELINE_AGENT_BINARY=dist/careline-agent` (`bash scripts/build-agent.sh --smoke` does it).
Last, the binary updates itself through a `careline-agent` release."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PYTHON, CoordinatorProcess, run, wait_until
from tests.e2e.test_updates import build, installed, job_done, machine, publish

BINARY = os.environ.get("CARELINE_AGENT_BINARY", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BINARY, reason="set CARELINE_AGENT_BINARY (scripts/build-agent.sh --smoke)"),
]
FAKE_SYSTEMCTL = Path(__file__).with_name("fake_systemctl.py")


def test_binary_enrolls_as_a_service_reports_and_updates_a_product_and_itself(
        sqlite_coordinator: CoordinatorProcess, tmp_path: Path) -> None:
    binary = str(Path(BINARY).resolve())
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert "version" in version.stdout

    keys = tmp_path / "release-keys"
    sqlite_coordinator.cli("release", "keys", "init", "--keys", str(keys))
    publish(sqlite_coordinator, keys, build(tmp_path, "1.0.0"))
    units = tmp_path / "units"
    units.mkdir()
    env = {**os.environ, "CARELINE_JOIN": sqlite_coordinator.join_string(uses=1),
           "CARELINE_AGENT_UNIT_DIR": str(units),
           "CARELINE_AGENT_SYSTEMCTL": f"{sys.executable} {FAKE_SYSTEMCTL}"}
    state, product = tmp_path / "agent", tmp_path / "Acct"
    enrolled = subprocess.run(
        [binary, "enroll", "--service", "--state", str(state), "--product", f"acct={product}"],
        capture_output=True, text=True, env=env, timeout=120)
    assert enrolled.returncode == 0, enrolled.stderr
    agent_id = enrolled.stdout.split("Enrolled as ", 1)[1].split(" ", 1)[0]
    exec_start = next(line for line in (units / "careline-agent.service").read_text().splitlines()
                      if line.startswith("ExecStart="))
    assert exec_start == f"ExecStart={binary} run --state {state}"
    try:
        assert wait_until(lambda: sqlite_coordinator.agents()[agent_id]["status"] == "online",
                          timeout=60)
        status = json.loads(subprocess.run([binary, "status", "--state", str(state), "--json"],
                                           capture_output=True, text=True, check=True).stdout)
        assert status["connection"]["state"] == "connected"
        job = sqlite_coordinator.cli("push", "update", "--machine", agent_id, "--version", "1.0.0")
        assert machine(job_done(sqlite_coordinator, job["id"], timeout=90), agent_id)["status"] == "installed"
        assert installed(product) == "1.0.0"

        # the binary updates itself (here to a release holding the same build): watchdog
        # started from the previous binary, exit 75, restarted, confirmed after its Welcome
        assert "careline-agent" in sqlite_coordinator.agents()[agent_id]["products"]
        src = tmp_path / "agent-release"
        src.mkdir()
        shutil.copy2(binary, src / "careline-agent")
        package = tmp_path / "careline-agent-9.9.9.careline"
        run([PYTHON, "-m", "careline.coordinator.cli", "release", "build", str(src), "--product",
             "careline-agent", "--version", "9.9.9", "--kind", "bugfix", "--out", str(package)])
        publish(sqlite_coordinator, keys, package)
        job = sqlite_coordinator.cli("push", "update", "--machine", agent_id, "--version", "9.9.9",
                                     "--product", "careline-agent")
        result = machine(job_done(sqlite_coordinator, job["id"], timeout=120), agent_id)
        assert result["status"] == "installed", result
        journal = json.loads((state / "updates" / "self-update.json").read_text())
        assert journal["state"] == "confirmed"
        assert "main process exited with 75" in (units / "calls.log").read_text()
    finally:
        subprocess.run([binary, "service", "uninstall"], env=env, capture_output=True, timeout=60)
