"""bench/notify.py runs end to end at a tiny scale and reports every figure (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_notify_bench_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "notify.py"), "--notifications", "40", "--agents", "0",
         "--json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    figures = json.loads(result.stdout)
    assert figures["delivered"] == 40
    assert figures["mails"] == 20
    assert figures["webhooks"] == 20
    assert figures["duplicates"] == 0
    assert figures["rejected_signatures"] == 0
    assert figures["sent_per_s"] > 0
    assert figures["p99_event_to_delivery_s"] > 0
    assert figures["coordinator_rss_peak_mb"] > 0
