"""The agent behind an HTTP CONNECT proxy (a real one, tests/agent/connect_proxy.py): from
`enroll --proxy` (kept in the agent config for `run`) and from HTTPS_PROXY; `--proxy direct`
ignores the environment; a bad proxy URL is refused before the token is spent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from careline.agent.state import websocket_proxy
from tests.agent.connect_proxy import ConnectProxy
from tests.conftest import PYTHON, CoordinatorProcess, wait_until


def agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run([PYTHON, "-m", "careline.agent", *args], capture_output=True, text=True,
                          timeout=60, env={**clean, **(env or {})})


@pytest.mark.parametrize(("setting", "expected"), [
    (None, True), ("direct", None), ("http://p:3128", "http://p:3128")])
def test_websocket_proxy_setting(setting: str | None, expected: object) -> None:
    assert websocket_proxy(setting) == expected


def test_enroll_and_run_through_a_connect_proxy(sqlite_coordinator: CoordinatorProcess,
                                               tmp_path: Path) -> None:
    target = f"127.0.0.1:{sqlite_coordinator.port}"
    with ConnectProxy() as proxy:
        # --proxy at enrollment, kept for run
        state = tmp_path / "a"
        out = agent("enroll", sqlite_coordinator.join_string(), "--state", str(state),
                    "--proxy", proxy.url)
        assert out.returncode == 0, out.stderr
        assert json.loads((state / "agent.json").read_text())["proxy"] == proxy.url
        assert proxy.targets == [target]
        run = subprocess.Popen([PYTHON, "-m", "careline.agent", "run", "--state", str(state)],
                               env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
        try:
            agent_id = out.stdout.split("Enrolled as ", 1)[1].split(" ", 1)[0]
            assert wait_until(lambda: sqlite_coordinator.agents()[agent_id]["status"] == "online",
                              timeout=30)
            assert proxy.targets == [target, target]
        finally:
            run.terminate()
            run.wait(10)

        # HTTPS_PROXY from the environment (what the OS settings give on Windows)
        before = len(proxy.targets)
        out = agent("enroll", sqlite_coordinator.join_string(), "--state", str(tmp_path / "b"),
                    env={"HTTPS_PROXY": proxy.url})
        assert out.returncode == 0, out.stderr
        assert len(proxy.targets) == before + 1

        # "direct" ignores the environment
        out = agent("enroll", sqlite_coordinator.join_string(), "--state", str(tmp_path / "c"),
                    "--proxy", "direct", env={"HTTPS_PROXY": "http://127.0.0.1:9"})
        assert out.returncode == 0, out.stderr
        assert len(proxy.targets) == before + 1

    bad = agent("enroll", sqlite_coordinator.join_string(uses=1), "--state", str(tmp_path / "d"),
                "--proxy", "ftp://nowhere")
    assert bad.returncode == 1
    assert "--proxy" in bad.stderr
