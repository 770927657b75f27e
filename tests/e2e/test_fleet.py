"""The foundation end to end: init → serve → token → enroll two agents → online with
health → one killed → offline → restarted → online again. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import stat

from tests.conftest import PYTHON, run, wait_until


def test_two_agents_report_go_offline_and_come_back(coordinator, spawn_agent, tmp_path):
    product_dir = tmp_path / "ketoan"
    product_dir.mkdir()
    (product_dir / "careline-manifest.json").write_text(
        '{"product": "ketoan", "version": "2026.3", "files": {}}'
    )
    join = coordinator.join_string("Cong ty Minh Anh", uses=2)
    first = spawn_agent("pc1", join, "--product", f"ketoan={product_dir}")
    second = spawn_agent("pc2", join, "--product", f"ketoan={product_dir}")

    key_mode = stat.S_IMODE(os.stat(first.state / "agent.key").st_mode)
    assert key_mode == 0o600

    def both_online_with_health():
        rows = coordinator.cli("agents", "list")
        online = {r["id"]: r for r in rows if r["status"] == "online" and r["products"] != {}}
        return online if {first.agent_id, second.agent_id} <= set(online) else None

    online = wait_until(both_online_with_health)
    assert online[first.agent_id]["products"] == {"ketoan": {"version": "2026.3", "running": False}}
    shown = coordinator.cli("agents", "show", first.agent_id)
    health = shown["health"]
    assert health["memory_total"] > 0
    assert health["disks"]
    assert health["uptime"] > 0
    assert health["os"]
    assert health["agent_version"]
    assert shown["customer_id"] == online[second.agent_id]["customer_id"]

    first.kill()
    wait_until(lambda: coordinator.agents()[first.agent_id]["status"] == "offline")
    assert coordinator.agents()[second.agent_id]["status"] == "online"
    last_seen = coordinator.agents()[first.agent_id]["last_seen"]
    assert last_seen is not None

    first.start()
    wait_until(lambda: coordinator.agents()[first.agent_id]["status"] == "online")
    assert first.status()["connection"]["state"] == "connected"


def test_token_uses_are_spent(sqlite_coordinator, spawn_agent):
    join = sqlite_coordinator.join_string("One seat", uses=1)
    spawn_agent("pc1", join, start=False)
    second = sqlite_coordinator.data.parent / "pc2"
    result = run([PYTHON, "-m", "careline.agent.cli", "enroll", join, "--state", str(second)], check=False)
    assert result.returncode == 3  # EXIT_REFUSED (careline.agent.entry): a new join string is needed
    assert "used up" in result.stderr
    assert not (second / "agent.json").exists()
    assert len(sqlite_coordinator.agents()) == 1


def test_many_short_connections(sqlite_coordinator):
    """Technician calls open a connection each: every one must be answered (a uvloop TLS
    1.3 session-ticket stall used to drop about one in a hundred)."""
    from careline.coordinator.client import AdminClient, resolve_credentials

    credentials = resolve_credentials(None, None, None, str(sqlite_coordinator.data))
    answered = 0
    for _ in range(300):
        with AdminClient(credentials, timeout=8) as client:
            answered += client.call("customers.list") == []
    assert answered == 300
