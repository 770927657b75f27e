"""The service and `careline-agent apply-bundle` install in turns (issue 13, item 9): an OS
file lock per product, across processes, released even when its holder is killed."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from careline.agent.installer import Installer, ProductLayout
from careline.shared.errors import Conflict
from careline.shared.trust import VerifiedPackage

from .conftest import CHECK_OK, instruction_for, make_package

HOLDER = """
import sys, time
from pathlib import Path
from careline.agent.filelock import locked
with locked(Path(sys.argv[1]), 5, "test"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_an_install_waits_for_another_process_holding_the_lock(tmp_path: Path) -> None:
    state = tmp_path / "state"
    layout = ProductLayout("acct", tmp_path / "Programs" / "Acct", data_subdir="Data")
    layout.install_dir.parent.mkdir(parents=True)
    installer = Installer(state, layout, lambda: False, lock_timeout=0.5)
    package = make_package(tmp_path, "2.0.0", check_script=CHECK_OK)
    verified = VerifiedPackage(package, instruction_for(package, "2.0.0"))

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(state / "install-acct.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(Conflict, match="busy in another careline-agent process"):
            installer.install(verified)
        with pytest.raises(Conflict):
            installer.recover()
        assert not layout.install_dir.exists()  # nothing was touched
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the OS lets go
        holder.wait(10)
    assert installer.install(verified).outcome == "installed"
