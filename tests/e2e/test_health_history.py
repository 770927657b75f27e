"""Health history end to end: a real agent's heartbeats become one sample per period,
read back with `careline agents history` (the agents.health_history API method)."""

from __future__ import annotations

import time

from tests.conftest import PYTHON, run, wait_until


def test_heartbeats_become_one_sample_per_period(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    pc = spawn_agent("pc1", coord.join_string())
    history = wait_until(lambda: coord.cli("agents", "history", pc.agent_id)["samples"] or None)
    sample = history[0]
    assert 0 <= sample["cpu_percent"] <= 100
    assert 0 < sample["memory_percent"] <= 100
    assert sample["disk_free"] is None or sample["disk_free"] >= 0
    seen = coord.agents()[pc.agent_id]["last_seen"]
    wait_until(lambda: coord.agents()[pc.agent_id]["last_seen"] != seen)  # more heartbeats stored
    time.sleep(1.5)
    assert len(coord.cli("agents", "history", pc.agent_id, "--hours", "1")["samples"]) == 1
    table = run([PYTHON, "-m", "careline.coordinator.cli", "agents", "history", pc.agent_id[:10],
                 "--data", str(coord.data)]).stdout
    assert f"health of {coord.agents()[pc.agent_id]['hostname']}" in table
    refused = coord.cli("agents", "history", pc.agent_id, "--hours", "0", check=False)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
