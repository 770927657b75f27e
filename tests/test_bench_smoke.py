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
