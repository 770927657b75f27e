"""Smaller hardening of issue 12, item 8, against real processes: data-dir files are the
owner's only whatever the folder's mode, and an agent-chosen hostname cannot forge a line
in the coordinator's log."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys

import pytest

from careline.agent.enroll import register
from careline.shared.keys import JoinString, generate_key, public_bytes
from tests.conftest import CoordinatorProcess, wait_until


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_files_are_private_whatever_the_folder(tmp_path):
    (tmp_path / "coordinator").mkdir(mode=0o755)  # made beforehand, readable by all
    coord = CoordinatorProcess(tmp_path)
    files = [coord.data / "careline.toml", coord.data / "careline.db",
             coord.data / "local-admin.token"]
    assert [mode(f) for f in files] == [0o600] * 3
    for f in files:  # loosened by hand, or made by an older version
        f.chmod(0o644)
    coord.start()
    try:
        assert [mode(f) for f in files] == [0o600] * 3
        coord.join_string()  # writes: the WAL appears, private too
        assert mode(coord.data / "careline.db-wal") == 0o600
    finally:
        coord.stop()


def test_agent_chosen_hostname_cannot_forge_a_log_line(sqlite_coordinator):
    coord = sqlite_coordinator
    join = JoinString.parse(coord.join_string())
    forged = "pc\n2026-01-01 00:00:00,000 ERROR careline.coordinator: disk wiped on all machines"
    asyncio.run(register(join, public_bytes(generate_key()), hostname=forged, os="x",
                         products=[]))
    log = wait_until(lambda: "enrolled" in coord.log.read_text() and coord.log.read_text())
    assert "pc\\n2026-01-01 00:00:00,000 ERROR" in log
    assert not any(line.startswith("2026-01-01 00:00:00,000 ERROR") for line in log.splitlines())


@pytest.mark.skipif(os.geteuid() != 0, reason="the rule is about an agent running as root")
def test_root_agent_will_not_start_a_product_any_user_can_replace(sqlite_coordinator, spawn_agent,
                                                                   tmp_path):
    coord = sqlite_coordinator
    product = tmp_path / "Kho"
    product.mkdir()
    (product / "app.py").write_text("import time\ntime.sleep(60)\n")
    product.chmod(0o777)  # installed where every user may write
    agent = spawn_agent("pc", coord.join_string(), "--product", f"Kho={product}",
                        "--product-exec", f"Kho={sys.executable} app.py")
    app = subprocess.Popen([sys.executable, str(product / "app.py")], start_new_session=True)
    try:
        wait_until(lambda: coord.agents()[agent.agent_id]["products"].get("Kho", {}).get("running"))
        refused = coord.cli("restart-product", "--machine", agent.agent_id, "--product", "Kho",
                            check=False)
        assert refused.returncode == 1
        assert "not starting Kho as root" in refused.stderr
        assert "writable by group" in refused.stderr
        assert app.poll() is None  # refused before anything was stopped
    finally:
        app.kill()
        app.wait(10)
