"""Smaller hardening of issue 12, item 8, against real processes: data-dir files are the
owner's only whatever the folder's mode, and an agent-chosen hostname cannot forge a line
in the coordinator's log."""

from __future__ import annotations

import asyncio
import stat

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
