"""bench/fleet.py runs end to end on a few dozen agents and reports every figure.

No timing asserts: this machine's speed is not under test, only that the simulator, the
bare baseline, the measurements and the reconnect storm all work and clean up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_fleet_bench_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fleet.py"), "--agents", "30", "--duration", "2",
         "--json"],
        capture_output=True, text=True, timeout=55, cwd=ROOT,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    figures = json.loads(result.stdout)

    assert figures["agents"] == 30
    assert figures["connect"]["connected"] == 30
    assert figures["connect"]["rate_per_s"] > 0
    assert figures["connect"]["bare_rate_per_s"] > 0
    assert figures["rss"]["per_agent_kb"] > 0
    assert figures["heartbeat"]["rate_per_s"] > 0
    assert figures["heartbeat"]["bare_rate_per_s"] > 0
    assert figures["reconnect"]["back"] >= 29
    assert figures["reconnect"]["back_95_s"] > 0
    # Present whether or not the coordinator has agents.ping yet.
    assert "available" in figures["command"]


@pytest.mark.slow
def test_ping_fanout_bench_smoke() -> None:
    """bench/fanout.py with three real agent processes; all stopped at the end."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fanout.py"), "--agents", "3",
         "--customer-agents", "1", "--repeat", "1", "--rounds", "2", "--settle", "0", "--json"],
        capture_output=True, text=True, timeout=58, cwd=ROOT,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    figures = json.loads(result.stdout)

    assert figures["agents"] == 3
    assert figures["cli_s"]["answers_all"] == 3
    assert figures["cli_s"]["statuses_all"] == ["ok"]
    assert figures["cli_s"]["customer_1"]["median"] > 0
    assert figures["baseline_s"]["python_c_pass"]["median"] > 0
    assert figures["open_connection"]["ok_per_round_min"] == 3
    assert figures["open_connection"]["round_ms"]["n"] == 2
    assert figures["importtime_ping_path"]["total_ms"] > 0
    # kill -9 + restart: every real agent process said hello to the new coordinator
    assert figures["restart"]["back"] == 3
    assert figures["restart"]["all_back_after_kill_s"] is not None


@pytest.mark.slow
def test_rollout_bench_smoke() -> None:
    """bench/rollout.py: a regulation release published to 30 simulated agents completes
    all three waves through the real update protocol."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rollout.py"), "--agents", "30", "--customers",
         "3", "--install-seconds", "0.2", "--json"],
        capture_output=True, text=True, timeout=58, cwd=ROOT,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    figures = json.loads(result.stdout)

    rollout = figures["rollout"]
    assert rollout["targeted"] == 30
    assert rollout["succeeded"] == 30
    assert rollout["status_at_end"] == "completed"
    assert rollout["publish_to_95_succeeded_s"] > 0
    assert sum(w["machines"] for w in figures["waves"]) == 30
    assert len(figures["waves"]) == 3
    assert rollout["agent_errors"] == {}


@pytest.mark.slow
def test_web_bench_smoke() -> None:
    """bench/web.py: a small filled database, the console signed in, every timing reported."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "web.py"), "--machines", "100", "--customers", "5",
         "--requests", "3", "--json"],
        capture_output=True, text=True, timeout=58, cwd=ROOT,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    figures = json.loads(result.stdout)
    assert (figures["machines"], figures["incidents"]) == (100, 200)
    assert figures["big_customer_machines"] == 20
    for key in ("fleet_page", "incidents_page", "customer_page", "expiring_page",
                "api_fleet_overview", "api_incidents_page"):
        assert figures[key]["requests"] == 3
        assert figures[key]["p95_ms"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("split", [(1, 1), (2, 2)], ids=["one-process-each", "split-2-workers-2-proxies"])
def test_scale_out_bench_smoke(pg_available: None, split: tuple[int, int]) -> None:
    """bench/scale_out.py: two coordinators behind HAProxy, a kill -9, every event stored
    once; also with the fleet in two worker processes behind two HAProxy processes on one
    port (the layout past RLIMIT_NOFILE), each of which must carry some of the agents."""
    from careline.coordinator.haproxy import find_haproxy
    from tests.conftest import PG_ADMIN_URL

    if find_haproxy() is None:
        pytest.skip("haproxy is not installed (scripts/test.sh installs Debian's package)")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale_out.py"), "--agents", "20",
         "--database", PG_ADMIN_URL, "--event-every", "2", "--json",
         "--workers", str(split[0]), "--proxies", str(split[1])],
        capture_output=True, text=True, timeout=90, cwd=ROOT,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    figures = json.loads(result.stdout)
    assert figures["connect"]["connected"] == 20
    assert sum(figures["connect"]["held_per_process"]) == 20
    assert figures["layout"]["workers"] == split[0]
    assert len(figures["connect"]["held_per_proxy"]) == split[1]
    assert sum(figures["connect"]["held_per_proxy"]) == 20
    assert all(held > 0 for held in figures["connect"]["held_per_proxy"])  # SO_REUSEPORT spreads
    assert [p["answers_with_rtt"] for p in figures["ping"].values()] == [20, 20]
    assert figures["failover"]["back"] == figures["failover"]["agents_cut"] > 0
    assert figures["events"]["emitted"] > 0
    assert (figures["events"]["missing"], figures["events"]["duplicated"]) == (0, 0)
    assert figures["online_at_end"] == 20
